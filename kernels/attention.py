"""`varlen_attention`: block-diagonal (varlen) attention behind one signature, with stated backend choice.

Backends, in auto priority order (the first one with no reasons runs):

1. `flash_attn` (external, optional extra `flash`): `flash_attn_varlen_func`. First when installed,
   because it is the kernel upstream uses (same numerics as the released model) and the best-tuned one
   for fp16/bf16 on Ampere+ GPUs. Refuses fp32/fp64, CPU tensors and head dims above 256.
2. `triton` (ours, `varlen.py`): fp16/bf16/fp32 on CUDA, or CPU under
   `TRITON_INTERPRET=1` (tests); any head dim up to 256 (72 and 144 without padding to 128/256), no host
   sync. Refuses inputs that require grad (inference only), float64, and bf16 in the interpreter (its bf16
   `tl.dot` is wrong, triton-lang/triton#4972).
3. `xformers` (external, optional extra `xformers`): `memory_efficient_attention` with a
   `BlockDiagonalMask`; CUDA only, needs the segment lengths on the host.
4. `sdpa` (torch): `F.scaled_dot_product_attention`, one batched call when every segment has the same
   lengths (a reshape, no copy), else one call per segment. Differentiable, any device, float64 included.
5. `eager` (torch): `varlen_attention_ref`, the per-segment reference. Always available.

On a CPU without the interpreter, auto mode therefore runs `sdpa`. No backend builds a dense
`[seq, seq]` mask. `backend_report` lists the reasons for a small representative call
(`python -m pixelrefer_kernels.info`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._dispatch import Backend, dispatch, no_reasons
from ._launch import grad_reasons
from ._runtime import has_flash_attn, has_xformers, interpreter_dot_reasons, triton_reasons
from ._validate import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    KERNEL_FLOAT_DTYPES,
    check_finite_screened,
    check_offsets,
    check_optional_count,
    check_same_device,
    check_tensor,
    dtype_names,
)
from .varlen import MAX_HEAD_DIM, varlen_attention_ref, varlen_attention_triton

__all__ = ["varlen_attention", "backend_report"]

OP = "varlen_attention"
_FLASH_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class _Segments:
    """Host copies of the segment lengths, when the caller's validation already read them."""

    lengths_q: list[int]
    lengths_k: list[int]


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    softmax_scale: float | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Non-causal attention of each packed query segment to its own key segment.

    Args:
        q: `[Nq, nh, hd]` packed queries; fp16, bf16, fp32 (float64 on the torch backends). Row and head
            strides are free (a view into a packed qkv buffer is fine).
        k, v: `[Nk, nh, hd]` packed keys and values, same dtype and device as q.
        cu_seqlens_q, cu_seqlens_k: `[S+1]` int32/int64 offsets on q's device: start at 0, non-decreasing,
            end at Nq / Nk. Segment s of the queries attends to segment s of the keys only.
        max_seqlen_q, max_seqlen_k: optional host ints bounding the longest segments (flash-attn needs
            them; computed with one host sync when omitted).
        softmax_scale: defaults to `1 / sqrt(hd)`.
        validate: check offset values and max_seqlen bounds (one host sync), and that the output is
            finite: NaN or inf in q, k or v raise naming the tensor, and scores that can overflow
            float32 (`scale * max|q_row| * max|k_row|` past its range: fp32 inputs of magnitude
            ~1e18 and more) or did overflow the dtype (a non-finite output) raise instead of
            returning NaN or zeros. There is no rescaling: scale such inputs down. A few reductions
            and syncs; the vision encoder's hot path passes `validate=False`. Shapes, dtypes and devices are always checked.

    Returns:
        `[Nq, nh, hd]` in q's dtype. A segment with queries but no keys gives zeros (torch and Triton
        backends). With `validate=False`, non-finite or overflowing inputs give non-finite rows.

    Backends (see the module docstring): flash_attn, triton, xformers, sdpa, eager; switch with
    `pixelrefer_kernels.force(...)` or `PIXELREFER_FAST_KERNELS`. On CPU without `TRITON_INTERPRET=1`
    it runs PyTorch SDPA.

    Example:
        >>> cu = torch.tensor([0, 3, 8], dtype=torch.int32)
        >>> out = varlen_attention(torch.randn(8, 2, 72), torch.randn(8, 2, 72), torch.randn(8, 2, 72), cu, cu)
    """
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("k", k, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("v", v, ndim=3, dtypes=FLOAT_DTYPES)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    check_tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("cu_seqlens_k", cu_seqlens_k, ndim=1, dtypes=INDEX_DTYPES)
    check_same_device(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape [Nk, nh, hd]; got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads but k/v have {k.shape[1]}; the head counts must agree (no grouped-query attention)")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q has head dim {q.shape[2]} but k/v have {k.shape[2]}; the head dims must agree")
    if q.shape[1] == 0 or q.shape[2] == 0:
        raise ValueError(f"q must have at least one head and a head dim >= 1; got shape {tuple(q.shape)}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(
            f"cu_seqlens_q has {cu_seqlens_q.numel()} entries but cu_seqlens_k has {cu_seqlens_k.numel()}; both need S+1 for the same S segments"
        )
    check_optional_count("max_seqlen_q", max_seqlen_q)
    check_optional_count("max_seqlen_k", max_seqlen_k)
    if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)) or not math.isfinite(softmax_scale)):
        raise TypeError(f"softmax_scale must be None or a finite float, got {softmax_scale!r}")
    segments = None
    if validate:
        for name, value in (("q", q), ("k", k), ("v", v)):
            check_finite_screened(name, value)
        _check_score_range(q, k, softmax_scale)
        host_q = check_offsets("cu_seqlens_q", cu_seqlens_q, q.shape[0])
        host_k = check_offsets("cu_seqlens_k", cu_seqlens_k, k.shape[0])
        segments = _segments_from_offsets(host_q, host_k)
        for name, bound, lengths in (("max_seqlen_q", max_seqlen_q, segments.lengths_q), ("max_seqlen_k", max_seqlen_k, segments.lengths_k)):
            if bound is not None and lengths and bound < max(lengths):
                raise ValueError(f"{name}={bound} is smaller than the longest segment ({max(lengths)}); pass None or a true bound")
    out = dispatch(OP, _BACKENDS, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, segments)
    if validate:
        _check_finite_output(out, q, k, v)
    return out


def _check_score_range(q: torch.Tensor, k: torch.Tensor, softmax_scale: float | None) -> None:
    """Refuse scores that could overflow float32 (every backend forms them in fp32 or wider for fp32
    inputs): `|scale * q.k| <= scale * max|q_row| * max|k_row|` (Cauchy-Schwarz). An overflow to
    -inf on every key would otherwise come back from SDPA as a silent row of zeros."""
    if q.numel() == 0 or k.numel() == 0:
        return
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else abs(float(softmax_scale))
    q_norm = torch.linalg.vector_norm(q, dim=-1, dtype=torch.float64).max().item()
    k_norm = torch.linalg.vector_norm(k, dim=-1, dtype=torch.float64).max().item()
    limit = torch.finfo(torch.float32 if q.element_size() < 4 else q.dtype).max
    if q_norm * k_norm * scale >= limit:
        _raise_overflow(q, k)


def _raise_overflow(q: torch.Tensor, k: torch.Tensor):
    raise ValueError(
        f"varlen_attention: the attention scores overflow {q.dtype} (max |q| = {q.abs().max().item():.3g}, "
        f"max |k| = {k.abs().max().item():.3g}); accepted: inputs whose scaled dot products fit the dtype: "
        "scale q or k down, or pass float64 on the torch backends"
    )


def _check_finite_output(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Every output row is a convex combination of finite value rows (the inputs were checked), so a
    non-finite output means scores that overflowed the dtype (one reduction, one sync)."""
    if out.numel() == 0 or bool(torch.isfinite(out).all()):
        return
    _raise_overflow(q, k)


