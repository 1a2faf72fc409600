"""Profile PixelRefer's speed and cost across token budgets, with random weights.

Speed, FLOPs and memory do not depend on weight values, so a fresh machine profiles the real
architectures (`2b`, `7b`, `lite-2b`, `lite-7b`, or any local `config.json`) without
downloading a checkpoint; `cpu-default` is the same structure shrunk for a small CPU.

Example:
    >>> from pixelrefer_fast.profiling import SweepSpec, run_profile
    >>> result = run_profile("cpu-default", SweepSpec(regions=(1, 4), mask_nums=(16, 32)))
    >>> print(result.summary())          # the table and where the JSON / CSV / PNG went

Command line: `pixelrefer-fast profile` (`python -m pixelrefer_fast.profiling.cli`), see `cli.py`.

Modules: `presets` (architectures), `sweep` (points, limits and file names), `sample` (the
drawn scene), `flops` (analytic FLOPs and bytes), `estimate` (time and memory before a run),
`measure` (timing, memory, device peaks), `progress` (stage and call inside a point), `stages`
(model building and per-stage measurement), `report` (table, JSON, CSV, rows JSON lines, PNG),
`runner` (`run_profile`; `ProfileStopped` carries the finished points of an interrupted run).
"""

from __future__ import annotations

from .flops import FLOP_CONVENTION
from .presets import PRESETS, ArchPreset, LLMShape, ProfileInputError, RegionShape, VisionShape, get_preset, preset_from_model_dir
from .runner import ProfileResult, ProfileStopped, run_profile
from .sweep import SweepPoint, SweepSpec

__all__ = [
    "FLOP_CONVENTION",
    "PRESETS",
    "ArchPreset",
    "LLMShape",
    "ProfileInputError",
    "ProfileResult",
    "ProfileStopped",
    "RegionShape",
    "SweepPoint",
    "SweepSpec",
    "VisionShape",
    "get_preset",
    "preset_from_model_dir",
    "run_profile",
]
