"""Batched k-means (Lloyd) over ragged regions: PixelRefer's object-token clustering.

Each region `r` has `n_r` pooled tokens `x_1..x_n` (`[n_r, C]`, rows `cu_tokens[r]:cu_tokens[r+1]`
of a packed `[N, C]` tensor). A region with `n_r > K` is reduced to K centroids:

- init: `c_k = x[idx[r, k]]` (`kmeans_init_indices`: the official random order, or evenly spaced);
- up to `num_iters` times (5 in the full model, 3 in Lite):
  `label_i = argmin_k Σ_d (x_id - c_kd)²` (exact squared L2, ties to the lowest k);
  `new_k = mean{x_i : label_i = k}`, or `c_k` when the cluster is empty;
  stop and keep the OLD `c` when `|c - new| <= atol + rtol·|new|` everywhere (`torch.allclose`);
  else `c = new`;
- the K centroids are returned in init order.

A region with `n_r <= K` keeps its tokens unclustered: rows `0..n_r-1` of its output, zeros after.
Its count is `n_r` (full model) or K (`pad_to_clusters=True`, the Lite model's zero padding).

Replaces `kmeans_fast` of `pixelrefer/model/region_encoder.py` (and Lite's), which runs per region
with a Python list over the K clusters (a host sync each), a `[n, K, C]` broadcast and a
data-dependent `allclose` exit. Here every region of a batch is clustered at once:

- the reference (also the CPU path) pads the clustered regions to `[R, n_max, C]` and uses batched
  matmuls (distances by expansion rank the centroids; exact differences decide wherever the
  expansion's rounding could matter), and drops converged regions from the batch;
- the Triton path runs, per iteration, an assign kernel (regions × token blocks, exact differences)
  and an update kernel (regions × channel blocks: one-hot sums, empty clusters, the allclose test),
  with per-region convergence flags in device memory: no host sync with `init="deterministic"` and
  a host bound `max_region_tokens`, so the whole op can be captured in a CUDA graph.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._dispatch import Backend, dispatch, no_reasons
from ._launch import MAX_GRID_YZ, device_guard, grad_reasons, refuse_grad, tile_configs
from ._runtime import triton_reasons
from ._triton import loop_bound, tl, triton
from ._validate import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    KERNEL_FLOAT_DTYPES,
    check_finite_screened,
    check_offsets,
    check_optional_count,
    check_positive_int,
    check_tensor,
    dtype_names,
)

__all__ = ["INIT_MODES", "kmeans_init_indices", "kmeans_ref", "kmeans_triton", "kmeans", "backend_report"]

INIT_MODES = ("deterministic", "parity")
# Lloyd iterations accepted (the released models run 5 or 3; upstream's early stop ends most runs in
# fewer than 20). Bounds the run time and the Triton path's [iterations, R] flag buffer.
MAX_ITERS = 1000
# The Triton path launches two kernels per iteration without reading anything back; every this many
# iterations it reads one flag vector (one host sync) and stops launching once every region has
# converged. Runs of at most this many iterations (the models') never sync.
CONVERGENCE_CHECK_EVERY = 8


# ----------------------------------------------------------------------------------------------------
# Reference (also the CPU path)
# ----------------------------------------------------------------------------------------------------


def kmeans_ref(
    tokens: torch.Tensor,
    cu_tokens: torch.Tensor,
    num_clusters: int,
    *,
    num_iters: int = 5,
    init="deterministic",
    generator: torch.Generator | None = None,
    pad_to_clusters: bool = False,
    max_region_tokens: int | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference of `kmeans` (same signature and result), vectorised over padded regions.

    Computes in float32 (float64 for float64 tokens); the centroids are rounded to the tokens' dtype
    after each update, as the official code keeps them in that dtype. Differentiable with respect to
    `tokens` (through the means). On CUDA it synchronises a few times (region sizes, early exit);
    the Triton path does not.
    """
    if validate:
        _validate_kmeans_args(tokens, cu_tokens, num_clusters, num_iters, init, generator, max_region_tokens, atol, rtol)
    _check_iters(num_iters)
    dtype, device = tokens.dtype, tokens.device
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    K, C = num_clusters, tokens.shape[1]
    starts = cu_tokens[:-1].long()
    counts = cu_tokens[1:].long() - starts  # (R,)
    init_rows = _resolve_init(init, counts, K, generator)
    if init_rows is None:
        init_rows = kmeans_init_indices(counts, K, "deterministic")

    # regions with n <= K: their first n tokens, zeros after
    k = torch.arange(K, device=device)
    kept = k[None, :] < counts[:, None]  # (R, K)
    if tokens.shape[0]:
        out = tokens[torch.where(kept, starts[:, None] + k[None, :], 0)] * kept[..., None]  # (R, K, C)
    else:
        out = tokens.new_zeros(len(counts), K, C)

    clustered = (counts > K).nonzero().squeeze(1)
    if clustered.numel():
        n = counts[clustered]
        n_max = int(n.max())
        offs = torch.arange(n_max, device=device)
        valid = offs[None, :] < n[:, None]  # (Rc, n_max)
        rows = torch.where(valid, starts[clustered, None] + offs[None, :], starts[clustered, None])
        x = tokens[rows].to(compute)  # (Rc, n_max, C), padding rows repeat the region's first token
        centroids = tokens[starts[clustered, None] + init_rows[clustered]].to(compute)  # (Rc, K, C)
        centroids = _lloyd(x, valid, centroids, num_iters, atol, rtol, dtype)
        out = out.index_copy(0, clustered, centroids.to(dtype))
    full = torch.full_like(counts, K)
    region_counts = torch.where(counts > K, full, full if pad_to_clusters else counts).to(torch.int32)
    return out, region_counts


