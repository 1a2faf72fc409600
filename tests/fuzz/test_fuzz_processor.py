"""Property-based fuzzing of the processor (hypothesis): images, masks, boxes, RLE, videos, placeholders.

Every accepted input must give a consistent batch (placeholders = regions, grids match pixel rows,
finite pixels); every rejected one a ValueError or TypeError that names what was wrong (the item, or
the argument). Inputs that are certainly invalid (NaN or negative masks, a placeholder count that
differs from the mask count, a bool frame id) must be rejected.

Bounded for CI by the shared settings of `tests/fuzz/conftest.py` (profile, `PIXELREFER_FUZZ_EXAMPLES`
examples per test, seed `PIXELREFER_FUZZ_SEED`, both printed at the start of the run); a failure
prints hypothesis' minimal (shrunk) example and its reproduction blob.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pixelrefer_fast.image_processing_pixelrefer_fast import PixelReferFastImageProcessor
from pixelrefer_fast.masks import decode_rle
from pixelrefer_fast.processing_pixelrefer_fast import REGION_PLACEHOLDER, PixelReferFastProcessor, PixelReferItem
from tests.model.fixtures import make_tiny_tokenizer
from tests.model.test_masks import runs_of

MASK_NUM = 4
SMALL_BUDGET = 64 * 14 * 14 * 4
ACCEPTED_ERRORS = (ValueError, TypeError)


@pytest.fixture(scope="module")
def processors():
    tokenizer = make_tiny_tokenizer()
    # a small pixel budget (64 merged tokens per image) keeps every example fast
    return {variant: PixelReferFastProcessor(tokenizer, PixelReferFastImageProcessor(max_pixels=SMALL_BUDGET),
                                             variant=variant, mask_num=MASK_NUM)
            for variant in ("full", "lite")}


# ------------------------------------------------------------------------------------------ checks
def check_batch(processor: PixelReferFastProcessor, batch, regions_per_item: list[int]) -> None:
    """The consistency every accepted batch must have."""
    ids, attention = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == attention.shape and ids.shape[0] == len(regions_per_item)
    region_tokens = (ids == processor.region_token_id) & attention.bool()
    image_tokens = (ids == processor.image_token_id) & attention.bool()
    counts = batch["region_token_counts"]
    regions = sum(regions_per_item)
    assert counts.shape == (regions,)
    assert batch["region_item"].tolist() == [b for b, n in enumerate(regions_per_item) for _ in range(n)]
    for b in range(len(regions_per_item)):
        assert int(region_tokens[b].sum()) == int(counts[batch["region_item"] == b].sum())
    for key in ("crop_grid_thw", "region_mask_hw", "region_boxes", "region_image_hw"):
        assert batch[key].shape[0] == regions, key
    crop_grid = batch["crop_grid_thw"]
    assert batch["crop_pixel_values"].shape == (int(crop_grid.prod(-1).sum()), 588)
    assert bool((batch["region_mask_hw"] >= 1).all())  # the mask grid may differ from the crop's (interpolated)
    assert batch["region_masks"].numel() == int(batch["region_mask_hw"].prod(-1).sum())
    pixel_keys = ["crop_pixel_values"]
    if processor.variant == "full":
        grid, merge = batch["image_grid_thw"], batch["image_merge_sizes"]
        assert batch["pixel_values"].shape == (int(grid.prod(-1).sum()), 588)
        merged = grid.prod(-1) // merge**2
        keep = batch.get("image_token_keep")
        announced = int(merged.sum()) if keep is None else int(keep.sum())
        assert keep is None or keep.shape == (int(merged.sum()),)
        assert int(image_tokens.sum()) == announced
        masks = batch["region_masks"].split(batch["region_mask_hw"].prod(-1).tolist())
        cells = torch.tensor([int((m > 0).sum()) for m in masks], dtype=torch.long)
        assert torch.equal(counts, cells.clamp(max=MASK_NUM))
        pixel_keys.append("pixel_values")
    else:
        assert int(image_tokens.sum()) == 0 and bool((counts == MASK_NUM).all())
        for view in ("global", "local"):
            grid = batch[f"{view}_grid_thw"]
            assert batch[f"{view}_pixel_values"].shape == (int(grid.prod(-1).sum()), 588)
            index = batch[f"region_{view}"]
            assert index.shape == (regions,) and bool(((index >= 0) & (index < grid.shape[0])).all())
            pixel_keys.append(f"{view}_pixel_values")
    for key in pixel_keys:
        assert bool(torch.isfinite(batch[key]).all()), key


def run(processor, item, regions_per_item: list[int], *, must_fail: str | None = None):
    """Call the processor; check the batch or the error. Returns the batch or None."""
    try:
        batch = processor(item)
    except ACCEPTED_ERRORS as exc:
        message = str(exc)
        assert message and ("item " in message or "images" in message), f"an error that names nothing: {exc!r}"
        return None
    assert must_fail is None, f"accepted although {must_fail}"
    check_batch(processor, batch, regions_per_item)
    return batch


# ------------------------------------------------------------------------------------------ strategies
sides = st.integers(min_value=1, max_value=96)


@st.composite
def images(draw):
    """Any image form a user may pass: arrays/tensors of many dtypes and layouts, PIL images of many modes."""
    height, width = draw(sides), draw(sides)
    if draw(st.integers(0, 9)) == 0:  # an extreme aspect ratio
        width = draw(st.integers(2000, 6000))
        height = draw(st.integers(1, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["hwc", "chw", "hw", "hw1", "hw4", "tensor", "float", "int16", "pil", "1d", "empty"]))
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "hwc":
        return rgb
    if kind == "chw":
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))
    if kind == "hw":
        return rgb[:, :, 0]
    if kind == "hw1":
        return rgb[:, :, :1]
    if kind == "hw4":
        return np.concatenate([rgb, rgb[:, :, :1]], axis=2)
    if kind == "tensor":
        return torch.from_numpy(rgb)
    if kind == "float":
        return rgb.astype(np.float32) / 255
    if kind == "int16":
        return rgb.astype(np.int16)
    if kind == "1d":
        return rgb.reshape(-1)
    if kind == "empty":
        return np.zeros((0, width, 3), np.uint8)
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1", "LA", "I;16", "I", "F", "CMYK"]))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16))
    if mode in ("I", "F"):
        return Image.fromarray(rgb[:, :, 0].astype(np.int32 if mode == "I" else np.float32) * 200, mode=mode)
    return Image.fromarray(rgb).convert(mode)


@st.composite
def masks_for(draw, height: int, width: int):
    """One mask entry and whether it is certainly invalid (a reason) or None."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["array", "array", "tensor", "box", "rle", "rle-string", "pil", "wrong-size",
                                 "nan", "negative", "pil-negative", "empty", "3d", "string"]))
    blob = (rng.random((height, width)) < draw(st.floats(0.02, 0.9))).astype(np.uint8)
    blob[rng.integers(0, height), rng.integers(0, width)] = 1  # never empty
    if kind == "array":
        dtype = draw(st.sampled_from([np.bool_, np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64]))
        scale = 255 if dtype in (np.uint8, np.int32, np.float32) and draw(st.booleans()) else 1
        return (blob * scale).astype(dtype), None
    if kind == "tensor":
        dtype = draw(st.sampled_from([torch.bool, torch.uint8, torch.float32, torch.bfloat16, torch.float16]))
        return torch.from_numpy(blob).to(dtype), None
    if kind == "box":
        x0, x1 = sorted(draw(st.integers(-20, width + 20)) for _ in range(2))
        y0, y1 = sorted(draw(st.integers(-20, height + 20)) for _ in range(2))
        as_float = draw(st.booleans())
        return tuple(float(v) + 0.25 if as_float else v for v in (x0, y0, x1, y1)), None
    if kind == "rle":
        flat = blob.T.reshape(-1)  # column-major, as COCO
        edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))  # run boundaries
        runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
        runs = runs[runs > 0] if flat[0] == 0 else np.concatenate([[0], runs[runs > 0]])
        return {"size": [height, width], "counts": runs.tolist()}, None
    if kind == "rle-string":
        text = draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=300), max_size=12))
        return {"size": draw(st.sampled_from([[height, width], [height + 1, width], None, ["a", "b"]])),
                "counts": text}, None
    if kind == "pil":
        mode = draw(st.sampled_from(["L", "1", "F", "RGB", "P", "I;16"]))
        if mode == "I;16":
            return Image.fromarray(blob.astype(np.uint16) * 1000), None
        return Image.fromarray(blob * 255).convert(mode), None
    if kind == "wrong-size":
        return np.ones((height + 1, width), np.uint8), "the mask size differs from the image"
    if kind == "nan":
        bad = blob.astype(np.float32)
        bad[0, 0] = np.nan
        return bad, "the mask has NaN"
    if kind == "negative":
        bad = blob.astype(np.float32)
        bad[0, 0] = -0.5
        return bad, "the mask has a negative value"
    if kind == "pil-negative":
        values = np.where(blob > 0, 1.0, -1.0).astype(np.float32)
        values[0, 0] = -1.0  # at least one negative value, also in a 1x1 image
        return Image.fromarray(values, mode="F"), "the mask has negative values"
    if kind == "empty":
        return np.zeros((height, width), np.uint8), None  # full: an error; Lite: accepted (placeholder)
    if kind == "3d":
        return np.repeat(blob[:, :, None], 3, axis=2), "an HxWx3 mask is not a 2-D mask"
    return "mask.png", "a string is not a mask"


