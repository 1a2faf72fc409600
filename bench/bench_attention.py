"""Varlen (block-diagonal) attention: our Triton kernel against a per-image SDPA loop and flash-attn.

Pairs (`extra_info["pair"]`; `ratio` = baseline median / fast median, in both entries; shapes
from `bench/shapes.py`):

- `varlen_vit_cuda_bf16_vs_sdpa_loop`: the vision encoder's shape, 64 packed crops of 100-600 tokens,
  16 heads of 72, bf16; baseline: one SDPA call per crop (what a flash-attn-free port does).
- `varlen_vit_cuda_bf16_vs_flash_attn`: the same against `flash_attn_varlen_func` (when installed;
  else recorded as not measured, `bench/harness.skip_pair`).
- `varlen_infusion_cuda_bf16_vs_sdpa`: the infusion's shape, 8 images x (8 regions x 32 queries)
  against 576 keys, 8 heads of 144; baseline: one batched SDPA call (segments of equal length).
- `varlen_vit_cpu_fp32_vs_sdpa_loop` (not gated): the dispatcher on the CPU (it runs the same SDPA
  loop there) against the loop itself over 8 crops: the dispatch overhead, about 1x (0.89-1.2x). No
  faster varlen path exists on the CPU, so it is not a gated speed-up (gate floors are >= 1).

Run: `pytest bench/bench_attention.py --benchmark-enable`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.harness import run_pair, skip_pair
from bench.shapes import VARLEN_INFUSION_CUDA, VARLEN_VIT_CPU, VARLEN_VIT_CUDA, VarlenCase
from pixelrefer_kernels import force, has_flash_attn, varlen_attention


def _packed(case: VarlenCase, device, dtype):
    """Random packed `q [Nq, H, hd]`, `k`, `v [Nk, H, hd]` and int32 offsets of a case."""
    lengths_q, lengths_k, heads, head_dim = case.lengths_q, case.lengths_k, case.heads, case.head_dim
    q = torch.randn(sum(lengths_q), heads, head_dim, device=device, dtype=dtype)
    k = torch.randn(sum(lengths_k), heads, head_dim, device=device, dtype=dtype)
    v = torch.randn(sum(lengths_k), heads, head_dim, device=device, dtype=dtype)
    cu_q = torch.tensor([0, *lengths_q], device=device).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0, *lengths_k], device=device).cumsum(0).to(torch.int32)
    return q, k, v, cu_q, cu_k


def _sdpa_loop(q, k, v, lengths):
    """One SDPA call per image, as a port without flash-attn would write the vision encoder."""
    out = torch.empty_like(q)
    start = 0
    for n in lengths:
        rows = slice(start, start + n)
        heads_first = (t[rows].transpose(0, 1) for t in (q, k, v))  # (nh, n, hd) each
        out[rows] = F.scaled_dot_product_attention(*heads_first).transpose(0, 1)
        start += n
    return out


def _flash(q, k, v, cu, max_len):
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len)


@pytest.mark.gpu
@pytest.mark.parametrize("role", ["baseline", "fast"])
@pytest.mark.parametrize("baseline", ["sdpa_loop", "flash_attn"])
def test_varlen_vit_cuda(benchmark, baseline, role):
    case = VARLEN_VIT_CUDA
    pair = f"varlen_vit_cuda_bf16_vs_{baseline}"
    if baseline == "flash_attn" and not has_flash_attn():
        skip_pair(pair, "flash-attn is not installed")
    q, k, v, cu, _ = _packed(case, "cuda", torch.bfloat16)
    longest = max(case.lengths_q)
    if role == "fast":

        def fn():
            with force("triton"):
                return varlen_attention(q, k, v, cu, cu, longest, longest, validate=False)

    elif baseline == "sdpa_loop":
        fn = lambda: _sdpa_loop(q, k, v, case.lengths_q)  # noqa: E731
    else:
        fn = lambda: _flash(q, k, v, cu, longest)  # noqa: E731
    run_pair(benchmark, fn, pair=pair, role=role, device="cuda", dtype="bfloat16", shape=case.describe())


@pytest.mark.gpu
@pytest.mark.parametrize("role", ["baseline", "fast"])
def test_varlen_infusion_cuda(benchmark, role):
    case = VARLEN_INFUSION_CUDA
    segments, queries, keys = len(case.lengths_q), case.lengths_q[0], case.lengths_k[0]
    q, k, v, cu_q, cu_k = _packed(case, "cuda", torch.bfloat16)
    if role == "fast":

        def fn():
            with force("triton"):
                return varlen_attention(q, k, v, cu_q, cu_k, queries, keys, validate=False)

    else:

        def fn():
            grouped = [t.view(segments, -1, case.heads, case.head_dim).transpose(1, 2) for t in (q, k, v)]  # (S, H, n, hd)
            return F.scaled_dot_product_attention(*grouped).transpose(1, 2).reshape(q.shape)

    run_pair(benchmark, fn, pair="varlen_infusion_cuda_bf16_vs_sdpa", role=role, device="cuda", dtype="bfloat16",
             shape=case.describe())


@pytest.mark.parametrize("role", ["baseline", "fast"])
def test_varlen_vit_cpu(benchmark, role):
    case = VARLEN_VIT_CPU
    q, k, v, cu, _ = _packed(case, "cpu", torch.float32)
    if role == "fast":

        def fn():
            with force("torch"):
                return varlen_attention(q, k, v, cu, cu)

    else:
        fn = lambda: _sdpa_loop(q, k, v, case.lengths_q)  # noqa: E731
    run_pair(benchmark, fn, pair="varlen_vit_cpu_fp32_vs_sdpa_loop", role=role, device="cpu", dtype="float32",
             shape=case.describe())