def _segments_from_offsets(cu_q: list[int], cu_k: list[int]) -> _Segments:
    return _Segments([b - a for a, b in zip(cu_q, cu_q[1:])], [b - a for a, b in zip(cu_k, cu_k[1:])])


def _host_segments(cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor) -> _Segments:
    return _segments_from_offsets(cu_seqlens_q.tolist(), cu_seqlens_k.tolist())


def _empty_key_reason(segments: _Segments | None) -> list[str]:
    if segments is not None and any(nq > 0 and nk == 0 for nq, nk in zip(segments.lengths_q, segments.lengths_k)):
        return ["a segment has queries but no keys (this backend leaves it undefined; ours return zeros)"]
    return []


# ---- flash-attn ---------------------------------------------------------------------------------------


def _flash_reasons(q, k, v, cu_q, cu_k, max_q, max_k, scale, segments) -> list[str]:
    if not has_flash_attn():
        return ["flash-attn is not installed (pip install 'pixelrefer-fast[flash]')"]
    reasons = []
    if q.device.type != "cuda":
        reasons.append(f"tensors are on {q.device.type} (flash-attn runs on CUDA only)")
    elif torch.cuda.get_device_capability(q.device) < (8, 0):
        reasons.append("flash-attn 2 needs an Ampere or newer GPU (sm_80+)")
    if q.dtype not in _FLASH_DTYPES:
        reasons.append(f"dtype={q.dtype} not supported (supported: {dtype_names(_FLASH_DTYPES)})")
    if q.shape[-1] > MAX_HEAD_DIM:
        reasons.append(f"head_dim={q.shape[-1]} > {MAX_HEAD_DIM}")
    if q.shape[0] == 0 or k.shape[0] == 0:
        reasons.append("empty q or k")
    return reasons + _empty_key_reason(segments)