def _lloyd(x, valid, centroids, num_iters: int, atol: float, rtol: float, dtype: torch.dtype) -> torch.Tensor:
    """Lloyd iterations with upstream's early stop on padded regions.

    `x [Rc, n, C]` (padding rows: any finite values), `valid [Rc, n]`, `centroids [Rc, K, C]`
    initial -> final centroids `[Rc, K, C]`. Each update is rounded to `dtype` (upstream keeps the
    centroids in the tokens' dtype). A region whose update passes the allclose test keeps its OLD
    centroids and leaves the batch, so later iterations only touch the regions still moving.
    """
    num_clusters = centroids.shape[1]
    x_sq = torch.linalg.vector_norm(x, dim=-1) ** 2  # (Rc, n)
    result = centroids
    active = torch.arange(len(x), device=x.device)  # regions still iterating
    for _ in range(num_iters):
        if active.numel() == 0:
            break
        labels = _nearest_centroid(x, x_sq, valid, centroids)  # (Ra, n)
        onehot = F.one_hot(labels, num_clusters).to(x.dtype) * valid[..., None]  # (Ra, n, K)
        sums = onehot.transpose(1, 2) @ x  # (Ra, K, C)
        members = onehot.sum(1)[..., None]  # (Ra, K, 1)
        new = torch.where(members > 0, sums / members.clamp(min=1), centroids).to(dtype).to(x.dtype)
        with torch.no_grad():  # allclose(old, new): |old - new| <= atol + rtol * |new|, in place
            tolerance = new.abs().mul_(rtol).add_(atol)
            close = torch.sub(centroids, new).abs_().le_(tolerance).flatten(1).all(1)  # (Ra,)
        if bool(close.any()):
            result = result.index_copy(0, active[close], centroids[close])
            keep = ~close
            active, x, x_sq, valid, new = (t[keep] for t in (active, x, x_sq, valid, new))
        centroids = new
    return result.index_copy(0, active, centroids)


def _nearest_centroid(x: torch.Tensor, x_sq: torch.Tensor, valid: torch.Tensor, centroids: torch.Tensor):
    """argmin_k of the exact squared distances `Σ_d (x_d - c_kd)²`, ties to the lowest k.

    `x [Rc, n, C]`, `x_sq = |x|² [Rc, n]`, `valid [Rc, n]`, `centroids [Rc, K, C]` -> `[Rc, n]`
    int64 (padding rows: arbitrary).

    The expansion `|c|² - 2x·c` (a batched matmul; |x|² is the same for every k) ranks the
    centroids. Its rounding error is below `4·C·u·(|x|² + max|c|²)` (`u` the unit roundoff); where the two best are
    closer than that, the exact sums of squared differences to all K centroids decide, so the
    expansion's cancellation never decides a label (data far from the origin just takes the exact path
    more often).
    """
    if centroids.shape[1] == 1:
        return torch.zeros(x.shape[:2], dtype=torch.int64, device=x.device)
    c_sq = torch.linalg.vector_norm(centroids, dim=-1) ** 2  # (Rc, K)
    approx = torch.baddbmm(c_sq[:, None, :], x, centroids.transpose(1, 2), alpha=-2)  # (Rc, n, K)
    best = approx.topk(2, dim=-1, largest=False)  # (Rc, n, 2) ascending
    labels = best.indices[..., 0].clone()
    scale = x_sq + c_sq.amax(-1, keepdim=True)  # (Rc, n)
    margin = _rounding_margin(x.shape[-1], approx.dtype)
    ambiguous = (best.values[..., 1] - best.values[..., 0] <= margin * scale) & valid
    region, token = ambiguous.nonzero(as_tuple=True)
    for chunk in range(0, region.numel(), _EXACT_CHUNK):
        r, i = region[chunk : chunk + _EXACT_CHUNK], token[chunk : chunk + _EXACT_CHUNK]
        exact = ((x[r, i, None, :] - centroids[r]) ** 2).sum(-1)  # (m, K)
        labels[r, i] = exact.argmin(-1)  # first minimum: the lowest k
    return labels


