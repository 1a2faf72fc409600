"""The sweep: which token budgets a profile measures, and the limits each point must respect.

A `SweepSpec` holds one list per axis; its points are the cartesian product (variants outermost,
so models are built once per variant). `check_point` rejects a point the model cannot run with a
`ProfileInputError` that names the axis and the limit:

- `max_tokens` (the processor's vision-token budget) above the preset's `mm_max_length`;
- `mask_num` above `mm_max_length // crops` (crops = regions, times the frames for a Lite
  video): the crops of one call share the budget `mm_max_length * 14**2` pixels, so no crop can
  hold more cells than that and `mask_num` tokens could never be filled;
- `frames` above the preset's `max_frames`;
- an LLM sequence (text + image tokens + object tokens + generated tokens) above
  `max_position_embeddings`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..defaults import DECODINGS
from .presets import VARIANTS, ArchPreset, ProfileInputError

# hard limits on an axis value (larger values are typing mistakes, or would fill any memory)
MAX_BATCH = 1024
MAX_IMAGE_SIDE = 16384
MAX_ASPECT_RATIO = 200  # the image processor's limit (official smart_resize)
# text around the visual tokens: chat template, question and region brackets (generous upper bound)
_TEXT_TOKENS = 64
_TEXT_TOKENS_PER_REGION = 8
_TEXT_TOKENS_PER_FRAME = 12


@dataclass(frozen=True)
class SweepPoint:
    """One measured configuration.

    Attributes:
        variant: `"full"` or `"lite"`.
        regions: R, masks per item.
        mask_num: K, tokens per region.
        image_size: (width, height) of the drawn sample in pixels.
        max_tokens: the processor's vision-token budget (`mm_max_length`); None keeps the preset's.
        frames: 1 for an image, > 1 for a video of that many frames (regions on frame 0).
        batch: items per call (copies of the sample).
    """

    variant: str
    regions: int
    mask_num: int
    image_size: tuple[int, int]
    max_tokens: int | None
    frames: int
    batch: int

    @property
    def crops(self) -> int:
        """Region crops of one item: R, times the frames for a Lite video (each object on every frame)."""
        return self.regions * (self.frames if self.variant == "lite" else 1)

    @property
    def object_tokens(self) -> int:
        """Object-token budget of one item: K per crop (full: an upper bound, min(K, cells) each)."""
        return self.crops * self.mask_num


@dataclass(frozen=True)
class SweepSpec:
    """Axes of a sweep (each a non-empty tuple); `points(preset)` expands them.

    Attributes:
        variants: `"full"` / `"lite"`; None takes the preset's default variants.
        regions: R values (default 1, 4, 16).
        mask_nums: K values (default 8, 16, 32, 64).
        image_sizes: (width, height) of the sample (default 448x336: 768 image tokens).
        max_tokens: processor budgets; None keeps the preset's `mm_max_length`.
        frames: 1 = image; n > 1 = a video of n frames.
        batches: items per call.
        decode_tokens: tokens generated per point for the decode timing (>= 1).
        decoding: the decode loop timed, as `describe(decoding=...)`: `"fast"` (default) or `"hf"`.
    """

    variants: tuple[str, ...] | None = None
    regions: tuple[int, ...] = (1, 4, 16)
    mask_nums: tuple[int, ...] = (8, 16, 32, 64)
    image_sizes: tuple[tuple[int, int], ...] = ((448, 336),)
    max_tokens: tuple[int | None, ...] = (None,)
    frames: tuple[int, ...] = (1,)
    batches: tuple[int, ...] = (1,)
    decode_tokens: int = 8
    decoding: str = DECODINGS[0]

    def validate(self) -> None:
        """Raise `ProfileInputError` for an empty axis, a non-positive value or an unknown variant."""
        axes = {"regions": self.regions, "mask_nums": self.mask_nums, "image_sizes": self.image_sizes,
                "max_tokens": self.max_tokens, "frames": self.frames, "batches": self.batches}
        if self.variants is not None:
            axes["variants"] = self.variants
        for name, values in axes.items():
            if not values:
                raise ProfileInputError(f"empty sweep: {name} has no values")
        if self.variants is not None:
            unknown = [v for v in self.variants if v not in VARIANTS]
            if unknown:
                raise ProfileInputError(f"unknown variant(s) {unknown}; accepted: {', '.join(VARIANTS)}")
        for name in ("regions", "mask_nums", "frames", "batches"):
            for value in getattr(self, name):
                _positive(name, value)
        for value in self.max_tokens:
            if value is not None:
                _positive("max_tokens", value)
        for value in self.batches:
            if value > MAX_BATCH:
                raise ProfileInputError(f"batch {value} is over the limit of {MAX_BATCH} items per call")
        for size in self.image_sizes:
            if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or not 56 <= v <= MAX_IMAGE_SIDE for v in size):
                raise ProfileInputError(f"image size {size!r} must be (width, height) with both in 56..{MAX_IMAGE_SIDE} pixels")
            if max(size) / min(size) > MAX_ASPECT_RATIO:
                raise ProfileInputError(f"image size {size[0]}x{size[1]} has an aspect ratio of {max(size) / min(size):.0f}; "
                                        f"the image processor accepts at most {MAX_ASPECT_RATIO}")
        _positive("decode_tokens", self.decode_tokens)
        if self.decoding not in DECODINGS:
            raise ProfileInputError(f"--decoding must be one of {', '.join(DECODINGS)}, got {self.decoding!r}")

    def points(self, preset: ArchPreset) -> list[SweepPoint]:
        """All points in order (variant, image size, budget, frames, batch, regions, mask_num), each checked."""
        self.validate()
        variants = self.variants or preset.default_variants
        points = [
            SweepPoint(variant, regions, mask_num, tuple(size), max_tokens, frames, batch)
            for variant, size, max_tokens, frames, batch, regions, mask_num in itertools.product(
                variants, self.image_sizes, self.max_tokens, self.frames, self.batches, self.regions, self.mask_nums
            )
        ]
        for point in points:
            check_point(preset, point, self.decode_tokens)
        return points


def sweep_name(preset_name: str, sweep: SweepSpec, variants: tuple[str, ...]) -> str:
    """The file name part of a profile: the preset, then every axis that differs from `SweepSpec()`
    (`cpu-default`, `2b_R1-4_K32_640x480_B1-8`). Variants are named when not the preset's default."""
    default = SweepSpec()
    parts = [preset_name]
    if sweep.variants is not None and tuple(sweep.variants) != variants:
        parts.append("-".join(sweep.variants))
    axes = (("R", "regions"), ("K", "mask_nums"), ("", "image_sizes"), ("tok", "max_tokens"), ("T", "frames"),
            ("B", "batches"))
    for prefix, name in axes:
        values = getattr(sweep, name)
        if tuple(values) == tuple(getattr(default, name)):
            continue
        if name == "image_sizes":
            parts.append("-".join(f"{w}x{h}" for w, h in values))
        else:
            parts.append(prefix + "-".join("model" if v is None else str(v) for v in values))
    if sweep.decode_tokens != default.decode_tokens:
        parts.append(f"dec{sweep.decode_tokens}")
    if sweep.decoding != default.decoding:
        parts.append(sweep.decoding)
    name = "_".join(parts)
    if len(name) > 80:
        import hashlib

        name = f"{preset_name}_sweep-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProfileInputError(f"{name} values must be positive integers, got {value!r}")


