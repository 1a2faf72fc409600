"""Video: ffmpeg-fps sampling (checked against libavfilter), timestamps, decoding, token pruning."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from pixelrefer_fast.image_processing_pixelrefer_fast import PixelReferFastImageProcessor
from pixelrefer_fast.video import (
    decode_frames,
    fps_sample_indices,
    frame_token_keep,
    load_video,
    load_video_frames,
    official_timestamps,
    probe_video,
    uniform_subsample,
)
from tests.model.fixtures import DEMO_DIR, demo_path

av = pytest.importorskip("av")
needs_demo = pytest.mark.skipif(not DEMO_DIR.is_dir(), reason="shared demo media not available")
VIDEO = demo_path("1.mp4")


def libavfilter_fps_indices(path, fps: str) -> list[int]:
    """Source indices chosen by libavfilter's own `fps=...:round=down` filter (through PyAV)."""
    planes, picked = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        source = graph.add_buffer(template=stream)
        fps_filter = graph.add("fps", f"fps={fps}:round=down")
        sink = graph.add("buffersink")
        source.link_to(fps_filter)
        fps_filter.link_to(sink)
        graph.configure()

        def drain():
            while True:
                try:
                    picked.append(bytes(graph.pull().planes[0]))
                except (av.error.BlockingIOError, av.error.EOFError):
                    return

        for frame in container.decode(stream):
            planes.append(bytes(frame.planes[0]))
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
    lookup: dict[bytes, int] = {}
    for index, plane in enumerate(planes):
        lookup[plane] = index  # frames are distinct in this clip
    return [lookup[p] for p in picked]


@pytest.fixture(scope="module")
def info():
    if not DEMO_DIR.is_dir():
        pytest.skip("shared demo media not available")
    return probe_video(VIDEO)


@needs_demo
def test_probe(info):
    assert info.num_frames == 150 and info.avg_fps == pytest.approx(30000 / 1001)
    assert info.end_time == Fraction(150 * 1001, 30000) and info.duration == pytest.approx(5.005, abs=1e-3)


@needs_demo
@pytest.mark.parametrize("fps", ["1", "4", "0.5", "2.5"])
def test_fps_sampling_matches_libavfilter(info, fps):
    ours = fps_sample_indices(info.frame_times, info.end_time, float(fps)).tolist()
    assert ours == libavfilter_fps_indices(VIDEO, fps)


def test_fps_sampling_rule_synthetic():
    times = [Fraction(k, 10) for k in range(25)]  # 10 fps for 2.5 s
    assert fps_sample_indices(times, Fraction(25, 10), 1).tolist() == [9, 19]  # last frame of each second
    gappy = [Fraction(0), Fraction(1, 10), Fraction(33, 10)]  # a gap: the last frame before it repeats
    assert fps_sample_indices(gappy, Fraction(34, 10), 1).tolist() == [1, 1, 1]  # slot 3 is past the end
    assert fps_sample_indices(gappy, Fraction(4), 1).tolist() == [1, 1, 1, 2]
    assert fps_sample_indices(times, Fraction(5, 10), 1).size == 0
    with pytest.raises(ValueError, match="fps"):
        fps_sample_indices(times, Fraction(1), 0)


def test_official_timestamps_and_subsampling():
    assert [float(t) for t in official_timestamps(0.0, 5.005011, 1, 5)] == [0, 1, 2, 3, 4]
    stamps = official_timestamps(0.0, 5.005011, 4, 20)
    assert isinstance(stamps[0], np.float64) and float(stamps[-1]) == pytest.approx(4.75)
    assert len(official_timestamps(0.0, 1.0, 1, 4)) == 4  # continued past the arange
    assert uniform_subsample(5, 768).tolist() == [0, 1, 2, 3, 4]
    assert uniform_subsample(20, 7).tolist() == np.linspace(0, 19, 7, dtype=int).tolist()