# ------------------------------------------------------------------------------------------ properties
@given(image=images())
def test_fuzz_images(processors, image):
    """Any image, no regions, full model: a consistent batch, or a clear error."""
    batch = run(processors["full"], PixelReferItem(image=image, question="Describe the image."), [0])
    if batch is not None and isinstance(image, np.ndarray) and image.dtype != np.uint8:
        pytest.fail(f"a {image.dtype} array was accepted (uint8 only)")


@given(data=st.data(), variant=st.sampled_from(["full", "lite"]), height=st.integers(1, 80),
       width=st.integers(1, 80), count=st.integers(0, 4), placeholder_shift=st.sampled_from([0, 0, 0, -1, 1]),
       second_item=st.booleans())
def test_fuzz_masks_and_placeholders(processors, data, variant, height, width, count, placeholder_shift, second_item):
    """Masks of every form (some invalid) with a placeholder count that sometimes differs; sometimes a
    second (valid) item in the batch, so padding and per-item region counts are exercised."""
    drawn = [data.draw(masks_for(height, width)) for _ in range(count)]
    masks = [m for m, _ in drawn]
    placeholders = max(0, count + placeholder_shift)
    question = " and ".join([REGION_PLACEHOLDER] * placeholders) or "Describe."
    reasons = [reason for _, reason in drawn if reason]
    if placeholders != count:
        reasons.append("the placeholder count differs from the mask count")
    if variant == "lite" and count == 0:
        reasons.append("Lite needs a mask")
    image = np.random.default_rng(count).integers(0, 256, (height, width, 3), dtype=np.uint8)
    stackable = count and all(isinstance(m, np.ndarray) and m.shape == (height, width) for m in masks)
    if stackable and data.draw(st.booleans()):
        masks = np.stack(masks)  # an [R, H, W] stack instead of a list
    items, regions = [PixelReferItem(image=image, masks=masks, question=question)], [count]
    if second_item:
        other = np.random.default_rng(7).integers(0, 256, (40, 64, 3), dtype=np.uint8)
        items.append(PixelReferItem(image=other, masks=[(4, 6, 50, 30)], question="What is <region> here?"))
        regions.append(1)
    run(processors[variant], items, regions, must_fail="; ".join(reasons) or None)