def _rounding_margin(channels: int, dtype: torch.dtype) -> float:
    """Worst-case rounding error of a difference of two expansions, relative to |x|² + max|c|².

    Each of |c|² and 2x·c is a sum of C products, off by at most C·u times its absolute sum, and
    both absolute sums are bounded by |x|² + |c|²; two expansions are subtracted: 4·C·u. It scales
    with C so narrow features (C = 144: 3.4e-5 in float32) do not send most tokens to the exact path
    that a margin fixed for C = 1152 (2.7e-4) would.
    """
    return 4 * max(channels, 1) * torch.finfo(dtype).eps / 2


# ambiguous tokens per exact-distance chunk (bounds the (m, K, C) temporary)
_EXACT_CHUNK = 256


# ----------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _region_active(changed_ptr, r, it, num_regions):
    """1 if the region still iterates at iteration `it`: the previous update ran and moved its
    centroids (an update skips a stopped region, so its flag stays 0 from then on)."""
    moved = tl.load(changed_ptr + tl.maximum(it - 1, 0) * num_regions + r)
    return tl.where(it == 0, 1, moved)


# The assign and update kernels' tile under the interpreter (see `tile_configs`).
_INTERPRETER_TILE = triton.Config({"BLOCK_N": 64, "BLOCK_C": 64}, num_warps=4)