@needs_demo
def test_load_video_full_model(info):
    video = load_video(VIDEO, fps=1, frame_ids=[10, 149])
    assert video.frame_indices == [29, 59, 89, 119, 149]
    assert [float(t) for t in video.timestamps] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(f.shape == (720, 1280, 3) and f.dtype == np.uint8 for f in video.frames)
    direct = decode_frames(VIDEO, [10, 59])
    assert np.array_equal(video.region_frames[10], direct[10]) and np.array_equal(video.frames[1], direct[59])
    capped = load_video(VIDEO, fps=4, max_frames=7)
    all_slots = fps_sample_indices(info.frame_times, info.end_time, 4)
    assert capped.frame_indices == all_slots[np.linspace(0, 19, 7, dtype=int)].tolist()
    assert [float(t) for t in capped.timestamps] == [0.25 * i for i in np.linspace(0, 19, 7, dtype=int)]


@needs_demo
def test_load_video_frames_lite():
    frames, times = load_video_frames(VIDEO, [0, 45, 100])
    assert sorted(frames) == [0, 45, 100] and frames[45].shape == (720, 1280, 3)
    assert times[45] == pytest.approx(45 * 1001 / 30000) and round(times[45], 1) == 1.5


@needs_demo
def test_video_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="junk.mp4"):
        probe_video(junk)
    with pytest.raises(ValueError, match="out of range"):
        load_video(VIDEO, frame_ids=[150])
    with pytest.raises(ValueError, match="out of range"):
        load_video_frames(VIDEO, [-1])
    with pytest.raises(ValueError, match="beyond the end"):
        decode_frames(VIDEO, [151])


# ------------------------------------------------------------------------ token pruning
def _frames_pixels(frames):
    proc = PixelReferFastImageProcessor()
    out = proc.preprocess(frames, downsampling=2)
    _, gh, gw = out.grid_thw[0].tolist()
    return out.pixel_values, (gh, gw)


def reference_keep(pixel_values, n, grid_hw):
    """Straight from docs/spec.md §8: bf16 pixels, mean|diff|*255 > 0.1, frame 0 whole, >= 1 token per frame."""
    gh, gw = grid_hw
    p = pixel_values.to(torch.bfloat16).reshape(n, (gh // 2) * (gw // 2), -1)
    keep = torch.ones(n, p.shape[1], dtype=torch.bool)
    for t in range(1, n):
        d = (p[t] - p[t - 1]).abs().mean(dim=-1) * 255
        keep[t] = d > 0.1
        if not keep[t].any():
            keep[t, 0] = True
    return keep.flatten()


def test_token_pruning_semantics():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)  # 4x6 patches -> 2x3 merged tokens
    moved = base.copy()
    moved[28:56, 0:28] = 255 - moved[28:56, 0:28]  # one merged token changes
    nudged = moved.copy()
    nudged[0, 0, 0] ^= 1  # one value by one level: mean|diff|*255 ~ 0.0009 -> pruned
    frames = [base, base.copy(), moved, nudged]
    pixels, grid = _frames_pixels(frames)
    assert grid == (4, 6)
    keep = frame_token_keep(pixels, 4, grid)
    assert keep.shape == (4 * 6,) and keep.dtype == torch.bool
    per_frame = keep.view(4, 6)
    assert per_frame[0].all()  # frame 0 whole
    assert per_frame[1].tolist() == [True] + [False] * 5  # identical frame keeps only its first token
    assert per_frame[2].tolist() == [False, False, False, True, False, False]
    assert per_frame[3].tolist() == [True] + [False] * 5
    assert torch.equal(keep, reference_keep(pixels, 4, grid))
    assert frame_token_keep(pixels[:24], 1, grid).all()


@needs_demo
def test_token_pruning_on_real_video():
    video = load_video(VIDEO, fps=4, max_frames=6)
    frames = [f[::4, ::4] for f in video.frames]  # small frames keep the test fast
    frames[3] = frames[2].copy()  # a frozen frame
    pixels, grid = _frames_pixels(frames)
    keep = frame_token_keep(pixels, len(frames), grid)
    assert torch.equal(keep, reference_keep(pixels, len(frames), grid))
    assert int(keep.view(len(frames), -1)[3].sum()) == 1
