"""The profiler times the production forward: the model's stage methods, wrapped on the instance while
`model(**placed)` runs, cover the forward's work, and their sum matches an untimed call."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

import pixelrefer_kernels
from pixelrefer_fast import PixelReferFastProcessor
from pixelrefer_fast.profiling.measure import StageTimer
from pixelrefer_fast.profiling.stages import stage_methods
from tests.model.fixtures import box_mask, disc_mask
from tests.model.tiny_checkpoint import make_tiny_checkpoint

ITEM = dict(image=np.random.default_rng(2).integers(0, 256, (56, 70, 3), dtype=np.uint8),
            masks=[disc_mask(56, 70, 20, 20, 9), box_mask(56, 70, 30, 35, 20, 30)], question="Compare <region> with <region>.")


@pytest.fixture(scope="module", params=["full", "lite"])
def setup(request, tmp_path_factory):
    directory = make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(directory)
    processor = PixelReferFastProcessor.from_pretrained(directory)
    return model, dict(processor([dict(ITEM)]))


def _targets(model):
    return {stage: [(model.model, name) for name in names] for stage, names in stage_methods(model).items()}


class _OpCounter(TorchDispatchMode):
    """Counts aten ops, and those run while no stage method is on the stack."""

    def __init__(self, depth):
        super().__init__()
        self.depth, self.total, self.outside = depth, 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        if not self.depth[0]:
            self.outside.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def test_stage_methods_cover_the_forward(setup):
    """Every stage method runs once per forward, and outside them only the glue runs (positions from
    the mask, the last position's logits), not a stage's work."""
    model, raw = setup
    depth = [0]
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        placed = model.place_inputs(raw)
        with StageTimer(torch.device("cpu"), _targets(model)) as timer:
            for methods in _targets(model).values():  # track "inside a stage" around the timed wrappers
                for owner, name in methods:
                    timed = getattr(owner, name)

                    def inside(*args, _timed=timed, **kwargs):
                        depth[0] += 1
                        try:
                            return _timed(*args, **kwargs)
                        finally:
                            depth[0] -= 1

                    object.__setattr__(owner, name, inside)
            with _OpCounter(depth) as ops:
                model(**placed, logits_to_keep=1)
            for methods in _targets(model).values():  # back to the timer's wrappers, which it removes
                for owner, name in methods:
                    object.__delattr__(owner, name)
                    timer._installed.remove((owner, name))
        calls = dict(timer.calls)
    expected = {stage: len(names) for stage, names in stage_methods(model).items()}
    assert calls == expected
    assert ops.total > 100 and len(ops.outside) <= 12, ops.outside
    assert not any(name in ("aten::addmm", "aten::mm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu")
                   for name in ops.outside[:-2]), ops.outside  # only lm_head's matmul may run outside


def test_stage_sum_matches_an_untimed_forward(setup):
    """Medians over interleaved runs of this thread's CPU time (one torch thread, so other processes on
    a loaded machine do not count): the timed stages add up to the untimed call within a generous but
    meaningful band (a stage timed twice, or one missing, leaves it)."""
    model, raw = setup
    timed_sums, untimed = [], []
    clock = time.thread_time
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _interleaved_runs(model, raw, clock, timed_sums, untimed)
    finally:
        torch.set_num_threads(threads)
    ratio = statistics.median(timed_sums) / statistics.median(untimed)
    assert 0.7 <= ratio <= 1.15, (timed_sums, untimed)


def _interleaved_runs(model, raw, clock, timed_sums, untimed):
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        model(**model.place_inputs(raw), logits_to_keep=1)  # warm-up
        for _ in range(7):
            placed = model.place_inputs(raw)
            begin = clock()
            model(**placed, logits_to_keep=1)
            untimed.append((clock() - begin) * 1e3)
            placed = model.place_inputs(raw)
            with StageTimer(torch.device("cpu"), _targets(model), clock=clock) as timer:
                model(**placed, logits_to_keep=1)
                timed_sums.append(sum(timer.collect().values()))


def test_the_timer_restores_the_model(setup):
    model, _ = setup
    with StageTimer(torch.device("cpu"), _targets(model)):
        assert "encode_pixels" in vars(model.model)
    assert not any(name in vars(model.model) for names in stage_methods(model).values() for name in names)
