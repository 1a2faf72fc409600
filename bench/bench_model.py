"""The whole model: `describe()` end to end (processor + packed vision encoder + region encoder +
LLM prefill + greedy decode) on random-weight models built from the profiling presets
(`pixelrefer_fast.profiling`: speed does not depend on weight values), against our own eager
single-item path measured in the same run.

Fast: the batch in one `describe()` call, kernels on `auto` (Triton on CUDA) and the LLM attention
`from_pretrained` picks (SDPA without flash-attn). Baseline: the same model and items, one
`describe()` per item, kernels forced to torch (`pixelrefer_kernels.force("torch")`) and the LLM
attention switched to `eager`. Generation always runs exactly `new_tokens` steps (eos suppressed
with `min_new_tokens`). The image and masks are the package's drawn sample (`profiling/sample.py`).

Pairs (`extra_info`: `ms_per_call`, `peak_gb` (CUDA `max_memory_allocated` after the warm-up, weights included,
1 GB = 1e9 bytes), `regions_per_s`, the kernels and attention used; cases in `bench/shapes.py`):

- CUDA, bf16, the real 2B architectures (targets in `bench/thresholds.json`, checked by
  `bench/gate.py --machine cuda`):
  `model_cuda_bf16_lite2b_1img_1reg_32tok_vs_eager` (< 100 ms, < 4.5 GB),
  `model_cuda_bf16_2b_1img_1reg_32tok_vs_eager` (640x480 image, < 150 ms, < 6 GB),
  `model_cuda_bf16_lite2b_16img_4reg_16tok_vs_eager_items` (batch decode, >= 100 regions/s).
- CPU, fp32, the `cpu-default` preset (gate: a regression check of the model path):
  `model_cpu_fp32_<lite|full>_4img_2reg_16tok_vs_eager_items`, 4 images of 336x252 x 2 regions,
  16 new tokens (a small image, so the decode steps that batching saves weigh as they do on a GPU).

Run: `python -m pytest bench/bench_model.py --benchmark-enable` (the CPU pairs take ~15 s).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from bench.harness import MODEL_SLOT, run_pair
from bench.shapes import MODEL_CPU, MODEL_CUDA, ModelCase
from pixelrefer_fast.profiling.presets import get_preset
from pixelrefer_fast.profiling.sample import sample_scene
from pixelrefer_fast.profiling.stages import KERNEL_OPS, build_model, make_processor
from pixelrefer_fast.profiling.sweep import SweepPoint
from pixelrefer_kernels import force, last_backend

ROUNDS = {"fast": 5, "baseline": 3}  # timed describe() calls; CPU runs 5 of each (noisier machine)

def _model(case: ModelCase, device: torch.device, dtype: torch.dtype):
    """The built model and processor of `case`, reusing the previous one when the preset matches."""
    preset = get_preset(case.preset)
    built = MODEL_SLOT.get((case.preset, case.variant, str(device), dtype),
                           lambda: build_model(preset, case.variant, device, dtype))
    point = SweepPoint(variant=case.variant, regions=case.regions, mask_num=preset.region.mask_num,
                       image_size=case.image_size, max_tokens=None, frames=1, batch=case.items)
    return built.model, make_processor(built, preset, point)


@contextmanager
def _llm_attention(model, implementation: str):
    """The LLM attention switched to `implementation` (`eager`, `sdpa`) for the block."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _describe_calls(model, processor, case: ModelCase, role: str):
    """The timed callable: one batched `describe()` (fast) or one per item with torch kernels (baseline)."""
    scene = sample_scene(case.regions, *case.image_size)
    image, masks = scene.image, list(scene.masks)
    question = "Describe " + ", ".join(["<region>"] * case.regions) + " in detail."
    tokens = {"max_new_tokens": case.new_tokens, "min_new_tokens": case.new_tokens}

    def fast():
        with force("auto"):
            return model.describe(processor, images=[image] * case.items, masks=[masks] * case.items,
                                  questions=[question] * case.items, **tokens)

    def baseline():
        with force("torch"):
            return [model.describe(processor, images=[image], masks=[masks], questions=[question], **tokens)[0]
                    for _ in range(case.items)]

    return fast if role == "fast" else baseline


def _measure(benchmark, case: ModelCase, role: str, device: torch.device, dtype: torch.dtype, *, pair: str, rounds: int):
    model, processor = _model(case, device, dtype)
    fn = _describe_calls(model, processor, case, role)
    # the peak counts from after the warm-up: autotuning's trial buffers are not the model's memory
    reset_peak = (lambda: torch.cuda.reset_peak_memory_stats(device)) if device.type == "cuda" else None
    with _llm_attention(model, model.config._attn_implementation if role == "fast" else "eager"):
        answers = run_pair(benchmark, fn, pair=pair, role=role, device=device, warmup=1, rounds=rounds, after_warmup=reset_peak,
                           dtype=str(dtype).replace("torch.", ""), shape=case.describe(), preset=case.preset,
                           variant=case.variant, items=case.items, regions_per_call=case.items * case.regions,
                           new_tokens=case.new_tokens, llm_attention=model.config._attn_implementation,
                           kernels="auto" if role == "fast" else "torch")  # fmt: skip
    assert len(answers) == case.items
    info = benchmark.extra_info
    info["backends"] = {op: last_backend(op) for op in KERNEL_OPS[case.variant]}
    if device.type == "cuda":
        info["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
        info["gpu"] = torch.cuda.get_device_name(device)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        seconds = stats.stats.median
        info["ms_per_call"] = round(seconds * 1e3, 3)
        info["regions_per_s"] = round(case.items * case.regions / seconds, 2)


# ---- CPU (gated) ------------------------------------------------------------------------------------


@pytest.mark.gate
@pytest.mark.parametrize("role", ["baseline", "fast"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in MODEL_CPU])
def test_model_cpu(benchmark, case, role):
    _measure(benchmark, case, role, torch.device("cpu"), torch.float32,
             pair=f"model_cpu_fp32_{case.name}_vs_eager_items", rounds=5)


# ---- CUDA: the real 2B architectures ---------------------------------------------------------------


def _cuda_pair(case: ModelCase) -> str:
    return f"model_cuda_bf16_{case.name}_vs_eager" + ("_items" if case.items > 1 else "")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case, role",
    [pytest.param(c, r, id=f"{c.name}-{r}") for c in MODEL_CUDA for r in ("baseline", "fast")],
)
def test_model_cuda(benchmark, case, role):
    _measure(benchmark, case, role, torch.device("cuda"), torch.bfloat16, pair=_cuda_pair(case), rounds=ROUNDS[role])
