"""Object-Centric Infusion (PixelRefer-Lite): two pre-norm cross-attentions from object tokens to feature maps.

Math, for the `K` object tokens `x_r` of region `r`:

    x1_r = x_r  + MHA_local (LN_local (x_r),  L_r, L_r)     L_r: the region's local-crop features
    x2_r = x1_r + MHA_global(LN_global(x1_r), G_r, G_r)     G_r: the whole image's features

MHA is `nn.MultiheadAttention` (packed in_proj [3C, C], nh heads of hd = C / nh, scale 1/sqrt(hd),
out_proj), LN is `nn.LayerNorm` on the queries only. Upstream (`pixelreferlite/model/region_encoder.py`,
`MaskExtractor.forward` + `fusion_image_mask_embedding`) stacks one copy of the image's 576 global
keys per region, so the same K/V projections are recomputed per region, and asks for the averaged
attention weights it never uses.

What this op does instead, exactly equal in real arithmetic:

- **Shared projections ("project" path).** Keys/values of a segment (feature map) are projected once
  and shared by every region that refers to it (`region_global` / `region_local` map regions to
  segments; the parity local-crop reuse makes local maps shared too). The queries of all regions of a
  segment form one attention segment (few queries vs many keys) for `varlen_attention`.
- **Absorbed projections ("absorb" path).** For a map used by few regions, projecting its N keys costs
  `2 N C^2` MACs, more than the attention itself. Since `q_h . (W_k,h x + b_k,h) = (W_k,h^T q_h) . x +
  const` (the constant drops out of the softmax) and `sum_j p_j (W_v,h x_j + b_v,h) = W_v,h (sum_j p_j
  x_j) + b_v,h` (the weights sum to 1), each head attends straight to the raw features with the
  absorbed query `W_k,h^T q_h` (dim C) and projects the weighted feature sum once. Cost per region
  `2 K C^2 + 2 nh K N C` MACs instead of `2 N C^2 + 2 K N C`: 3x fewer for a distinct 16x16 local
  map (K=32, nh=8, C=1152).
- Per stage and per segment a FLOP model picks the cheaper path (`_plan_stage`).

What is fused, and why (at Lite sizes, ~80 GFLOP for 64 regions, a GPU finishes the GEMMs in about as
long as it takes to launch two dozen kernels, so fewer kernels and passes count as much as FLOPs; an
estimate, to be confirmed by `bench/bench_infusion.py` on a GPU):

- the project path's attention core is our varlen flash kernel (`varlen.py`: QK^T, online
  softmax and PV in one pass, no score matrix in memory), with its offsets and block table built on
  the host and shipped in one copy;
- `_residual_layer_norm_fwd_kernel` does the local LayerNorm, then (second call) the local residual
  add + the global LayerNorm in one pass, and stores the residual stream with the global out_proj bias
  already added, so the last projection + bias + residual is a single `addmm`;
- the absorbed path folds the softmax scale into its score GEMM (`baddbmm` alpha) and orders its rows
  (token, head) so the weighted sums split into heads as a strided view, not a copy.

The projections and the absorbed path's score and weighted-sum products are GEMMs and stay with cuBLAS
/ torch.matmul: a Triton GEMM would not beat them at these sizes, and the absorbed head dim (C = 1152)
does not fit a flash-style register accumulator.

Backends: `triton` (the above), `torch` (same algorithm, SDPA for the attention core, torch
LayerNorm; the CPU path), `ref` (`object_infusion_ref`, per region, mirrors upstream).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._dispatch import Backend, dispatch, no_reasons
from ._launch import device_guard, grad_reasons, refuse_grad
from ._runtime import interpreter_dot_reasons, triton_reasons
from ._triton import tl, triton
from ._validate import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    KERNEL_FLOAT_DTYPES,
    check_offsets,
    check_positive_int,
    check_same_device,
    check_tensor,
    dtype_names,
)
from .attention import sdpa_varlen
from .varlen import MAX_HEAD_DIM, varlen_attention_triton

__all__ = ["InfusionWeights", "object_infusion", "object_infusion_ref", "object_infusion_triton", "backend_report"]

OP = "object_infusion"


class InfusionWeights(NamedTuple):
    """The parameters of one infusion stage, in `nn.LayerNorm` + `nn.MultiheadAttention` layout.

    Attributes:
        ln_weight, ln_bias: `[C]` LayerNorm affine (applied to the queries only).
        in_proj_weight: `[3C, C]` packed q, k, v projections (rows 0:C, C:2C, 2C:3C).
        in_proj_bias: `[3C]`.
        out_proj_weight: `[C, C]`; out_proj_bias: `[C]`.
    """

    ln_weight: torch.Tensor
    ln_bias: torch.Tensor
    in_proj_weight: torch.Tensor
    in_proj_bias: torch.Tensor
    out_proj_weight: torch.Tensor
    out_proj_bias: torch.Tensor

    @classmethod
    def from_modules(cls, layer_norm: torch.nn.LayerNorm, attention: torch.nn.MultiheadAttention) -> "InfusionWeights":
        """The weights of `layer_norm` and `attention` (shared, not copied)."""
        return cls(
            layer_norm.weight,
            layer_norm.bias,
            attention.in_proj_weight,
            attention.in_proj_bias,
            attention.out_proj.weight,
            attention.out_proj.bias,
        )

    def contiguous(self) -> "InfusionWeights":
        """The same weights in dense row-major storage (no copy of those already so). The fast paths
        take them so, whatever views the caller passed: PyTorch's CPU `linear` with a strided bias
        rounds the product and the sum separately (in fp16, a chained error four times the fused one)."""
        return InfusionWeights(*(t.contiguous() for t in self))


# ---- reference ----------------------------------------------------------------------------------------


def object_infusion_ref(
    queries: torch.Tensor,
    local_feats: torch.Tensor,
    cu_local: torch.Tensor,
    region_local: torch.Tensor,
    global_feats: torch.Tensor,
    cu_global: torch.Tensor,
    region_global: torch.Tensor,
    local_weights: InfusionWeights,
    global_weights: InfusionWeights,
    *,
    num_heads: int = 8,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Readable infusion, one region at a time, as upstream's two `nn.MultiheadAttention` blocks compute it.

    Args:
        queries: `[R, K, C]` object tokens (zero-padded to K in Lite), any float dtype (float64 included).
        local_feats: `[N_l, C]` packed local feature maps (raster order per map), segments `cu_local [L+1]`.
        region_local: `[R]` int, the local segment of each region.
        global_feats, cu_global `[G+1]`, region_global `[R]`: the same for the global maps.
        local_weights, global_weights: `InfusionWeights` of `ln_local` + `fusion_attention_local`
            and `ln_global` + `fusion_attention_global`.
        num_heads: attention heads (8 upstream); eps: LayerNorm epsilon (1e-5 upstream).

    Returns:
        `[R, K, C]` in queries' dtype. Each region's keys/values are projected for that region, as
        upstream does; the softmax runs in float32 for 16-bit inputs (upstream runs under bf16 autocast,
        which upcasts softmax). Differentiable. No argument checks (`object_infusion` validates).
    """
    x = queries
    for feats, cu, region_segment, weights in (
        (local_feats, cu_local, region_local, local_weights),
        (global_feats, cu_global, region_global, global_weights),
    ):
        normed = F.layer_norm(x, (x.shape[-1],), weights.ln_weight, weights.ln_bias, eps)
        starts = cu.tolist()
        attended = [
            _cross_attention_ref(normed[r], feats[starts[s] : starts[s + 1]], weights, num_heads)
            for r, s in enumerate(region_segment.tolist())
        ]
        x = x + torch.stack(attended) if attended else x
    return x


