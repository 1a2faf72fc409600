"""Processor, media, mask and video inputs (issue 9) and the input forms of the image processor and
vision encoder (issue 10): each case failed (silently wrong result, crash or misleading message)
before its fix."""

from __future__ import annotations

import json
import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from pixelrefer_fast.image_processing_pixelrefer_fast import (
    MAX_IMAGE_PIXELS,
    PixelReferFastImageProcessor,
    load_image,
    smart_resize,
)
from pixelrefer_fast.masks import decode_rle, to_binary_mask
from pixelrefer_fast.processing_pixelrefer_fast import PixelReferFastProcessor, PixelReferItem
from pixelrefer_fast.video import MAX_SAMPLED_SLOTS, fps_sample_indices
from tests.model.fixtures import box_mask, make_tiny_tokenizer, textured

IMG = textured(60, 80)
BOX = box_mask(60, 80, 10, 10, 20, 20)


def png_header_only(path, width, height):
    """A PNG whose header announces width x height (8-bit grey) with one tiny IDAT: never decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------ options from config.json
@pytest.mark.parametrize("variant", ["full", "lite"])
def test_from_pretrained_reads_the_options_of_config_json(tmp_path, variant):
    from tests.model.tiny_checkpoint import make_tiny_checkpoint

    directory = make_tiny_checkpoint(tmp_path, variant)
    config = json.loads((directory / "config.json").read_text())
    assert PixelReferFastProcessor.from_pretrained(directory).use_token_compression is True
    config.update(reuse_first_local_crop=False, use_token_compression=False)
    (directory / "config.json").write_text(json.dumps(config))
    processor = PixelReferFastProcessor.from_pretrained(directory)
    assert processor.reuse_first_local_crop is False and processor.use_token_compression is False
    assert processor.mask_num == config["mask_num"]
    if variant == "lite":  # the option acts: each of two masks on one image gets its own local view
        item = PixelReferItem(image=IMG, masks=[BOX, box_mask(60, 80, 30, 40, 20, 30)], question="<region><region>")
        assert processor(item)["region_local"].tolist() == [0, 1]
    else:  # no frame-token pruning: every merged token of both (partly identical) frames is kept
        frames = [IMG, IMG]
        batch = processor(PixelReferItem(video=frames, question="Describe."))
        assert bool(batch["image_token_keep"].all())
    # keyword arguments win over the file
    assert PixelReferFastProcessor.from_pretrained(directory, use_token_compression=True).use_token_compression


def test_processor_config_json_overrides_config_json_with_a_warning(tmp_path, caplog):
    make_tiny_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "pixelreferlite_qwen2", "mask_num": 4,
                                                      "reuse_first_local_crop": True}))
    (tmp_path / "processor_config.json").write_text(json.dumps({"reuse_first_local_crop": False}))
    with caplog.at_level(logging.WARNING):
        processor = PixelReferFastProcessor.from_pretrained(tmp_path)
    assert processor.reuse_first_local_crop is False
    assert "reuse_first_local_crop=False in processor_config.json overrides True from config.json" in caplog.text


def test_processor_options_are_checked():
    with pytest.raises(TypeError, match="use_token_compression must be a bool"):
        PixelReferFastProcessor(make_tiny_tokenizer(), use_token_compression="no")
    with pytest.raises(ValueError, match="video_fps must be a finite number > 0"):
        PixelReferFastProcessor(make_tiny_tokenizer(), video_fps=float("inf"))


# ------------------------------------------------------------------------ image files and PIL images
def test_truncated_jpeg_is_refused_with_the_file_named(tmp_path, full):
    import cv2

    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), textured(120, 160))
    data = path.read_bytes()
    assert load_image(path).shape == (120, 160, 3)  # the whole file reads
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"cut\.jpg.*truncated"):
        full(PixelReferItem(image=str(cut), question="Describe."))
    with pytest.raises(ValueError, match=r"cut\.jpg"):  # lazily opened by PIL: decoded only on use
        full(PixelReferItem(image=Image.open(cut), question="Describe."))


def test_truncated_png_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(textured(120, 160)).save(path)
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ValueError, match=r"cut\.png.*truncated"):
        load_image(cut)


def test_jpeg_with_exif_thumbnail_and_trailing_bytes_reads(tmp_path):
    """The end-of-image check looks after the scan: a thumbnail's marker does not hide a cut, and bytes
    after the end marker are allowed."""
    big = Image.fromarray(textured(200, 240, seed=3))
    thumb_path = tmp_path / "thumb.jpg"
    Image.fromarray(textured(20, 24, seed=4)).save(thumb_path)
    exif = Image.Exif()
    path = tmp_path / "exif.jpg"
    big.save(path, exif=exif.tobytes())
    data = path.read_bytes()
    # splice the thumbnail's bytes (with its own FFD9) into an APP segment before the scan
    app = thumb_path.read_bytes()
    segment = b"\xff\xe5" + struct.pack(">H", len(app) + 2) + app
    spliced = data[:2] + segment + data[2:]
    good = tmp_path / "good.jpg"
    good.write_bytes(spliced + b"trailing")
    assert load_image(good).shape == (200, 240, 3)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(spliced[: len(spliced) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_image(cut)


def test_image_bomb_file_is_refused_before_decoding(tmp_path, full):
    bomb = png_header_only(tmp_path / "bomb.png", 60000, 60000)
    with pytest.raises(ValueError, match=r"bomb\.png.*too large"):
        full(PixelReferItem(image=str(bomb), question="Describe."))
    # between our limit and PIL's: PIL opens it lazily, we refuse it with our limit before decoding
    big = png_header_only(tmp_path / "big.png", 13000, 11000)
    assert 13000 * 11000 > MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=f"MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}"):
        load_image(big)
    with pytest.warns(Image.DecompressionBombWarning):
        lazy = Image.open(big)
    with pytest.raises(ValueError, match=f"MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}"):
        full(PixelReferItem(image=lazy, question="Describe."))


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_pil_image_reads_as_the_same_file_by_path(tmp_path, mode, full):
    values = np.random.default_rng(0).integers(0, 65536, (40, 50)).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)  # a 16-bit grey PNG
    by_path = load_image(path)
    np.testing.assert_array_equal(by_path[:, :, 0], (values >> 8).astype(np.uint8))  # OpenCV keeps the high byte
    pil = Image.open(path) if mode == "I;16" else Image.frombytes(mode, (50, 40), values.astype(">u2").tobytes())
    assert pil.mode == mode
    np.testing.assert_array_equal(load_image(pil), by_path)
    a = full(PixelReferItem(image=pil, question="Describe."))
    b = full(PixelReferItem(image=str(path), question="Describe."))
    assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_max_pixels_below_one_patch_is_a_clear_error():
    with pytest.raises(ValueError, match="max_pixels=1 must be at least min_pixels"):
        PixelReferFastImageProcessor(max_pixels=1, min_pixels=1)
    with pytest.raises(ValueError, match="pixel budget max_pixels=1 is below one 14x14 patch"):
        smart_resize(100, 100, factor=14, min_pixels=1, max_pixels=1)
    with pytest.raises(ValueError, match="only with a side below 14 px"):
        smart_resize(14, 2800, factor=14, min_pixels=1, max_pixels=14 * 14 * 2)
    # many crops in one call shrink the per-image budget below a patch: named, not a ZeroDivisionError
    small = PixelReferFastImageProcessor(max_pixels=4 * 196, min_pixels=196)
    with pytest.raises(ValueError, match=r"images\[0\]: smart_resize: the pixel budget"):
        small.preprocess([IMG] * 8)


def test_aspect_ratio_error_names_the_crop_and_its_box(full):
    image = textured(64, 12000)
    mask = np.zeros((64, 12000), np.uint8)
    mask[30, :] = 1  # a one-pixel line over the full width: its crop is 56 x 12012 after the resize
    with pytest.raises(ValueError, match=r"item 0, the crop of mask 0 \(56x12012 px: its box 57x12000 px in the "
                                         r"64x12000 image.*aspect ratio must be at most 200"):
        full(PixelReferItem(image=image, masks=[mask], question="<region>"))
    with pytest.raises(ValueError, match=r"item 0: image: smart_resize: the aspect ratio .* 30x6100 image"):
        full(PixelReferItem(image=textured(30, 6100), question="Describe."))


# ------------------------------------------------------------------------ masks
def test_mask_pil_mode_f_with_negative_or_nan_values_is_refused(full):
    negative = Image.fromarray(np.where(BOX > 0, 1.0, -1.0).astype(np.float32), mode="F")
    with pytest.raises(ValueError, match="negative values"):
        full(PixelReferItem(image=IMG, masks=[negative], question="<region>"))
    nan = Image.fromarray(np.where(BOX > 0, 1.0, np.nan).astype(np.float32), mode="F")
    with pytest.raises(ValueError, match="NaN"):
        full(PixelReferItem(image=IMG, masks=[nan], question="<region>"))
    ok = Image.fromarray(BOX.astype(np.float32), mode="F")
    np.testing.assert_array_equal(to_binary_mask(ok, 60, 80), BOX)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_float_mask_tensors_of_every_dtype_are_accepted(full, dtype):
    a = full(PixelReferItem(image=IMG, masks=[torch.from_numpy(BOX).to(dtype)], question="<region>"))
    b = full(PixelReferItem(image=IMG, masks=[BOX], question="<region>"))
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("channels", [1, 3])
def test_hwc_mask_not_in_a_list_gets_a_clear_message(full, channels):
    mask = np.repeat(BOX[:, :, None], channels, axis=2)
    with pytest.raises(ValueError, match=r"\[R, H, W\] stack .* 60 masks .*pass \[mask\[\.\.\., 0\]\]"):
        full(PixelReferItem(image=IMG, masks=mask, question="<region>"))
    with pytest.raises(ValueError, match=r"HxWxC mask image: take one channel"):
        full(PixelReferItem(image=IMG, masks=[mask], question="<region>"))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_box_array_is_one_region_per_row(full, as_tensor):
    boxes = np.array([[10, 10, 30, 30], [40, 20, 70, 50], [0, 0, 80, 60]], dtype=np.float32)
    masks = torch.from_numpy(boxes) if as_tensor else boxes
    batch = full(PixelReferItem(image=IMG, masks=masks, question="<region> <region> <region>"))
    listed = full(PixelReferItem(image=IMG, masks=[tuple(b) for b in boxes.tolist()],
                                 question="<region> <region> <region>"))
    assert batch["region_token_counts"].shape == (3,)
    assert all(torch.equal(batch[k], listed[k]) for k in listed)


@pytest.mark.parametrize(
    "rle, match",
    [
        pytest.param({"size": [60, 80], "counts": "0é1"}, "must be ASCII", id="non-ascii"),
        pytest.param({"size": [60, 80], "counts": "o" * 60 + "0"}, "overflows", id="overflowing-run"),
        pytest.param({"size": [60, 80], "counts": "oooo0"}, "outside", id="run-above-h-times-w"),
        pytest.param({"size": None, "counts": "0"}, "two non-negative ints", id="size-none"),
        pytest.param({"size": ["60", "80"], "counts": "0"}, "two non-negative ints", id="size-strings"),
        pytest.param({"size": [True, 80], "counts": "0"}, "two non-negative ints", id="size-bool"),
        pytest.param({"size": [10**6, 10**6], "counts": [10**12]}, "differs from the image size", id="huge-size"),
        pytest.param({"size": [60, 80], "counts": [4800.0]}, "list of ints", id="float-counts"),
    ],
)
def test_rle_errors_are_clear(full, rle, match):
    with pytest.raises(ValueError, match=match):
        full(PixelReferItem(image=IMG, masks=[rle], question="<region>"))


def test_rle_size_is_bounded_without_an_image():
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        decode_rle({"size": [10**6, 10**6], "counts": [10**12]})


# ------------------------------------------------------------------------ video arguments
FRAMES = [textured(60, 80, seed=i) for i in range(4)]


@pytest.mark.parametrize("variant", ["full", "lite"])
@pytest.mark.parametrize("bad, error", [(True, TypeError), (1.0, TypeError), ("1", TypeError),
                                        (np.float32(2), TypeError),
                                        (-1, ValueError)])
@pytest.mark.parametrize("nested", [False, True])
def test_bad_frame_ids_are_refused(full, lite, variant, bad, error, nested):
    processor = full if variant == "full" else lite
    frame_ids = [bad] if nested else bad
    with pytest.raises(error, match="frame_ids"):
        processor(PixelReferItem(video=FRAMES, masks=[BOX], frame_ids=frame_ids, question="<region>"))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param(dict(timestamps=[0.0, float("nan"), 2.0, 3.0]), ValueError, "finite", id="nan-timestamp"),
        pytest.param(dict(timestamps=[0.0, 2.0, 1.0, 3.0]), ValueError, "non-decreasing", id="decreasing"),
        pytest.param(dict(timestamps=[0.0, 1.0, 2.0, 1e308]), ValueError, "at most 1e\\+09", id="huge-timestamp"),
        pytest.param(dict(timestamps=[0, "1", 2, 3]), TypeError, "seconds", id="string-timestamp"),
        pytest.param(dict(timestamps=[0, 1]), ValueError, "2 timestamps for 4 frames", id="length"),
        pytest.param(dict(frames_fps=float("inf")), ValueError, "frames_fps must be a finite number > 0",
                     id="inf-rate"),
        pytest.param(dict(frames_fps=0), ValueError, "frames_fps must be a finite number > 0", id="zero-rate"),
        pytest.param(dict(frames_fps=True), TypeError, "frames_fps must be a number", id="bool-rate"),
        pytest.param(dict(frames_fps=2.0, timestamps=[0, 1, 2, 3]), ValueError, "not both", id="both"),
    ],
)
@pytest.mark.parametrize("variant", ["full", "lite"])
def test_bad_frame_list_times_are_refused(full, lite, variant, kwargs, error, match):
    processor = full if variant == "full" else lite
    with pytest.raises(error, match=match):
        processor(PixelReferItem(video=FRAMES, masks=[BOX], frame_ids=[1], question="<region>", **kwargs))


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    av = pytest.importorskip("av")
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(textured(48, 64, seed=i), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(
    "fps, error, match",
    [
        pytest.param(0, ValueError, "fps must be a finite number > 0", id="zero"),
        pytest.param(float("nan"), ValueError, "fps must be a finite number > 0", id="nan"),
        pytest.param(-1.0, ValueError, "fps must be a finite number > 0", id="negative"),
        pytest.param("2", TypeError, "fps must be a number", id="string"),
        pytest.param(1e9, ValueError, f"MAX_SAMPLED_SLOTS = {MAX_SAMPLED_SLOTS}", id="huge"),
    ],
)
def test_bad_video_file_fps_is_refused(full, tiny_video, fps, error, match):
    assert full(PixelReferItem(video=str(tiny_video), fps=2, question="Describe."))["image_grid_thw"].shape[0] == 4
    with pytest.raises(error, match=match):
        full(PixelReferItem(video=str(tiny_video), fps=fps, question="Describe."))


def test_fps_slot_count_is_checked_before_allocating():
    with pytest.raises(ValueError, match="MAX_SAMPLED_SLOTS"):
        fps_sample_indices([0, 0.2, 0.4], 10**6, 10.0)  # 1e7 slots: refused, nothing allocated


def test_fps_on_an_image_or_a_lite_file_is_refused(lite, tiny_video, full):
    with pytest.raises(ValueError, match="are for videos only"):
        full(PixelReferItem(image=IMG, fps=2, question="Describe."))
    with pytest.raises(ValueError, match="`fps` is the full model's sampling rate"):
        lite(PixelReferItem(video=str(tiny_video), masks=[box_mask(48, 64, 5, 5, 20, 20)], frame_ids=[1], fps=2,
                            question="<region>"))


# ------------------------------------------------------------------------ image processor input forms (issue 10)
def test_preprocess_accepts_what_users_pass():
    processor = PixelReferFastImageProcessor()
    image = textured(50, 70, seed=7)
    reference = processor.preprocess([image])
    forms = {
        "single HWC array": image,
        "CHW array": image.transpose(2, 0, 1),
        "PIL image": Image.fromarray(image),
        "HWC tensor": torch.from_numpy(image),
        "CHW tensor": torch.from_numpy(image).permute(2, 0, 1),
        "list of PIL": [Image.fromarray(image)],
        "tuple of CHW": (image.transpose(2, 0, 1).copy(),),
        "4-D batch": image[None],
        "4-D CHW tensor batch": torch.from_numpy(image).permute(2, 0, 1)[None],
    }
    for form, images in forms.items():
        out = processor.preprocess(images)
        assert torch.equal(out.pixel_values, reference.pixel_values), form
        assert torch.equal(out.grid_thw, reference.grid_thw), form
    two = processor.preprocess([image, Image.fromarray(textured(30, 40, seed=1))])
    assert two.grid_thw.shape == (2, 3)


@pytest.mark.parametrize(
    "images, error, match",
    [
        pytest.param("photo.jpg", TypeError, "images: expected a PIL image", id="string"),
        pytest.param([np.zeros((20, 20, 3), np.float32)], TypeError, r"images\[0\]: pixel arrays must be uint8",
                     id="float-array"),
        pytest.param([np.zeros((20, 20, 5), np.uint8)], ValueError, r"images\[0\]: expected an HxWx3", id="5-channels"),
        pytest.param(np.zeros((2, 2, 20, 20, 3), np.uint8), ValueError, "images: expected an image", id="5-D"),
        pytest.param([None], TypeError, r"images\[0\]: expected a PIL image", id="none-in-list"),
    ],
)
def test_preprocess_bad_images_name_the_argument(images, error, match):
    with pytest.raises(error, match=match):
        PixelReferFastImageProcessor().preprocess(images)


def test_vision_encoder_accepts_lists_for_the_grids():
    from pixelrefer_fast.configuration_pixelrefer_fast import PixelReferFastVisionConfig
    from pixelrefer_fast.modeling_vision import PixelReferFastVisionEncoder

    config = PixelReferFastVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                        num_attention_heads=2)
    encoder = PixelReferFastVisionEncoder(config).eval()
    pixels = torch.randn(4 * 6 + 2 * 2, config.patch_dim)
    grid = torch.tensor([[1, 4, 6], [1, 2, 2]])
    with torch.inference_mode():
        reference = encoder(pixels, grid, torch.tensor([1, 2]))
        assert torch.equal(encoder(pixels, grid.tolist(), [1, 2]), reference)
        assert torch.equal(encoder(pixels, grid.numpy(), np.array([1, 2])), reference)
        assert torch.equal(encoder(pixels, [[1, 4, 6], [1, 2, 2]], [1, 1]), encoder(pixels, grid))  # default: stride 1
        with pytest.raises(ValueError, match="grid_thw must be a 2-D integer tensor"):
            encoder(pixels, [[1, 4.5, 6]])
        with pytest.raises(TypeError, match="grid_thw must be a torch.Tensor, numpy array or list"):
            encoder(pixels, "1,4,6")


# ------------------------------------------------------------------------ model entry: non-finite pixels
@pytest.mark.parametrize("variant, key", [("full", "pixel_values"), ("lite", "global_pixel_values"),
                                          ("lite", "local_pixel_values"), ("full", "crop_pixel_values")])
def test_non_finite_pixels_are_refused_at_the_model_entry(tmp_path, variant, key):
    from transformers import AutoModelForCausalLM

    from tests.model.tiny_checkpoint import make_tiny_checkpoint

    directory = make_tiny_checkpoint(tmp_path, variant)
    model = AutoModelForCausalLM.from_pretrained(directory)
    processor = PixelReferFastProcessor.from_pretrained(directory)
    batch = dict(processor(PixelReferItem(image=IMG, masks=[BOX], question="What is <region>?")))
    batch[key] = batch[key].clone()
    batch[key][1, 2] = float("nan")
    message = rf"{key} contains NaN or inf \(first at index \(1, 2\)\)"
    with torch.inference_mode(), pytest.raises(ValueError, match=message):
        model(**batch)
    with pytest.raises(ValueError, match=message):
        model.place_inputs(batch)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_image_file_gets_the_official_imread_pixels_and_exif_orientation(tmp_path, orientation):
    """A path is read once and decoded from its bytes; the pixels and the EXIF rotation are those of the
    official `cv2.imread`."""
    import cv2

    exif = Image.Exif()
    exif[0x0112] = orientation  # the EXIF Orientation tag
    path = tmp_path / f"rotated{orientation}.jpg"
    Image.fromarray(textured(40, 64, seed=orientation)).save(path, exif=exif.tobytes(), quality=90)
    official = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    loaded = load_image(path)
    assert loaded.shape == ((64, 40, 3) if orientation in (6, 8) else (40, 64, 3))
    assert np.array_equal(loaded, official)
