"""Video input for PixelRefer: frame sampling, decoding, timestamps and frame-token pruning.

Full model (docs/spec.md §8, official `pixelrefer/mm_utils.load_video`):
- **Sampling.** The official code pipes the file through ffmpeg's `fps` filter with
  `round=down`. That filter maps each decoded frame's time t (relative to the file start) to the
  output slot `floor(t * fps)` and emits, for every slot from the first frame's slot up to (not
  including) `floor(t_end * fps)` (t_end = end of the last frame), the **last** frame whose slot is
  <= that slot (a frame is repeated when slots are skipped). `fps_sample_indices` reproduces it
  (checked against libavfilter's own `fps` filter through PyAV in the tests).
- **Timestamps** `arange(start, start + duration + 1/fps, 1/fps)[:N]` (stream start time, file
  duration, as ffprobe reports them), then, when N > `max_frames`, uniform subsampling
  `linspace(0, N-1, max_frames).astype(int)` of frames and timestamps.
- **Region frames** (`frame_ids`): decoded separately at full resolution by index in
  presentation order (the official code uses decord).
- **Token pruning** (`frame_token_keep`): differential pruning of merged 2x2 tokens between
  consecutive frames, on bf16-rounded pixel values (official `pixelrefer/model/pixelrefer_arch.py`).

Lite (official `load_video_from_specific_ids`): only the annotated frames are decoded; the
timestamp of frame f is `f / avg_fps`.

Decoding uses PyAV (`pip install av`), imported lazily; frames come out as HWC uint8 RGB (swscale
bicubic, the ffmpeg command-line default). A list of frames (numpy HWC uint8 / PIL) can be given
instead of a file; see `pixelrefer_fast.processing_pixelrefer_fast.PixelReferItem`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

DEFAULT_VIDEO_FPS = 1.0
DEFAULT_MAX_FRAMES = 768
COMPRESSION_THRESHOLD = 0.1
# Most frame slots the fps filter may produce before the max_frames subsampling (a 1 fps sampling of a
# 1000-hour file, or a 10-minute file at 6990 fps); bounds what `fps_sample_indices` allocates.
MAX_SAMPLED_SLOTS = 2**22
# Largest frame time accepted, in seconds (about 31 years): beyond it the prompt's rounded time label overflows.
MAX_TIMESTAMP = 1e9


def check_rate(name: str, value: Any) -> float:
    """A frame rate: a real number (not a bool), finite and > 0. Returns it as a float.

    Raises:
        TypeError: not a real number; ValueError: zero, negative, NaN or infinite.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of frames per second, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0 (frames per second), got {value!r}")
    return float(value)


def check_frame_id(name: str, value: Any) -> int:
    """A frame index: an int (Python or NumPy, not a bool), >= 0. Returns it as an int.

    Raises:
        TypeError: a bool, float, str or other type; ValueError: a negative index.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int frame index, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} = {value} is out of range: frame indices are 0-based (>= 0)")
    return int(value)


def check_timestamps(name: str, values: Any, count: int) -> list[float]:
    """Frame times in seconds: `count` finite real numbers of magnitude at most `MAX_TIMESTAMP`,
    non-decreasing. Returns them as floats.

    Raises:
        TypeError: not a sequence of real numbers; ValueError: wrong length, NaN/inf, a magnitude
            above `MAX_TIMESTAMP`, or a time smaller than the one before it.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a sequence of times in seconds, got {type(values).__name__}")
    items = values.tolist() if isinstance(values, (np.ndarray, torch.Tensor)) else list(values)
    if len(items) != count:
        raise ValueError(f"{name}: {len(items)} timestamps for {count} frames")
    for i, t in enumerate(items):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name}[{i}] must be a number of seconds, got {type(t).__name__} {t!r}")
        if not (math.isfinite(t) and abs(t) <= MAX_TIMESTAMP):
            raise ValueError(f"{name}[{i}] is {t}; timestamps must be finite seconds, at most {MAX_TIMESTAMP:g} "
                             "in magnitude")
        if i and t < items[i - 1]:
            raise ValueError(f"{name} must be non-decreasing (frames in time order): {name}[{i}] = {t} comes after "
                             f"{items[i - 1]}")
    return [float(t) for t in items]


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Reading video files needs PyAV: `pip install av` (or `pip install pixelrefer-fast[video]`). "
            "Alternatively pass the video as a list of frames (HxWx3 uint8 arrays or PIL images)."
        ) from exc
    return av


@dataclass
class VideoInfo:
    """What `probe_video` learns from one decoding pass.

    Attributes:
        frame_times: [F] exact frame times (pts * time_base - file start), seconds, as Fractions.
        end_time: end of the last frame (its time + duration), seconds (Fraction).
        avg_fps: the stream's average frame rate (decord's `get_avg_fps`).
        start_time: the stream start time in seconds, as ffprobe prints it (6 decimals).
        duration: the file duration in seconds, as ffprobe prints it.
    """

    frame_times: list[Fraction]
    end_time: Fraction
    avg_fps: float
    start_time: float
    duration: float

    @property
    def num_frames(self) -> int:
        return len(self.frame_times)