def _cross_attention_ref(queries: torch.Tensor, keys: torch.Tensor, weights: InfusionWeights, num_heads: int) -> torch.Tensor:
    """`nn.MultiheadAttention(queries, keys, keys)[0]` for one region: `[K, C]` against `[N, C]`."""
    num_tokens, channels = queries.shape
    head_dim = channels // num_heads
    w_q, w_k, w_v = weights.in_proj_weight.chunk(3)
    b_q, b_k, b_v = weights.in_proj_bias.chunk(3)
    q = F.linear(queries, w_q, b_q).view(num_tokens, num_heads, head_dim).transpose(0, 1)  # (nh, K, hd)
    k = F.linear(keys, w_k, b_k).view(-1, num_heads, head_dim).transpose(0, 1)  # (nh, N, hd)
    v = F.linear(keys, w_v, b_v).view(-1, num_heads, head_dim).transpose(0, 1)  # (nh, N, hd)
    scores = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(head_dim)  # (nh, K, N)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32 if queries.element_size() < 4 else queries.dtype).to(queries.dtype)
    attended = torch.matmul(probs, v).transpose(0, 1).reshape(num_tokens, channels)  # (K, C)
    return F.linear(attended, weights.out_proj_weight, weights.out_proj_bias)


# ---- planning (host) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StagePlan:
    """How one stage runs, from the host copies of the segment offsets and the region -> segment map.

    Attributes:
        starts: `[S+1]` segment offsets (host).
        region_segment: segment of each region (host).
        project_regions: regions on the shared-projection path, ordered by segment (then region).
        absorb_regions: regions on the absorbed path, ascending.
    """

    starts: list[int]
    region_segment: list[int]
    project_regions: list[int]
    absorb_regions: list[int]


