"""What every saved benchmark or profile records about the machine it ran on.

``machine_info()`` returns versions, the git SHA, a timestamp, and on CUDA the card, driver, clocks and
memory (nvidia-ml-py when installed). ``gpu_slug()`` names the card for ``profiles/<gpu-slug>/``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import platform
import re
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_sha(short: bool = True) -> str:
    try:
        args = ["git", "-C", str(REPO_ROOT), "rev-parse", *(["--short"] if short else []), "HEAD"]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(name: str) -> str:
    try:
        return importlib.import_module(name).__version__
    except Exception:
        return "not installed"


def _nvml_info(index: int) -> dict:
    try:
        import pynvml
    except ImportError:
        return {"nvml": "nvidia-ml-py not installed"}
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        info = {
            "driver": pynvml.nvmlSystemGetDriverVersion(),
            "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000,
        }
        pynvml.nvmlShutdown()
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
    except Exception as exc:  # NVML missing in a container is informative, not fatal
        return {"nvml": f"unavailable: {exc}"}


def machine_info(device: torch.device | str | None = None) -> dict:
    """Versions, SHA, timestamp, CPU and (on CUDA) the GPU's name, driver, clocks and memory."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(
            {
                "gpu": props.name,
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "sm_count": props.multi_processor_count,
                "cuda": torch.version.cuda,
                **_nvml_info(index),
            }
        )
    else:
        info["gpu"] = "none"
    return info


def gpu_slug(info: dict | None = None) -> str:
    """``"nvidia-h100-80gb-hbm3"`` style folder name for a card, ``"cpu"`` without one."""
    info = info or machine_info()
    name = info.get("gpu", "none")
    if name == "none":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
