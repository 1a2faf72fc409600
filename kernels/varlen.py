"""Block-diagonal ("varlen") attention over packed segments: reference and Triton kernel.

Math, for every segment `s` and head `h` (non-causal):

    out[q_s, h] = softmax(scale * Q[q_s, h] @ K[k_s, h]^T) @ V[k_s, h]

where `q_s = cu_seqlens_q[s]:cu_seqlens_q[s+1]` and `k_s = cu_seqlens_k[s]:cu_seqlens_k[s+1]`. Rows of one
segment never see another segment's keys, so packed images (vision encoder) or the object tokens of the
regions of one image (Object-Centric Infusion) attend independently without a dense `[seq, seq]` mask.

Upstream: the vision encoder calls `flash_attn_varlen_func` (its eager and SDPA attention classes reference
undefined names, so flash-attn is the only path that runs); this kernel replaces it where flash-attn is not
installed and also runs fp32 and odd head dims.

What the kernel fuses: QK^T, scaling, an online (flash) softmax in fp32 and P@V in one pass per query
block; the [seq, seq] scores never reach memory. Head dims that are not a power of two (72, 144) are split
into a power-of-two main part plus a small power-of-two tail (72 = 64 + 16 masked, 144 = 128 + 16), so
the dots waste 10 % instead of the 44 % that padding 72 -> 128 or 144 -> 256 would cost.

Grid: axis 0 enumerates query blocks of all segments (segment-aligned, found by a binary search over
`cu_blocks`, the running count of blocks per segment, computed where the offsets live: no host sync), axis 1
the heads. Empty segments own no block; programs past the last block do nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._launch import MAX_GRID_YZ, device_guard, refuse_grad, tile_configs
from ._triton import TRITON_AVAILABLE, loop_bound, tl, triton
from ._validate import KERNEL_FLOAT_DTYPES, dtype_names

__all__ = ["varlen_attention_ref", "varlen_attention_triton", "MAX_HEAD_DIM", "head_dim_blocks"]

# Largest head dim the Triton kernel takes (main + tail blocks of at most 256 columns together).
MAX_HEAD_DIM = 256
# Smallest dot dimension tl.dot accepts on tensor cores.
_MIN_DOT = 16


def varlen_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Eager block-diagonal attention, one segment at a time (the float64 reference and the "eager" backend).

    Args:
        q: `[Nq, nh, hd]` packed queries (any float dtype, float64 included).
        k, v: `[Nk, nh, hd]` packed keys and values, same dtype and device.
        cu_seqlens_q, cu_seqlens_k: `[S+1]` int offsets of the S segments (start 0, end Nq / Nk).
        max_seqlen_q, max_seqlen_k: unused (accepted for signature parity with the dispatcher).
        softmax_scale: defaults to `1 / sqrt(hd)`.

    Returns:
        `[Nq, nh, hd]` in q's dtype. Scores and the product run in the input dtype; the softmax runs in
        float32 for 16-bit inputs (as transformers' eager attention does). A segment with queries but no
        keys gives zeros. Differentiable; runs on any device (CPU path). No argument checks here: use
        `pixelrefer_kernels.varlen_attention` for validated calls.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    out = torch.zeros_like(q)
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for (q0, q1), (k0, k1) in zip(zip(starts_q, starts_q[1:]), zip(starts_k, starts_k[1:])):
        if q1 == q0 or k1 == k0:
            continue
        qs, ks, vs = q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1), v[k0:k1].transpose(0, 1)  # (nh, n, hd)
        scores = torch.matmul(qs, ks.transpose(1, 2)) * scale  # (nh, nq, nk)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32 if q.element_size() < 4 else q.dtype).to(q.dtype)
        out[q0:q1] = torch.matmul(probs, vs).transpose(0, 1)  # (nq, nh, hd)
    return out


def head_dim_blocks(head_dim: int) -> tuple[int, int]:
    """`(BLOCK_D, BLOCK_DT)`: power-of-two main block and tail block (0: none) covering `head_dim`.

    72 -> (64, 16), 144 -> (128, 16), 48 -> (32, 16), 64 -> (64, 0), 200 -> (256, 0), 8 -> (16, 0).
    """
    main = max(_MIN_DOT, 1 << (head_dim.bit_length() - 1))
    tail = head_dim - main
    if tail <= 0:
        return main, 0
    tail_block = max(_MIN_DOT, _next_power_of_2(tail))
    if tail_block >= main:  # a tail as large as the main block: one padded block is as cheap
        return 2 * main, 0
    return main, tail_block


def _next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


# BLOCK_M is chosen by the launcher (the block table depends on it); the rest is autotuned. The
# interpreter runs the first entry.
@triton.autotune(
    configs=tile_configs(
        [
            triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3),
            triton.Config({"BLOCK_N": 64}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=2),
            triton.Config({"BLOCK_N": 128}, num_warps=8, num_stages=2),
            triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=2),
        ]
    )
    if TRITON_AVAILABLE
    else [],
    key=["head_dim", "BLOCK_M", "BLOCK_D", "BLOCK_DT"],
)
@triton.jit(do_not_specialize=["num_segments", "head_dim"])
def _varlen_attention_fwd_kernel(
    # pointers
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    cu_q_ptr,  # [S+1] query segment offsets
    cu_k_ptr,  # [S+1] key segment offsets
    cu_blocks_ptr,  # [S+1] int32 running count of BLOCK_M query blocks per segment
    # sizes
    num_segments,
    head_dim,
    qk_scale,  # softmax scale * log2(e): the softmax runs in base 2
    # strides, in elements (the last dim is contiguous)
    stride_q_row,
    stride_q_head,
    stride_k_row,
    stride_k_head,
    stride_v_row,
    stride_v_head,
    stride_o_row,
    stride_o_head,
    # constexprs
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,  # power-of-two main part of the head dim
    BLOCK_DT: tl.constexpr,  # power-of-two tail block covering head_dim - BLOCK_D (0: none)
    DOT_PRECISION: tl.constexpr,  # "ieee" keeps fp32 inputs exact; "tf32" for 16-bit inputs or if asked
):
    # One program: BLOCK_M query rows of one segment, one head, against all keys of that segment.
    pid_m = tl.program_id(0)
    head = tl.program_id(1)

    # Segment of this block: the largest s with cu_blocks[s] <= pid_m (empty segments own no block).
    lo = pid_m * 0
    hi = lo + num_segments
    while lo < hi:
        mid = (lo + hi + 1) // 2
        go_right = tl.load(cu_blocks_ptr + mid) <= pid_m
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid - 1)
    active = lo < num_segments  # False past the last block
    seg = tl.minimum(lo, num_segments - 1)
    block_in_seg = pid_m - tl.load(cu_blocks_ptr + seg)
    # Segment lengths fit int32; row offsets are int64 (rows * stride can pass 2**31).
    q_start = tl.load(cu_q_ptr + seg).to(tl.int64)
    q_len = tl.where(active, (tl.load(cu_q_ptr + seg + 1) - tl.load(cu_q_ptr + seg)).to(tl.int32), 0)
    k_start = tl.load(cu_k_ptr + seg).to(tl.int64)
    k_len = tl.where(active, (tl.load(cu_k_ptr + seg + 1) - tl.load(cu_k_ptr + seg)).to(tl.int32), 0)

    offs_m = block_in_seg * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < q_len
    rows_q = q_start + offs_m
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim

    q_base = q_ptr + head.to(tl.int64) * stride_q_head + rows_q[:, None] * stride_q_row
    q = tl.load(q_base + offs_d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if BLOCK_DT > 0:
        offs_dt = BLOCK_D + tl.arange(0, BLOCK_DT)
        mask_dt = offs_dt < head_dim
        q_tail = tl.load(q_base + offs_dt[None, :], mask=mask_m[:, None] & mask_dt[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if BLOCK_DT > 0:
        acc_tail = tl.zeros([BLOCK_M, BLOCK_DT], tl.float32)

    k_head = k_ptr + head.to(tl.int64) * stride_k_head
    v_head = v_ptr + head.to(tl.int64) * stride_v_head
    for start_n in range(0, loop_bound(k_len), BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < k_len
        rows_k = k_start + cols
        # Masked loads: rows of other segments and the head-dim padding may hold anything (even NaN).
        k_t = tl.load(k_head + rows_k[None, :] * stride_k_row + offs_d[:, None], mask=mask_n[None, :] & mask_d[:, None], other=0.0)
        scores = tl.dot(q, k_t, input_precision=DOT_PRECISION)
        if BLOCK_DT > 0:
            k_tail = tl.load(k_head + rows_k[None, :] * stride_k_row + offs_dt[:, None], mask=mask_n[None, :] & mask_dt[:, None], other=0.0)
            scores += tl.dot(q_tail, k_tail, input_precision=DOT_PRECISION)
        scores = tl.where(mask_n[None, :], scores * qk_scale, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(scores, 1))  # finite: every block has at least one key
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

        v_rows = v_head + rows_k[:, None] * stride_v_row
        v = tl.load(v_rows + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        p_v = p.to(v.dtype)  # fp32 stays fp32; 16-bit inputs feed the tensor cores in their dtype
        acc = acc * alpha[:, None] + tl.dot(p_v, v, input_precision=DOT_PRECISION)
        if BLOCK_DT > 0:
            v_tail = tl.load(v_rows + offs_dt[None, :], mask=mask_n[:, None] & mask_dt[None, :], other=0.0)
            acc_tail = acc_tail * alpha[:, None] + tl.dot(p_v, v_tail, input_precision=DOT_PRECISION)

    # No keys: acc and l_i are 0 and the output is zero, as in the reference.
    inv_l = 1.0 / tl.where(l_i > 0, l_i, 1.0)
    o_base = out_ptr + head.to(tl.int64) * stride_o_head + rows_q[:, None] * stride_o_row
    tl.store(o_base + offs_d[None, :], (acc * inv_l[:, None]).to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    if BLOCK_DT > 0:
        tl.store(o_base + offs_dt[None, :], (acc_tail * inv_l[:, None]).to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_dt[None, :])


def _block_m(head_dim: int, max_seqlen_q: int | None) -> int:
    # 128 query rows for head dims up to 64 + 16 (vision encoder, square blocks), 64 above (register budget
    # of the fp32 accumulators); never more than the longest segment needs (few-query infusion segments).
    block_d, block_dt = head_dim_blocks(head_dim)
    block = 128 if block_d + block_dt <= 128 else 64
    if max_seqlen_q is not None:
        block = min(block, max(_MIN_DOT, _next_power_of_2(max_seqlen_q)))
    return block


def varlen_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    softmax_scale: float | None = None,
    allow_tf32: bool = False,
) -> torch.Tensor:
    """Launch the Triton varlen attention kernel (no policy; the dispatcher validates values).

    Args:
        q: `[Nq, nh, hd]`, k / v: `[Nk, nh, hd]` in fp16, bf16 or fp32, one device; any row and head
            strides (views into a packed qkv buffer are fine), the head dim is made contiguous if needed.
        cu_seqlens_q, cu_seqlens_k: `[S+1]` int32/int64 offsets on q's device, or both on the CPU
            (then the block table is built on the host and the three small vectors reach the device in
            one copy, no device-side preparation).
        max_seqlen_q: optional host bound on the longest query segment (picks a smaller block for few queries).
        max_seqlen_k: unused (signature parity).
        softmax_scale: defaults to `1 / sqrt(hd)`.
        allow_tf32: fp32 dots in tf32 (faster on GPUs, ~1e-3 relative error); default exact fp32.

    Returns:
        `[Nq, nh, hd]` contiguous, q's dtype. Raises on inputs that require grad (inference only).
    """
    refuse_grad("varlen_attention_triton", q=q, k=k, v=v)
    if q.dtype not in KERNEL_FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"varlen_attention_triton: q, k, v must share one dtype among {dtype_names(KERNEL_FLOAT_DTYPES)}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3 or k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"varlen_attention_triton: expected q [Nq, nh, hd] and k, v [Nk, nh, hd]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    num_rows, num_heads, head_dim = q.shape
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"varlen_attention_triton: head_dim {head_dim} > {MAX_HEAD_DIM} is not supported")
    if num_heads > MAX_GRID_YZ:
        raise ValueError(f"varlen_attention_triton: {num_heads} heads exceed the grid limit {MAX_GRID_YZ}")
    if cu_seqlens_k.device != cu_seqlens_q.device or cu_seqlens_q.device not in (q.device, torch.device("cpu")):
        raise ValueError(f"varlen_attention_triton: cu_seqlens_q/k must both be on q's device ({q.device}) or both on the CPU; got {cu_seqlens_q.device}, {cu_seqlens_k.device}")
    if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.dim() != 1 or cu_seqlens_q.numel() < 1:
        raise ValueError(f"varlen_attention_triton: cu_seqlens_q and cu_seqlens_k must be 1-D of equal length S+1; got {tuple(cu_seqlens_q.shape)}, {tuple(cu_seqlens_k.shape)}")
    # q, k, v and out pass row and head strides; the offsets are read as dense vectors.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    cu_seqlens_q, cu_seqlens_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    num_segments = cu_seqlens_q.numel() - 1
    if num_rows == 0 or num_segments == 0:
        return out
    scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)

    block_m = _block_m(head_dim, max_seqlen_q)
    block_d, block_dt = head_dim_blocks(head_dim)
    lengths_q = cu_seqlens_q[1:] - cu_seqlens_q[:-1]  # (S,)
    cu_blocks = F.pad(torch.cumsum(torch.div(lengths_q + (block_m - 1), block_m, rounding_mode="floor"), 0, dtype=torch.int32), (1, 0))
    if cu_seqlens_q.device != q.device:
        tables = torch.stack([cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32), cu_blocks])
        cu_seqlens_q, cu_seqlens_k, cu_blocks = tables.to(q.device, non_blocking=True).unbind(0)
    num_blocks = triton.cdiv(num_rows, block_m) + num_segments  # bound on sum(ceil(len_s / BLOCK_M))
    if max_seqlen_q is not None:
        num_blocks = min(num_blocks, num_segments * triton.cdiv(max_seqlen_q, block_m))
    grid = (max(num_blocks, 1), num_heads)
    # fp32: exact "ieee" dots unless tf32 is asked for; 16-bit inputs: Triton's default ("tf32" has no
    # effect on fp16/bf16 operands).
    precision = "ieee" if q.dtype == torch.float32 and not allow_tf32 else "tf32"
    with device_guard(q):
        _varlen_attention_fwd_kernel[grid](
            q, k, v, out, cu_seqlens_q, cu_seqlens_k, cu_blocks,
            num_segments, head_dim, scale * math.log2(math.e),
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
            BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_DT=block_dt, DOT_PRECISION=precision,
        )  # fmt: skip
    return out

