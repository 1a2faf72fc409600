"""`RowText` (tokens -> text deltas, stop strings, budgets) and the per-region k-means generators."""

from __future__ import annotations

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
