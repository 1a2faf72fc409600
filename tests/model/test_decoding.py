"""The fast decode loop against transformers' generate, the official penalty semantics, option checks,
the device-only step (no host read, no graph break) and streaming; tiny checkpoints of both variants."""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

import pixelrefer_kernels
from pixelrefer_fast import PixelReferFastProcessor
from pixelrefer_fast.decoding import (
    DEFAULT_MAX_NEW_TOKENS,
    StaticDecoder,
    generate_new_tokens,
    resolve_options,
)
from pixelrefer_fast.decoding import loop as loop_module
from tests.model.fixtures import box_mask, disc_mask, textured
from tests.model.tiny_checkpoint import make_tiny_checkpoint

NEW = 12



ITEMS = [
    dict(image=textured(70, 98, 1), masks=[box_mask(70, 98, 10, 12, 30, 40)], question="What is <region>?"),
    dict(image=textured(56, 70, 2), masks=[disc_mask(56, 70, 20, 20, 9), box_mask(56, 70, 30, 35, 20, 30)],
         question="Compare <region> with <region>."),
]


@pytest.fixture(scope="module", params=["full", "lite"])
def setup(request, tmp_path_factory):
    """An untied `lm_head` (N(0, 1/D)): logits of order 1, so sampling and the penalty change tokens."""
    directory = make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(directory)
    processor = PixelReferFastProcessor.from_pretrained(directory)
    model.set_special_token_ids(processor.tokenizer)
    batches = {n: model.place_inputs(processor([dict(i) for i in ITEMS[:n]])) for n in (1, 2)}
    return request.param, model, processor, batches


def _run(model, processor, batch, decoding, seed=0, max_new_tokens=NEW, **options):
    plan = resolve_options(model.generation_config, processor.tokenizer, max_new_tokens, options,
                           batch_size=batch["input_ids"].shape[0])
    with pixelrefer_kernels.force("torch"):
        return generate_new_tokens(model, batch, plan, decoding=decoding, seed=seed)


def _staggered_eos(tokens: torch.Tensor, first: int) -> list[int]:
    """Eos ids that end the rows of `tokens` (generated without them) at different steps >= `first`."""
    rows = tokens.tolist()
    chosen, ends = [], []
    for row, other in ((rows[0], rows[1]), (rows[1], rows[0])):
        for step in range(first, len(row)):
            token = row[step]
            earlier = set(row[:step]) | set(other[: ends[0] if ends else len(other)]) | set(chosen)
            if token not in earlier and step not in ends:
                chosen.append(token)
                ends.append(step)
                break
    assert len(chosen) == 2, f"no staggered eos ids in {rows}"
    return chosen


NEVER = [0]  # an eos id the tiny models do not produce in NEW steps (checked below)


