"""What every saved benchmark records about the machine it ran on.

One implementation serves the benchmarks and the profile: `pixelrefer_fast.profiling.measure`
(versions, git SHA, timestamp, CPU, and on CUDA the card, memory, NVML driver and clocks).
`gpu_slug()` names the card for `profiles/<gpu-slug>/`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pixelrefer_fast.profiling.measure import device_slug
from pixelrefer_fast.profiling.measure import machine_info as _machine_info

REPO_ROOT = Path(__file__).resolve().parents[1]


def machine_info(device: torch.device | str | None = None) -> dict:
    """The machine record for `device` (default: the first GPU, else the CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _machine_info(torch.device(device))


def gpu_slug(info: dict | None = None) -> str:
    """`"nvidia-h100-80gb-hbm3"` style folder name for a card, `"cpu"` without one."""
    return device_slug(info or machine_info())
