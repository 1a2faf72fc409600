"""`python -m pixelrefer_kernels.info`: versions, the GPU, and which backend each op takes here.

Each op module in `OP_MODULES` provides `backend_report(device, dtype)`: for a small
representative call, the list of `(backend, reasons)` in priority order (no reasons: it can run).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys

import torch

from . import OP_MODULES, __version__
from ._runtime import KERNELS_ENV, current_mode, has_flash_attn, has_triton, has_xformers, interpret_mode


def _version(distribution: str) -> str:
    """The installed version of `distribution`, read from its metadata (nothing is imported)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report(device: torch.device | None = None, dtype: torch.dtype | None = None) -> str:
    """The text `python -m pixelrefer_kernels.info` prints."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lines = [
        f"pixelrefer_kernels {__version__}",
        f"python {platform.python_version()} ({sys.platform}), torch {torch.__version__}",
        f"triton {_version('triton') if has_triton() else 'not installed'} (interpreter: {interpret_mode()})",
        f"flash-attn {_version('flash-attn') if has_flash_attn() else 'not installed'}, "
        f"xformers {_version('xformers') if has_xformers() else 'not installed'}",
        f"transformers {_version('transformers')}",
        f"kernel mode: {current_mode()} (set {KERNELS_ENV}=auto|triton|torch)",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}, "
            f"{props.multi_processor_count} SMs, CUDA {torch.version.cuda}"
        )
    else:
        lines.append("GPU: none visible to torch")
    lines.append(f"backends for {device.type} / {str(dtype).replace('torch.', '')} (first available wins in auto mode):")
    for name in OP_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        rows = module.backend_report(device, dtype)
        chosen = next((b for b, reasons in rows if not reasons), None)
        lines.append(f"  {name}: -> {chosen or 'NONE'}")
        for backend, reasons in rows:
            lines.append(f"      {backend:<10} {'ok' if not reasons else '; '.join(reasons)}")
    return "\n".join(lines)


def main() -> None:
    sys.stdout.write(report() + "\n")


if __name__ == "__main__":
    main()
