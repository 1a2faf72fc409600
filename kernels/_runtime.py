"""Lazy capability probes and the kernel-path switch.

Nothing here touches CUDA or imports an optional backend at import time: every probe runs on first
use and is cached (`functools.cache`). Tests that flip `TRITON_INTERPRET` call
`clear_probe_cache()`.

The switch:

- `PIXELREFER_FAST_KERNELS=auto|triton|torch` (environment, read on every dispatch);
- `force(mode)`: a context manager that overrides the environment inside its block (per thread and
  per asyncio task), e.g. `with pixelrefer_kernels.force("torch"): ...`. `mode` is one of the
  families above or the name of one backend of an op (`"sdpa"`, `"xformers"`, ...).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from collections.abc import Iterator

import torch

from ._validate import KERNEL_FLOAT_DTYPES, dtype_names

KERNELS_ENV = "PIXELREFER_FAST_KERNELS"
SKIP_AUTOTUNE_ENV = "PIXELREFER_FAST_SKIP_AUTOTUNE"
MODES = ("auto", "triton", "torch")

_forced_mode: contextvars.ContextVar[str | None] = contextvars.ContextVar("pixelrefer_forced_mode", default=None)


def _find_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def has_triton() -> bool:
    """True when `import triton` works (it is an optional extra)."""
    if not _find_module("triton"):
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install counts as absent; the reason is reported by triton_reasons
        return False
    return True


@functools.cache
def has_flash_attn() -> bool:
    """True when `flash_attn.flash_attn_varlen_func` imports (optional extra `flash`)."""
    if not _find_module("flash_attn"):
        return False
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def has_xformers() -> bool:
    """True when `xformers.ops.fmha` imports (optional extra `xformers`)."""
    if not _find_module("xformers"):
        return False
    try:
        from xformers.ops import fmha  # noqa: F401
    except Exception:
        return False
    return True


def interpret_mode() -> bool:
    """True when Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def skip_autotune() -> bool:
    """True when autotuning must use a single config (interpreter, or the env switch)."""
    return interpret_mode() or os.environ.get(SKIP_AUTOTUNE_ENV, "0") not in ("", "0")


def clear_probe_cache() -> None:
    """Forget cached probe results (after changing the environment in a test)."""
    for probe in (has_triton, has_flash_attn, has_xformers):
        probe.cache_clear()


def triton_reasons(device: torch.device, dtype: torch.dtype | None = None, *, name: str = "dtype") -> list[str]:
    """Why a Triton kernel cannot run on `device` (empty list: it can); with `dtype`, also whether our
    kernels take that dtype (fp16, bf16, fp32; `name` labels the tensor in the reason)."""
    if not has_triton():
        return ["triton is not installed (pip install 'pixelrefer-fast[triton]')"]
    if device.type == "cuda":
        reasons = []
    elif device.type == "cpu":
        reasons = [] if interpret_mode() else [
            "tensors are on the CPU and TRITON_INTERPRET is not set (Triton runs on CUDA, or on CPU in its interpreter)"
        ]
    else:
        reasons = [f"device type {device.type!r} is not supported by our Triton kernels (supported: cuda, or cpu under TRITON_INTERPRET=1)"]
    if dtype is not None and dtype not in KERNEL_FLOAT_DTYPES:
        reasons.append(f"{name}={dtype} not supported (supported: {dtype_names(KERNEL_FLOAT_DTYPES)})")
    return reasons


def interpreter_dot_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Why a kernel built on `tl.dot` cannot run `dtype` on `device` (empty list: it can).

    Triton's interpreter computes bf16 `tl.dot` wrongly (triton-lang/triton#4972)."""
    if dtype == torch.bfloat16 and device.type == "cpu" and interpret_mode():
        return ["bf16 tl.dot is wrong in the Triton interpreter (triton-lang/triton#4972); bf16 runs on CUDA"]
    return []


def current_mode() -> str:
    """The active kernel mode: the innermost `force()` block, else the environment, else `auto`."""
    forced = _forced_mode.get()
    if forced is not None:
        return forced
    mode = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    return mode


@contextlib.contextmanager
def force(mode: str) -> Iterator[None]:
    """Force a kernel path inside the block.

    Args:
        mode: `"auto"`, `"triton"`, `"torch"`, or one backend name of an op (see
            `python -m pixelrefer_kernels.info`). A forced path that cannot run raises
            `BackendUnavailableError` listing every candidate's reasons.

    Example:
        >>> with pixelrefer_kernels.force("torch"):
        ...     out = pixelrefer_kernels.kmeans(tokens, cu_tokens, num_clusters=32)
    """
    if not isinstance(mode, str) or not mode:
        raise TypeError(f"force(mode): mode must be a non-empty string such as {MODES}, got {mode!r}")
    token = _forced_mode.set(mode.strip().lower())
    try:
        yield
    finally:
        _forced_mode.reset(token)
