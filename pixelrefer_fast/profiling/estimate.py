"""How long and how much memory a profile will take, before it runs.

`estimate_run` adds up, per sweep point, the analytic FLOPs (`flops`) of the compute-bound stages
(vision encoder, LLM prefill, decode) for every warm-up and timed call, divides by this machine's
measured GEMM rate times `EFFICIENCY` (small ragged GEMMs, attention and host work run well below a
square GEMM's peak), and adds a fixed cost per call for the host-bound work (the processor, the decode
loop's launches) and the weights' initialisation. Memory is the weights plus the largest point's
activations (one LLM layer's MLP over the batch, the KV cache, a vision layer over the patches).

It is a guard against starting a 40-minute profile by accident, not a prediction. On the 2-core
development machine (1 thread): the default `cpu-default` sweep is estimated at ~30 s (the committed
profile took 26.5 s); the `2b` preset's default sweep at ~53 min with ~10 min for its slowest point
(a user measured 9 min per point).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from . import flops
from .presets import ArchPreset
from .sweep import SweepPoint, estimate_image_tokens, estimate_llm_tokens

# achieved / square-GEMM rate over a whole stage (measured: ~0.3-0.5 on 2 CPU cores for cpu-default)
EFFICIENCY = 0.4
# host-bound seconds per call: processor and Python overhead per item, per decode step
_HOST_S_PER_ITEM = {"cpu": 0.1, "cuda": 0.03}
_HOST_S_PER_DECODE_STEP = {"cpu": 0.01, "cuda": 0.02}
# random initialisation of the weights, bytes per second
_INIT_BYTES_PER_S = 1e9


@dataclass(frozen=True)
class RunEstimate:
    """The estimate of one profile.

    Attributes:
        seconds: wall time of the whole sweep.
        slowest_point_s: the longest point.
        memory_bytes: weights + the largest point's activations (the biggest variant).
        free_bytes: memory free now (CPU: available RAM, CUDA: free device memory); None if unknown.
        rate_gflops: the measured GEMM rate used (before `EFFICIENCY`).
        points: sweep points.
    """

    seconds: float
    slowest_point_s: float
    memory_bytes: int
    free_bytes: int | None
    rate_gflops: float
    points: int

    @property
    def fits(self) -> bool:
        return self.free_bytes is None or self.memory_bytes <= self.free_bytes

    def describe(self) -> str:
        """One line: time, points, the slowest point, memory against what is free."""
        memory = f"~{self.memory_bytes / 2**30:.1f} GiB of memory"
        if self.free_bytes is not None:
            memory += f" ({self.free_bytes / 2**30:.1f} GiB free)"
        return (f"~{format_seconds(self.seconds)} for {self.points} point(s) (slowest ~{format_seconds(self.slowest_point_s)}, "
                f"at ~{self.rate_gflops * EFFICIENCY:.0f} GFLOP/s achieved), {memory}")


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def measure_gemm_gflops(device: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of a square GEMM on `device` (best of a few; ~10 ms on a CPU, less on a GPU)."""
    n = 4096 if device.type == "cuda" else 384
    if device.type == "cpu":
        dtype = torch.float32  # CPU bf16/fp16 GEMMs are emulated: time the real fp32 path instead
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(4):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def free_memory_bytes(device: torch.device) -> int | None:
    """Free device memory (CUDA) or available RAM (CPU, needs psutil); None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def weight_bytes(preset: ArchPreset, variant: str, dtype_bytes: int) -> int:
    """Parameters of one variant's model in bytes (vision, LLM with embeddings, projector, region encoder)."""
    c, d = preset.vision.hidden_size, preset.llm.hidden_size
    count = flops.vision_weight_count(preset.vision) + flops.llm_weight_count(preset.llm, include_embedding=True)
    count += 2 * (c * d + d * d + 2 * d) + 2 * c + c  # projector, feat_linear, pos_linear
    if variant == "lite":
        count += 2 * (4 * c * c + 4 * c + 2 * c)  # two infusion attentions with their LayerNorms
    return count * dtype_bytes


