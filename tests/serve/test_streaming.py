"""`RowText` (tokens -> text deltas, stop strings, budgets) and the per-region k-means generators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelrefer_fast.serve.streaming import RowText
from pixelrefer_kernels.kmeans import kmeans_init_indices
from tests.model.fixtures import make_tiny_tokenizer

EOS = 9999


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


def feed(row: RowText, ids: list[int]) -> tuple[str, list[str]]:
    deltas = []
    for token in ids:
        deltas.append(row.push(token))
        if row.done:
            deltas.append(row.final_delta())
            break
    return "".join(deltas), deltas


@pytest.mark.parametrize("text", [" Time 0.0s: the dog on a bed.\n", "The bridge crosses the river; été  "],
                         ids=["ascii", "utf8-and-trailing-space"])
def test_deltas_join_to_the_stripped_answer(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    row = RowText(tokenizer, {EOS}, max_tokens=1000, stop=[])
    joined, deltas = feed(row, ids + [EOS])
    assert row.finish_reason == "stop" and row.tokens[-1] == EOS
    assert joined == row.final_text() == tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert "\ufffd" not in "".join(deltas)  # split UTF-8 sequences are held back, never sent broken


def test_stop_string_cuts_and_is_never_sent(tokenizer):
    ids = tokenizer.encode("a dog on a bed beside a laptop", add_special_tokens=False)
    row = RowText(tokenizer, {EOS}, max_tokens=1000, stop=["beside", "zzz"])
    joined, deltas = feed(row, ids)
    assert row.finish_reason == "stop"
    assert joined == "a dog on a bed" and not any("bes" in d for d in deltas)


def test_budget_finishes_with_length(tokenizer):
    ids = tokenizer.encode("the skyline stands behind the bridge", add_special_tokens=False)
    row = RowText(tokenizer, {EOS}, max_tokens=3, stop=[])
    joined, _ = feed(row, ids)
    assert row.finish_reason == "length" and len(row.tokens) == 3
    assert joined == tokenizer.decode(ids[:3]).strip()


def test_kmeans_init_takes_one_generator_per_region():
    """Each region draws from its own generator: a request's draws do not depend on its batch-mates."""
    counts = torch.tensor([10, 3, 12, 9])
    mine = [torch.Generator().manual_seed(5) for _ in range(2)]
    batched = kmeans_init_indices(counts, 4, "parity", generator=[torch.Generator().manual_seed(1), mine[0],
                                                                 torch.Generator().manual_seed(2), mine[0]])
    alone = kmeans_init_indices(counts[[1, 3]], 4, "parity", generator=mine[1])
    assert torch.equal(batched[[1, 3]], alone)
    with pytest.raises(ValueError, match="one per region"):
        kmeans_init_indices(counts, 4, "parity", generator=mine)
    with pytest.raises(TypeError, match="CPU torch.Generator"):
        kmeans_init_indices(counts, 4, "parity", generator=[None, None, None, "seed"])


class _RecordingSink:
    cancelled = False

    def __init__(self):
        self.deltas, self.final, self.usage = [], None, None

    def started(self, prompt_tokens, region_tokens):
        self.usage = (prompt_tokens, region_tokens)

    def delta(self, text):
        self.deltas.append(text)

    def finished(self, delta, text, finish_reason, completion_tokens):
        self.final = (text, finish_reason, completion_tokens)
        self.deltas.append(delta)

    def failed(self, error):
        raise AssertionError(error)


@pytest.mark.parametrize("temperature", [0.0, 0.7], ids=["greedy", "mixed"])
def test_engine_runs_every_batch_on_the_fast_loop(loaded, monkeypatch, temperature):
    """A greedy batch and a batch mixing a greedy and a sampled request both decode with
    `decoding="fast"` (streamed through `on_tokens`), with per-request seeds and sampling values,
    and answer in full."""
    from pixelrefer_fast.serve.engine import Engine
    from pixelrefer_fast.serve.parse import DescribeJob, SamplingParams

    model, processor = loaded
    calls = []
    real = model.describe

    def describe(*args, **kwargs):
        calls.append((kwargs.get("decoding"), kwargs.get("seed"), kwargs.get("temperature")))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "describe", describe)
    image = np.random.default_rng(0).integers(0, 256, (84, 112, 3), dtype=np.uint8)
    mask = np.zeros((84, 112), dtype=np.uint8)
    mask[20:60, 30:90] = 1
    jobs = [DescribeJob("What is <region>?", [mask], SamplingParams(max_tokens=6, temperature=t, seed=3), image=image)
            for t in (0.0, temperature)]
    sinks = [_RecordingSink(), _RecordingSink()]
    Engine(model, processor, kernels="torch").run_batch(jobs, sinks)
    assert calls == [("fast", [3, 3], [0.0, temperature])]
    for sink in sinks:
        assert sink.usage[0] > 0 and sink.usage[1] > 0
        text, reason, completion = sink.final
        assert reason in ("stop", "length") and 0 < completion <= 6
        assert "".join(sink.deltas) == text  # the streamed deltas and the last one make the answer