def absorbed_path_is_cheaper(length: int, queries: int, channels: int, num_heads: int) -> bool:
    """Whether `queries` object tokens attend to one feature map of `length` rows with fewer
    multiply-adds on the absorbed path (`W_k^T q` per head against the raw features) than on the
    shared-projection path (K/V projected once); both are exact (see the module docstring)."""
    cost_project = 2 * length * channels * channels + 2 * queries * length * channels
    cost_absorb = 2 * queries * channels * channels + 2 * num_heads * queries * length * channels
    return cost_absorb < cost_project


def _plan_stage(starts: list[int], region_segment: list[int], num_tokens: int, channels: int, num_heads: int) -> _StagePlan:
    """Pick, per segment, the path with fewer multiply-adds (`absorbed_path_is_cheaper`)."""
    users: dict[int, list[int]] = {}
    for region, segment in enumerate(region_segment):
        users.setdefault(segment, []).append(region)
    project, absorb = [], []
    for segment in sorted(users):
        regions, length = users[segment], starts[segment + 1] - starts[segment]
        cheaper = absorbed_path_is_cheaper(length, len(regions) * num_tokens, channels, num_heads)
        (absorb if cheaper else project).extend(regions)
    return _StagePlan(starts, region_segment, project, sorted(absorb))


def _rows_of(feats: torch.Tensor, starts: list[int], segments: list[int]) -> torch.Tensor:
    """The rows of `segments` (ascending, distinct) of `feats`, in order: a view when they are adjacent."""
    if segments == list(range(segments[0], segments[-1] + 1)):
        return feats[starts[segments[0]] : starts[segments[-1] + 1]]
    index = [row for s in segments for row in range(starts[s], starts[s + 1])]
    return feats.index_select(0, torch.tensor(index, device=feats.device))


# ---- the two attention paths --------------------------------------------------------------------------


def _attend_projected(q, feats, weights, plan, num_heads, attention_core):
    """Project path: K/V of each used segment once, all regions of a segment as one query segment.

    q: `[R, K, C]` projected queries. Returns `(regions, out [len(regions), K, C])`.
    """
    regions = plan.project_regions
    num_tokens, channels = q.shape[1], q.shape[2]
    head_dim = channels // num_heads
    segments = sorted({plan.region_segment[r] for r in regions})
    keys = _rows_of(feats, plan.starts, segments)
    kv = F.linear(keys, weights.in_proj_weight[channels:], weights.in_proj_bias[channels:]).view(
        -1, 2, num_heads, head_dim
    )  # (N_sel, 2, nh, hd)
    lengths_k = [plan.starts[s + 1] - plan.starts[s] for s in segments]
    users = Counter(plan.region_segment[r] for r in regions)
    lengths_q = [num_tokens * users[s] for s in segments]
    if regions == list(range(q.shape[0])):
        q_sel = q
    else:
        q_sel = q.index_select(0, torch.tensor(regions, device=q.device))
    q_rows = q_sel.reshape(-1, num_heads, head_dim)  # (len(regions) * K, nh, hd)
    out = attention_core(q_rows, kv[:, 0], kv[:, 1], lengths_q, lengths_k)
    return regions, out.view(len(regions), num_tokens, channels)