def _flash_run(q, k, v, cu_q, cu_k, max_q, max_k, scale, segments) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    if max_q is None or max_k is None:  # the offsets are read back only when the caller gave no bound
        segments = segments or _host_segments(cu_q, cu_k)
        max_q = max(segments.lengths_q) if max_q is None else max_q
        max_k = max(segments.lengths_k) if max_k is None else max_k
    return flash_attn_varlen_func(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), max_q, max_k, softmax_scale=scale, causal=False)


# ---- ours (Triton) ------------------------------------------------------------------------------------


def _triton_reasons(q, k, v, cu_q, cu_k, max_q, max_k, scale, segments) -> list[str]:
    reasons = triton_reasons(q.device, q.dtype)
    if q.dtype in KERNEL_FLOAT_DTYPES:
        reasons += interpreter_dot_reasons(q.device, q.dtype)
    if q.shape[-1] > MAX_HEAD_DIM:
        reasons.append(f"head_dim={q.shape[-1]} > {MAX_HEAD_DIM}")
    return reasons + grad_reasons(q=q, k=k, v=v)


def _triton_run(q, k, v, cu_q, cu_k, max_q, max_k, scale, segments) -> torch.Tensor:
    if max_q is None and segments is not None and segments.lengths_q:
        max_q = max(segments.lengths_q)
    return varlen_attention_triton(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale)


# ---- xformers -----------------------------------------------------------------------------------------


def _xformers_reasons(q, k, v, cu_q, cu_k, max_q, max_k, scale, segments) -> list[str]:
    if not has_xformers():
        return ["xformers is not installed (pip install 'pixelrefer-fast[xformers]')"]
    reasons = []
    if q.device.type != "cuda":
        reasons.append(f"tensors are on {q.device.type} (our xformers path runs on CUDA only)")
    if q.dtype not in KERNEL_FLOAT_DTYPES:
        reasons.append(f"dtype={q.dtype} not supported (supported: {dtype_names(KERNEL_FLOAT_DTYPES)})")
    if q.shape[-1] > MAX_HEAD_DIM:
        reasons.append(f"head_dim={q.shape[-1]} > {MAX_HEAD_DIM}")
    if segments is not None and (0 in segments.lengths_q or 0 in segments.lengths_k):
        reasons.append("a segment of length 0 (BlockDiagonalMask needs positive lengths)")
    return reasons