@given(data=st.data(), variant=st.sampled_from(["full", "lite"]), frames=st.integers(1, 4), height=st.integers(14, 48),
       width=st.integers(14, 48))
def test_fuzz_video_frame_lists(processors, data, variant, frames, height, width):
    """Frame lists with frame ids, timestamps and frame rates of every kind (some invalid)."""
    rng = np.random.default_rng(frames * 1000 + height)
    video = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames)]
    frame_id = data.draw(st.one_of(st.integers(-1, frames), st.sampled_from([True, 1.0, "0", None])))
    timing = data.draw(st.sampled_from(["none", "timestamps", "frames_fps"]))
    reasons = []
    if frame_id is None or isinstance(frame_id, (bool, float, str)):
        reasons.append(f"frame id {frame_id!r} is not an int")
    elif not 0 <= frame_id < frames:
        reasons.append(f"frame id {frame_id} is out of range")
    kwargs = {}
    if timing == "timestamps":
        stamps = data.draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, min_value=None), min_size=frames,
                                    max_size=frames))
        kwargs["timestamps"] = stamps
        in_range = all(math.isfinite(t) and abs(t) <= 1e9 for t in stamps)
        if not in_range or any(b < a for a, b in zip(stamps, stamps[1:])):
            reasons.append("timestamps not finite, above 1e9 s or decreasing")
    elif timing == "frames_fps":
        rate = data.draw(st.sampled_from([0.0, -1.0, float("inf"), float("nan"), 0.5, 3.0, 30.0]))
        kwargs["frames_fps"] = rate
        if not (math.isfinite(rate) and rate > 0):
            reasons.append(f"frames_fps={rate}")
    mask = np.zeros((height, width), np.uint8)
    mask[2:height - 2, 3:width - 3] = 1
    item = PixelReferItem(video=video, masks=[mask], frame_ids=frame_id, question="Describe <region>.", **kwargs)
    batch = run(processors[variant], item, [1], must_fail="; ".join(reasons) or None)
    if batch is not None and variant == "full":
        assert batch["image_grid_thw"].shape[0] == frames and bool((batch["image_merge_sizes"] == 2).all())