@pytest.mark.parametrize("options", [
    pytest.param({"repetition_penalty": 2.5, "min_new_tokens": 4}, id="greedy-penalty-min-new"),
    pytest.param({"do_sample": True}, id="sample-checkpoint-warpers"),
    pytest.param({"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.3, "repetition_penalty": 1.0},
                 id="sample-plain"),
    pytest.param({"do_sample": True, "suppress_tokens": list(range(1, 200, 2))}, id="sample-suppress-tokens"),
    # one generator for the batch (an int seed) with per-row values: the hf path samples per row too
    pytest.param({"do_sample": True, "temperature": [1.3, 0.9], "top_p": [1.0, 0.8]}, id="per-row-one-seed"),
])
def test_fast_matches_hf_batched_rows_stop_apart(setup, options):
    variant, model, processor, batches = setup
    probe = _run(model, processor, batches[2], "hf", eos_token_id=NEVER, **options)
    assert probe.shape == (2, NEW) and NEVER[0] not in probe.tolist()
    eos = _staggered_eos(probe, max(2, options.get("min_new_tokens", 0)))
    fast = _run(model, processor, batches[2], "fast", eos_token_id=eos, **options)
    hf = _run(model, processor, batches[2], "hf", eos_token_id=eos, **options)
    assert torch.equal(fast, hf), f"fast {fast.tolist()} != hf {hf.tolist()}"
    pad = model.generation_config.pad_token_id
    ends = [row.index(next(t for t in row if t in eos)) for row in fast.tolist()]
    assert ends[0] != ends[1] and fast.shape[1] == max(ends) + 1
    short = int(np.argmin(ends))
    assert (fast[short, ends[short] + 1:] == pad).all()


@pytest.mark.parametrize("options", [pytest.param({}, id="greedy"), pytest.param({"do_sample": True}, id="sample")])
def test_fast_matches_hf_single(setup, options):
    variant, model, processor, batches = setup
    fast = _run(model, processor, batches[1], "fast", seed=7, eos_token_id=NEVER, **options)
    hf = _run(model, processor, batches[1], "hf", seed=7, eos_token_id=NEVER, **options)
    assert fast.shape == (1, NEW) and torch.equal(fast, hf), f"fast {fast.tolist()} != hf {hf.tolist()}"


# the decode step is the same Qwen2 code for both variants: these run on the full one
FULL_ONLY = pytest.mark.parametrize("setup", ["full"], indirect=True)


@FULL_ONLY
def test_seed_decides_the_samples(setup):
    variant, model, processor, batches = setup
    a, b = (_run(model, processor, batches[1], "fast", seed=s, eos_token_id=NEVER, do_sample=True) for s in (1, 2))
    again = _run(model, processor, batches[1], "fast", seed=1, eos_token_id=NEVER, do_sample=True)
    assert torch.equal(a, again) and not torch.equal(a, b)


# ---------------------------------------------------------------------------- penalty parity (issue 9)


class _Recorder:
    """A logits processor that keeps the scores it sees (after the penalty, before any warper)."""

    def __init__(self):
        self.scores = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.clone())
        return scores


def _official_scores(model, batch, steps):
    """Per-step scores of the official call: `generate(inputs_embeds=...)` (the prompt ids unseen)."""
    captured = {}

    def keep_embeds(module, args, kwargs):
        captured["embeds"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = model.model.layers[0].register_forward_pre_hook(keep_embeds, with_kwargs=True)
    try:
        with torch.inference_mode(), pixelrefer_kernels.force("torch"):
            model(**batch, kmeans_generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    recorder = _Recorder()
    plan = resolve_options(model.generation_config, None, steps, {"eos_token_id": NEVER})
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "penalty only on the new tokens": that is the point
        model.generate(inputs_embeds=captured["embeds"], attention_mask=batch["attention_mask"],
                       generation_config=plan.generation_config, logits_processor=[recorder])
    return recorder.scores


def test_repetition_penalty_covers_generated_tokens_only(setup, monkeypatch):
    """One item: transformers >= 5.2x also skips the first `padding` generated ids of a left-padded row
    under `inputs_embeds` (its `prompt_ignore_length` from the attention mask), a quirk the official
    environment (4.46) does not have; unpadded, every version penalises exactly the generated ids."""
    variant, model, processor, batches = setup
    batch = batches[1]
    assert model.generation_config.repetition_penalty == 1.1  # the checkpoint's generation_config.json
    official = _official_scores(model, batch, 6)
    hf_recorder = _Recorder()
    plan = resolve_options(model.generation_config, processor.tokenizer, 6,
                           {"eos_token_id": NEVER, "logits_processor": [hf_recorder]})
    with pixelrefer_kernels.force("torch"):
        generate_new_tokens(model, batch, plan, decoding="hf", seed=0)
    fast_scores = []
    original = loop_module.process_scores

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        fast_scores.append(out.clone())
        return out

    monkeypatch.setattr(loop_module, "process_scores", recording)
    _run(model, processor, batch, "fast", max_new_tokens=6, eos_token_id=NEVER)
    assert len(official) == len(hf_recorder.scores) == len(fast_scores) == 6
    for step, (ref, hf, fast) in enumerate(zip(official, hf_recorder.scores, fast_scores)):
        torch.testing.assert_close(hf, ref, rtol=1e-5, atol=1e-5, msg=lambda m, step=step: f"hf scores, step {step}: {m}")
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5, msg=lambda m, step=step: f"fast scores, step {step}: {m}")


# ---------------------------------------------------------------------------- options and messages


@pytest.mark.parametrize("decoding", ["fast", "hf"])
@pytest.mark.parametrize("options, message", [
    ({"num_beams": 2}, "beam search is not supported"),
    ({"num_return_sequences": 2, "do_sample": True}, "num_return_sequences=2 is not supported"),
    ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer >= 1, got 2.5"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, got 0"),
    ({"max_new_tokens": True}, "max_new_tokens must be an integer >= 1"),
    # the fast loop allocated a static cache of that many positions (10**9: 128 GB) before failing
    ({"max_new_tokens": 10**9}, r"max_new_tokens=1000000000 after a prompt of \d+ tokens exceeds the model's context of "
                                r"32768 positions \(max_position_embeddings\); accepted: at most \d+"),
    ({"min_new_tokens": -1}, "min_new_tokens must be an integer >= 0"),
    ({"do_sample": True, "top_p": 0.0}, "top_p must be in"),
    ({"seed": -1}, "seed must be None or an integer"),
    ({"graph": "fastest"}, "graph must be one of"),
    ({"check_every": 0}, "check_every must be an integer >= 1"),
])
def test_unsupported_options_raise_before_any_work(setup, decoding, options, message):
    variant, model, processor, _ = setup
    item = ITEMS[0]
    with pytest.raises(ValueError, match=message):
        model.describe(processor, images=item["image"], masks=item["masks"], questions=item["question"],
                       decoding=decoding, **options)


