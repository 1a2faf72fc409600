"""Mask inputs: every accepted form, the > 0 binarisation rule, COCO RLE decoding and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelrefer_fast.masks import box_to_mask, decode_rle, encode_rle, is_box, to_binary_mask


def encode_rle_string(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a mask, written from the format description (test helper).

    Runs alternate 0/1 starting with 0 over the column-major pixels; from the fourth run on, each
    run is stored as the difference to the run two places before; every number is written as
    5-bit little-endian groups (+48, bit 0x20 = more groups follow), sign-extended from bit 4.
    """
    runs = runs_of(mask)
    chars = []
    for i, run in enumerate(runs):
        value = run - runs[i - 2] if i > 2 else run
        while True:
            group = value & 0x1F
            value >>= 5
            last = value == -1 if group & 0x10 else value == 0
            chars.append(chr(group + 48 + (0 if last else 0x20)))
            if last:
                break
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}


def runs_of(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1)
    runs, current, length = [], 0, 0
    for value in flat.tolist():
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    return runs


def test_rle_hand_made_examples():
    # 4x4, counts [2, 3, 11]: column 0 rows 2-3 and column 1 row 0 are inside.
    expected = np.zeros((4, 4), np.uint8)
    expected[2:, 0] = 1
    expected[0, 1] = 1
    assert np.array_equal(decode_rle({"size": [4, 4], "counts": "23;"}), expected)
    assert np.array_equal(decode_rle({"size": [4, 4], "counts": [2, 3, 11]}), expected)
    # Delta coding (run 3 stored as 3 - 10 = -7 -> 'I') and a multi-group number (100 -> 'T3').
    assert decode_rle({"size": [4, 4], "counts": b"1:2I"}).T.reshape(-1).tolist() == [0] + [1] * 10 + [0] * 2 + [1] * 3
    assert int(decode_rle({"size": [10, 12], "counts": "T3::"}).sum()) == 10


@pytest.mark.parametrize("shape", [(37, 53), (1, 9), (64, 64)])
def test_rle_round_trip_random(shape):
    rng = np.random.default_rng(shape[0])
    mask = (rng.random(shape) < 0.3).astype(np.uint8)
    mask[: shape[0] // 2, : shape[1] // 3] = 1  # long runs -> multi-group numbers and negative deltas
    encoded = encode_rle_string(mask)
    assert np.array_equal(decode_rle(encoded), mask)
    assert np.array_equal(decode_rle({"size": list(shape), "counts": runs_of(mask)}), mask)
    assert np.array_equal(to_binary_mask(encoded, *shape), mask)


@pytest.mark.parametrize(
    "rle, match",
    [
        pytest.param({"counts": "23;"}, "'size' and 'counts'", id="no-size"),
        pytest.param({"size": [4, 4], "counts": [2, 3, 10]}, "add up", id="short-runs"),
        pytest.param({"size": [4, 4], "counts": [2, -3, 17]}, "non-negative", id="negative-run"),
        pytest.param({"size": [4, 4], "counts": "2\x7f"}, "invalid character", id="bad-char"),
        pytest.param({"size": [4, 4], "counts": "2h"}, "truncated", id="truncated"),
        pytest.param({"size": [4], "counts": "23;"}, "height, width", id="bad-size"),
        pytest.param({"size": [4, 4], "counts": 3.5}, "str, bytes or a list", id="bad-counts"),
    ],
)
def test_rle_errors(rle, match):
    with pytest.raises(ValueError, match=match):
        decode_rle(rle)


def test_array_forms_binarise_above_zero():
    base = np.zeros((6, 7), np.uint8)
    base[1:4, 2:6] = 1
    forms = [base.astype(bool), base * 255, base.astype(np.float32) * 0.3, base.astype(np.int64) * 7,
             torch.from_numpy(base * 255), torch.from_numpy(base).bool(), base.astype(np.float64)]
    for form in forms:
        out = to_binary_mask(form, 6, 7)
        assert out.dtype == np.uint8 and out.flags.c_contiguous and np.array_equal(out, base), type(form)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "I", "F"])
def test_pil_modes(mode):
    base = np.zeros((5, 8), np.uint8)
    base[2:4, 1:7] = 1
    image = Image.fromarray(base * 255).convert(mode)
    assert np.array_equal(to_binary_mask(image, 5, 8), base)