def estimate_image_tokens(preset: ArchPreset, point: SweepPoint) -> int:
    """Upper bound on the global vision tokens the LLM sees for one item (0 for Lite)."""
    if point.variant == "lite":
        return 0
    budget = point.max_tokens or preset.mm_max_length
    width, height = point.image_size
    patch = preset.vision.patch_size
    if point.frames == 1:
        return min(budget, math.ceil(height / patch) * math.ceil(width / patch))
    merge = preset.vision.spatial_merge_size
    per_frame = math.ceil(height / (patch * merge)) * math.ceil(width / (patch * merge))
    return min(budget, point.frames * per_frame)


def estimate_llm_tokens(preset: ArchPreset, point: SweepPoint, decode_tokens: int) -> int:
    """Upper bound on one sequence's length at the end of decoding."""
    text = _TEXT_TOKENS + _TEXT_TOKENS_PER_REGION * point.crops + _TEXT_TOKENS_PER_FRAME * point.frames
    return text + estimate_image_tokens(preset, point) + point.object_tokens + decode_tokens


def check_point(preset: ArchPreset, point: SweepPoint, decode_tokens: int) -> None:
    """Raise `ProfileInputError` when `point` exceeds one of the model's limits (module docstring)."""
    where = f"{point.variant} R={point.regions} K={point.mask_num} frames={point.frames}"
    budget = point.max_tokens or preset.mm_max_length
    if point.max_tokens is not None and point.max_tokens > preset.mm_max_length:
        raise ProfileInputError(
            f"--max-tokens {point.max_tokens} exceeds the model's vision-token budget mm_max_length={preset.mm_max_length}"
        )
    if point.mask_num > budget // point.crops:
        raise ProfileInputError(
            f"{where}: mask_num {point.mask_num} exceeds the cells a crop can hold: {point.crops} crops share "
            f"{budget} patches, at most {budget // point.crops} per crop"
        )
    if point.frames > preset.max_frames:
        raise ProfileInputError(f"{where}: {point.frames} frames exceed the model's max_frames={preset.max_frames}")
    length = estimate_llm_tokens(preset, point, decode_tokens)
    if length > preset.llm.max_position_embeddings:
        raise ProfileInputError(
            f"{where}: the LLM sequence would reach ~{length} tokens, over max_position_embeddings="
            f"{preset.llm.max_position_embeddings}; use fewer regions, a smaller mask_num or image"
        )