def test_decoding_must_be_known(setup):
    variant, model, processor, _ = setup
    with pytest.raises(ValueError, match="decoding must be one of"):
        model.describe(processor, images=ITEMS[0]["image"], masks=ITEMS[0]["masks"], questions="<region>?",
                       decoding="beam")


@FULL_ONLY
def test_options_the_fast_loop_lacks_fall_back_with_one_line(setup, caplog):
    variant, model, processor, batches = setup
    with caplog.at_level(logging.INFO, logger="pixelrefer_fast"):
        fast = _run(model, processor, batches[1], "fast", eos_token_id=NEVER, no_repeat_ngram_size=2)
    lines = [r for r in caplog.records if "falls back" in r.getMessage()]
    assert len(lines) == 1 and "no_repeat_ngram_size" in lines[0].getMessage()
    hf = _run(model, processor, batches[1], "hf", eos_token_id=NEVER, no_repeat_ngram_size=2)
    assert torch.equal(fast, hf)


@contextlib.contextmanager
def _transformers_records():
    """Every transformers log record and Python warning of the block (warning_once's memory cleared)."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    hf_logging.warning_once.cache_clear()
    handler = Keep(level=logging.WARNING)
    logger = hf_logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records
        records.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("options", [
    pytest.param({}, id="greedy"),
    pytest.param({"do_sample": True}, id="sample"),
    pytest.param({"do_sample": True, "temperature": [0.8], "top_p": [0.9], "seed": [3]}, id="per-item"),
])
def test_describe_warns_nothing(setup, options):
    variant, model, processor, _ = setup
    item = ITEMS[0]
    for decoding in ("fast", "hf"):
        with _transformers_records() as records, pixelrefer_kernels.force("torch"):
            answer = model.describe(processor, images=item["image"], masks=item["masks"], questions=item["question"],
                                    max_new_tokens=3, decoding=decoding, **options)
        assert isinstance(answer[0], str)
        assert records == [], f"{decoding}: {records}"


def test_resolved_options_keep_the_checkpoint_processors(setup):
    variant, model, processor, _ = setup
    generator = torch.Generator()
    plan = resolve_options(model.generation_config, processor.tokenizer, 7, {"kmeans_generator": generator})
    sampling = plan.sampling
    assert (sampling.do_sample, sampling.repetition_penalty, sampling.max_new_tokens) == (False, 1.1, 7)
    assert plan.model_kwargs == {"kmeans_generator": generator} and plan.fast_refusal is None
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") in sampling.eos_token_ids
    sample = resolve_options(model.generation_config, processor.tokenizer, 7, {"do_sample": True}).sampling
    # the checkpoint's sampling values
    assert (sample.do_sample, sample.temperature, sample.top_k, sample.top_p) == (True, 0.7, 20, 0.8)
    assert DEFAULT_MAX_NEW_TOKENS == 2048


# ---------------------------------------------------------------------------- the step on the device

_HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def _host_reads_raise():
    saved = {name: getattr(torch.Tensor, name) for name in _HOST_READS}

    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"host read Tensor.{name} inside the decode step")
        return read

    try:
        for name in _HOST_READS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


# a batch of 2: one generator for the batch, or per-row values (a greedy row, a sampled one) and generators
SAMPLING_CASES = [
    pytest.param({"do_sample": True}, lambda: torch.Generator().manual_seed(0), id="batch-generator"),
    pytest.param({"do_sample": True, "temperature": [0.0, 0.8], "top_p": [1.0, 0.7]},
                 lambda: [None, torch.Generator().manual_seed(0)], id="per-row"),
]


def _guard_steps(decoder, monkeypatch, events):
    """Host reads raise inside the decoder's steps, `select` and compactions; steps (with their row
    count), compactions and checks (a `tolist`, the host check's read) recorded in `events`."""
    step, select, compact = decoder.decode_step, decoder.select, decoder._compact

    def guarded_step():
        events.append(("step", decoder.rows))
        with _host_reads_raise():
            step()

    def guarded_select(logits):
        with _host_reads_raise():
            select(logits)

    def guarded_compact(finished, order):
        rows = decoder.rows
        with _host_reads_raise():
            compact(finished, order)
        if decoder.rows != rows:
            events.append("compact")

    original_tolist = torch.Tensor.tolist

    def counted_tolist(self):
        events.append("check")
        return original_tolist(self)

    monkeypatch.setattr(decoder, "decode_step", guarded_step)
    monkeypatch.setattr(decoder, "select", guarded_select)
    monkeypatch.setattr(decoder, "_compact", guarded_compact)
    return lambda on: monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist if on else original_tolist)