def _vision_segments(preset: ArchPreset, point: SweepPoint) -> list[int]:
    """Patches per vision segment of one item (the global image or frames, crops, Lite's views)."""
    patch = preset.vision.patch_size
    crop = max(4 * point.mask_num, 64)  # crops are resized so the mask holds >= K cells, with context around it
    segments = [crop] * point.crops
    if point.variant == "full":
        merge = preset.vision.spatial_merge_size if point.frames > 1 else 1
        tokens = estimate_image_tokens(preset, point) * merge**2
        segments += [tokens // point.frames] * point.frames
    else:
        segments += [(preset.region.global_view // patch) ** 2] * point.frames
        segments += [(preset.region.local_view // patch) ** 2] * point.crops
    return segments


def point_flops(preset: ArchPreset, point: SweepPoint, decode_tokens: int) -> int:
    """FLOPs of one call of every compute-bound stage of `point` (vision, prefill, decode)."""
    segments = _vision_segments(preset, point) * point.batch
    seq_len = estimate_llm_tokens(preset, point, 0)
    total = flops.vision_encoder_cost(preset.vision, segments).flops
    total += flops.llm_prefill_cost(preset.llm, point.batch, seq_len).flops
    total += flops.llm_decode_steps_cost(preset.llm, point.batch, seq_len, min(decode_tokens, 64)).flops * max(decode_tokens / 64, 1)
    return int(total)


def activation_bytes(preset: ArchPreset, point: SweepPoint, decode_tokens: int) -> int:
    """Largest live activations of `point` in fp32 bytes (rough upper bound)."""
    llm, vision = preset.llm, preset.vision
    tokens = point.batch * estimate_llm_tokens(preset, point, decode_tokens)
    kv = 2 * llm.num_layers * tokens * llm.num_kv_heads * llm.head_dim * 4
    llm_layer = tokens * (3 * llm.intermediate_size + 6 * llm.hidden_size) * 4
    patches = sum(_vision_segments(preset, point)) * point.batch
    vision_layer = patches * (2 * vision.intermediate_size + 6 * vision.hidden_size) * 4
    return int(2 * kv + max(llm_layer, vision_layer) + point.batch * llm.vocab_size * 4)


def estimate_run(preset: ArchPreset, points: list[SweepPoint], *, decode_tokens: int, repeats: int, warmup: int,
                 device: torch.device, dtype: torch.dtype, rate_gflops: float | None = None) -> RunEstimate:
    """Estimate the sweep (module docstring); `rate_gflops` defaults to `measure_gemm_gflops`."""
    rate = rate_gflops if rate_gflops is not None else measure_gemm_gflops(device, dtype)
    dtype_bytes = torch.tensor([], dtype=dtype).element_size()
    calls = warmup + repeats
    kind = "cuda" if device.type == "cuda" else "cpu"
    per_point = []
    for point in points:
        compute = point_flops(preset, point, decode_tokens) / (rate * EFFICIENCY * 1e9)
        host = point.batch * _HOST_S_PER_ITEM[kind] + decode_tokens * _HOST_S_PER_DECODE_STEP[kind]
        per_point.append(calls * (compute + host))
    variants = sorted({p.variant for p in points})
    weights = {v: weight_bytes(preset, v, dtype_bytes) for v in variants}
    build = sum(weights.values()) / _INIT_BYTES_PER_S
    memory = max(weights[p.variant] + activation_bytes(preset, p, decode_tokens) for p in points)
    return RunEstimate(seconds=sum(per_point) + build, slowest_point_s=max(per_point), memory_bytes=memory,
                       free_bytes=free_memory_bytes(device), rate_gflops=rate, points=len(points))


__all__ = ["EFFICIENCY", "RunEstimate", "estimate_run", "format_seconds", "measure_gemm_gflops", "point_flops", "weight_bytes"]