@triton.jit(do_not_specialize=["num_regions"])
def _kmeans_init_kernel(
    # pointers
    tok_ptr,  # [N, C] tokens
    cu_ptr,  # [R+1] token offsets
    init_ptr,  # [R, K] int64 local row indices (unused when not HAS_INIT)
    cent_ptr,  # [2, R, K, C] centroid buffers; buffer 0 is written
    # sizes
    num_regions,
    k,
    c,
    # strides
    stride_tok_row,
    # constexprs
    HAS_INIT: tl.constexpr,  # False: evenly spaced rows floor(j * n / K), no index tensor
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program: region `pid0` × `BLOCK_C` channels; copies the K initial centroids."""
    r = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < c
    start = tl.load(cu_ptr + r).to(tl.int64)
    n = (tl.load(cu_ptr + r + 1) - tl.load(cu_ptr + r)).to(tl.int32)
    if n <= k:
        return
    base = r.to(tl.int64) * k * c
    for k0 in range(0, loop_bound(k), BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < k
        if HAS_INIT:
            local = tl.load(init_ptr + r.to(tl.int64) * k + kk, mask=k_ok, other=0).to(tl.int64)
        else:
            local = kk.to(tl.int64) * n.to(tl.int64) // k
        rows = start + local
        ok = k_ok[:, None] & c_ok[None, :]
        vals = tl.load(tok_ptr + rows[:, None] * stride_tok_row + offs_c[None, :], mask=ok, other=0.0)
        tl.store(cent_ptr + base + kk[:, None].to(tl.int64) * c + offs_c[None, :], vals, mask=ok)


@triton.autotune(
    configs=tile_configs(
        [
            triton.Config({"BLOCK_N": 16, "BLOCK_C": 16}, num_warps=4),
            triton.Config({"BLOCK_N": 32, "BLOCK_C": 16}, num_warps=4),
            triton.Config({"BLOCK_N": 16, "BLOCK_C": 32}, num_warps=8),
            triton.Config({"BLOCK_N": 32, "BLOCK_C": 32}, num_warps=8),
        ],
        interpreter=_INTERPRETER_TILE,
    ),
    key=["c", "k"],
)
@triton.jit(do_not_specialize=["num_regions", "it", "cur_buf"])
def _kmeans_assign_kernel(
    # pointers
    tok_ptr,  # [N, C] tokens
    cu_ptr,  # [R+1] token offsets
    cent_ptr,  # [2, R, K, C] centroid buffers
    changed_ptr,  # [iters, R] int32: 1 where an update moved the region's centroids
    labels_ptr,  # [N] int32 nearest centroid per token (written)
    # sizes
    num_regions,
    k,
    c,
    it,  # iteration index
    cur_buf,  # centroid buffer read at this iteration (0 or 1)
    # strides
    stride_tok_row,
    # constexprs
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program: region `pid0` × token blocks `pid1, pid1 + grid1, ...`; exact squared distances
    to all K centroids (`[BLOCK_N, BLOCK_K, BLOCK_C]` differences per step), argmin with ties to the
    lowest index."""
    r = tl.program_id(0)
    start = tl.load(cu_ptr + r).to(tl.int64)
    n = (tl.load(cu_ptr + r + 1) - tl.load(cu_ptr + r)).to(tl.int32)
    if n <= k:
        return
    if _region_active(changed_ptr, r, it, num_regions) == 0:
        return
    base = (cur_buf * num_regions + r).to(tl.int64) * k * c
    for n0 in range(loop_bound(tl.program_id(1) * BLOCK_N), loop_bound(n), loop_bound(tl.num_programs(1) * BLOCK_N)):
        rows = n0 + tl.arange(0, BLOCK_N)
        r_ok = rows < n
        best_d = tl.full((BLOCK_N,), float("inf"), tl.float32)
        best_k = tl.zeros((BLOCK_N,), tl.int32)
        for k0 in range(0, loop_bound(k), BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            k_ok = kk < k
            dist = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
            for c0 in range(0, loop_bound(c), BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                c_ok = offs_c < c
                x_ptrs = tok_ptr + (start + rows)[:, None] * stride_tok_row + offs_c[None, :]
                x = tl.load(x_ptrs, mask=r_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
                cent_ptrs = cent_ptr + base + kk[:, None].to(tl.int64) * c + offs_c[None, :]
                cent = tl.load(cent_ptrs, mask=k_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
                diff = x[:, None, :] - cent[None, :, :]
                dist += tl.sum(diff * diff, axis=2)
            dist = tl.where(k_ok[None, :], dist, float("inf"))
            chunk_d, chunk_k = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = chunk_d < best_d  # strict: an equal distance in a later chunk keeps the lower index
            best_k = tl.where(better, k0 + chunk_k, best_k)
            best_d = tl.where(better, chunk_d, best_d)
        tl.store(labels_ptr + start + rows, best_k, mask=r_ok)


@triton.autotune(
    configs=tile_configs(
        [
            triton.Config({"BLOCK_N": 32, "BLOCK_C": 64}, num_warps=4),
            triton.Config({"BLOCK_N": 64, "BLOCK_C": 64}, num_warps=4),
            triton.Config({"BLOCK_N": 32, "BLOCK_C": 128}, num_warps=4),
            triton.Config({"BLOCK_N": 64, "BLOCK_C": 128}, num_warps=8),
        ],
        interpreter=_INTERPRETER_TILE,
    ),
    key=["c", "k"],
)
@triton.jit(do_not_specialize=["num_regions", "it", "cur_buf"])
def _kmeans_update_kernel(
    # pointers
    tok_ptr,  # [N, C] tokens
    cu_ptr,  # [R+1] token offsets
    labels_ptr,  # [N] int32 labels from the assign kernel
    cent_ptr,  # [2, R, K, C] centroid buffers: reads cur_buf, writes 1 - cur_buf
    changed_ptr,  # [iters, R] int32, zero-initialised; set to 1 where the centroids moved
    # sizes
    num_regions,
    k,
    c,
    it,
    cur_buf,
    # convergence test, torch.allclose(old, new): |old - new| <= atol + rtol * |new|
    atol,
    rtol,
    # strides
    stride_tok_row,
    # constexprs
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program: region `pid0` × `BLOCK_C` channels; cluster sums by one-hot matmul over the
    region's tokens, means (empty clusters keep their centroid), the allclose test on this slice."""
    r = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < c
    start = tl.load(cu_ptr + r).to(tl.int64)
    n = (tl.load(cu_ptr + r + 1) - tl.load(cu_ptr + r)).to(tl.int32)
    if n <= k:
        return
    if _region_active(changed_ptr, r, it, num_regions) == 0:
        return
    cur = (cur_buf * num_regions + r).to(tl.int64) * k * c
    nxt = ((1 - cur_buf) * num_regions + r).to(tl.int64) * k * c
    moved = 0
    for k0 in range(0, loop_bound(k), BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < k
        sums = tl.zeros((BLOCK_K, BLOCK_C), tl.float32)
        sizes = tl.zeros((BLOCK_K,), tl.float32)
        for n0 in range(0, loop_bound(n), BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            r_ok = rows < n
            lab = tl.load(labels_ptr + start + rows, mask=r_ok, other=-1)
            x_ptrs = tok_ptr + (start + rows)[:, None] * stride_tok_row + offs_c[None, :]
            x = tl.load(x_ptrs, mask=r_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            onehot = (lab[:, None] == kk[None, :]).to(tl.float32)  # (BLOCK_N, BLOCK_K)
            # "ieee": no TF32, the sums stay exact fp32 accumulations like the official mean
            sums = tl.dot(tl.trans(onehot), x, acc=sums, input_precision="ieee")
            sizes += tl.sum(onehot, axis=0)
        ok = k_ok[:, None] & c_ok[None, :]
        offs = kk[:, None].to(tl.int64) * c + offs_c[None, :]
        old = tl.load(cent_ptr + cur + offs, mask=ok, other=0.0).to(tl.float32)
        mean = tl.math.div_rn(sums, tl.zeros_like(sums) + tl.maximum(sizes, 1.0)[:, None])
        new = tl.where(sizes[:, None] > 0, mean, old).to(cent_ptr.dtype.element_ty)
        tl.store(cent_ptr + nxt + offs, new, mask=ok)
        new = new.to(tl.float32)
        close = tl.abs(old - new) <= atol + rtol * tl.abs(new)
        moved += tl.sum((ok & ~close).to(tl.int32))
    if moved > 0:
        tl.store(changed_ptr + it * num_regions + r, 1)


@triton.jit(do_not_specialize=["num_regions", "num_iters"])
def _kmeans_output_kernel(
    # pointers
    tok_ptr,  # [N, C] tokens
    cu_ptr,  # [R+1] token offsets
    cent_ptr,  # [2, R, K, C] centroid buffers
    changed_ptr,  # [max(iters, 1), R] int32 convergence flags
    out_ptr,  # [R, K, C] output tokens
    counts_ptr,  # [R] int32 output counts
    # sizes
    num_regions,
    k,
    c,
    num_iters,
    # strides
    stride_tok_row,
    # constexprs
    PAD_TO_CLUSTERS: tl.constexpr,  # Lite convention: count K for every region
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program: region `pid0` × `BLOCK_C` channels; writes its K output rows: the centroids of
    the iteration where it stopped (clustered regions) or its tokens then zeros (n <= K)."""
    r = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < c
    start = tl.load(cu_ptr + r).to(tl.int64)
    n = (tl.load(cu_ptr + r + 1) - tl.load(cu_ptr + r)).to(tl.int32)
    clustered = n > k
    # stopped at the first iteration whose update did not move: the centroids it read are the result
    stop = num_iters
    for s in range(0, loop_bound(num_iters)):
        moved = tl.load(changed_ptr + s * num_regions + r)
        stop = tl.where(clustered & (stop == num_iters) & (moved == 0), s, stop)
    base = ((stop % 2) * num_regions + r).to(tl.int64) * k * c
    out_base = r.to(tl.int64) * k * c
    for k0 in range(0, loop_bound(k), BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        ok = (kk < k)[:, None] & c_ok[None, :]
        from_cent = (tl.zeros((BLOCK_K,), tl.int32) + n) > k  # the scalar test as a row vector
        offs = kk[:, None].to(tl.int64) * c + offs_c[None, :]
        cent = tl.load(cent_ptr + base + offs, mask=ok & from_cent[:, None], other=0.0)
        own_ptrs = tok_ptr + (start + kk)[:, None] * stride_tok_row + offs_c[None, :]
        own = tl.load(own_ptrs, mask=ok & ((kk < n) & ~from_cent)[:, None], other=0.0)
        tl.store(out_ptr + out_base + offs, tl.where(from_cent[:, None], cent, own).to(out_ptr.dtype.element_ty), mask=ok)
    if pid_c == 0:
        if PAD_TO_CLUSTERS:
            count = k
        else:
            count = tl.minimum(n, k).to(tl.int32)
        tl.store(counts_ptr + r, count)


# ----------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------


def _block_k(num_clusters: int) -> int:
    # tl.dot needs every block dimension >= 16; 32 covers the released models' K in one chunk
    return min(32, max(16, triton.next_power_of_2(num_clusters)))


def kmeans_triton(
    tokens: torch.Tensor,
    cu_tokens: torch.Tensor,
    num_clusters: int,
    *,
    num_iters: int = 5,
    init="deterministic",
    generator: torch.Generator | None = None,
    pad_to_clusters: bool = False,
    max_region_tokens: int | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher of `kmeans` (same signature and result). Inference only.

    Syncs with the host only for `init="parity"` (region sizes; pass an index tensor built from
    host-known sizes instead), when `max_region_tokens` is None (one `max`) and, for runs longer
    than `CONVERGENCE_CHECK_EVERY` iterations, once per that many iterations to stop launching when
    every region has converged. Otherwise it can be captured in a CUDA graph, after one warm-up call
    outside the capture (autotuning).
    """
    refuse_grad("kmeans", tokens=tokens)
    if validate:
        _validate_kmeans_args(tokens, cu_tokens, num_clusters, num_iters, init, generator, max_region_tokens, atol, rtol)
    _check_iters(num_iters)
    if tokens.dtype not in KERNEL_FLOAT_DTYPES:
        raise TypeError(f"kmeans_triton: tokens dtype {tokens.dtype} not supported; accepted: {dtype_names(KERNEL_FLOAT_DTYPES)}")
    # tokens pass a row stride; the offsets and init indices are read as dense vectors
    if tokens.stride(1) != 1:
        tokens = tokens.contiguous()
    cu_tokens = cu_tokens.contiguous()
    device = tokens.device
    num_regions, num_channels, K = cu_tokens.numel() - 1, tokens.shape[1], num_clusters
    out = torch.empty(num_regions, K, num_channels, device=device, dtype=tokens.dtype)
    counts = torch.empty(num_regions, device=device, dtype=torch.int32)
    if num_regions == 0:
        return out, counts
    region_sizes = cu_tokens[1:] - cu_tokens[:-1]  # (R,)
    if max_region_tokens is None:
        max_region_tokens = int(region_sizes.max())
    clusters_any = max_region_tokens > K
    init_rows = None
    if clusters_any:
        init_rows = _resolve_init(init, region_sizes.long(), K, generator)
    cent = torch.empty(2, num_regions, K, num_channels, device=device, dtype=tokens.dtype)  # (2, R, K, C)
    changed = torch.zeros(max(num_iters, 1), num_regions, device=device, dtype=torch.int32)
    labels = torch.empty(tokens.shape[0], device=device, dtype=torch.int32)
    block_k, block_c = _block_k(K), 128
    grid_rc = (num_regions, triton.cdiv(num_channels, block_c))

    def assign_grid(meta):  # token blocks past the grid limit are looped over inside a program
        return (num_regions, min(triton.cdiv(max_region_tokens, meta["BLOCK_N"]), MAX_GRID_YZ))

    def update_grid(meta):
        return (num_regions, triton.cdiv(num_channels, meta["BLOCK_C"]))

    iters_run = 0
    with device_guard(tokens):
        if clusters_any:
            _kmeans_init_kernel[grid_rc](
                tokens, cu_tokens, init_rows if init_rows is not None else cu_tokens, cent,
                num_regions, K, num_channels, tokens.stride(0),
                HAS_INIT=init_rows is not None, BLOCK_K=block_k, BLOCK_C=block_c,
            )
            for it in range(num_iters):
                cur = it % 2
                _kmeans_assign_kernel[assign_grid](
                    tokens, cu_tokens, cent, changed, labels,
                    num_regions, K, num_channels, it, cur, tokens.stride(0),
                    BLOCK_K=block_k,
                )
                _kmeans_update_kernel[update_grid](
                    tokens, cu_tokens, labels, cent, changed,
                    num_regions, K, num_channels, it, cur, float(atol), float(rtol), tokens.stride(0),
                    BLOCK_K=block_k,
                )
                iters_run = it + 1
                # every region stopped: later launches would do nothing (one sync per check)
                if iters_run % CONVERGENCE_CHECK_EVERY == 0 and iters_run < num_iters and not bool(changed[it].any()):
                    break
        _kmeans_output_kernel[grid_rc](
            tokens, cu_tokens, cent, changed, out, counts,
            num_regions, K, num_channels, iters_run, tokens.stride(0),
            PAD_TO_CLUSTERS=pad_to_clusters, BLOCK_K=block_k, BLOCK_C=block_c,
        )
    return out, counts


# ----------------------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------------------


def _triton_kmeans_reasons(tokens, cu_tokens, num_clusters, **_) -> list[str]:
    reasons = triton_reasons(tokens.device, tokens.dtype, name="tokens dtype")
    reasons += grad_reasons(tokens=tokens)
    return reasons


_BACKENDS = (
    Backend("triton", "triton", _triton_kmeans_reasons, lambda *a, **k: kmeans_triton(*a, **k, validate=False)),
    Backend("torch", "torch", no_reasons, lambda *a, **k: kmeans_ref(*a, **k, validate=False)),
)


def kmeans(
    tokens: torch.Tensor,
    cu_tokens: torch.Tensor,
    num_clusters: int,
    *,
    num_iters: int = 5,
    init="deterministic",
    generator: torch.Generator | None = None,
    pad_to_clusters: bool = False,
    max_region_tokens: int | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means of every region's tokens at once (module docstring), official `kmeans_fast` semantics.

    Args:
        tokens: `[N, C]` packed tokens (fp16, bf16, fp32; fp64 runs the torch path). Rows past
            `cu_tokens[-1]` (padding from `region_pool(max_tokens=...)`) are ignored.
        cu_tokens: `[R+1]` int32/int64 offsets, on the tokens' device.
        num_clusters: K >= 1 (`mask_num`, 32 in the released models), at most the number of
            token rows N (checked when `validate`).
        num_iters: Lloyd iterations, 0 to `MAX_ITERS` (1000; official: 5 full, 3 Lite). 0 returns
            the initial centroids (the sampled tokens). Runs longer than `CONVERGENCE_CHECK_EVERY`
            (8) iterations read a convergence flag back every 8 iterations on the Triton path.
        init: `"deterministic"` (default; evenly spaced rows, no host sync, CUDA-graph capturable),
            `"parity"` (the official `randperm` order from `generator` or the global CPU RNG; needs
            the region sizes on the host: one sync on a GPU), or a `[R, K]` integer tensor of row
            indices local to each region (only rows of regions with n > K are read).
        generator: CPU generator for `"parity"`.
        pad_to_clusters: count K for every region (Lite) instead of `min(n, K)` (full). Either way
            the output rows past a region's `n` are zero when `n < K`.
        max_region_tokens: host bound on the largest region (sizes the grid; None: one sync).
        atol, rtol: the early-stop test `|old - new| <= atol + rtol * |new|` (`torch.allclose`);
            on convergence the OLD centroids are returned, as upstream.
        validate: check arguments and values (offsets, finiteness, init indices; one sync on a GPU).

    Returns:
        `(centroids [R, K, C] in tokens' dtype, counts [R] int32)`. Accumulation is fp32; the
        centroids are rounded to the tokens' dtype after every update (as upstream). A region with
        no tokens gives zeros and count 0 (full) or K (Lite).

    CPU: the vectorised PyTorch reference (or Triton's interpreter under `TRITON_INTERPRET=1`).

    Example:
        >>> centroids, counts = kmeans(tokens, cu_tokens, 32, num_iters=5, init="parity")
    """
    if validate:
        _validate_kmeans_args(tokens, cu_tokens, num_clusters, num_iters, init, generator, max_region_tokens, atol, rtol)
    _check_iters(num_iters)
    return dispatch(
        "kmeans", _BACKENDS, tokens, cu_tokens, num_clusters,
        num_iters=num_iters, init=init, generator=generator, pad_to_clusters=pad_to_clusters,
        max_region_tokens=max_region_tokens, atol=atol, rtol=rtol,
    )


def backend_report(device: torch.device, dtype: torch.dtype) -> list[tuple[str, list[str]]]:
    """`(backend, reasons)` in priority order for a small representative call on `device`/`dtype`."""
    tokens = torch.zeros(40, 8, device=device, dtype=dtype)
    cu = torch.tensor([0, 40], device=device, dtype=torch.int32)
    return [(b.name, b.reasons(tokens, cu, 4)) for b in _BACKENDS]


# ----------------------------------------------------------------------------------------------------
# Initial centroids
# ----------------------------------------------------------------------------------------------------


def kmeans_init_indices(
    counts, num_clusters: int, mode: str = "deterministic", *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Row indices (local to each region) of the initial centroids.

    Args:
        counts: `[R]` tokens per region (integer tensor or list).
        num_clusters: K >= 1.
        mode: `"deterministic"`: evenly spaced rows `floor(k * n / K)`, computed on `counts`'
            device with no host sync; `"parity"`: the official order, `torch.randperm(n)[:K]` drawn
            from `generator` (default: the global CPU generator) once per region with `n > K`, in
            region order, so after the same `torch.manual_seed` the official code draws the same
            numbers. Parity needs the counts on the host (a CUDA `counts` syncs once).
        generator: a CPU `torch.Generator` for `"parity"`, or a sequence of R of them, one per
            region (a server gives each request's regions that request's generator, so its draws do
            not depend on the other requests of the batch).

    Returns:
        `[R, K]` int64: on `counts`' device (deterministic) or the CPU (parity). Rows of regions
        with `n <= K` are `0..K-1` (those regions are not clustered; the rows are unused).
    """
    check_positive_int("num_clusters", num_clusters)
    if mode not in INIT_MODES:
        raise ValueError(f"mode must be one of {INIT_MODES}, got {mode!r}")
    counts = torch.as_tensor(counts)
    if counts.dim() != 1 or counts.dtype.is_floating_point or counts.dtype == torch.bool:
        raise TypeError(
            "counts must be a 1-D integer tensor (tokens per region), "
            f"got {counts.dtype} of shape {tuple(counts.shape)}"
        )
    counts = counts.long()
    k = torch.arange(num_clusters, device=counts.device)
    if mode == "deterministic":
        spaced = k[None, :] * counts[:, None] // num_clusters  # (R, K)
        return torch.where(counts[:, None] > num_clusters, spaced, k[None, :].expand_as(spaced))
    if isinstance(generator, Sequence):
        if len(generator) != counts.numel():
            raise ValueError(
                f"generator has {len(generator)} entries for {counts.numel()} regions; give one per region"
            )
        generators = list(generator)
    else:
        generators = [generator] * counts.numel()
    for g in generators:
        _check_generator(g)
    indices = k[None, :].repeat(counts.numel(), 1).cpu()  # (R, K)
    for r, n in enumerate(counts.tolist()):
        if n > num_clusters:
            indices[r] = torch.randperm(n, generator=generators[r])[:num_clusters]
    return indices


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------


def _check_generator(generator) -> None:
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        raise TypeError(
            "generator must be None or a CPU torch.Generator (the official code samples on the CPU), "
            f"got {generator!r}"
        )


def _validate_kmeans_args(tokens, cu_tokens, num_clusters, num_iters, init, generator, max_region_tokens, atol, rtol):
    check_tensor("tokens", tokens, ndim=2)
    if tokens.dtype not in FLOAT_DTYPES:
        raise TypeError(f"tokens has dtype {tokens.dtype}; accepted: {dtype_names(FLOAT_DTYPES)}")
    check_tensor("cu_tokens", cu_tokens, ndim=1, dtypes=INDEX_DTYPES, device=tokens.device)
    check_positive_int("num_clusters", num_clusters)
    _check_iters(num_iters)
    if num_clusters > max(tokens.shape[0], 1):
        raise ValueError(
            f"num_clusters={num_clusters} exceeds the {tokens.shape[0]} token rows; accepted: "
            "1 <= num_clusters <= the number of tokens (more clusters than tokens only pads with zeros)"
        )
    for name, value in (("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
            raise ValueError(f"{name} must be a real number >= 0, got {value!r}")
    if isinstance(init, str):
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES} or a [R, K] integer tensor of row indices, got {init!r}")
    elif isinstance(init, torch.Tensor):
        if init.dtype not in INDEX_DTYPES or init.shape != (cu_tokens.numel() - 1, num_clusters):
            raise ValueError(
                f"init tensor must be int32/int64 of shape [R, K] = [{cu_tokens.numel() - 1}, {num_clusters}], "
                f"got {init.dtype} {tuple(init.shape)}"
            )
    else:
        raise TypeError(f"init must be one of {INIT_MODES} or a [R, K] integer tensor, got {type(init).__name__}")
    _check_generator(generator)
    check_optional_count("max_region_tokens", max_region_tokens, meaning="a host bound on tokens per region")
    offsets = check_offsets("cu_tokens", cu_tokens, tokens.shape[0], exact=False)  # spare rows allowed
    sizes = [b - a for a, b in zip(offsets, offsets[1:])]
    if max_region_tokens is not None and sizes and max(sizes) > max_region_tokens:
        raise ValueError(f"max_region_tokens={max_region_tokens} is below the largest region ({max(sizes)} tokens)")
    check_finite_screened("tokens", tokens[: offsets[-1]])
    if isinstance(init, torch.Tensor):
        n = torch.tensor(sizes, dtype=torch.int64)[:, None]
        idx = init.detach().to("cpu", torch.int64)
        bad = ((idx < 0) | (idx >= n)) & (n > num_clusters)
        if bad.any():
            r, k = bad.nonzero()[0].tolist()
            raise ValueError(
                f"init[{r}, {k}] = {int(idx[r, k])} is not a row of region {r} ({sizes[r]} tokens); "
                "accepted: 0 <= index < n_r"
            )


def _check_iters(num_iters) -> None:
    check_positive_int("num_iters", num_iters, minimum=0)
    if num_iters > MAX_ITERS:
        raise ValueError(f"num_iters={num_iters} is above the cap of {MAX_ITERS} iterations; accepted: 0 <= num_iters <= {MAX_ITERS}")


def _resolve_init(init, counts: torch.Tensor, num_clusters: int, generator) -> torch.Tensor | None:
    """`[R, K]` int64 local row indices on `counts`' device (None: deterministic, computed in-kernel)."""
    if isinstance(init, torch.Tensor):
        return init.to(device=counts.device, dtype=torch.int64).contiguous()
    if init == "parity":
        return kmeans_init_indices(counts.cpu(), num_clusters, "parity", generator=generator).to(counts.device)
    return None
