"""Scale-adaptive crops: the worked examples of docs/spec.md §3.1, parity quirks, empty and vanishing masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelrefer_fast.crops import (
    full_region_crop,
    full_scale,
    lite_global_view,
    lite_local_view,
    lite_region_crop,
    lite_scale,
    plan_lite_views,
)
from pixelrefer_fast.image_processing_pixelrefer_fast import load_image
from pixelrefer_fast.masks import to_binary_mask
from tests.model.fixtures import DEMO_DIR, box_mask, demo_path, disc_mask, ring_mask, textured, thin_band_mask

needs_demo = pytest.mark.skipif(not DEMO_DIR.is_dir(), reason="shared demo media not available")


@pytest.fixture(scope="module")
def photo2() -> np.ndarray:
    if not DEMO_DIR.is_dir():
        pytest.skip("shared demo media not available")
    return load_image(demo_path("2.jpg"))


# ------------------------------------------------------------------------ docs/spec.md §3.1 worked examples
def test_rectangle_100x80_on_640x480():
    image = textured(480, 640)
    crop = full_region_crop(image, box_mask(480, 640, 200, 250, 80, 100))
    assert crop.image.shape == (140, 168, 3) and crop.mask.shape == (10, 12)
    assert crop.box == (172, 222, 307, 377)  # 135 x 155 slice
    assert 32 < crop.mask.sum() <= 120 and crop.token_count == 32


def test_small_object_20x20_scales_by_4():
    image = textured(480, 640)
    mask = box_mask(480, 640, 200, 300, 20, 20)
    assert full_scale(400) == 4
    crop = full_region_crop(image, mask)
    assert crop.image.shape == (308, 308, 3) and crop.mask.shape == (22, 22)
    assert crop.token_count == 32 and crop.mask.sum() >= 32


def test_large_object_400x300_shrinks():
    image = textured(480, 640)
    crop = full_region_crop(image, box_mask(480, 640, 90, 120, 300, 400))
    assert full_scale(120_000) == pytest.approx(0.404145, abs=1e-6)
    assert crop.mask.shape == (11, 14) and crop.token_count == 32


def test_float32_scale_band_25x1024():
    """docs/spec.md §14.4: the float32 scale makes a 25 x 1024 band's crop 84 px high (70 in float64)."""
    image = textured(480, 1200)
    crop = full_region_crop(image, box_mask(480, 1200, 200, 80, 25, 1024))
    assert crop.image.shape[0] == 84
    assert full_scale(25 * 1024) == pytest.approx(0.8750000090, abs=1e-9)
    assert lite_scale(25 * 1024) == pytest.approx((130.6122448979592 / 50) ** -0.5, rel=1e-15)


def test_scale_rules_lite_threshold_50():
    assert lite_scale(60 * 196) < 1 and full_scale(60 * 196) == 1
    assert lite_scale(0) == 80 and lite_scale(400) == 4


# ------------------------------------------------------------------------ parity slicing
def test_full_crop_drops_last_row_and_column():
    image = textured(300, 700, seed=3)
    mask = box_mask(300, 700, 100, 100, 15, 463)  # crop 70 x 518: multiples of 14, s = 1 -> no resampling
    crop = full_region_crop(image, mask)
    top, left, bottom, right = crop.box
    assert (bottom - top, right - left) == (70, 518)
    assert np.array_equal(crop.image, image[top:bottom, left:right])  # end-exclusive on an inclusive box


def test_lite_crop_includes_last_row_and_column():
    image = textured(300, 700, seed=4)
    mask = box_mask(300, 700, 100, 100, 14, 476)  # crop 70 x 532, s = 1
    crop = lite_region_crop(image, mask)
    top, left, bottom, right = crop.box
    assert (bottom - top + 1, right - left + 1) == (70, 532)
    assert np.array_equal(crop.image, image[top:bottom + 1, left:right + 1])
    assert np.array_equal(crop.local_source, image[top:bottom + 1, left:right + 1])


