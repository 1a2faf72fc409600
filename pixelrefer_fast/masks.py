"""Region mask inputs: every accepted form -> one HxW uint8 {0, 1} array.

Accepted forms (`to_binary_mask`):

- numpy arrays and torch tensors, 2-D HxW, dtype bool, any integer or any float;
- PIL images: mode "1", "L", "P" (palette index; index 0 is background, as in VOC/DAVIS
  annotations), "I", "F", "RGB", "RGBA", "LA", ... (multi-channel: inside where any colour channel
  is non-zero; alpha is ignored: convert to "L" first to choose another channel);
- COCO RLE dicts `{"size": [h, w], "counts": str | bytes | list[int]}`: compressed (string) and
  uncompressed (list of run lengths) counts, column-major as COCO (`decode_rle`, our own decoder;
  `encode_rle` writes the uncompressed form);
- boxes `(x0, y0, x1, y1)` in pixels, end-exclusive (`box_to_mask`).

**Binarisation rule: a pixel is inside the region iff its value is > 0.** So a 0/255 mask, a 0/1
mask and a bool mask mean the same thing. A soft (probability) mask counts every positive pixel:
threshold it yourself first (e.g. `prob > 0.5`). Negative, NaN or infinite values are errors.

Why uint8 {0, 1}: the full model's official crop step tests `mask == 1` and resizes the uint8 mask
with torch bilinear (which rounds, so the resized mask stays binary and the prompt's region-token
count `min(K, sum)` equals the number of cells the encoder selects). Handing that step a float or
0/255 mask breaks the count (docs/spec.md §10.10, §14.7). Every mask leaves this module as uint8 {0, 1},
so the hazard cannot occur.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .image_processing_pixelrefer_fast import MAX_IMAGE_PIXELS


def encode_rle(mask: Any) -> dict:
    """A mask (any form `to_binary_mask` takes with its own size: an array, tensor or PIL image) as an
    uncompressed COCO RLE `{"size": [h, w], "counts": [runs]}`: column-major run lengths, starting with
    background (a leading 0 when the first pixel is inside). `decode_rle` inverts it.

    Raises:
        ValueError / TypeError: what `to_binary_mask` refuses (not 2-D, NaN, negative values, ...).
    """
    if isinstance(mask, Image.Image):
        height, width = mask.height, mask.width
    else:
        shape = tuple(np.shape(mask))
        if len(shape) != 2:
            raise ValueError(f"mask: expected a 2-D mask to encode, got shape {shape}")
        height, width = shape
    flat = to_binary_mask(mask, height, width).T.reshape(-1)  # column-major, as COCO
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": [int(height), int(width)], "counts": [0, *runs] if flat.size and flat[0] else runs}


def decode_rle(rle: Mapping[str, Any], height: int | None = None, width: int | None = None, *,
               name: str = "mask") -> np.ndarray:
    """Decode a COCO run-length encoding to an HxW uint8 {0, 1} mask.

    Args:
        rle: `{"size": [h, w], "counts": ...}`. `counts` is either the compressed COCO string
            (ASCII str or bytes; 6-bit chunks offset by 48, runs after the second stored as deltas
            to the run two places before) or the uncompressed list of run lengths. Runs alternate
            0, 1, 0, ... starting with background and walk the pixels in column-major order.
        height, width: the image size, when known: a different `size` is refused before anything
            is decoded.

    Returns:
        [h, w] uint8, C-contiguous.

    Raises:
        ValueError: missing keys, bad sizes (not two non-negative ints, not the image's, above
            `MAX_IMAGE_PIXELS`), a non-ASCII or malformed counts string, negative runs, or runs
            that do not add up to h*w.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        keys = sorted(map(str, rle)) if isinstance(rle, Mapping) else type(rle).__name__
        raise ValueError(f"{name}: a COCO RLE dict needs 'size' and 'counts', got {keys}")
    size = rle["size"]
    if (isinstance(size, (str, bytes)) or not isinstance(size, (Sequence, np.ndarray)) or len(size) != 2
            or not all(_is_int(v) and v >= 0 for v in size)):
        raise ValueError(f"{name}: RLE 'size' must be [height, width], two non-negative ints, got {size!r}")
    rle_height, rle_width = int(size[0]), int(size[1])
    if height is not None and width is not None and (rle_height, rle_width) != (height, width):
        raise ValueError(f"{name}: RLE size {rle_height}x{rle_width} (HxW) differs from the image size "
                         f"{height}x{width}")
    if rle_height * rle_width > MAX_IMAGE_PIXELS:
        raise ValueError(f"{name}: RLE size {rle_height}x{rle_width} is above the limit of MAX_IMAGE_PIXELS = "
                         f"{MAX_IMAGE_PIXELS} pixels")
    total = rle_height * rle_width
    counts = rle["counts"]
    if isinstance(counts, str):
        if not counts.isascii():
            raise ValueError(f"{name}: a compressed RLE 'counts' string must be ASCII (characters 48-111)")
        runs = _rle_counts_from_string(counts.encode("ascii"), total, name)
    elif isinstance(counts, bytes):
        runs = _rle_counts_from_string(counts, total, name)
    elif isinstance(counts, (list, tuple, np.ndarray)):
        if not all(_is_int(v) for v in np.asarray(counts, dtype=object).reshape(-1)):
            raise ValueError(f"{name}: uncompressed RLE 'counts' must be a list of ints")
        values = [int(v) for v in np.asarray(counts, dtype=object).reshape(-1)]
        if any(v < 0 or v > total for v in values):
            raise ValueError(f"{name}: RLE counts must be non-negative run lengths of at most h*w = {total}")
        runs = np.asarray(values, dtype=np.int64)
    else:
        raise ValueError(f"{name}: RLE 'counts' must be a str, bytes or a list of ints, got {type(counts).__name__}")
    if (runs < 0).any():
        raise ValueError(f"{name}: RLE counts must be non-negative")
    if int(runs.sum()) != total:
        raise ValueError(f"{name}: RLE counts add up to {int(runs.sum())} pixels, but size {rle_height}x{rle_width} "
                         f"has {total}")
    values = (np.arange(runs.size) % 2).astype(np.uint8)
    flat = np.repeat(values, runs)
    return np.ascontiguousarray(flat.reshape(rle_width, rle_height).T)  # column-major, as COCO


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _rle_counts_from_string(data: bytes, total: int, name: str) -> np.ndarray:
    """Runs of a compressed COCO counts string; every run is checked against `total` (h*w) as it is read."""
    counts: list[int] = []
    pos = 0
    while pos < len(data):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(data):
                raise ValueError(f"{name}: truncated compressed RLE string")
            chunk = data[pos] - 48
            if not 0 <= chunk < 64:
                raise ValueError(f"{name}: invalid character {chr(data[pos])!r} in a compressed RLE string "
                                 "(accepted: characters 48-111)")
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            pos += 1
            shift += 5
            if more and shift > 40:
                raise ValueError(f"{name}: a run of the compressed RLE string overflows (more than 8 chunks)")
            if not more and chunk & 0x10:
                value -= 1 << shift  # sign-extend the last 5-bit group
        if len(counts) > 2:
            value += counts[-2]
        if not 0 <= value <= total:
            raise ValueError(f"{name}: compressed RLE run {len(counts)} is {value}, outside [0, {total}] (h*w)")
        counts.append(value)
    return np.asarray(counts, dtype=np.int64)