def _attend_absorbed(q, feats, weights, plan, num_heads):
    """Absorbed path: each head attends to the raw features with the query `W_k,h^T q_h` (dim C).

    q: `[R, K, C]` projected queries. Returns `(regions, out [len(regions), K, C])`.
    """
    regions = plan.absorb_regions
    num_regions, num_tokens, channels = len(regions), q.shape[1], q.shape[2]
    head_dim = channels // num_heads
    w_k = weights.in_proj_weight[channels : 2 * channels].view(num_heads, head_dim, channels)
    w_v = weights.in_proj_weight[2 * channels :].view(num_heads, head_dim, channels)
    b_v = weights.in_proj_bias[2 * channels :].view(num_heads, 1, head_dim)

    segments = [plan.region_segment[r] for r in regions]
    lengths = [plan.starts[s + 1] - plan.starts[s] for s in segments]
    longest = max(lengths)
    key_bias = None
    if len(set(lengths)) == 1 and segments == list(range(segments[0], segments[0] + num_regions)):
        keys = feats[plan.starts[segments[0]] : plan.starts[segments[0]] + num_regions * longest].view(num_regions, longest, channels)
    else:
        # Pad each region's keys to the longest; padded slots repeat the segment's first row (finite) and
        # are masked out of the softmax by a [R_b, 1, N] bias (broadcast, no [rows, keys] mask tensor).
        index = [plan.starts[s] + min(j, n - 1) for s, n in zip(segments, lengths) for j in range(longest)]
        keys = feats.index_select(0, torch.tensor(index, device=feats.device)).view(num_regions, longest, channels)
        if len(set(lengths)) > 1:
            padded = torch.arange(longest)[None, :] >= torch.tensor(lengths)[:, None]  # (R_b, N)
            key_bias = torch.zeros(padded.shape, dtype=feats.dtype).masked_fill_(padded, float("-inf")).to(feats.device)[:, None, :]

    q_sel = q if regions == list(range(q.shape[0])) else q.index_select(0, torch.tensor(regions, device=q.device))
    q_heads = q_sel.reshape(num_regions * num_tokens, num_heads, head_dim).transpose(0, 1)  # (nh, R_b*K, hd)
    # Rows of a region's absorbed queries are ordered (token, head), so the weighted sums below split
    # back into heads as a strided view instead of a copy.
    absorbed = torch.matmul(q_heads, w_k).transpose(0, 1).reshape(num_regions, num_tokens * num_heads, channels)  # (R_b, K*nh, C)
    scale = 1.0 / math.sqrt(head_dim)
    if key_bias is None:
        # beta=0: the (uninitialised) input is ignored; the scale rides in the GEMM's alpha
        scores = torch.baddbmm(absorbed.new_empty(()), absorbed, keys.transpose(1, 2), beta=0.0, alpha=scale)  # (R_b, K*nh, N)
    else:
        scores = torch.baddbmm(key_bias, absorbed, keys.transpose(1, 2), alpha=scale)
    probs = torch.softmax(scores, dim=-1)  # accumulates in fp32 for 16-bit inputs
    mixed = torch.bmm(probs, keys)  # (R_b, K*nh, C), the probability-weighted raw features
    mixed_heads = mixed.view(num_regions * num_tokens, num_heads, channels).transpose(0, 1)  # (nh, R_b*K, C)
    out = torch.baddbmm(b_v, mixed_heads, w_v.transpose(1, 2))  # (nh, R_b*K, hd)
    return regions, out.transpose(0, 1).reshape(num_regions, num_tokens, channels)


def _stage_attention(normed, feats, weights, plan, num_heads, attention_core):
    """MHA(normed, keys, keys) before out_proj, for every region: `[R, K, C]`."""
    channels = normed.shape[-1]
    q = F.linear(normed, weights.in_proj_weight[:channels], weights.in_proj_bias[:channels])  # (R, K, C)
    parts = []
    if plan.project_regions:
        parts.append(_attend_projected(q, feats, weights, plan, num_heads, attention_core))
    if plan.absorb_regions:
        parts.append(_attend_absorbed(q, feats, weights, plan, num_heads))
    if len(parts) == 1 and parts[0][0] == list(range(q.shape[0])):
        return parts[0][1]
    out = torch.empty_like(q)
    for regions, values in parts:
        out.index_copy_(0, torch.tensor(regions, device=q.device), values)
    return out


# ---- Triton: residual add + LayerNorm in one pass -----------------------------------------------------