@st.composite
def rle_dicts(draw):
    height, width = draw(st.integers(0, 12)), draw(st.integers(0, 12))
    kind = draw(st.sampled_from(["valid", "valid-list", "random-string", "random-list", "bad-size"]))
    if kind.startswith("valid"):
        import pycocotools.mask as coco

        mask = np.asfortranarray(np.asarray(draw(st.lists(st.booleans(), min_size=height * width,
                                                          max_size=height * width)), np.uint8).reshape(height, width))
        encoded = coco.encode(mask) if height and width else {"size": [height, width], "counts": b""}
        if kind == "valid":
            return {"size": [height, width], "counts": encoded["counts"]}, mask
        return {"size": [height, width], "counts": runs_of(mask)}, mask
    if kind == "random-string":
        return {"size": [height, width], "counts": draw(st.text(max_size=20))}, None
    if kind == "random-list":
        return {"size": [height, width], "counts": draw(st.lists(st.integers(-5, 200) | st.floats(), max_size=8))}, None
    return {"size": draw(st.sampled_from([None, [height], ["1", "2"], [1.5, 2], [-1, 3], [True, 2], 7])),
            "counts": [0]}, None


@given(rle=rle_dicts())
def test_fuzz_rle(rle):
    """Valid RLE decodes to pycocotools' mask; anything else is a ValueError naming the mask."""
    value, expected = rle
    try:
        decoded = decode_rle(value, name="fuzzed RLE")
    except ValueError as exc:
        assert expected is None, f"a valid RLE was refused: {exc}"
        assert "fuzzed RLE" in str(exc)
        return
    assert decoded.dtype == np.uint8 and decoded.shape == tuple(value["size"])
    assert set(np.unique(decoded).tolist()) <= {0, 1}
    if expected is not None:
        np.testing.assert_array_equal(decoded, expected)


@given(image=images(), wrap=st.sampled_from(["single", "list", "tuple", "batch"]))
def test_fuzz_preprocess_forms(image, wrap):
    """The image processor takes one image or a list in any accepted form, with the HWC result."""
    processor = PixelReferFastImageProcessor(max_pixels=SMALL_BUDGET)
    if wrap == "batch":
        if not isinstance(image, (np.ndarray, torch.Tensor)) or image.ndim != 3:
            return
        images_arg = image[None]
    else:
        images_arg = image if wrap == "single" else [image] if wrap == "list" else (image,)
    try:
        out = processor.preprocess(images_arg)
    except ACCEPTED_ERRORS as exc:
        assert "images" in str(exc), f"the error does not name the argument: {exc!r}"
        return
    assert out.grid_thw.shape == (1, 3)
    assert out.pixel_values.shape == (int(out.grid_thw.prod()), 588)
    assert bool(torch.isfinite(out.pixel_values).all())
