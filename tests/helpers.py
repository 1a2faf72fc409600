"""Assertions for kernel outputs against a float64 reference.

The tolerance rule (flash-attention's): against the float64 reference, the candidate's max absolute
error must be at most `factor` (2) times the max error of the PyTorch reference run in the same low
precision, plus a small `atol`; NaN never passes. Every call also reports the relative error
`||out - ref|| / ||ref||` and asserts it below `rel_tol` (dtype-dependent defaults below).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("tests")

# ||out - ref|| / ||ref|| ceilings per dtype; fp32 well under 1e-4, bf16 under 1e-2.
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close(
    out: torch.Tensor,
    ref: torch.Tensor,
    *,
    name: str = "out",
    baseline: torch.Tensor | None = None,
    factor: float = 2.0,
    atol: float = 1e-6,
    rel_tol: float | None = None,
) -> float:
    """Compare `out` with the float64 `ref`; returns the relative error.

    Args:
        out: candidate output (any float dtype).
        ref: reference computed in float64 on the same inputs.
        baseline: the torch reference run in `out`'s dtype; when given, enforces
            `max|out-ref| <= factor * max|baseline-ref| + atol`.
        rel_tol: ceiling on `||out-ref||/||ref||`; default from `REL_TOL` by `out.dtype`.
    """
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    out64, ref64 = out.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    assert not torch.isnan(ref64).any(), f"{name}: the reference itself has NaN; the test inputs are wrong"
    nan = torch.isnan(out64)
    if nan.any():
        first = nan.nonzero()[:5].tolist()
        raise AssertionError(f"{name}: {int(nan.sum())} NaN element(s), first at {first} (unwritten or poisoned output?)")
    err = (out64 - ref64).abs()
    max_err = err.max().item() if err.numel() else 0.0
    rel = rel_error(out64, ref64)
    tol_rel = REL_TOL.get(out.dtype, 1e-2) if rel_tol is None else rel_tol
    msg = f"{name}: dtype={out.dtype} max_abs_err={max_err:.3e} rel_err={rel:.3e}"
    if baseline is not None:
        base_err = (baseline.detach().to(torch.float64).cpu() - ref64).abs().max().item() if err.numel() else 0.0
        bound = factor * base_err + atol
        msg += f" torch_same_dtype_err={base_err:.3e} bound={bound:.3e}"
        if max_err > bound:
            worst = (err > bound).nonzero()[:5].tolist()
            raise AssertionError(msg + f"; exceeds bound at {worst}")
    logger.info(msg)
    if rel > tol_rel:
        worst = err.flatten().topk(min(5, err.numel())).indices.tolist()
        raise AssertionError(msg + f"; rel_err above {tol_rel:.1e}; worst flat indices {worst}")
    return rel