def _xformers_run(q, k, v, cu_q, cu_k, max_q, max_k, scale, segments) -> torch.Tensor:
    from xformers.ops import fmha

    segments = segments or _host_segments(cu_q, cu_k)
    bias = fmha.BlockDiagonalMask.from_seqlens(q_seqlen=segments.lengths_q, kv_seqlen=segments.lengths_k)
    return fmha.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias, scale=scale)[0]


# ---- PyTorch SDPA -------------------------------------------------------------------------------------


def _sdpa_run(q, k, v, cu_q, cu_k, max_q, max_k, scale, segments) -> torch.Tensor:
    segments = segments or _host_segments(cu_q, cu_k)
    return sdpa_varlen(q, k, v, segments.lengths_q, segments.lengths_k, softmax_scale=scale)


def sdpa_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths_q: list[int],
    lengths_k: list[int],
    *,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Varlen attention with PyTorch SDPA and host segment lengths (no mask tensor at all).

    One batched call when every segment has the same lengths (the packed tensors are reshaped, not
    copied), else one call per segment. A segment with queries but no keys gives zeros. Shapes as in
    `varlen_attention`; used by the `sdpa` backend and by the infusion's torch path.
    """
    num_segments = len(lengths_q)
    if num_segments and len(set(lengths_q)) == 1 and len(set(lengths_k)) == 1 and lengths_q[0] > 0 and lengths_k[0] > 0:
        qs = q.unflatten(0, (num_segments, lengths_q[0])).transpose(1, 2)  # (S, nh, nq, hd)
        ks = k.unflatten(0, (num_segments, lengths_k[0])).transpose(1, 2)  # (S, nh, nk, hd)
        vs = v.unflatten(0, (num_segments, lengths_k[0])).transpose(1, 2)
        out = F.scaled_dot_product_attention(qs, ks, vs, scale=softmax_scale)  # (S, nh, nq, hd)
        return out.transpose(1, 2).reshape(q.shape)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    q0 = k0 = 0
    for nq, nk in zip(lengths_q, lengths_k):
        if nq and nk:
            seg = F.scaled_dot_product_attention(
                q[q0 : q0 + nq].transpose(0, 1), k[k0 : k0 + nk].transpose(0, 1), v[k0 : k0 + nk].transpose(0, 1), scale=softmax_scale
            )  # (nh, nq, hd)
            out[q0 : q0 + nq] = seg.transpose(0, 1)
        elif nq:
            out[q0 : q0 + nq] = 0
        q0, k0 = q0 + nq, k0 + nk
    return out


def _eager_run(q, k, v, cu_q, cu_k, max_q, max_k, scale, segments) -> torch.Tensor:
    return varlen_attention_ref(q, k, v, cu_q, cu_k, softmax_scale=scale)


_BACKENDS = (
    Backend("flash_attn", "external", _flash_reasons, _flash_run),
    Backend("triton", "triton", _triton_reasons, _triton_run),
    Backend("xformers", "external", _xformers_reasons, _xformers_run),
    Backend("sdpa", "torch", no_reasons, _sdpa_run),
    Backend("eager", "torch", no_reasons, _eager_run),
)


def backend_report(device: torch.device, dtype: torch.dtype) -> list[tuple[str, list[str]]]:
    """`(backend, reasons)` in priority order for a small call (2 segments, 2 heads, head dim 72)."""
    q = torch.zeros(8, 2, 72, device=device, dtype=dtype)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32, device=device)
    args = (q, q, q, cu, cu, None, None, None, _Segments([3, 5], [3, 5]))
    return [(b.name, b.reasons(*args)) for b in _BACKENDS]