def test_pil_palette_uses_index():
    index = np.array([[0, 1, 2], [0, 0, 3]], np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette([0, 0, 0] * 256)  # every index black: the index, not the colour, decides
    assert to_binary_mask(image).tolist() == [[0, 1, 1], [0, 0, 1]]


def test_boxes():
    mask = box_to_mask((2, 1, 5, 3), 4, 6)
    expected = np.zeros((4, 6), np.uint8)
    expected[1:3, 2:5] = 1
    assert np.array_equal(mask, expected)
    assert np.array_equal(box_to_mask((1.6, 0.5, 4.5, 2.5), 4, 6), expected)  # rounded half up
    assert int(box_to_mask((-10, -10, 100, 100), 4, 6).sum()) == 24  # clipped
    assert np.array_equal(to_binary_mask(np.array([2, 1, 5, 3]), 4, 6), expected)
    assert np.array_equal(to_binary_mask(torch.tensor([2.0, 1.0, 5.0, 3.0]), 4, 6), expected)
    assert is_box([1, 2, 3, 4]) and not is_box([True, 1, 2, 3]) and not is_box(np.zeros((4, 4)))


@pytest.mark.parametrize(
    "box, match",
    [
        pytest.param((5, 1, 5, 3), "empty", id="zero-width"),
        pytest.param((4, 3, 2, 1), "empty", id="reversed"),
        pytest.param((10, 10, 20, 20), "outside", id="outside"),
        pytest.param((0, 0, float("nan"), 3), "finite", id="nan"),
    ],
)
def test_box_errors(box, match):
    with pytest.raises(ValueError, match=match):
        box_to_mask(box, 4, 6)


def test_box_needs_image_size():
    with pytest.raises(ValueError, match="image size"):
        to_binary_mask((0, 0, 2, 2))


@pytest.mark.parametrize(
    "mask, error, match",
    [
        pytest.param(np.zeros((2, 4, 4), np.uint8), ValueError, "2-D", id="3-D"),
        pytest.param(np.zeros(16, np.uint8), ValueError, "2-D", id="1-D"),
        pytest.param(np.full((4, 4), np.nan, np.float32), ValueError, "NaN", id="nan"),
        pytest.param(np.full((4, 4), np.inf), ValueError, "infinite", id="inf"),
        pytest.param(-np.ones((4, 4), np.int32), ValueError, "negative", id="negative"),
        pytest.param(np.zeros((4, 4), np.complex64), TypeError, "dtype", id="complex"),
        pytest.param(np.zeros((5, 4), np.uint8), ValueError, "differs from the image size", id="wrong-size"),
        pytest.param("mask.png", TypeError, "expected a 2-D", id="string"),
        pytest.param([[0, 1], [1, 0]], TypeError, "expected a 2-D", id="nested-list"),
    ],
)
def test_mask_errors(mask, error, match):
    with pytest.raises(error, match=match):
        to_binary_mask(mask, 4, 4, name="item 0, region 2")


def test_error_names_the_region():
    with pytest.raises(ValueError, match="item 3, region 1"):
        to_binary_mask(np.zeros((3, 3)), 4, 4, name="item 3, region 1")


@pytest.mark.parametrize("case", ["random", "inside-first", "empty", "full", "one-pixel"])
def test_encode_rle_gives_coco_runs(case):
    rng = np.random.default_rng(7)
    mask = (rng.random((23, 31)) < 0.4).astype(np.uint8)
    if case == "inside-first":
        mask[0, 0] = 1
    elif case == "empty":
        mask[:] = 0
    elif case == "full":
        mask[:] = 1
    elif case == "one-pixel":
        mask = np.ones((1, 1), np.uint8)
    encoded = encode_rle(mask * 255)  # any accepted form: inside = value > 0
    expected = runs_of(mask)
    assert encoded == {"size": list(mask.shape), "counts": expected}
    assert np.array_equal(decode_rle(encoded), mask)
    assert encode_rle(torch.from_numpy(mask.astype(bool))) == encoded


def test_encode_rle_refuses_what_is_not_one_mask():
    with pytest.raises(ValueError, match="2-D"):
        encode_rle(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="NaN|finite"):
        encode_rle(np.full((2, 3), np.nan))