@triton.jit
def _residual_layer_norm_fwd_kernel(
    # pointers
    x_ptr,  # [rows, C] the residual stream
    y_ptr,  # [rows, C] branch output added to x (HAS_RESIDUAL)
    carry_bias_ptr,  # [C] added to the stored sum only (HAS_CARRY)
    carry_ptr,  # [rows, C] out: x + y + carry_bias (HAS_CARRY)
    out_ptr,  # [rows, C] out: LayerNorm(x + y) * weight + bias
    weight_ptr,
    bias_ptr,
    # sizes
    num_cols,
    eps,
    # strides (rows; columns are contiguous)
    stride_x_row,
    stride_y_row,
    stride_carry_row,
    stride_out_row,
    # constexprs
    BLOCK_C: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_CARRY: tl.constexpr,
):
    # One program: one row of C channels.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < num_cols
    h = tl.load(x_ptr + row * stride_x_row + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        h = h + tl.load(y_ptr + row * stride_y_row + cols, mask=mask, other=0.0)
    if HAS_CARRY:
        carry = h + tl.load(carry_bias_ptr + cols, mask=mask, other=0.0)
        tl.store(carry_ptr + row * stride_carry_row + cols, carry, mask=mask)
    # Statistics in fp32 of the sum rounded to the input dtype, as a torch add + LayerNorm would see it.
    h = h.to(tl.float32)
    mean = tl.sum(h, 0) / num_cols
    centered = tl.where(mask, h - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 0) / num_cols + eps)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out_row + cols, (centered * rstd * weight + bias).to(out_ptr.dtype.element_ty), mask=mask)


def _residual_layer_norm_triton(x, y, weight, bias, eps, carry_bias=None):
    """`(x + y + carry_bias, LayerNorm(x + y))` over the last dim of `[..., C]` tensors.

    `y` None: no residual; `carry_bias` None: the first result is None (nothing stored). The `[C]`
    vectors must be contiguous (`_infuse` passes `InfusionWeights.contiguous()`).
    """
    channels = x.shape[-1]
    # rows pass a stride; the channels and the [C] vectors are read as dense
    x2d = x.reshape(-1, channels)  # (rows, C)
    y2d = x2d if y is None else y.reshape(-1, channels)  # (rows, C)
    x2d, y2d = (t if t.stride(-1) == 1 else t.contiguous() for t in (x2d, y2d))
    out = torch.empty(x2d.shape, dtype=x.dtype, device=x.device)
    carry = None if carry_bias is None else torch.empty(x2d.shape, dtype=x.dtype, device=x.device)
    if x2d.shape[0]:
        with device_guard(x):
            _residual_layer_norm_fwd_kernel[(x2d.shape[0],)](
                x2d, y2d, bias if carry_bias is None else carry_bias, out if carry is None else carry, out, weight, bias,
                channels, eps,
                x2d.stride(0), y2d.stride(0), out.stride(0) if carry is None else carry.stride(0), out.stride(0),
                BLOCK_C=triton.next_power_of_2(channels), HAS_RESIDUAL=y is not None, HAS_CARRY=carry is not None,
                num_warps=4 if channels <= 2048 else 8,
            )  # fmt: skip
    return (None if carry is None else carry.view(x.shape)), out.view(x.shape)


def _residual_layer_norm_torch(x, y, weight, bias, eps, carry_bias=None):
    total = x if y is None else x + y
    normed = F.layer_norm(total, (x.shape[-1],), weight, bias, eps)
    return (None if carry_bias is None else total + carry_bias), normed


# ---- the fast paths -----------------------------------------------------------------------------------


def _plans(queries, cu_local, region_local, cu_global, region_global, num_heads):
    _, num_tokens, channels = queries.shape
    return (
        _plan_stage(cu_local.tolist(), region_local.tolist(), num_tokens, channels, num_heads),
        _plan_stage(cu_global.tolist(), region_global.tolist(), num_tokens, channels, num_heads),
    )


def _infuse(queries, local_feats, global_feats, plans, local_weights, global_weights, num_heads, eps, attention_core, residual_layer_norm):
    num_regions, num_tokens, channels = queries.shape
    local_weights, global_weights = local_weights.contiguous(), global_weights.contiguous()
    _, normed = residual_layer_norm(queries, None, local_weights.ln_weight, local_weights.ln_bias, eps)
    local = _stage_attention(normed, local_feats, local_weights, plans[0], num_heads, attention_core)
    local = F.linear(local, local_weights.out_proj_weight, local_weights.out_proj_bias)
    # x1 = queries + local; the carried stream already holds the global out_proj bias, so the last
    # projection, its bias and the residual are one addmm
    carry, normed = residual_layer_norm(queries, local, global_weights.ln_weight, global_weights.ln_bias, eps, global_weights.out_proj_bias)
    attended = _stage_attention(normed, global_feats, global_weights, plans[1], num_heads, attention_core)
    out = torch.addmm(carry.reshape(-1, channels), attended.reshape(-1, channels), global_weights.out_proj_weight.t())
    return out.view(num_regions, num_tokens, channels)