@FULL_ONLY
@pytest.mark.parametrize("sampling, generator", SAMPLING_CASES)
def test_decode_loop_reads_the_host_only_at_checks(setup, monkeypatch, sampling, generator):
    variant, model, processor, batches = setup
    batch = batches[2]
    options = resolve_options(model.generation_config, processor.tokenizer, 10,
                              {"eos_token_id": NEVER, "min_new_tokens": 10, **sampling}, batch_size=2).sampling
    decoder = StaticDecoder(model, 2, 256, "eager")
    events = []
    count_checks = _guard_steps(decoder, monkeypatch, events)
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        model_kwargs = {"kmeans_generator": torch.Generator().manual_seed(0)}
        reference = decoder.generate(batch, options, generator=generator(), model_kwargs=model_kwargs, check_every=4)
        count_checks(True)
        events.clear()
        tokens = decoder.generate(batch, options, generator=generator(),
                                  model_kwargs={"kmeans_generator": torch.Generator().manual_seed(0)}, check_every=4)
        count_checks(False)
    loop = events[events.index(("step", 2)):]
    assert loop == [("step", 2)] * 4 + ["check"] + [("step", 2)] * 4 + ["check"] + [("step", 2), "check"], loop
    assert tokens.shape == (2, 10) and torch.equal(tokens, reference)


@FULL_ONLY
@pytest.mark.parametrize("sampling, generator", SAMPLING_CASES)
def test_compacted_decode_loop_reads_the_host_only_at_checks(setup, monkeypatch, sampling, generator):
    """Row 0 cancelled after 3 tokens: the compaction and the one-row steps read nothing on the host
    (per-row values: the sampled row 1 is moved to the front with its own temperature and top-p)."""
    variant, model, processor, batches = setup
    options = resolve_options(model.generation_config, processor.tokenizer, 10,
                              {"eos_token_id": NEVER, **sampling}, batch_size=2).sampling
    decoder = StaticDecoder(model, 2, 256, "eager")
    events = []
    count_checks = _guard_steps(decoder, monkeypatch, events)
    results = {}
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        for compact in (False, True):
            count_checks(True)
            events.clear()
            results[compact] = decoder.generate(
                batches[2], options, generator=generator(), compact=compact, check_every=2,
                model_kwargs={"kmeans_generator": torch.Generator().manual_seed(0)},
                on_tokens=lambda chunk: [0] if sum(chunk.finished) == 0 and len(chunk.tokens[0]) == 2 else None)
            count_checks(False)
    # checks read the finished flags, the tokens and the lengths: 3 reads each (the first after the prefill)
    check = ["check"] * 3
    loop = events[events.index(("step", 2)):]
    assert loop == [("step", 2)] * 2 + check + ["compact"] + ([("step", 1)] * 2 + check) * 3 + [("step", 1)] + check
    assert torch.equal(results[True], results[False])
    assert (results[True][0, 3:] == options.pad_token_id).all()


