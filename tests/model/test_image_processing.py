"""Image processor: smart_resize, budgets, bit-exact pixels vs transformers' pipeline, patch order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixelrefer_fast.image_processing_pixelrefer_fast import (
    PixelReferFastImageProcessor,
    load_image,
    smart_resize,
    to_rgb_array,
)
from tests.model.fixtures import DEMO_DIR, demo_path

needs_demo = pytest.mark.skipif(not DEMO_DIR.is_dir(), reason="shared demo media not available")
IMAGE_BUDGET = 1_605_632  # 8192 * 196: one still image, downsampling 1
VIDEO_BUDGET = 6_422_528  # per call, downsampling 2


def reference_pixels(image: np.ndarray, size: tuple[int, int], ds: int, patch: int = 14) -> np.ndarray:
    """The official pipeline through transformers' own functions, then the official reshape."""
    from transformers.image_transforms import normalize, rescale, resize
    from transformers.image_utils import ChannelDimension, PILImageResampling

    last = ChannelDimension.LAST
    out = resize(image, size, resample=PILImageResampling.BICUBIC, input_data_format=last)
    out = rescale(out, 1 / 255, input_data_format=last)
    out = normalize(out, [0.5] * 3, [0.5] * 3, input_data_format=last)
    chw = out.transpose(2, 0, 1)
    gh, gw = size[0] // patch, size[1] // patch
    grid = chw.reshape(3, gh // ds, ds, patch, gw // ds, ds, patch).transpose(1, 4, 2, 5, 0, 3, 6)
    return grid.reshape(gh * gw, 3 * patch * patch)


@pytest.mark.parametrize(
    "hw, factor, budget, expected",
    [
        pytest.param((480, 640), 14, IMAGE_BUDGET, (476, 644), id="640x480"),
        pytest.param((1080, 1920), 14, IMAGE_BUDGET, (938, 1680), id="1920x1080-budget"),
        pytest.param((7, 2000), 14, IMAGE_BUDGET, (14, 4004), id="short-side-skips-aspect-check"),
        pytest.param((20, 20), 14, IMAGE_BUDGET, (56, 56), id="min-pixels-upscale"),
        pytest.param((336, 336), 14, IMAGE_BUDGET // 15, (322, 322), id="lite-336-N15"),
        pytest.param((720, 1280), 28, VIDEO_BUDGET // 5, (728, 1288), id="video-frame"),
    ],
)
def test_smart_resize_examples(hw, factor, budget, expected):
    assert smart_resize(*hw, factor=factor, min_pixels=3136, max_pixels=budget) == expected


def test_token_counts_of_spec_examples():
    proc = PixelReferFastImageProcessor()
    assert proc.pixel_budget(1, 1) == IMAGE_BUDGET and proc.pixel_budget(2, 1) == VIDEO_BUDGET
    assert proc.pixel_budget(1, 3) == IMAGE_BUDGET // 3 and proc.pixel_budget(2, 7) == VIDEO_BUDGET // 7
    h, w = proc.target_size(480, 640)
    assert (h // 14, w // 14) == (34, 46) and h * w // 196 == 1564
    h, w = proc.target_size(1080, 1920)
    assert (h // 14, w // 14) == (67, 120) and h * w // 196 == 8040


@pytest.mark.parametrize("num_views, grid", [(1, 24), (14, 24), (15, 23), (16, 22)])
def test_lite_global_view_grid(num_views, grid):
    assert PixelReferFastImageProcessor().target_size(336, 336, 1, num_views) == (grid * 14, grid * 14)


@pytest.mark.parametrize("num_views, grid", [(1, 16), (32, 16), (33, 15)])
def test_lite_local_view_grid(num_views, grid):
    assert PixelReferFastImageProcessor().target_size(224, 224, 1, num_views) == (grid * 14, grid * 14)


def test_smart_resize_errors():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(20, 5000, factor=14)
    with pytest.raises(ValueError, match="positive integers"):
        smart_resize(0, 10)


def test_normalisation_bit_exact_for_every_byte():
    values = np.arange(256, dtype=np.uint8)
    image = np.stack([values, values[::-1], np.roll(values, 77)], axis=-1).reshape(16, 16, 3)
    image = np.tile(image, (4, 4, 1))[:56, :56]  # 56x56 is kept as is (min_pixels); all 256 bytes per channel
    out, grid = PixelReferFastImageProcessor().process_image(image, downsampling=1)
    assert grid == (1, 4, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out, reference_pixels(image, (56, 56), 1))
    # transformers rescales in float64 then casts; the float32 shortcut u8*(2/255)-1 differs for 111 bytes
    # (docs/spec.md §14.8), so the table must not be built that way.
    table = np.unique(out)
    shortcut = values.astype(np.float32) * np.float32(2 / 255) - np.float32(1)
    assert table.size == 256 and int((shortcut != table).sum()) == 111


@pytest.mark.parametrize(
    "hw, ds",
    [pytest.param((97, 131), 1, id="raster-odd"), pytest.param((120, 200), 2, id="window-major"),
     pytest.param((300, 50), 2, id="window-major-tall")],
)
def test_pixels_match_transformers_pipeline(hw, ds):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    proc = PixelReferFastImageProcessor()
    out, grid = proc.process_image(image, downsampling=ds, num_images=1)
    size = proc.target_size(*hw, ds, 1)
    assert grid == (1, size[0] // 14, size[1] // 14)
    np.testing.assert_array_equal(out, reference_pixels(image, size, ds))


def test_window_major_order():
    proc = PixelReferFastImageProcessor()
    # Each 14x14 patch filled with its raster index (as a byte) in channel 0.
    gh, gw = 4, 6
    index = np.arange(gh * gw, dtype=np.uint8).reshape(gh, gw)
    image = np.zeros((gh * 14, gw * 14, 3), dtype=np.uint8)
    image[..., 0] = np.kron(index, np.ones((14, 14), dtype=np.uint8))
    raster = proc.patchify(image, 1)[:, 0]
    windowed = proc.patchify(image, 2)[:, 0]
    assert raster.tolist() == list(range(gh * gw))
    expected = [index[wy * 2 + dy, wx * 2 + dx] for wy in range(gh // 2) for wx in range(gw // 2)
                for dy in range(2) for dx in range(2)]
    assert windowed.tolist() == expected


@needs_demo
def test_real_photo_budget_and_parity():
    proc = PixelReferFastImageProcessor()
    image = load_image(demo_path("2.jpg"))
    assert image.shape == (1846, 3295, 3)
    out = proc.preprocess([image], downsampling=1)
    _, gh, gw = out.grid_thw[0].tolist()
    assert gh * gw <= 8192 and out.pixel_values.shape == (gh * gw, 588)
    np.testing.assert_array_equal(out.pixel_values.numpy(), reference_pixels(image, (gh * 14, gw * 14), 1))


def test_preprocess_packs_images():
    proc = PixelReferFastImageProcessor()
    images = [np.full((56, 84, 3), 10, np.uint8), np.full((70, 70, 3), 200, np.uint8)]
    out = proc.preprocess(images, downsampling=1)
    assert out.grid_thw.tolist() == [[1, 4, 6], [1, 5, 5]]
    assert out.pixel_values.shape == (24 + 25, 588) and out.pixel_values.dtype == torch.float32
    with pytest.raises(ValueError, match="downsampling"):
        proc.preprocess(images, downsampling=3)


def test_config_round_trip_and_official_overrides(tmp_path):
    official = {"image_processor_type": "DAMOVLImageProcessor", "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                "rescale_factor": 1 / 255, "patch_size": 14, "min_tokens": 16, "max_tokens": 16384, "resample": 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(official))
    (tmp_path / "config.json").write_text(json.dumps({"mm_max_length": 8192, "spatial_merge_size": 2}))
    proc = PixelReferFastImageProcessor.from_pretrained(tmp_path)
    assert (proc.min_pixels, proc.max_pixels, proc.merge_size) == (3136, 6_422_528, 2)
    (tmp_path / "config.json").write_text(json.dumps({"spatial_merge_size": 2}))
    assert PixelReferFastImageProcessor.from_pretrained(tmp_path).max_pixels == (9477 // 4) * 4 * 196
    custom = PixelReferFastImageProcessor(max_pixels=1_000_000, min_pixels=1000)
    saved = tmp_path / "saved"
    custom.save_pretrained(saved)
    again = PixelReferFastImageProcessor.from_pretrained(saved)
    assert again.to_dict() == custom.to_dict()
    assert PixelReferFastImageProcessor.from_pretrained(tmp_path / "missing").max_pixels == 6_422_528


def test_to_rgb_array_forms():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_array(rgb.transpose(2, 0, 1)), rgb)
    assert np.array_equal(to_rgb_array(torch.from_numpy(rgb)), rgb)
    assert np.array_equal(to_rgb_array(Image.fromarray(rgb)), rgb)
    assert to_rgb_array(rgb[..., 0]).shape == (20, 30, 3)
    assert np.array_equal(to_rgb_array(np.dstack([rgb, rgb[..., :1]])), rgb)
    assert to_rgb_array(Image.fromarray(rgb).convert("RGBA")).shape == (20, 30, 3)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        pytest.param(np.zeros((8, 8, 3), np.float32), TypeError, "uint8", id="float-array"),
        pytest.param(np.zeros((8, 8, 2), np.uint8), ValueError, "HxWx3", id="two-channels"),
        pytest.param(np.zeros((0, 8, 3), np.uint8), ValueError, "empty", id="empty"),
        pytest.param("not an image", TypeError, "PIL image", id="str-object"),
    ],
)
def test_to_rgb_array_errors(bad, error, match):
    with pytest.raises(error, match=match):
        to_rgb_array(bad)


def test_load_image_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match="junk.jpg"):
        load_image(junk)


def test_load_image_reads_png_and_gif(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png"), rgb)
    Image.fromarray(rgb).convert("P").save(tmp_path / "a.gif")
    assert load_image(str(tmp_path / "a.gif")).shape == (10, 12, 3)


def test_constructor_validation():
    with pytest.raises(ValueError, match="min_pixels"):
        PixelReferFastImageProcessor(min_pixels=0)
    with pytest.raises(ValueError, match="image_mean"):
        PixelReferFastImageProcessor(image_mean=(0.5, 0.5))