def _float_inputs(
    queries, local_feats, global_feats, local_weights: InfusionWeights, global_weights: InfusionWeights
) -> dict[str, torch.Tensor]:
    """Every float tensor of a call, by argument name (for the grad and dtype checks)."""
    tensors = {"queries": queries, "local_feats": local_feats, "global_feats": global_feats}
    tensors.update({f"local_weights.{n}": t for n, t in local_weights._asdict().items()})
    tensors.update({f"global_weights.{n}": t for n, t in global_weights._asdict().items()})
    return tensors


def _triton_core(q, k, v, lengths_q, lengths_k):
    # host offsets: the launcher ships them with its block table in one copy
    cu_q = torch.tensor([0, *lengths_q]).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0, *lengths_k]).cumsum(0, dtype=torch.int32)
    return varlen_attention_triton(q, k, v, cu_q, cu_k, max(lengths_q))


def object_infusion_triton(
    queries: torch.Tensor,
    local_feats: torch.Tensor,
    cu_local: torch.Tensor,
    region_local: torch.Tensor,
    global_feats: torch.Tensor,
    cu_global: torch.Tensor,
    region_global: torch.Tensor,
    local_weights: InfusionWeights,
    global_weights: InfusionWeights,
    *,
    num_heads: int = 8,
    eps: float = 1e-5,
) -> torch.Tensor:
    """The infusion with our Triton kernels (varlen attention core, fused residual + LayerNorm) and torch GEMMs.

    Shapes as in `object_infusion`; fp16, bf16 or fp32 on CUDA (or CPU under `TRITON_INTERPRET=1`).
    Reads the offsets and region maps on the host (one small copy when they live on the GPU). Raises on
    inputs that require grad. No value validation (`object_infusion` does it).
    """
    tensors = _float_inputs(queries, local_feats, global_feats, local_weights, global_weights)
    refuse_grad("object_infusion_triton", **tensors)
    bad = {n: t.dtype for n, t in tensors.items() if t.dtype != queries.dtype}
    if queries.dtype not in KERNEL_FLOAT_DTYPES or bad:
        raise TypeError(
            f"object_infusion_triton: all float inputs must share one dtype among {dtype_names(KERNEL_FLOAT_DTYPES)}; "
            f"got queries {queries.dtype}, others {bad}"
        )
    channels = queries.shape[-1]
    if channels % num_heads or channels // num_heads > MAX_HEAD_DIM:
        raise ValueError(f"object_infusion_triton: C={channels} must split into {num_heads} heads of at most {MAX_HEAD_DIM} channels")
    queries, local_feats, global_feats = (t if t.stride(-1) == 1 else t.contiguous() for t in (queries, local_feats, global_feats))
    if queries.shape[0] == 0:
        return torch.empty(queries.shape, dtype=queries.dtype, device=queries.device)
    plans = _plans(queries, cu_local, region_local, cu_global, region_global, num_heads)
    return _infuse(
        queries, local_feats, global_feats, plans, local_weights, global_weights, num_heads, eps, _triton_core, _residual_layer_norm_triton
    )


def _object_infusion_torch(
    queries, local_feats, cu_local, region_local, global_feats, cu_global, region_global, local_weights, global_weights, *, num_heads, eps
):
    """The same algorithm in PyTorch (SDPA core, torch LayerNorm): the CPU and autograd path."""
    if queries.shape[0] == 0:
        return queries.clone()
    plans = _plans(queries, cu_local, region_local, cu_global, region_global, num_heads)
    return _infuse(
        queries, local_feats, global_feats, plans, local_weights, global_weights, num_heads, eps, sdpa_varlen, _residual_layer_norm_torch
    )


# ---- dispatcher ---------------------------------------------------------------------------------------


