"""Scale-adaptive region crops of PixelRefer (full) and PixelRefer-Lite (docs/spec.md §3, §14).

For each region mask (HxW uint8 {0, 1}, see `masks.py`) on its source image or video frame
(HxWx3 uint8 RGB) this computes the crop the vision encoder sees, the mask on the crop's patch
grid, the box and the number of `<REGION>` tokens the prompt reserves.

Full model (`full_region_crop`, official `pixelrefer/mm_utils.resize_image_mask`):
- box = (top, left, bottom, right) = mask extent +- 28 px, clipped to [0, H-1] x [0, W-1];
- **parity quirk:** the crop is `image[top:bottom, left:right]` (end-exclusive on an inclusive
  box: the last row and column are dropped);
- scale s = ceil(sqrt(196*K / A)) for small masks (A = mask area in pixels); if s == 1 and
  A/196 > 100 then s = 1/sqrt(A/19600). These run in **float32** as the official torch
  arithmetic does (docs/spec.md §14.4: a 25x1024 band gives an 84 px high crop, 70 in float64);
- crop resized to ceil(h*s/14)*14 x ceil(w*s/14)*14 with cv2 INTER_LINEAR; the mask resized
  straight to the patch grid with torch bilinear on **uint8** (rounded, so binary);
- tokens = min(K, cells); thin masks can vanish (0 cells -> 0 tokens, `[]` in the prompt);
- an empty mask is an error (the official code crashes; we raise a `ValueError` naming it).

Lite (`lite_region_crop`, official `pixelreferlite/mm_utils.resize_image_mask`):
- box from the inclusive mask extent +- 28 px; the crop **includes** the last row/column;
- large-object threshold 50 patches, float64 arithmetic; image resized with INTER_LINEAR when a
  side grows, else INTER_AREA; mask resized with cv2 INTER_LINEAR as float32 (fractional; the
  encoder takes > 0); tokens = K always;
- views per source image/frame: a 336x336 global view (INTER_AREA, aspect squashed) and a 224x224
  local view (INTER_AREA) of the crop at original resolution;
- **parity quirk** (the released weights were trained with it): the local view is cached per source image: every later mask on the same
  image/frame gets the FIRST mask's local view (`plan_lite_views(reuse_first_local_crop=True)`);
  `reuse_first_local_crop=False` gives each mask its own;
- empty mask: a 14x14 zero crop, a [1, 1] zero mask, box (0, 0, 0, 0), K tokens; its local view is
  the whole frame resized to 224 (with reuse: only when it is the first mask on its image, and
  then every later mask there shares it; docs/spec.md §14.2, §14.3).

All arithmetic is per region on the CPU with OpenCV/NumPy; no Python loops over pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable

import numpy as np
import torch
import torch.nn.functional as F

CONTEXT_PATCHES = 2  # the box is widened by 2 patches (28 px) on each side
FULL_LARGE_OBJECT_PATCHES = 100
LITE_LARGE_OBJECT_PATCHES = 50
LITE_GLOBAL_SIZE = 336
LITE_LOCAL_SIZE = 224


@dataclass
class RegionCrop:
    """One region's crop.

    Attributes:
        image: [h, w, 3] uint8, the resized crop (h, w multiples of the patch size).
        mask: [mh, mw] float32, the mask on the crop's patch grid (full: {0, 1}; Lite: fractional).
        box: (top, left, bottom, right) in source-image pixels (inclusive coordinates).
        image_hw: (H, W) of the source image/frame.
        token_count: `<REGION>` tokens reserved in the prompt.
        local_source: Lite only: the crop at original resolution (what the 224 local view is made
            from); None for an empty Lite mask and for the full model.
    """

    image: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int]
    image_hw: tuple[int, int]
    token_count: int
    local_source: np.ndarray | None = field(default=None, repr=False)


def _nonzero_extent(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(first_row, last_row, first_col, last_col) of the non-zero pixels, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def full_scale(area: int, patch_size: int = 14, mask_num: int = 32) -> float:
    """Crop scale factor of the full model for a mask of `area` pixels (float32 arithmetic).

    The official code divides torch int64 sums, which yields float32 tensors; the same operations
    on 0-d tensors reproduce its rounding exactly (docs/spec.md §14.4).
    """
    area_t = torch.tensor(int(area), dtype=torch.int64)
    patch_area = patch_size * patch_size
    scale: float = math.ceil(math.sqrt(patch_area * mask_num / area_t))
    if scale == 1:
        patches = area_t / patch_area  # float32
        if patches > FULL_LARGE_OBJECT_PATCHES:
            scale = 1 / math.sqrt(patches / FULL_LARGE_OBJECT_PATCHES)
    return scale


def lite_scale(area: int, patch_size: int = 14, mask_num: int = 32) -> float:
    """Crop scale factor of Lite (float64; the area is clamped to >= 1)."""
    patch_area = float(patch_size * patch_size)
    scale: float = math.ceil(math.sqrt(patch_area * mask_num / max(area, 1)))
    if scale == 1 and area / patch_area > LITE_LARGE_OBJECT_PATCHES:
        scale = 1.0 / math.sqrt((area / patch_area) / LITE_LARGE_OBJECT_PATCHES)
    return scale


def _scaled_side(side: int, scale: float, patch_size: int) -> int:
    return int(math.ceil(side * scale / patch_size) * patch_size)


def full_region_crop(image: np.ndarray, mask: np.ndarray, *, patch_size: int = 14, mask_num: int = 32,
                     name: str = "region") -> RegionCrop:
    """The full model's crop of one region (module docstring).

    Args:
        image: [H, W, 3] uint8 RGB source image or frame.
        mask: [H, W] uint8 {0, 1}.
        patch_size, mask_num: 14 and the config's `mask_num` (K = 32).
        name: used in error messages.

    Returns:
        `RegionCrop` with a {0, 1} float32 grid mask and `token_count = min(K, cells)`.

    Raises:
        ValueError: an all-zero mask, or a source image too small to crop (1 px high or wide).
    """
    import cv2

    height, width = mask.shape
    extent = _nonzero_extent(mask)
    if extent is None:
        raise ValueError(f"{name}: the mask is empty (all zero); the full PixelRefer model cannot encode an "
                         "empty region (the official code crashes on it). Remove it or give a non-empty mask")
    r0, r1, c0, c1 = extent
    pad = CONTEXT_PATCHES * patch_size
    top, left = max(0, r0 - pad), max(0, c0 - pad)
    bottom, right = min(height - 1, r1 + pad), min(width - 1, c1 + pad)
    crop_h, crop_w = bottom - top, right - left
    if crop_h == 0 or crop_w == 0:
        raise ValueError(f"{name}: the source image ({height}x{width}) is too small to crop "
                         "(the official crop drops the last row and column)")
    # Parity: end-exclusive slice of an inclusive box (drops the last row/column).
    crop = image[top:bottom, left:right]
    crop_mask = mask[top:bottom, left:right]

    scale = full_scale(int(mask.sum(dtype=np.int64)), patch_size, mask_num)
    out_h, out_w = _scaled_side(crop_h, scale, patch_size), _scaled_side(crop_w, scale, patch_size)
    resized = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    grid = F.interpolate(torch.from_numpy(np.ascontiguousarray(crop_mask))[None, None],
                         size=(out_h // patch_size, out_w // patch_size), mode="bilinear",
                         align_corners=False)[0, 0]  # uint8, rounded
    cells = int(grid.sum())
    return RegionCrop(image=resized, mask=grid.to(torch.float32).numpy(), box=(top, left, bottom, right),
                      image_hw=(height, width), token_count=min(mask_num, cells))


def lite_region_crop(image: np.ndarray, mask: np.ndarray, *, patch_size: int = 14, mask_num: int = 32) -> RegionCrop:
    """Lite's crop of one region (module docstring); an empty mask gives the official placeholder.

    Args:
        image: [H, W, 3] uint8 RGB; mask: [H, W] uint8 {0, 1}.

    Returns:
        `RegionCrop` with a fractional float32 grid mask, `token_count = mask_num` and
        `local_source` = the crop at original resolution (None for an empty mask).
    """
    import cv2

    height, width = mask.shape
    extent = _nonzero_extent(mask)
    if extent is None:
        return RegionCrop(image=np.zeros((patch_size, patch_size, image.shape[2]), dtype=image.dtype),
                          mask=np.zeros((1, 1), dtype=np.float32), box=(0, 0, 0, 0),
                          image_hw=(height, width), token_count=mask_num, local_source=None)
    r0, r1, c0, c1 = extent
    pad = CONTEXT_PATCHES * patch_size
    top, left = max(0, r0 - pad), max(0, c0 - pad)
    bottom_excl, right_excl = min(height, r1 + 1 + pad), min(width, c1 + 1 + pad)
    box = (top, left, min(height - 1, bottom_excl - 1), min(width - 1, right_excl - 1))
    crop_h, crop_w = bottom_excl - top, right_excl - left
    crop = image[top:bottom_excl, left:right_excl]
    crop_mask = mask[top:bottom_excl, left:right_excl]

    scale = lite_scale(int(mask.sum(dtype=np.int64)), patch_size, mask_num)
    out_h, out_w = _scaled_side(crop_h, scale, patch_size), _scaled_side(crop_w, scale, patch_size)
    grows = out_h >= crop_h or out_w >= crop_w
    resized = cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_LINEAR if grows else cv2.INTER_AREA)
    grid = cv2.resize(crop_mask.astype(np.float32), (out_w // patch_size, out_h // patch_size),
                      interpolation=cv2.INTER_LINEAR)
    return RegionCrop(image=resized, mask=grid, box=box, image_hw=(height, width), token_count=mask_num,
                      local_source=crop)


def lite_global_view(image: np.ndarray, size: int = LITE_GLOBAL_SIZE) -> np.ndarray:
    """The Lite global view: the whole image squashed to size x size with INTER_AREA."""
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def lite_local_view(source: np.ndarray, size: int = LITE_LOCAL_SIZE) -> np.ndarray:
    """The Lite local view: a crop (or a whole frame) squashed to size x size with INTER_AREA."""
    import cv2

    return cv2.resize(source, (size, size), interpolation=cv2.INTER_AREA)


@dataclass
class LiteViewPlan:
    """Which global/local view each region uses (indices into the two view lists).

    Attributes:
        global_keys: the distinct source keys, in first-use order (one global view each).
        region_global: [R] index into `global_keys`.
        local_sources: [L] (key, source array) per local view to build, in order.
        region_local: [R] index into `local_sources`.
    """

    global_keys: list[Hashable]
    region_global: list[int]
    local_sources: list[tuple[Hashable, np.ndarray]]
    region_local: list[int]


def plan_lite_views(keys: list[Hashable], crops: list[RegionCrop], frames: dict[Hashable, np.ndarray], *,
                    reuse_first_local_crop: bool = True) -> LiteViewPlan:
    """Assign global and local views to the regions of one item (module docstring).

    Args:
        keys: [R] the source image/frame key of each region, in region order.
        crops: [R] the regions' `lite_region_crop` results.
        frames: key -> full-resolution source image (used for empty masks' local views).
        reuse_first_local_crop: True = official parity (later masks on an image reuse the first
            mask's local view); False = every region gets the local view of its own crop.

    Returns:
        `LiteViewPlan`; the global views are one per distinct key (the official code encodes the
        same 336 view once per mask; the features are identical, so one suffices).
    """
    global_index: dict[Hashable, int] = {}
    local_index: dict[Hashable, int] = {}
    plan = LiteViewPlan(global_keys=[], region_global=[], local_sources=[], region_local=[])
    for key, crop in zip(keys, crops):
        if key not in global_index:
            global_index[key] = len(plan.global_keys)
            plan.global_keys.append(key)
        plan.region_global.append(global_index[key])
        source = crop.local_source if crop.local_source is not None else frames[key]
        if reuse_first_local_crop:
            if key not in local_index:
                local_index[key] = len(plan.local_sources)
                plan.local_sources.append((key, source))
            plan.region_local.append(local_index[key])
        else:
            plan.region_local.append(len(plan.local_sources))
            plan.local_sources.append((key, source))
    return plan
