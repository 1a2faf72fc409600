"""The server: batched throughput against the same requests served one at a time.

Both servers run in this process on 127.0.0.1 (uvicorn threads) on one model: a preset's full model
(random weights; speed does not depend on them), kernels on `auto`: `cpu-default`, and `tiny` (the
tests' sizes: what the server itself costs around the model; gated, with the gate's one thread). One timed
call posts `REQUESTS` requests from `CLIENTS` concurrent clients (`pixelrefer_fast.serve.loadgen`,
loopback only) and waits for every answer. Each request: the preset sample image (112x84) with 2
regions (RLE masks), `NEW_TOKENS` new tokens exactly (`min_new_tokens` on the model's generation
config, so eos cannot end rows early), greedy.

- fast: `--max-batch 16 --batch-window-ms 10`: requests arriving together share one `describe`.
- baseline: `--max-batch 1`: the same server code answering one request at a time.

Pairs `serve_cpu_fp32_<preset>_full_16req_2reg_16tok_batched_vs_one_at_a_time`; `extra_info` records
`requests_per_s`, `latency_p50_ms` and `latency_p99_ms` (per request) and the torch threads.
Run: `python -m pytest bench/bench_serve.py --benchmark-enable` (~2 min on 2 busy CPU cores, `tiny` ~15 s);
save with `--benchmark-json profiles/cpu/<date>_<sha>_serve.json`.
"""

from __future__ import annotations

import base64
import io

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from bench.harness import MODEL_SLOT, run_pair  # noqa: E402
from bench.shapes import TINY_PRESET  # noqa: E402
from pixelrefer_fast.masks import encode_rle  # noqa: E402
from pixelrefer_fast.profiling.presets import get_preset  # noqa: E402
from pixelrefer_fast.profiling.sample import sample_scene  # noqa: E402
from pixelrefer_fast.profiling.stages import build_model, make_processor  # noqa: E402
from pixelrefer_fast.profiling.sweep import SweepPoint  # noqa: E402

REQUESTS, CLIENTS, REGIONS, NEW_TOKENS = 16, 16, 2, 16
IMAGE_SIZE = (112, 84)
PRESETS = {"tiny": TINY_PRESET, "cpu-default": get_preset("cpu-default")}
SETTINGS = {"fast": {"max_batch": 16, "batch_window_ms": 10.0}, "baseline": {"max_batch": 1, "batch_window_ms": 0.0}}


def _bodies() -> list[dict]:
    from PIL import Image

    scene = sample_scene(REGIONS, *IMAGE_SIZE)
    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    question = "Describe " + " and ".join(["<region>"] * REGIONS) + " in detail."
    return [{"model": "bench", "max_tokens": NEW_TOKENS, "seed": i,
             "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": question}]}],
             "regions": [{"rle": encode_rle(m)} for m in scene.masks]} for i in range(REQUESTS)]


def _pair(preset: str) -> str:
    return f"serve_cpu_fp32_{preset.replace('-', '')}_full_{REQUESTS}req_{REGIONS}reg_{NEW_TOKENS}tok_batched_vs_one_at_a_time"


def _engine(name: str):
    """The server engine of the preset's full model, in `MODEL_SLOT`."""
    from pixelrefer_fast.serve.engine import Engine

    def build():
        preset = PRESETS[name]
        built = build_model(preset, "full", torch.device("cpu"), torch.float32)
        point = SweepPoint(variant="full", regions=REGIONS, mask_num=preset.region.mask_num, image_size=IMAGE_SIZE,
                           max_tokens=None, frames=1, batch=REQUESTS)
        built.model.generation_config.min_new_tokens = NEW_TOKENS
        return Engine(built.model, make_processor(built, preset, point))

    return MODEL_SLOT.get(("serve", name), build)


@pytest.mark.parametrize("role", ["baseline", "fast"])
@pytest.mark.parametrize("preset", [pytest.param("tiny", marks=pytest.mark.gate), "cpu-default"])
def test_serve_cpu(benchmark, preset, role):
    from pixelrefer_fast.serve.app import ServerSettings, create_app
    from pixelrefer_fast.serve.loadgen import LoadClients
    from pixelrefer_fast.serve.local import serve_in_thread

    bodies = _bodies()
    settings = ServerSettings(model="bench", max_tokens_limit=NEW_TOKENS, **SETTINGS[role])
    results = []

    def load():
        result = clients.run(bodies, deadline_s=600)
        assert [a.status for a in result.answers] == [200] * REQUESTS, result.answers[0].body
        results.append(result)
        return result

    with serve_in_thread(create_app(settings, engine=_engine(preset))) as url, \
            LoadClients(url, CLIENTS, request_timeout_s=600) as clients:
        run_pair(benchmark, load, pair=_pair(preset), role=role, device="cpu", warmup=1, rounds=2 if preset != "tiny" else 3,
                 shape=f"{preset} full, {REQUESTS} requests x {REGIONS} regions, image {IMAGE_SIZE[0]}x"
                       f"{IMAGE_SIZE[1]}, {NEW_TOKENS} new tokens, {CLIENTS} clients",
                 threads=torch.get_num_threads(), **SETTINGS[role])
    timed = results[1:] or results
    latencies = sorted(a.seconds for r in timed for a in r.answers)
    benchmark.extra_info.update(
        requests_per_s=round(sum(len(r.answers) for r in timed) / sum(r.seconds for r in timed), 3),
        latency_p50_ms=round(latencies[len(latencies) // 2] * 1e3, 1),
        latency_p99_ms=round(latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))] * 1e3, 1),
    )