def object_infusion(
    queries: torch.Tensor,
    local_feats: torch.Tensor,
    cu_local: torch.Tensor,
    region_local: torch.Tensor,
    global_feats: torch.Tensor,
    cu_global: torch.Tensor,
    region_global: torch.Tensor,
    local_weights: InfusionWeights,
    global_weights: InfusionWeights,
    *,
    num_heads: int = 8,
    eps: float = 1e-5,
    validate: bool = True,
) -> torch.Tensor:
    """Object-Centric Infusion of PixelRefer-Lite: local then global pre-norm cross-attention with residuals.

    Args:
        queries: `[R, K, C]` object tokens (fp16, bf16, fp32; float64 on the torch backends).
        local_feats: `[N_l, C]` packed local feature maps (raster order per map), same dtype/device.
        cu_local: `[L+1]` int offsets of the local maps (start 0, non-decreasing, end N_l).
        region_local: `[R]` int, local map of each region (several regions may share one).
        global_feats, cu_global `[G+1]`, region_global `[R]`: the same for the whole-image maps.
        local_weights, global_weights: `InfusionWeights` (`ln_local` + `fusion_attention_local`, ...);
            any views (the fast paths compute on dense copies, so the layout never changes the result).
        num_heads: heads (8 upstream; must divide C). eps: LayerNorm epsilon (1e-5 upstream).
        validate: check offsets, region indices and that every referenced map is non-empty. Shapes,
            dtypes, devices and the range of the region indices are always checked; with `False` the
            offsets are trusted (non-decreasing, ending at the packed lengths) and must be right.

    Offsets and region maps may live on the CPU (preferred: no sync) or on the tensors' device; they are
    read on the host to plan the call. Unreferenced maps are never read (NaN there cannot leak).

    Returns:
        `[R, K, C]` in queries' dtype: `x2` of the module docstring (before `feat_linear`).

    Backends: `triton` (CUDA, or CPU under `TRITON_INTERPRET=1`), `torch` (same algorithm with SDPA;
    the CPU path, differentiable), `ref` (`object_infusion_ref`, per region).

    Example:
        >>> w = InfusionWeights.from_modules(module.ln_local, module.fusion_attention_local)
        >>> out = object_infusion(q, loc, cu_l, reg_l, glb, cu_g, reg_g, w, w_global)  # (R, K, C)
    """
    for name, value in (("cu_local", cu_local), ("region_local", region_local), ("cu_global", cu_global), ("region_global", region_global)):
        check_tensor(name, value, ndim=1, dtypes=INDEX_DTYPES)
    # the plan reads offsets and maps on the host: copy them once
    cu_local, region_local, cu_global, region_global = (
        t.cpu() if isinstance(t, torch.Tensor) else t for t in (cu_local, region_local, cu_global, region_global)
    )
    _check_inputs(
        queries, local_feats, cu_local, region_local, global_feats, cu_global, region_global, local_weights, global_weights,
        num_heads, eps, validate,
    )  # fmt: skip
    return dispatch(
        OP, _BACKENDS, queries, local_feats, cu_local, region_local, global_feats, cu_global, region_global, local_weights, global_weights,
        num_heads=num_heads, eps=eps,
    )  # fmt: skip