@dataclass
class SampledVideo:
    """A video sampled for the full model.

    Attributes:
        frames: [N] HWC uint8 RGB frames at native resolution (the global stream).
        timestamps: [N] np.float64 timestamps in seconds (official rule, module docstring).
        frame_indices: [N] the source frame index of each sampled frame.
        region_frames: source frame index -> full-resolution frame, for the requested `frame_ids`.
        avg_fps: the stream's average frame rate.
    """

    frames: list[np.ndarray]
    timestamps: list[np.float64]
    frame_indices: list[int]
    region_frames: dict[int, np.ndarray]
    avg_fps: float


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video file {str(path)!r} does not exist")
    return path


def _open(path: Path) -> Any:
    av = _import_av()
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"could not open the video file {str(path)!r} ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise ValueError(f"the file {str(path)!r} has no video stream")
    return container


def _decode(container: Any, path: Path):
    av = _import_av()
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        raise ValueError(f"could not decode the video file {str(path)!r} ({exc})") from exc


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Decode `path` once (no pixel conversion) and return its frame times and rates.

    Raises:
        ValueError: a missing, unreadable or frameless file (the message names it).
    """
    path = _check_path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        file_start = Fraction(container.start_time or 0, 1_000_000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        times: list[Fraction] = []
        last_duration = Fraction(1, 1) / Fraction(rate) if rate else Fraction(0)
        for frame in _decode(container, path):
            if frame.pts is None:
                raise ValueError(f"the video file {str(path)!r} has frames without timestamps")
            times.append(frame.pts * frame.time_base - file_start)
            duration = getattr(frame, "duration", None)
            if duration:
                last_duration = duration * frame.time_base
        if not times:
            raise ValueError(f"the video file {str(path)!r} has no decodable frames")
        stream_start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        duration_s = container.duration / 1_000_000 if container.duration else float(times[-1] + last_duration)
        return VideoInfo(frame_times=times, end_time=times[-1] + last_duration,
                         avg_fps=float(rate) if rate else 0.0,
                         start_time=float(f"{stream_start:.6f}"), duration=float(f"{duration_s:.6f}"))


def _as_fraction(fps: float) -> Fraction:
    return Fraction(str(check_rate("fps", fps))).limit_denominator(1_001_000)


def fps_sample_indices(frame_times: Sequence[Fraction | float], end_time: Fraction | float, fps: float) -> np.ndarray:
    """Source frame indices chosen by ffmpeg's `fps=<fps>:round=down` filter (module docstring).

    Args:
        frame_times: [F] frame times in seconds (increasing), relative to the file start.
        end_time: end of the last frame in seconds.
        fps: output rate.

    Returns:
        [N] int64 indices into the frames (repeats possible), N = floor(end*fps) - floor(t0*fps).

    Raises:
        ValueError: a bad `fps`, or N above `MAX_SAMPLED_SLOTS` (checked before allocating).
    """
    rate = _as_fraction(fps)
    slots = np.array([math.floor(Fraction(t) * rate) for t in frame_times], dtype=np.int64)
    last_slot = math.floor(Fraction(end_time) * rate)
    if slots.size == 0 or last_slot <= slots[0]:
        return np.zeros(0, dtype=np.int64)
    if last_slot - slots[0] > MAX_SAMPLED_SLOTS:
        raise ValueError(f"fps={fps} samples {last_slot - slots[0]} frames from {float(end_time):.3f} s of video, "
                         f"above the limit of MAX_SAMPLED_SLOTS = {MAX_SAMPLED_SLOTS}; lower fps")
    wanted = np.arange(slots[0], last_slot, dtype=np.int64)
    return np.searchsorted(slots, wanted, side="right") - 1


def official_timestamps(start_time: float, duration: float, fps: float, count: int) -> list[np.float64]:
    """`arange(start, start + duration + 1/fps, 1/fps)[:count]` (continued if shorter than count)."""
    step = 1 / fps
    stamps = np.arange(start_time, start_time + duration + step, step)[:count]
    if stamps.size < count:
        extra = start_time + step * np.arange(stamps.size, count)
        stamps = np.concatenate([stamps, extra])
    return list(stamps)


def uniform_subsample(count: int, max_frames: int) -> np.ndarray:
    """`linspace(0, count-1, max_frames).astype(int)` when count > max_frames, else all indices."""
    if count <= max_frames:
        return np.arange(count)
    return np.linspace(0, count - 1, max_frames, dtype=int)


def decode_frames(path: str | os.PathLike, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """Decode the frames at `indices` (presentation order, 0-based) as HWC uint8 RGB.

    Raises:
        TypeError: an index that is not an int.
        ValueError: an unreadable file, a negative index or one beyond the last frame (named).
    """
    path = _check_path(path)
    wanted = sorted({check_frame_id(f"indices[{k}]", i) for k, i in enumerate(indices)})
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    decoded = 0
    with _open(path) as container:
        for index, frame in enumerate(_decode(container, path)):
            decoded = index + 1
            if index == wanted[len(out)]:
                out[index] = frame.to_ndarray(format="rgb24", interpolation="BICUBIC")
                if len(out) == len(wanted):
                    break
    if len(out) < len(wanted):
        raise ValueError(f"frame index {wanted[len(out)]} is beyond the end of the video {str(path)!r} "
                         f"({decoded} frames)")
    return out


def _check_frame_ids(path: str | os.PathLike, frame_ids: Sequence[int], num_frames: int) -> None:
    for fid in frame_ids:
        if not 0 <= int(fid) < num_frames:
            raise ValueError(f"frame id {fid} is out of range for {str(path)!r} ({num_frames} frames)")


def load_video(path: str | os.PathLike, *, fps: float = DEFAULT_VIDEO_FPS, max_frames: int = DEFAULT_MAX_FRAMES,
               frame_ids: Sequence[int] = ()) -> SampledVideo:
    """Sample a video file for the full model, plus full-resolution region frames.

    Args:
        path: the video file.
        fps: sampling rate (official eval: 1).
        max_frames: cap on sampled frames (official eval: 768), uniform subsampling beyond it.
        frame_ids: source frame indices whose full-resolution frames are needed for region crops.

    Returns:
        `SampledVideo`. Decodes the file twice (times first, then the needed pixels).

    Raises:
        TypeError: `fps` not a number, a frame id not an int.
        ValueError: `fps` zero, negative or not finite, an unreadable file, no frames sampled, more
            than `MAX_SAMPLED_SLOTS` frames before subsampling, or a frame id out of range.
    """
    fps = check_rate("fps", fps)
    if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
    frame_ids = [check_frame_id(f"frame_ids[{i}]", f) for i, f in enumerate(frame_ids)]
    info = probe_video(path)
    try:
        chosen = fps_sample_indices(info.frame_times, info.end_time, fps)
    except ValueError as exc:
        raise ValueError(f"video {str(path)!r}: {exc}") from exc
    if chosen.size == 0:
        raise ValueError(f"sampling {str(path)!r} at {fps} fps gives no frame (the video is "
                         f"{float(info.end_time):.3f} s long)")
    timestamps = official_timestamps(info.start_time, info.duration, fps, len(chosen))
    keep = uniform_subsample(len(chosen), max_frames)
    chosen = chosen[keep]
    timestamps = [timestamps[i] for i in keep]
    _check_frame_ids(path, frame_ids, info.num_frames)
    decoded = decode_frames(path, [*chosen.tolist(), *frame_ids])
    return SampledVideo(frames=[decoded[i] for i in chosen.tolist()], timestamps=timestamps,
                        frame_indices=chosen.tolist(), region_frames={int(f): decoded[int(f)] for f in frame_ids},
                        avg_fps=info.avg_fps)


def load_video_frames(path: str | os.PathLike, frame_ids: Sequence[int]
                      ) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """Lite: decode only `frame_ids`; timestamps `f / avg_fps` (official `load_video_from_specific_ids`).

    Returns:
        (frame id -> HWC uint8 RGB frame, frame id -> timestamp in seconds).
    """
    frame_ids = [check_frame_id(f"frame_ids[{i}]", f) for i, f in enumerate(frame_ids)]
    info = probe_video(path)
    _check_frame_ids(path, frame_ids, info.num_frames)
    if not info.avg_fps > 0:
        raise ValueError(f"the video file {str(path)!r} has no frame rate; pass the frames and timestamps instead")
    frames = decode_frames(path, frame_ids)
    return frames, {int(f): int(f) / info.avg_fps for f in frame_ids}


def frame_token_keep(pixel_values: torch.Tensor, num_frames: int, grid_hw: tuple[int, int], *, merge_size: int = 2,
                     threshold: float = COMPRESSION_THRESHOLD) -> torch.Tensor:
    """The full model's differential frame-token pruning (official `pixelrefer/model/pixelrefer_arch.py`).

    Each merged token is the (merge x merge) window of patches, i.e. `merge**2` consecutive
    window-major rows of `pixel_values` (3*14*14*4 = 2352 values). On bf16-rounded values:
    `d[t] = mean|P[t] - P[t-1]| * 255` (all in bf16, as the official ops); a token is kept iff
    `d > threshold`; frame 0 is kept whole; a frame with no kept token keeps its first token. A
    single-frame video keeps everything.

    Args:
        pixel_values: [num_frames * gh * gw, 3*p*p] float32, the frames' window-major patches.
        num_frames: N; grid_hw: (gh, gw) of every frame (equal for all frames of a video).

    Returns:
        [num_frames * (gh/merge) * (gw/merge)] bool, frame-major.
    """
    gh, gw = grid_hw
    tokens = (gh // merge_size) * (gw // merge_size)
    if num_frames <= 1:
        return torch.ones(num_frames * tokens, dtype=torch.bool)
    frames = pixel_values.to(torch.bfloat16).view(num_frames, tokens, -1)  # (N, T, 4*3*p*p)
    diff = (frames[1:] - frames[:-1]).abs().mean(dim=-1) * 255  # bf16, as the official code
    diff = torch.cat([torch.full_like(diff[0:1], threshold + 1), diff], dim=0)
    keep = diff > threshold
    keep[keep.sum(dim=1) < 1, 0] = True
    return keep.flatten()