def box_to_mask(box: Sequence[float], height: int, width: int, *, name: str = "box") -> np.ndarray:
    """Rasterise a box `(x0, y0, x1, y1)` (pixels, x1/y1 exclusive) into an HxW uint8 {0, 1} mask.

    Float corners are rounded half up (`floor(v + 0.5)`), then clipped to the image.

    Raises:
        ValueError: not 4 finite numbers, x1 <= x0 or y1 <= y0, or a box outside the image.
    """
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.size != 4 or not np.isfinite(values).all():
        raise ValueError(f"{name}: a box must be 4 finite numbers (x0, y0, x1, y1), got {list(box)!r}")
    x0, y0, x1, y1 = (int(np.floor(v + 0.5)) for v in values)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{name}: box {tuple(values.tolist())} is empty; expected x0 < x1 and y0 < y1 "
                         "(pixel corners, end-exclusive)")
    top, bottom = max(0, y0), min(height, y1)
    left, right = max(0, x0), min(width, x1)
    if top >= bottom or left >= right:
        raise ValueError(f"{name}: box {tuple(values.tolist())} lies outside the {width}x{height} image")
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def is_box(value: Any) -> bool:
    """True for a flat sequence / 1-D array / 1-D tensor of 4 numbers (a box, not a mask)."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.ndim == 1 and value.shape[0] == 4
    if isinstance(value, (list, tuple)) and len(value) == 4:
        return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value)
    return False


def to_binary_mask(mask: Any, height: int | None = None, width: int | None = None, *, name: str = "mask") -> np.ndarray:
    """Convert any accepted mask form (module docstring) to an HxW uint8 {0, 1} array.

    Args:
        mask: array / tensor / PIL image / COCO RLE dict / box.
        height, width: the image size; required for boxes, and when given every other form must
            have exactly this size.
        name: used in error messages (e.g. "item 0, region 1").

    Returns:
        [H, W] uint8 with values {0, 1} (inside iff the input value > 0).

    Raises:
        TypeError: an unsupported type or dtype (complex, object, string).
        ValueError: not 2-D, NaN/inf or negative values, a size different from (height, width),
            or an invalid RLE/box.
    """
    if isinstance(mask, Mapping):
        binary = decode_rle(mask, height, width, name=name)
    elif is_box(mask):
        if height is None or width is None:
            raise ValueError(f"{name}: a box needs the image size to become a mask")
        return box_to_mask(mask.tolist() if hasattr(mask, "tolist") else mask, height, width, name=name)
    elif isinstance(mask, Image.Image):
        mask_width, mask_height = mask.size
        if mask_height * mask_width > MAX_IMAGE_PIXELS:
            raise ValueError(f"{name}: the mask image is {mask_height}x{mask_width}, above the limit of "
                             f"MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} pixels")
        if height is not None and width is not None and (mask_height, mask_width) != (height, width):
            raise ValueError(f"{name}: mask size {mask_height}x{mask_width} (HxW) differs from the image size "
                             f"{height}x{width}")
        array = np.asarray(mask)
        if array.ndim == 3:
            bands = mask.getbands()
            colour = [i for i, band in enumerate(bands) if band != "A"] or list(range(len(bands)))
            binary = (array[:, :, colour] > 0).any(axis=2).astype(np.uint8)
        else:  # "1", "L", "P", "I", "I;16", "F": negative or NaN values are refused as for arrays
            binary = _array_to_binary(array, name)
    elif isinstance(mask, (np.ndarray, torch.Tensor)):
        binary = _array_to_binary(mask, name)
    else:
        raise TypeError(
            f"{name}: expected a 2-D numpy array or torch tensor, a PIL image, a COCO RLE dict or a box "
            f"(x0, y0, x1, y1), got {type(mask).__name__}"
        )
    if height is not None and width is not None and binary.shape != (height, width):
        hint = " (an (R, 4) array of boxes? pass it as the item's `masks` itself)" if binary.shape[1] == 4 else ""
        raise ValueError(f"{name}: mask size {binary.shape[0]}x{binary.shape[1]} (HxW) differs from the image "
                         f"size {height}x{width}{hint}")
    return binary


def _array_to_binary(mask: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        if mask.is_floating_point() and mask.dtype not in (torch.float16, torch.float32, torch.float64):
            mask = mask.float()  # bf16 / fp8 have no numpy dtype; float32 holds them exactly
        array = mask.detach().cpu().numpy()
    else:
        array = mask
    if array.ndim != 2:
        hint = ""
        if array.ndim == 3:
            hint = (" (an HxWxC mask image: take one channel, e.g. mask[..., 0])" if array.shape[-1] in (1, 3, 4)
                    else " (pass one mask per region, e.g. masks[0])")
        raise ValueError(f"{name}: a mask must be 2-D (H, W), got shape {tuple(array.shape)}{hint}")
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: the mask has NaN or infinite values")
    elif not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: unsupported mask dtype {array.dtype} (use bool, integer or float)")
    if array.size and array.min() < 0:
        raise ValueError(f"{name}: the mask has negative values (min {array.min()}); values > 0 mean inside")
    return (array > 0).astype(np.uint8)
