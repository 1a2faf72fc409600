"""Helpers shared by the Triton launchers: device guard, grad refusal, the tile policy.

Triton is imported lazily inside the functions that need it, so importing this module is cheap and
works without Triton.
"""

from __future__ import annotations

import contextlib

import torch

from ._runtime import interpret_mode, skip_autotune

# Triton's grid axes 1 and 2 are 16-bit (at most 65,535 programs); launchers fold work into axis 0
# or loop inside a program when a count could exceed this.
MAX_GRID_YZ = 65_535


def device_guard(tensor: torch.Tensor):
    """Make `tensor`'s CUDA device current for a launch (Triton otherwise launches on cuda:0)."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device.index)
    return contextlib.nullcontext()


def grad_reasons(**tensors: torch.Tensor | None) -> list[str]:
    """Why a Triton kernel must not run: an input requires grad while autograd is recording.

    Parameters that require grad are fine under `torch.no_grad()` / `torch.inference_mode()`.
    """
    if not torch.is_grad_enabled():
        return []
    needing = [name for name, t in tensors.items() if t is not None and t.requires_grad]
    if needing:
        return [f"{', '.join(needing)} require(s) grad and autograd is on (Triton kernels are inference only)"]
    return []


def refuse_grad(op: str, **tensors: torch.Tensor | None) -> None:
    """Raise in a launcher when `grad_reasons` finds a reason (no silent autograd breakage)."""
    reasons = grad_reasons(**tensors)
    if reasons:
        raise RuntimeError(
            f"{op}: {reasons[0]}; run under torch.no_grad()/torch.inference_mode(), or use the "
            "differentiable torch path (pixelrefer_kernels.force('torch'))"
        )


def tile_configs(configs: list, *, interpreter=None) -> list:
    """The tiles a kernel runs with: the one rule every kernel follows.

    `configs` are the GPU choices (`triton.Config` for autotuned kernels, plain dicts of block
    sizes for kernels that launch one fixed tile), best first. Returns:

    - under the interpreter: `[interpreter]` when given, else the first GPU choice. The
      interpreter's cost is per operation, not per element, so a larger tile (fewer programs and
      shorter loops) keeps the CPU test suite fast;
    - with `PIXELREFER_FAST_SKIP_AUTOTUNE=1`: the first GPU choice (autotuning needs a timed run);
    - otherwise every choice, for `triton.autotune` to time (a fixed-tile kernel takes the first).
    """
    if interpret_mode():
        return [interpreter if interpreter is not None else configs[0]]
    if skip_autotune():
        return configs[:1]
    return configs
