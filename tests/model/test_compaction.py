"""Compaction of the fast decode loop: rows that finish leave the step, the tokens do not change.

Eight rows of different prompt lengths (so different left padding) on a tiny checkpoint; rows end at
very different steps (cancelled by `on_tokens`, as the server ends a row at its `max_tokens`, or at
an eos). Compacted runs must give the tokens of an uncompacted run and of transformers' `generate`
(greedy, with the repetition penalty, and seeded sampling from the one batch generator), stream in
the original row numbering, and leave the bucket ready for a full batch again.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import pixelrefer_kernels
from pixelrefer_fast import PixelReferFastProcessor
from pixelrefer_fast.decoding import StaticDecoder, fast_generate, generate_new_tokens, resolve_options
from pixelrefer_fast.decoding.loop import compacted_row_counts
from tests.model.fixtures import box_mask
from tests.model.tiny_checkpoint import make_tiny_checkpoint

ROWS = 8
NEW = 24
NEVER = [7]  # an eos id the tiny model does not produce here (every result below is checked)
# tokens each row may generate before `on_tokens` cancels it: one row runs the whole budget
ENDS = [3, NEW, 5, 9, 2, 13, 6, 4]


def _item(index: int) -> dict:
    h = 56 + 6 * index
    image = np.random.default_rng(index).integers(0, 256, (h, 70, 3), dtype=np.uint8)
    question = "What is <region>?" + " Describe it in detail." * (index % 3)
    return dict(image=image, masks=[box_mask(h, 70, 8, 10, 30, 40)], question=question)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = make_tiny_checkpoint(tmp_path_factory.mktemp("compact"), "full", tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(directory)
    processor = PixelReferFastProcessor.from_pretrained(directory)
    model.set_special_token_ids(processor.tokenizer)
    batch = model.place_inputs(processor([_item(i) for i in range(ROWS)]))
    assert len(set(batch["attention_mask"].sum(1).tolist())) == ROWS  # every row its own left padding
    return model, processor, batch


class _RowCounts:
    """The rows of every one-token step the model ran since the last `take` (a hook on its embedding)."""

    def __init__(self):
        self.seen: list[int] = []

    def __call__(self, module, args, output):
        if args[0].shape[1] == 1:
            self.seen.append(args[0].shape[0])

    def take(self) -> list[int]:
        seen, self.seen = self.seen, []
        return seen


@pytest.fixture
def counts(setup):
    recorder = _RowCounts()
    handle = setup[0].model.embed_tokens.register_forward_hook(recorder)
    yield recorder
    handle.remove()


class _Cancel:
    """`on_tokens` that cancels row r after `ends[r]` tokens and keeps every chunk."""

    def __init__(self, ends):
        self.ends, self.chunks = ends, []
        self.received = [[] for _ in ends]

    def __call__(self, chunk):
        assert len(chunk.tokens) == len(chunk.finished) == len(self.ends)
        self.chunks.append(chunk)
        for row, tokens in enumerate(chunk.tokens):
            self.received[row].extend(tokens)
        return [r for r, n in enumerate(self.ends) if len(self.received[r]) >= n]


def _generate(model, processor, batch, decoding, options, on_tokens=None, compact=True, check_every=None, seed=5):
    plan = resolve_options(model.generation_config, processor.tokenizer, NEW, options)
    if decoding == "hf":
        with pixelrefer_kernels.force("torch"):
            return generate_new_tokens(model, batch, plan, decoding="hf", seed=seed, on_tokens=on_tokens)
    model_kwargs = {"kmeans_generator": torch.Generator().manual_seed(seed)}
    generator = torch.Generator().manual_seed(seed) if plan.sampling.do_sample else None
    with pixelrefer_kernels.force("torch"):
        return fast_generate(model, batch, plan.sampling, generator=generator, model_kwargs=model_kwargs,
                             check_every=check_every or (1 if on_tokens else 8), on_tokens=on_tokens,
                             compact=compact)


OPTIONS = [
    pytest.param({"eos_token_id": NEVER}, id="greedy"),
    pytest.param({"eos_token_id": NEVER, "repetition_penalty": 2.5, "min_new_tokens": 2}, id="greedy-penalty"),
    pytest.param({"eos_token_id": NEVER, "do_sample": True}, id="sample-checkpoint-warpers"),
    pytest.param({"eos_token_id": NEVER, "do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.3},
                 id="sample-plain"),
]


@pytest.mark.parametrize("options", OPTIONS)
def test_cancelled_rows_leave_the_step_tokens_unchanged(setup, options, counts):
    model, processor, batch = setup
    results, streams = {}, {}
    for name, decoding, compact in (("compact", "fast", True), ("full", "fast", False), ("hf", "hf", True)):
        streams[name] = _Cancel(ENDS)
        results[name] = _generate(model, processor, batch, decoding, options, streams[name], compact)
        results[name + " steps"] = counts.take()
    compact, full, hf = results["compact"], results["full"], results["hf"]
    assert compact.shape == (ROWS, NEW) and NEVER[0] not in compact.tolist() + hf.tolist()
    assert torch.equal(compact, full), f"compacted {compact.tolist()} != uncompacted {full.tolist()}"
    assert torch.equal(compact, hf), f"compacted {compact.tolist()} != hf {hf.tolist()}"
    # the steps ran on 8 rows, then 4 (3 rows left after 5 tokens), 2, 1: 8 + 4 + 2 + 1 + ... < 8 x 23
    steps = results["compact steps"]
    assert results["full steps"] == [ROWS] * (NEW - 1)
    assert steps == sorted(steps, reverse=True) and set(steps) == {8, 4, 2, 1}, steps
    assert steps.count(1) == NEW - 1 - max(e for e in ENDS if e < NEW) + 1  # row 1 alone after the others
    pad = model.generation_config.pad_token_id
    for row, end in enumerate(ENDS):  # cancelled rows: their tokens kept, pad after them
        assert (compact[row, end:] == pad).all() and pad not in compact[row, :end].tolist()
        # streamed in the original numbering: each row's chunks are its tokens
        assert streams["compact"].received[row] == compact[row, :end].tolist() == streams["hf"].received[row]


def test_chunks_keep_the_original_numbering_across_compactions(setup, counts):
    model, processor, batch = setup
    stream = _Cancel(ENDS)
    tokens = _generate(model, processor, batch, "fast", {"eos_token_id": NEVER}, stream, check_every=2)
    assert set(counts.take()) == {8, 4, 2, 1}
    previous = [False] * ROWS
    for chunk in stream.chunks:
        for row in range(ROWS):
            assert previous[row] <= chunk.finished[row]  # a finished row stays finished
            if previous[row]:
                assert chunk.tokens[row] == []  # and gets no more tokens, compacted away or not
        previous = chunk.finished
    assert all(previous[:1] + previous[2:])  # row 1 runs to the budget: its last chunk is unfinished
    for row, end in enumerate(ENDS):  # cancelled after the check that saw `end` tokens: up to 1 more
        received = stream.received[row]
        assert end <= len(received) <= end + 1 and received == tokens[row, : len(received)].tolist()


def _eos_ending_rows(probe: list[list[int]], targets: dict[int, int]) -> list[int]:
    """Eos ids that end row r of `probe` at step `targets[r]` or soon after, and never end row 1."""
    eos, ends = [], dict(targets)
    for row in targets:
        for step in range(targets[row], NEW):
            token = probe[row][step]
            others = sum((probe[q][:e] for q, e in ends.items() if q != row), [])
            if token not in probe[1] + probe[row][:step] + others:
                eos.append(token)
                ends[row] = step
                break
    return eos


def test_rows_ending_at_their_eos_leave_the_step(setup, counts):
    model, processor, batch = setup
    probe = _generate(model, processor, batch, "hf", {"eos_token_id": NEVER}).tolist()
    eos = _eos_ending_rows(probe, {0: 1, 2: 3, 3: 6, 4: 2, 5: 12, 6: 4, 7: 9})
    options = {"eos_token_id": eos}
    counts.take()
    compact = _generate(model, processor, batch, "fast", options, check_every=2)
    steps = counts.take()
    full = _generate(model, processor, batch, "fast", options, compact=False, check_every=2)
    hf = _generate(model, processor, batch, "hf", options)
    ends = [next((i for i, t in enumerate(row) if t in eos), NEW) for row in hf.tolist()]
    assert ends[1] == NEW and len(set(ends)) >= 5, ends
    assert torch.equal(compact, full) and torch.equal(compact, hf), f"{compact.tolist()} != {hf.tolist()}"
    assert len(steps) == NEW - 1 and steps == sorted(steps, reverse=True) and steps[-1] < 4, steps


def test_the_next_call_starts_with_every_row_again(setup, counts):
    model, processor, batch = setup
    options = {"eos_token_id": NEVER, "do_sample": True}
    first = _generate(model, processor, batch, "fast", options, _Cancel(ENDS))
    assert min(counts.take()) == 1
    # the same bucket, no row cancelled: all 8 rows in every step, as a fresh bucket gives
    again = _generate(model, processor, batch, "fast", options)
    assert counts.take() == [ROWS] * (NEW - 1)
    model.__dict__.pop("_pixelrefer_decoders")
    fresh = _generate(model, processor, batch, "fast", options)
    assert torch.equal(again, fresh)
    repeat = _generate(model, processor, batch, "fast", options, _Cancel(ENDS))
    assert torch.equal(repeat, first)
    for row, end in enumerate(ENDS):
        assert torch.equal(first[row, :end], fresh[row, :end])


def test_compaction_runs_only_when_half_the_rows_are_done(setup, counts):
    model, processor, batch = setup
    ends = [2, 2, 2, NEW, NEW, NEW, NEW, NEW]  # 5 of 8 rows live: the step keeps its 8 rows
    _generate(model, processor, batch, "fast", {"eos_token_id": NEVER}, _Cancel(ends))
    assert counts.take() == [ROWS] * (NEW - 1)
    ends = [2, 2, 2, 2, NEW, NEW, NEW, 6]  # 4 live after 2 tokens (4 rows), 3 after 6 (still 4 rows)
    _generate(model, processor, batch, "fast", {"eos_token_id": NEVER}, _Cancel(ends))
    assert counts.take() == [ROWS] + [4] * (NEW - 2)


def test_row_counts_are_powers_of_two_below_the_batch():
    assert compacted_row_counts(1) == []
    assert compacted_row_counts(2) == [1]
    assert compacted_row_counts(8) == [4, 2, 1]
    assert compacted_row_counts(6) == [4, 2, 1]
    assert compacted_row_counts(16) == [8, 4, 2, 1]


def test_compact_must_be_a_bool(setup):
    model, processor, batch = setup
    with pytest.raises(TypeError, match="compact must be a bool"):
        _generate(model, processor, batch, "fast", {"eos_token_id": NEVER}, compact="yes")


def test_compacted_steps_compile_without_graph_breaks(setup):
    """Three options structures x 4 row counts: 12 compilations of the step's code, past dynamo's default
    recompile limit (8, an error under `fullgraph=True`)."""
    model, processor, batch = setup
    # fullgraph=True raises on any graph break; the eager backend keeps the test fast (no code generation)
    decoders = [StaticDecoder(model, ROWS, 256, "eager"),
                StaticDecoder(model, ROWS, 256, "compile", {"backend": "eager", "fullgraph": True})]
    torch._dynamo.reset()
    for options in ({}, {"do_sample": True}, {"do_sample": True, "top_k": 0, "repetition_penalty": 1.3}):
        plan = resolve_options(model.generation_config, processor.tokenizer, 12, {"eos_token_id": NEVER, **options})
        results = []
        with torch.inference_mode(), pixelrefer_kernels.force("torch"):
            for decoder in decoders:
                # checks after 1, 3, 5, ... tokens: 8 rows, then 4 (at 3 tokens), 2 (at 7), 1 (at 9)
                results.append(decoder.generate(batch, plan.sampling, generator=torch.Generator().manual_seed(3),
                                                model_kwargs={"kmeans_generator": torch.Generator().manual_seed(0)},
                                                check_every=2, on_tokens=_Cancel([2, 12, 2, 2, 2, 4, 6, 8])))
        assert torch.equal(results[0], results[1]), f"{options}: eager {results[0].tolist()} != compiled {results[1].tolist()}"
    assert len(decoders[1]._steps) == 12 and {key[1] for key in decoders[1]._steps} == {8, 4, 2, 1}