def test_border_clipping():
    image = textured(100, 120)
    mask = box_mask(100, 120, 0, 0, 10, 10)
    full = full_region_crop(image, mask)
    lite = lite_region_crop(image, mask)
    assert full.box == (0, 0, 37, 37) and lite.box == (0, 0, 37, 37)
    mask = box_mask(100, 120, 90, 110, 10, 10)
    assert full_region_crop(image, mask).box == (62, 82, 99, 119)
    assert lite_region_crop(image, mask).box == (62, 82, 99, 119)


# ------------------------------------------------------------------------ mask grids and counts
def test_full_grid_mask_is_uint8_bilinear_and_binary():
    image = textured(480, 640)
    mask = disc_mask(480, 640, 240, 300, 37)
    crop = full_region_crop(image, mask)
    assert set(np.unique(crop.mask).tolist()) <= {0.0, 1.0}
    top, left, bottom, right = crop.box
    ref = F.interpolate(torch.from_numpy(mask[top:bottom, left:right].copy())[None, None], size=crop.mask.shape,
                        mode="bilinear", align_corners=False)[0, 0]
    assert np.array_equal(crop.mask, ref.float().numpy())
    assert crop.token_count == min(32, int((crop.mask > 0).sum()))


def test_lite_grid_mask_and_interpolation_choice():
    image = textured(480, 640, seed=5)
    big = box_mask(480, 640, 50, 60, 300, 400)  # shrinks -> INTER_AREA
    crop = lite_region_crop(image, big)
    top, left, bottom, right = crop.box
    source = image[top:bottom + 1, left:right + 1]
    h, w = crop.image.shape[:2]
    assert np.array_equal(crop.image, cv2.resize(source, (w, h), interpolation=cv2.INTER_AREA))
    grid = cv2.resize(big[top:bottom + 1, left:right + 1].astype(np.float32), (w // 14, h // 14),
                      interpolation=cv2.INTER_LINEAR)
    assert crop.mask.dtype == np.float32 and np.array_equal(crop.mask, grid)
    assert crop.token_count == 32
    small = lite_region_crop(image, disc_mask(480, 640, 200, 200, 5))  # grows -> INTER_LINEAR
    top, left, bottom, right = small.box
    h, w = small.image.shape[:2]
    assert np.array_equal(small.image, cv2.resize(image[top:bottom + 1, left:right + 1], (w, h),
                                                  interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("form", ["float", "bool", "u8-255"])
def test_mask_dtype_cannot_change_the_token_count(form):
    """docs/spec.md §10.10, §14.7: the official count breaks for float masks; we binarise to uint8 first."""
    image = textured(480, 640, seed=6)
    base = thin_band_mask(480, 640, 200, thickness=5, left=40, length=560)
    given = {"float": base.astype(np.float32), "bool": base.astype(bool), "u8-255": base * 255}[form]
    crop = full_region_crop(image, to_binary_mask(given, 480, 640))
    ref = full_region_crop(image, base)
    assert np.array_equal(crop.mask, ref.mask) and crop.token_count == ref.token_count
    assert crop.token_count == min(32, int((crop.mask > 0).sum()))


# ------------------------------------------------------------------------ empty and vanishing masks
def test_full_empty_mask_raises_naming_the_region():
    with pytest.raises(ValueError, match="item 2, region 5: the mask is empty"):
        full_region_crop(textured(50, 50), np.zeros((50, 50), np.uint8), name="item 2, region 5")


def test_full_tiny_image_raises():
    with pytest.raises(ValueError, match="too small"):
        full_region_crop(textured(1, 50), np.ones((1, 50), np.uint8))


def test_lite_empty_mask_placeholder():
    image = textured(60, 80)
    crop = lite_region_crop(image, np.zeros((60, 80), np.uint8))
    assert crop.image.shape == (14, 14, 3) and not crop.image.any()
    assert crop.mask.shape == (1, 1) and crop.mask.dtype == np.float32 and crop.mask[0, 0] == 0
    assert crop.box == (0, 0, 0, 0) and crop.token_count == 32 and crop.local_source is None
    assert crop.image_hw == (60, 80)


@needs_demo
def test_ring_mask_vanishes(photo2):
    """docs/spec.md §14.6: a 20 px border ring around the photo keeps no grid cell in either variant."""
    mask = ring_mask(*photo2.shape[:2], border=20)
    full = full_region_crop(photo2, mask)
    lite = lite_region_crop(photo2, mask)
    assert full.token_count == 0 and full.mask.sum() == 0
    assert (lite.mask > 0).sum() == 0 and lite.token_count == 32


def test_thin_band_flips_with_a_distant_pixel():
    """docs/spec.md §14.6: one far-away pixel moves the sampling grid; a 5 px band goes between 0 and many cells."""
    image = textured(600, 1500, seed=7)
    counts = set()
    for extra_row in range(230, 262):
        mask = thin_band_mask(600, 1500, 100, thickness=5, left=50, length=1400)
        mask[extra_row, 60] = 1
        counts.add(int(full_region_crop(image, mask).mask.sum()))
    assert 0 in counts and max(counts) >= 90


# ------------------------------------------------------------------------ Lite views and the reuse quirk
def test_lite_view_sizes():
    image = textured(90, 170)
    assert lite_global_view(image).shape == (336, 336, 3)
    assert lite_local_view(image[10:50, 20:90]).shape == (224, 224, 3)
    assert np.array_equal(lite_global_view(image), cv2.resize(image, (336, 336), interpolation=cv2.INTER_AREA))


def _crops(image, masks):
    return [lite_region_crop(image, m) for m in masks]


def test_reuse_first_local_crop_parity_and_corrected():
    image = textured(200, 300, seed=8)
    first, second = box_mask(200, 300, 10, 10, 40, 40), box_mask(200, 300, 120, 200, 50, 60)
    crops = _crops(image, [first, second])
    parity = plan_lite_views([0, 0], crops, {0: image})
    assert parity.region_local == [0, 0] and parity.region_global == [0, 0] and parity.global_keys == [0]
    assert parity.local_sources[0][1] is crops[0].local_source  # the 2nd mask sees the 1st crop
    fixed = plan_lite_views([0, 0], crops, {0: image}, reuse_first_local_crop=False)
    assert fixed.region_local == [0, 1] and fixed.local_sources[1][1] is crops[1].local_source
    # Different frames never share.
    other = plan_lite_views([3, 7], crops, {3: image, 7: image})
    assert other.region_local == [0, 1] and other.region_global == [0, 1] and other.global_keys == [3, 7]


def test_empty_mask_local_view_rules():
    image = textured(200, 300, seed=9)
    empty, full = np.zeros((200, 300), np.uint8), box_mask(200, 300, 50, 50, 40, 40)
    # Empty first: the whole frame is the local view of every mask on that image (docs/spec.md §14.2).
    plan = plan_lite_views([0, 0], _crops(image, [empty, full]), {0: image})
    assert plan.region_local == [0, 0] and plan.local_sources[0][1] is image
    # Empty second: it reuses the first mask's crop (parity) or gets the whole frame (corrected).
    crops = _crops(image, [full, empty])
    assert plan_lite_views([0, 0], crops, {0: image}).local_sources[0][1] is crops[0].local_source
    fixed = plan_lite_views([0, 0], crops, {0: image}, reuse_first_local_crop=False)
    assert fixed.local_sources[1][1] is image


@needs_demo
def test_real_photo_crops(photo2):
    height, width = photo2.shape[:2]
    small = disc_mask(height, width, 900, 1500, 3)  # ~29 px: upscaled
    big = box_mask(height, width, 200, 300, 1200, 2000)
    s_full, b_full = full_region_crop(photo2, small), full_region_crop(photo2, big)
    assert full_scale(int(small.sum())) >= 14 and s_full.image.shape[0] > 600
    assert b_full.mask.shape[0] * b_full.mask.shape[1] < 200 and b_full.token_count == 32
    s_lite = lite_region_crop(photo2, small)
    assert s_lite.image.shape[0] % 14 == 0 and s_lite.mask.shape == (s_lite.image.shape[0] // 14,
                                                                      s_lite.image.shape[1] // 14)
