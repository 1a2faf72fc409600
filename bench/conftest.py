"""pytest-benchmark hooks: every saved result records the machine (`bench/machine.py`) and the pairs
skipped on it (`bench/harness.skip_pair`). Benchmarks marked `gpu` skip without a CUDA device, and
every benchmark skips under `TRITON_INTERPRET=1` (the interpreter's timings mean nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.harness import MODEL_SLOT, SKIPPED_PAIRS
from bench.machine import machine_info as collect_machine_info
from pixelrefer_kernels import interpret_mode

BENCH_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def _free_the_model_slot():
    """Each benchmark module's model is freed when the module is done."""
    yield
    MODEL_SLOT.clear()


def pytest_collection_modifyitems(config, items):
    if interpret_mode():
        skip_all = pytest.mark.skip(reason="TRITON_INTERPRET is set: interpreter timings are meaningless, unset it")
        for item in items:
            if item.path.parent == BENCH_DIR:
                item.add_marker(skip_all)
        return
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["pixelrefer_fast"] = collect_machine_info()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["pixelrefer_fast_machine"] = collect_machine_info()
    output_json["skipped_pairs"] = dict(sorted(SKIPPED_PAIRS.items()))
