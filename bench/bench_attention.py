"""Varlen (block-diagonal) attention: our Triton kernel against a per-image SDPA loop and flash-attn.

Pairs (``extra_info["pair"]``; ``ratio`` = baseline median / fast median, also in the fast entry):

- ``varlen_vit_cuda_bf16_vs_sdpa_loop``: the vision encoder's shape, 64 packed crops of 100-600 tokens,
  16 heads of 72, bf16; baseline: one SDPA call per crop (what a flash-attn-free port does).
- ``varlen_vit_cuda_bf16_vs_flash_attn``: the same against ``flash_attn_varlen_func`` (when installed).
- ``varlen_infusion_cuda_bf16_vs_sdpa``: the infusion's shape, 8 images x (8 regions x 32 queries)
  against 576 keys, 8 heads of 144; baseline: one batched SDPA call (segments of equal length).
- ``varlen_vit_cpu_fp32_vs_sdpa_loop``: the dispatcher on the CPU (it runs SDPA there) against the
  same loop: a check that dispatch adds no cost, not a speed-up (about 1x).

Run: ``pytest bench/bench_attention.py --benchmark-enable``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.harness import run_pair
from pixelrefer_kernels import force, has_flash_attn, varlen_attention

_medians: dict[str, float] = {}
_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _run(benchmark, fn, *, pair, role, device, **info):
    """``run_pair`` plus the fast/baseline ratio in the fast entry's ``extra_info``."""
    result = run_pair(benchmark, fn, pair=pair, role=role, device=device, **info)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        _medians[f"{pair}/{role}"] = stats.stats.median
        baseline = _medians.get(f"{pair}/baseline")
        if role == "fast" and baseline:
            benchmark.extra_info["ratio"] = baseline / stats.stats.median
    return result


def _packed(lengths_q, lengths_k, heads, head_dim, device, dtype):
    q = torch.randn(sum(lengths_q), heads, head_dim, device=device, dtype=dtype)
    k = torch.randn(sum(lengths_k), heads, head_dim, device=device, dtype=dtype)
    v = torch.randn(sum(lengths_k), heads, head_dim, device=device, dtype=dtype)
    cu_q = torch.tensor([0, *lengths_q], device=device).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0, *lengths_k], device=device).cumsum(0).to(torch.int32)
    return q, k, v, cu_q, cu_k


def _crop_lengths(count=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(100, 601, (count,), generator=generator).tolist()


def _sdpa_loop(q, k, v, lengths):
    """One SDPA call per image, as a port without flash-attn would write the vision encoder."""
    out = torch.empty_like(q)
    start = 0
    for n in lengths:
        rows = slice(start, start + n)
        out[rows] = F.scaled_dot_product_attention(q[rows].transpose(0, 1), k[rows].transpose(0, 1), v[rows].transpose(0, 1)).transpose(0, 1)
        start += n
    return out


def _flash(q, k, v, cu, max_len):
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len)


@_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("role", ["baseline", "fast"])
@pytest.mark.parametrize("baseline", ["sdpa_loop", "flash_attn"])
def test_varlen_vit_cuda(benchmark, baseline, role):
    if baseline == "flash_attn" and not has_flash_attn():
        pytest.skip("flash-attn is not installed")
    lengths = _crop_lengths()
    q, k, v, cu, _ = _packed(lengths, lengths, 16, 72, "cuda", torch.bfloat16)
    longest = max(lengths)
    if role == "fast":

        def fn():
            with force("triton"):
                return varlen_attention(q, k, v, cu, cu, longest, longest, validate=False)

    elif baseline == "sdpa_loop":
        fn = lambda: _sdpa_loop(q, k, v, lengths)  # noqa: E731
    else:
        fn = lambda: _flash(q, k, v, cu, longest)  # noqa: E731
    _run(benchmark, fn, pair=f"varlen_vit_cuda_bf16_vs_{baseline}", role=role, device="cuda", dtype="bfloat16",
         shape=f"64 crops of 100-600 tokens ({sum(lengths)} rows), 16 heads x 72")  # fmt: skip


@_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("role", ["baseline", "fast"])
def test_varlen_infusion_cuda(benchmark, role):
    images, queries, keys = 8, 8 * 32, 576
    q, k, v, cu_q, cu_k = _packed([queries] * images, [keys] * images, 8, 144, "cuda", torch.bfloat16)
    if role == "fast":

        def fn():
            with force("triton"):
                return varlen_attention(q, k, v, cu_q, cu_k, queries, keys, validate=False)

    else:

        def fn():
            grouped = [t.view(images, -1, 8, 144).transpose(1, 2) for t in (q, k, v)]  # (S, H, n, hd)
            return F.scaled_dot_product_attention(*grouped).transpose(1, 2).reshape(q.shape)

    _run(benchmark, fn, pair="varlen_infusion_cuda_bf16_vs_sdpa", role=role, device="cuda", dtype="bfloat16",
         shape="8 segments of 256 queries vs 576 keys, 8 heads x 144")  # fmt: skip


@pytest.mark.parametrize("role", ["baseline", "fast"])
def test_varlen_vit_cpu(benchmark, role):
    lengths = _crop_lengths(count=8)
    q, k, v, cu, _ = _packed(lengths, lengths, 16, 72, "cpu", torch.float32)
    if role == "fast":

        def fn():
            with force("torch"):
                return varlen_attention(q, k, v, cu, cu)

    else:
        fn = lambda: _sdpa_loop(q, k, v, lengths)  # noqa: E731
    _run(benchmark, fn, pair="varlen_vit_cpu_fp32_vs_sdpa_loop", role=role, device="cpu", dtype="float32",
         shape=f"8 crops of 100-600 tokens ({sum(lengths)} rows), 16 heads x 72")  # fmt: skip