@FULL_ONLY
@pytest.mark.parametrize("sampling, generator", SAMPLING_CASES)
def test_decode_step_compiles_without_graph_breaks(setup, sampling, generator):
    variant, model, processor, batches = setup
    batch = batches[2]
    options = resolve_options(model.generation_config, processor.tokenizer, 6,
                              {"eos_token_id": NEVER, **sampling}, batch_size=2).sampling
    eager = StaticDecoder(model, 2, 256, "eager")
    # fullgraph=True raises on any graph break; the eager backend keeps the test fast (no code generation)
    compiled = StaticDecoder(model, 2, 256, "compile", {"backend": "eager", "fullgraph": True})
    torch._dynamo.reset()
    results = []
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        for decoder in (eager, compiled):
            results.append(decoder.generate(batch, options, generator=generator(),
                                            model_kwargs={"kmeans_generator": torch.Generator().manual_seed(0)}))
    assert torch.equal(results[0], results[1]), f"eager {results[0].tolist()} != compiled {results[1].tolist()}"


# ---------------------------------------------------------------------------- streaming


@FULL_ONLY
def test_stream_rows_and_cancel_one(setup):
    variant, model, processor, batches = setup
    batch = batches[2]
    plan = resolve_options(model.generation_config, processor.tokenizer, NEW, {"eos_token_id": NEVER})
    full = None
    for decoding in ("fast", "hf"):
        received = [[], []]

        def on_tokens(chunk, received=received):
            for row, tokens in enumerate(chunk.tokens):
                received[row].extend(tokens)
            return [1] if len(received[1]) >= 3 else None

        with pixelrefer_kernels.force("torch"):
            tokens = generate_new_tokens(model, batch, plan, decoding=decoding, seed=0, on_tokens=on_tokens)
        full = tokens if full is None else full  # the fast run's; hf must give the same
        assert tokens.shape == (2, NEW) and received[0] == full[0].tolist() == tokens[0].tolist(), decoding
        assert received[1] == full[1, :3].tolist() == tokens[1, :3].tolist(), decoding
        assert (tokens[1, 3:] == plan.sampling.pad_token_id).all(), decoding


class _ListStreamer:
    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


@FULL_ONLY
def test_streamer_gets_the_prompt_then_the_tokens(setup):
    variant, model, processor, batches = setup
    plan = resolve_options(model.generation_config, processor.tokenizer, 5, {"eos_token_id": NEVER})
    streamer = _ListStreamer()
    with pixelrefer_kernels.force("torch"):
        tokens = generate_new_tokens(model, batches[1], plan, seed=0, streamer=streamer)
    assert streamer.ended and streamer.puts[0] == batches[1]["input_ids"][0].tolist()
    assert sum(streamer.puts[1:], []) == tokens[0].tolist()
    with pytest.raises(ValueError, match="streamer= takes a batch of one item"):
        generate_new_tokens(model, batches[2], plan, streamer=_ListStreamer())


# ---------------------------------------------------------------------------- CUDA (the captured step)


