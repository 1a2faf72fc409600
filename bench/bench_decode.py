"""Decoding: `describe()`'s fast loop against transformers' `generate` (the `"hf"` decoding), same run.

Both roles decode the same placed batch (one image and one region per item) with the same options
(greedy, the Qwen2.5 checkpoints' `repetition_penalty=1.1`, eos suppressed with `min_new_tokens`
so exactly `new_tokens` are made) through `pixelrefer_fast.decoding.generate_new_tokens`; the
processor runs once, outside the timed call. The timed call holds the prefill and the decode steps;
`extra_info` gives `ms_per_token` (call / new tokens) and `decode_ms_per_token` (the call minus
a separately timed prefill, over the decode steps).

Pairs (cases in `bench/shapes.py`):

- CPU, fp32: `decode_cpu_fp32_<case>_fast_vs_hf` for the `tiny` LLM (2 x 64) and the
  `cpu-default` preset (2 x 256) at batch 1 and 4;
- CUDA, bf16 (`gpu`): `decode_cuda_bf16_<case>_fast_vs_hf`, Lite-2B and 2B at batch 1 and 16; the
  fast role's step is a CUDA graph (`graph="auto"`), captured during warm-up.

Compaction pairs (`RAGGED_CPU`, `RAGGED_CUDA`): a ragged batch, row 0 running `new_tokens` while
`on_tokens` cancels the others after `RAGGED_SHORT` tokens (as the server ends rows at their
`max_tokens`), through `fast_generate` with `compact=True` (fast: the cancelled rows leave the
step) against `compact=False` (baseline: they ride every step until row 0 ends), checked every step:

- CPU, fp32 (gate): `decode_ragged_cpu_fp32_<case>_compact_vs_full`, the `cpu-default` Lite model,
  8 rows, 64 new tokens;
- CUDA, bf16 (`gpu`): `decode_ragged_cuda_bf16_<case>_compact_vs_full`, Lite-2B, 16 rows (the last
  benchmark of the file).

Run: `python -m pytest bench/bench_decode.py --benchmark-enable` (CPU cases about a minute).
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from bench.harness import MODEL_SLOT, run_pair
from bench.shapes import DECODE_CPU, DECODE_CUDA, RAGGED_CPU, RAGGED_CUDA, RAGGED_SHORT, DecodeCase
from pixelrefer_fast.decoding import fast_generate, generate_new_tokens, resolve_options
from pixelrefer_fast.profiling.presets import LLMShape, get_preset
from pixelrefer_fast.profiling.sample import sample_scene
from pixelrefer_fast.profiling.stages import build_model, make_processor
from pixelrefer_fast.profiling.sweep import SweepPoint
from pixelrefer_kernels import force

ROLES = {"fast": "fast", "baseline": "hf"}
COMPACT = {"fast": True, "baseline": False}
TINY_LLM = LLMShape(hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                    vocab_size=32768)

def _preset(name: str):
    if name == "tiny":
        return dataclasses.replace(get_preset("cpu-default"), name="tiny", llm=TINY_LLM)
    return get_preset(name)


def _model_and_batch(case: DecodeCase, device: torch.device, dtype: torch.dtype):
    preset = _preset(case.preset)
    built = MODEL_SLOT.get((case.preset, case.variant, str(device), dtype),
                           lambda: build_model(preset, case.variant, device, dtype))
    point = SweepPoint(variant=case.variant, regions=1, mask_num=preset.region.mask_num, image_size=case.image_size,
                       max_tokens=None, frames=1, batch=case.batch)
    processor = make_processor(built, preset, point)
    scene = sample_scene(1, *case.image_size)
    items = [dict(image=scene.image, masks=list(scene.masks), question="Describe <region> in detail.")] * case.batch
    batch = built.model.place_inputs(processor(items))
    return built.model, processor, batch


def _measure(benchmark, case: DecodeCase, role: str, device: torch.device, dtype: torch.dtype, pair: str):
    model, processor, batch = _model_and_batch(case, device, dtype)
    options = {"repetition_penalty": 1.1, "min_new_tokens": case.new_tokens}
    plan = resolve_options(model.generation_config, processor.tokenizer, case.new_tokens, options)
    prefill_plan = resolve_options(model.generation_config, processor.tokenizer, 1, options | {"min_new_tokens": 1})

    def call(p=plan):
        with force("auto"):
            return generate_new_tokens(model, batch, p, decoding=ROLES[role], seed=0)

    info = dict(dtype=str(dtype).replace("torch.", ""), shape=case.describe(), preset=case.preset, variant=case.variant,
                batch=case.batch, new_tokens=case.new_tokens, prompt_tokens=int(batch["input_ids"].shape[1]),
                threads=torch.get_num_threads(), decoding=ROLES[role], llm_attention=model.config._attn_implementation)
    tokens = run_pair(benchmark, call, pair=pair, role=role, device=device, warmup=2, **info)
    assert tokens.shape == (case.batch, case.new_tokens)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        prefill = []
        for _ in range(3):  # the prefill (and first token) alone, for the decode-only figure
            start = time.perf_counter()
            call(prefill_plan)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            prefill.append(time.perf_counter() - start)
        total, first = stats.stats.median, sorted(prefill)[1]
        benchmark.extra_info["ms_per_token"] = round(total * 1e3 / case.new_tokens, 3)
        benchmark.extra_info["prefill_ms"] = round(first * 1e3, 3)
        benchmark.extra_info["decode_ms_per_token"] = round(max(total - first, 0.0) * 1e3 / (case.new_tokens - 1), 3)


def _measure_ragged(benchmark, case: DecodeCase, role: str, device: torch.device, dtype: torch.dtype, pair: str):
    model, processor, batch = _model_and_batch(case, device, dtype)
    plan = resolve_options(model.generation_config, processor.tokenizer, case.new_tokens,
                           {"repetition_penalty": 1.1, "min_new_tokens": case.new_tokens})
    ends = [case.new_tokens] + [RAGGED_SHORT] * (case.batch - 1)

    def call():
        received = [0] * case.batch

        def on_tokens(chunk):
            for row, tokens in enumerate(chunk.tokens):
                received[row] += len(tokens)
            return [row for row, end in enumerate(ends) if received[row] >= end]

        model_kwargs = dict(plan.model_kwargs, kmeans_generator=torch.Generator().manual_seed(0))
        with force("auto"):
            return fast_generate(model, batch, plan.sampling, model_kwargs=model_kwargs, check_every=1,
                                 on_tokens=on_tokens, compact=COMPACT[role])

    info = dict(dtype=str(dtype).replace("torch.", ""), shape=case.describe(), preset=case.preset, variant=case.variant,
                batch=case.batch, new_tokens=case.new_tokens, short_rows_tokens=RAGGED_SHORT,
                prompt_tokens=int(batch["input_ids"].shape[1]), threads=torch.get_num_threads(),
                compact=COMPACT[role], llm_attention=model.config._attn_implementation)
    tokens = run_pair(benchmark, call, pair=pair, role=role, device=device, warmup=2, **info)
    assert tokens.shape == (case.batch, case.new_tokens)
    assert (tokens[1:, RAGGED_SHORT:] == plan.sampling.pad_token_id).all()


@pytest.mark.parametrize("role", ["baseline", "fast"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in DECODE_CPU])
def test_decode_cpu(benchmark, case, role):
    _measure(benchmark, case, role, torch.device("cpu"), torch.float32, f"decode_cpu_fp32_{case.name}_fast_vs_hf")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case, role", [pytest.param(c, r, id=f"{c.name}-{r}") for c in DECODE_CUDA for r in ("baseline", "fast")]
)
def test_decode_cuda(benchmark, case, role):
    _measure(benchmark, case, role, torch.device("cuda"), torch.bfloat16, f"decode_cuda_bf16_{case.name}_fast_vs_hf")


@pytest.mark.gate
@pytest.mark.parametrize("role", ["baseline", "fast"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in RAGGED_CPU])
def test_decode_ragged_cpu(benchmark, case, role):
    _measure_ragged(benchmark, case, role, torch.device("cpu"), torch.float32,
                    f"decode_ragged_cpu_fp32_{case.name}_compact_vs_full")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case, role", [pytest.param(c, r, id=f"{c.name}-{r}") for c in RAGGED_CUDA for r in ("baseline", "fast")]
)
def test_decode_ragged_cuda(benchmark, case, role):
    _measure_ragged(benchmark, case, role, torch.device("cuda"), torch.bfloat16,
                    f"decode_ragged_cuda_bf16_{case.name}_compact_vs_full")