def _check_inputs(
    queries, local_feats, cu_local, region_local, global_feats, cu_global, region_global, local_weights, global_weights,
    num_heads, eps, validate,
):
    check_tensor("queries", queries, ndim=3, dtypes=FLOAT_DTYPES)
    num_regions, _, channels = queries.shape
    check_positive_int("num_heads", num_heads)
    if channels % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide the channel count C={channels} of queries")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise TypeError(f"eps must be a float > 0, got {eps!r}")
    floats = {"queries": queries}
    for stage, feats, cu, region_segment, weights in (
        ("local", local_feats, cu_local, region_local, local_weights),
        ("global", global_feats, cu_global, region_global, global_weights),
    ):
        check_tensor(f"{stage}_feats", feats, ndim=2, dtypes=FLOAT_DTYPES)
        if feats.shape[1] != channels:
            raise ValueError(f"{stage}_feats has {feats.shape[1]} channels but queries have C={channels}")
        floats[f"{stage}_feats"] = feats
        check_tensor(f"cu_{stage}", cu, ndim=1, dtypes=INDEX_DTYPES)
        check_tensor(f"region_{stage}", region_segment, ndim=1, dtypes=INDEX_DTYPES)
        if region_segment.numel() != num_regions:
            raise ValueError(f"region_{stage} has {region_segment.numel()} entries but queries have R={num_regions} regions")
        if not isinstance(weights, InfusionWeights):
            raise TypeError(f"{stage}_weights must be an InfusionWeights, got {type(weights).__name__}")
        expected = {
            "ln_weight": (channels,),
            "ln_bias": (channels,),
            "in_proj_weight": (3 * channels, channels),
            "in_proj_bias": (3 * channels,),
            "out_proj_weight": (channels, channels),
            "out_proj_bias": (channels,),
        }
        for name, shape in expected.items():
            value = check_tensor(f"{stage}_weights.{name}", getattr(weights, name), dtypes=FLOAT_DTYPES)
            if tuple(value.shape) != shape:
                raise ValueError(f"{stage}_weights.{name} must have shape {shape} for C={channels}, got {tuple(value.shape)}")
            floats[f"{stage}_weights.{name}"] = value
        num_maps = cu.numel() - 1
        if not validate and region_segment.numel() and not 0 <= int(region_segment.min()) <= int(region_segment.max()) < num_maps:
            # the cheap part of the check below, kept without validate: an index past the maps
            # would otherwise fail deep inside the planner
            raise ValueError(
                f"region_{stage} holds {region_segment.tolist()}; accepted: map indices 0..{num_maps - 1} (cu_{stage} has {num_maps} maps)"
            )
        if validate:
            check_offsets(f"cu_{stage}", cu, feats.shape[0])
            starts, segments = cu.tolist(), region_segment.tolist()
            for region, segment in enumerate(segments):
                if not 0 <= segment < len(starts) - 1:
                    raise ValueError(f"region_{stage}[{region}]={segment} refers to no {stage} map (cu_{stage} has {len(starts) - 1} maps)")
                if starts[segment + 1] == starts[segment]:
                    raise ValueError(
                        f"region_{stage}[{region}] refers to {stage} map {segment}, which is empty; every referenced map needs >= 1 row"
                    )
    bad = {n: t.dtype for n, t in floats.items() if t.dtype != queries.dtype}
    if bad:
        raise TypeError(f"all float inputs must share queries' dtype {queries.dtype}; got {bad}")
    check_same_device(**floats)


def _triton_reasons(
    queries, local_feats, cu_local, region_local, global_feats, cu_global, region_global, local_weights, global_weights, *, num_heads, eps
):
    reasons = triton_reasons(queries.device, queries.dtype)
    if queries.dtype in KERNEL_FLOAT_DTYPES:
        reasons += interpreter_dot_reasons(queries.device, queries.dtype)
    if queries.shape[-1] // num_heads > MAX_HEAD_DIM:
        reasons.append(f"head_dim={queries.shape[-1] // num_heads} > {MAX_HEAD_DIM}")
    tensors = _float_inputs(queries, local_feats, global_feats, local_weights, global_weights)
    return reasons + grad_reasons(**tensors)


def _ref_run(*args, num_heads, eps):
    return object_infusion_ref(*args, num_heads=num_heads, eps=eps)


_BACKENDS = (
    Backend("triton", "triton", _triton_reasons, object_infusion_triton),
    Backend("torch", "torch", no_reasons, _object_infusion_torch),
    Backend("ref", "torch", no_reasons, _ref_run),
)


def backend_report(device: torch.device, dtype: torch.dtype) -> list[tuple[str, list[str]]]:
    """`(backend, reasons)` in priority order for a small call (2 regions, C=144, 2 heads of 72)."""
    channels = 144
    queries = torch.zeros(2, 4, channels, device=device, dtype=dtype)
    feats = torch.zeros(6, channels, device=device, dtype=dtype)
    cu, regions = torch.tensor([0, 6]), torch.tensor([0, 0])
    weights = InfusionWeights(
        feats[0], feats[0],
        torch.zeros(3 * channels, channels, device=device, dtype=dtype), torch.zeros(3 * channels, device=device, dtype=dtype),
        torch.zeros(channels, channels, device=device, dtype=dtype), feats[0],
    )  # fmt: skip
    args = (queries, feats, cu, regions, feats, cu, regions, weights, weights)
    return [(b.name, b.reasons(*args, num_heads=2, eps=1e-5)) for b in _BACKENDS]