@pytest.fixture(scope="module")
def cuda_setup(tmp_path_factory):
    directory = make_tiny_checkpoint(tmp_path_factory.mktemp("cuda"), "full", tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(directory).to("cuda")
    processor = PixelReferFastProcessor.from_pretrained(directory)
    model.set_special_token_ids(processor.tokenizer)
    return model, processor, model.place_inputs(processor([dict(i) for i in ITEMS]))


@pytest.mark.gpu
@pytest.mark.parametrize("graph", ["cuda_graph", "compile"])
@pytest.mark.parametrize("options, seed", [
    pytest.param({}, 5, id="greedy"),
    pytest.param({"do_sample": True}, 5, id="sample"),
    pytest.param({"do_sample": True, "temperature": [0.0, 0.8], "top_p": [1.0, 0.7]}, [5, 6], id="per-row"),
])
def test_cuda_captured_step_matches_hf(cuda_setup, graph, options, seed):
    model, processor, batch = cuda_setup
    plan = resolve_options(model.generation_config, processor.tokenizer, NEW, {"eos_token_id": NEVER, **options},
                           batch_size=2)
    with pixelrefer_kernels.force("torch"):
        hf = generate_new_tokens(model, batch, plan, decoding="hf", seed=seed)
        first = generate_new_tokens(model, batch, plan, decoding="fast", seed=seed, graph=graph)
        # the bucket's step is replayed, not captured again
        again = generate_new_tokens(model, batch, plan, decoding="fast", seed=seed, graph=graph)
    assert torch.equal(first, hf), f"{graph}: fast {first.tolist()} != hf {hf.tolist()}"
    assert torch.equal(again, first)


@pytest.mark.gpu
def test_cuda_graph_replays_without_host_sync(cuda_setup, monkeypatch):
    model, processor, batch = cuda_setup
    options = resolve_options(model.generation_config, processor.tokenizer, 9,
                              {"eos_token_id": NEVER, "min_new_tokens": 9}).sampling
    decoder = StaticDecoder(model, 2, 256, "cuda_graph")
    replays = []
    capture = decoder._capture

    def checked_capture():
        replay = capture()

        def guarded():
            replays.append(1)
            torch.cuda.set_sync_debug_mode("error")
            try:
                replay()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return guarded

    monkeypatch.setattr(decoder, "_capture", checked_capture)
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        tokens = decoder.generate(batch, options, model_kwargs={"kmeans_generator": torch.Generator().manual_seed(0)},
                                  check_every=4)
    assert tokens.shape == (2, 9) and len(replays) == 8


def _cancel_row_0_after(n):
    """`on_tokens` cancelling row 0 once it has `n` tokens."""
    received = []

    def on_tokens(chunk):
        received.extend(chunk.tokens[0])
        return [0] if len(received) >= n else None
    return on_tokens


@pytest.mark.gpu
@pytest.mark.parametrize("options", [pytest.param({}, id="greedy"), pytest.param({"do_sample": True}, id="sample")])
def test_cuda_compacted_step_matches_hf(cuda_setup, options):
    """Row 0 cancelled after 3 tokens: row 1 finishes on the one-row CUDA graph (the compiled compacted
    steps are checked on the CPU, `tests/model/test_compaction.py`, to keep the GPU window short)."""
    model, processor, batch = cuda_setup
    graph = "cuda_graph"
    plan = resolve_options(model.generation_config, processor.tokenizer, NEW, {"eos_token_id": NEVER, **options})
    with pixelrefer_kernels.force("torch"):
        hf = generate_new_tokens(model, batch, plan, decoding="hf", seed=5, on_tokens=_cancel_row_0_after(3))
        first = generate_new_tokens(model, batch, plan, decoding="fast", seed=5, graph=graph,
                                    on_tokens=_cancel_row_0_after(3))
        again = generate_new_tokens(model, batch, plan, decoding="fast", seed=5, graph=graph,
                                    on_tokens=_cancel_row_0_after(3))
        whole = generate_new_tokens(model, batch, plan, decoding="fast", seed=5, graph=graph)
    assert torch.equal(first, hf), f"{graph}: fast {first.tolist()} != hf {hf.tolist()}"
    assert torch.equal(again, first) and torch.equal(whole[1], first[1]) and torch.equal(whole[0, :3], first[0, :3])


@pytest.mark.gpu
def test_cuda_compacted_graph_replays_without_host_sync(cuda_setup, monkeypatch):
    model, processor, batch = cuda_setup
    options = resolve_options(model.generation_config, processor.tokenizer, 9, {"eos_token_id": NEVER}).sampling
    decoder = StaticDecoder(model, 2, 256, "cuda_graph")
    compact = decoder._compact

    def no_sync(function, *args):
        torch.cuda.set_sync_debug_mode("error")
        try:
            function(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(decoder, "_compact", lambda *args: no_sync(compact, *args))
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        tokens = decoder.generate(batch, options, model_kwargs={"kmeans_generator": torch.Generator().manual_seed(0)},
                                  check_every=2, on_tokens=_cancel_row_0_after(3))
        steps = {key[1]: step for key, step in decoder._steps.items()}
        assert sorted(steps) == [1, 2] and decoder.rows == 1
        no_sync(steps[1])  # the one-row graph replays without a sync
    assert tokens.shape == (2, 9) and (tokens[0, 3:] == options.pad_token_id).all()
