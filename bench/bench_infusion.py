"""Object-Centric Infusion (PixelRefer-Lite): `object_infusion` and the Lite region encoder against
upstream's semantics, and on CUDA against the best composition of SDPA / flash-attn / xformers that
already shares the K/V projections. Every fast result runs beside its baseline in the same session.

Pairs (`extra_info["pair"]`; `ratio` = baseline median / fast median, in both entries; shapes
from `bench/shapes.py`):

- `infusion_cpu_fp32_1img_8reg` (gate): one image, 8 regions, K=32, C=1152, 8 heads; one 24x24 global
  map shared by all regions, a distinct 16x16 local map per region. Baseline: upstream's two
  `nn.MultiheadAttention` calls (global keys repeated per region, `need_weights=True`).
- `lite_encoder_cpu_fp32_1img_8reg` (gate): the whole `FastLiteMaskExtractor` (pooling, k-means,
  infusion, `feat_linear` to D=1536) vs the official Lite `MaskExtractor` (pixelrefer_fast/reference).
- CUDA, bf16, 8 images x 8 regions: `infusion_cuda_bf16_vs_official` and
  `infusion_cuda_bf16_vs_<sdpa|flash_attn|xformers>_shared_kv` (flash-attn / xformers ones recorded
  as not measured when the package is missing).

Run: `pytest bench/bench_infusion.py --benchmark-enable` (CPU pairs take ~20 s on 2 cores).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.harness import run_pair, skip_pair
from bench.shapes import CROP_GRID, GLOBAL_GRID, INFUSION_CPU, INFUSION_CUDA, INFUSION_HEADS, LITE_ENCODER_CPU, LOCAL_GRID, C, D, K
from pixelrefer_kernels import InfusionWeights, has_flash_attn, has_xformers, object_infusion


class Stages:
    """ln_local + fusion_attention_local and ln_global + fusion_attention_global (PyTorch default init)."""

    def __init__(self, device, dtype):
        self.ln_local, self.ln_global = nn.LayerNorm(C), nn.LayerNorm(C)
        self.mha_local = nn.MultiheadAttention(C, INFUSION_HEADS, batch_first=True)
        self.mha_global = nn.MultiheadAttention(C, INFUSION_HEADS, batch_first=True)
        for m in (self.ln_local, self.ln_global, self.mha_local, self.mha_global):
            m.to(device, dtype).eval().requires_grad_(False)

    def weights(self):
        return InfusionWeights.from_modules(self.ln_local, self.mha_local), InfusionWeights.from_modules(self.ln_global, self.mha_global)


def _inputs(images, regions_per_image, device, dtype):
    regions = images * regions_per_image
    queries = torch.randn(regions, K, C, device=device, dtype=dtype)
    local = torch.randn(regions * LOCAL_GRID**2, C, device=device, dtype=dtype)
    glob = torch.randn(images * GLOBAL_GRID**2, C, device=device, dtype=dtype)
    cu_local = torch.arange(regions + 1) * LOCAL_GRID**2
    cu_global = torch.arange(images + 1) * GLOBAL_GRID**2
    region_local = torch.arange(regions)
    region_global = torch.arange(regions) // regions_per_image
    return queries, local, cu_local, region_local, glob, cu_global, region_global


def _official(stages, queries, local, glob, images, regions_per_image):
    """Upstream: per image, the regions' local maps and the image's global map repeated per region."""
    outputs = []
    for i in range(images):
        rows = slice(i * regions_per_image, (i + 1) * regions_per_image)
        q = queries[rows]
        local_keys = local.view(-1, LOCAL_GRID**2, C)[rows]
        global_keys = glob.view(images, -1, C)[i : i + 1].repeat(regions_per_image, 1, 1)
        x = q + stages.mha_local(stages.ln_local(q), local_keys, local_keys)[0]
        outputs.append(x + stages.mha_global(stages.ln_global(x), global_keys, global_keys)[0])
    return torch.cat(outputs)


def _composed(stages, queries, local, glob, images, regions_per_image, attention):
    """The best plain composition: K/V of every map projected once, one attention call per stage."""
    regions, head_dim = queries.shape[0], C // INFUSION_HEADS
    x = queries
    for norm, mha, feats, maps, rows in (
        (stages.ln_local, stages.mha_local, local, regions, 1),
        (stages.ln_global, stages.mha_global, glob, images, regions_per_image),
    ):
        q = F.linear(norm(x), mha.in_proj_weight[:C], mha.in_proj_bias[:C])
        q = q.view(maps, rows * K, INFUSION_HEADS, head_dim)  # regions of one map grouped
        kv = F.linear(feats, mha.in_proj_weight[C:], mha.in_proj_bias[C:]).view(maps, -1, 2, INFUSION_HEADS, head_dim)
        out = attention(q, kv[:, :, 0], kv[:, :, 1])  # (maps, rows*K, H, hd)
        x = x + mha.out_proj(out.reshape(regions, K, C))
    return x


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _flash(q, k, v):
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v)


def _xformers(q, k, v):
    from xformers.ops import memory_efficient_attention

    return memory_efficient_attention(q, k, v)


# ---- CPU (gated) ----------------------------------------------------------------------------------------


@pytest.mark.gate
@pytest.mark.parametrize("role", ["baseline", "fast"])
def test_infusion_cpu(benchmark, role):
    case = INFUSION_CPU
    torch.manual_seed(0)
    stages = Stages("cpu", torch.float32)
    args = _inputs(case.images, case.regions_per_image, "cpu", torch.float32)
    queries, local, _, _, glob, _, _ = args
    if role == "baseline":
        fn = lambda: _official(stages, queries, local, glob, case.images, case.regions_per_image)  # noqa: E731
    else:
        fn = lambda: object_infusion(*args, *stages.weights(), num_heads=INFUSION_HEADS)  # noqa: E731
    with torch.inference_mode():
        run_pair(benchmark, fn, pair=f"infusion_cpu_fp32_{case.name}", role=role, device="cpu", dtype="float32",
                 shape=case.describe())


@pytest.mark.gate
@pytest.mark.parametrize("role", ["baseline", "fast"])
def test_lite_encoder_cpu(benchmark, role):
    from pixelrefer_fast.compat import FastLiteMaskExtractor
    from pixelrefer_fast.reference.region_lite import OfficialLiteMaskExtractor

    torch.manual_seed(0)
    official = OfficialLiteMaskExtractor(SimpleNamespace(hidden_size=D), C, num_heads=INFUSION_HEADS).eval()
    module = official if role == "baseline" else FastLiteMaskExtractor.from_official(official).eval()
    regions = LITE_ENCODER_CPU.regions
    feats = [torch.randn(CROP_GRID, CROP_GRID, C) for _ in range(regions)]
    masks = [(torch.rand(CROP_GRID, CROP_GRID) > 0.5).float() for _ in range(regions)]
    glob = torch.randn(GLOBAL_GRID, GLOBAL_GRID, C)
    local = [torch.randn(LOCAL_GRID, LOCAL_GRID, C) for _ in range(regions)]
    boxes = [[((10 * r, 20, 10 * r + 200, 300), 480, 640) for r in range(regions)]]
    args = (feats, [masks], [glob] * regions, local, None, boxes, K)

    def call():
        torch.manual_seed(1)  # same k-means draws in both roles
        return module(*args)

    with torch.inference_mode():
        run_pair(benchmark, call, pair=f"lite_encoder_cpu_fp32_{LITE_ENCODER_CPU.name}", role=role, device="cpu",
                 dtype="float32", shape=f"{LITE_ENCODER_CPU.describe()}; masks on {CROP_GRID}x{CROP_GRID} crops (~128 cells), D={D}")


# ---- CUDA -----------------------------------------------------------------------------------------------

_COMPOSITIONS = {"sdpa": _sdpa, "flash_attn": _flash, "xformers": _xformers}


def _available(name):
    return name in ("official", "sdpa") or (name == "flash_attn" and has_flash_attn()) or (name == "xformers" and has_xformers())


@pytest.mark.gpu
@pytest.mark.parametrize("role", ["baseline", "fast"])
@pytest.mark.parametrize("baseline", ["official", *_COMPOSITIONS])
def test_infusion_cuda(benchmark, baseline, role):
    pair = "infusion_cuda_bf16_vs_official" if baseline == "official" else f"infusion_cuda_bf16_vs_{baseline}_shared_kv"
    if not _available(baseline):
        skip_pair(pair, f"{baseline} is not installed")
    torch.manual_seed(0)
    images, per_image = INFUSION_CUDA.images, INFUSION_CUDA.regions_per_image
    stages = Stages("cuda", torch.bfloat16)
    args = _inputs(images, per_image, "cuda", torch.bfloat16)
    queries, local, _, _, glob, _, _ = args
    if role == "fast":
        fn = lambda: object_infusion(*args, *stages.weights(), num_heads=INFUSION_HEADS)  # noqa: E731
    elif baseline == "official":
        fn = lambda: _official(stages, queries, local, glob, images, per_image)  # noqa: E731
    else:
        fn = lambda: _composed(stages, queries, local, glob, images, per_image, _COMPOSITIONS[baseline])  # noqa: E731
    with torch.inference_mode():
        run_pair(benchmark, fn, pair=pair, role=role, device="cuda", dtype="bfloat16", shape=INFUSION_CUDA.describe())
