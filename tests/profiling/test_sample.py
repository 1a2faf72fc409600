"""The built-in profiling sample: deterministic, binary masks, and objects that exercise the crop rules."""

from __future__ import annotations

import numpy as np
import pytest

from pixelrefer_fast.crops import full_scale, lite_scale
from pixelrefer_fast.profiling.sample import FRAME_SHIFT_PX, sample_scene, sample_video


def test_same_arguments_same_pixels():
    a, b = sample_scene(5, 320, 240, seed=3), sample_scene(5, 320, 240, seed=3)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.frames, sample_scene(5, 320, 240, seed=4).frames)


def test_shapes_dtypes_and_sizes():
    scene = sample_scene(4, 640, 480)
    assert scene.frames.shape == (1, 480, 640, 3) and scene.frames.dtype == np.uint8
    assert scene.masks.shape == (4, 480, 640) and scene.masks.dtype == np.uint8
    assert set(np.unique(scene.masks)) == {0, 1}
    assert scene.sizes == ("medium", "small", "large", "medium")
    assert scene.mask_frames == (0, 0, 0, 0)


def test_objects_exercise_the_crop_scale_rules():
    """small: enlarged (s >= 2); medium: native in the full model; large: shrunk (full and Lite)."""
    scene = sample_scene(3)
    areas = dict(zip(scene.sizes, scene.masks.reshape(3, -1).sum(1).tolist()))
    assert full_scale(areas["small"]) >= 2 and lite_scale(areas["small"]) >= 2
    assert full_scale(areas["medium"]) == 1
    assert full_scale(areas["large"]) < 1 and lite_scale(areas["large"]) < 1


def test_video_frames_move_and_masks_follow():
    video = sample_video(3, 2, 320, 240)
    assert video.frames.shape == (3, 240, 320, 3)
    assert not np.array_equal(video.frames[0], video.frames[2])
    moved = video.masks_at(2)
    assert np.array_equal(moved[:, :, 2 * FRAME_SHIFT_PX :], video.masks[:, :, : -2 * FRAME_SHIFT_PX])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"num_regions": 0}, "num_regions", id="no-regions"),
        pytest.param({"width": 40}, "width must be an integer >= 56", id="too-narrow"),
        pytest.param({"height": 100.5}, "height", id="float-height"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_scene(**kwargs)
