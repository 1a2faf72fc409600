"""Per-row sampling: each item of a batch with its own `do_sample` / `temperature` / `top_p` and seed.

An item of a mixed batch (greedy and sampled rows, different temperatures, top-p and seeds) gets the
tokens it gets alone with `describe(..., do_sample=True, temperature=t, top_p=p, seed=s)`, in both
decodings (alone under `"hf"` that is transformers' own sampling), whatever the order of the batch;
per-item lists are checked; the noise is what `torch.multinomial` draws. The device-only step with
per-row values (no host read, no graph break) is tested in `test_decoding.py`.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import pixelrefer_kernels
from pixelrefer_fast import PixelReferFastProcessor
from pixelrefer_fast.decoding import fast_generate, generate_new_tokens, resolve_options
from pixelrefer_fast.decoding.options import MIN_TEMPERATURE
from pixelrefer_fast.decoding.processors import ProcessorState, choose_tokens, draw_noise
from tests.model.fixtures import box_mask, disc_mask, textured
from tests.model.tiny_checkpoint import make_tiny_checkpoint

NEW = 10
NEVER = [0]  # an eos id the tiny models do not produce: every row runs NEW steps



ITEMS = [
    dict(image=textured(70, 98, 1), masks=[box_mask(70, 98, 10, 12, 30, 40)], question="What is <region>?"),
    dict(image=textured(56, 70, 2), masks=[disc_mask(56, 70, 20, 20, 9), box_mask(56, 70, 30, 35, 20, 30)],
         question="Compare <region> with <region>."),
    dict(image=textured(64, 64, 3), masks=[box_mask(64, 64, 5, 5, 40, 50)], question="Describe <region> briefly."),
]
# item 0 greedy; items 1 and 2 sampled with their own temperature, top-p and seed (top-k: the checkpoint's 20)
TEMPERATURE = [0.0, 0.9, 1.3]
TOP_P = [1.0, 0.8, 0.95]
SEED = [5, 11, 12]
FULL_ONLY = pytest.mark.parametrize("setup", ["full"], indirect=True)


@pytest.fixture(scope="module", params=["full", "lite"])
def setup(request, tmp_path_factory):
    """An untied `lm_head` (N(0, 1/D)): logits of order 1, so sampling changes tokens."""
    directory = make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(directory)
    processor = PixelReferFastProcessor.from_pretrained(directory)
    return model, processor, {}


def _describe(model, processor, indices, **options) -> list[list[int]]:
    """The new token ids of each item of `ITEMS[indices]`, through `describe` (collected by `on_tokens`)."""
    items = [ITEMS[i] for i in indices]
    tokens = [[] for _ in items]

    def on_tokens(chunk):
        for row, new in enumerate(chunk.tokens):
            tokens[row].extend(new)

    with pixelrefer_kernels.force("torch"):
        model.describe(processor, images=[i["image"] for i in items], masks=[i["masks"] for i in items],
                       questions=[i["question"] for i in items], max_new_tokens=NEW, eos_token_id=NEVER,
                       on_tokens=on_tokens, **options)
    assert all(len(row) == NEW for row in tokens), tokens
    return tokens


def _alone(setup, index: int, decoding: str) -> list[int]:
    """Item `index` alone, with its scalar options and seed (cached per module)."""
    model, processor, cache = setup
    key = (index, decoding)
    if key not in cache:
        sampled = TEMPERATURE[index] > 0
        options = dict(do_sample=True, temperature=TEMPERATURE[index], top_p=TOP_P[index]) if sampled else {}
        cache[key] = _describe(model, processor, [index], decoding=decoding, seed=SEED[index], **options)[0]
    return cache[key]


@pytest.mark.parametrize("decoding", ["fast", "hf"])
def test_each_row_of_a_mixed_batch_equals_its_item_alone(setup, decoding):
    model, processor, _ = setup
    batch = _describe(model, processor, [0, 1, 2], decoding=decoding, do_sample=True, temperature=TEMPERATURE,
                      top_p=TOP_P, seed=SEED)
    for index in range(3):
        alone = {d: _alone(setup, index, d) for d in ("fast", "hf")}
        assert batch[index] == alone["fast"] == alone["hf"], f"item {index}: batch {batch[index]}, alone {alone}"
    greedy = _describe(model, processor, [0, 1, 2], decoding=decoding, seed=SEED)
    assert greedy[0] == batch[0]
    assert greedy[1] != batch[1] and greedy[2] != batch[2], "the sampled rows must sample"


@FULL_ONLY
def test_the_order_of_the_batch_changes_no_answer(setup):
    model, processor, _ = setup
    order = [2, 0, 1]
    batch = _describe(model, processor, order, do_sample=True, temperature=[TEMPERATURE[i] for i in order],
                      top_p=[TOP_P[i] for i in order], seed=[SEED[i] for i in order])
    for row, index in enumerate(order):
        assert batch[row] == _alone(setup, index, "fast"), f"item {index} at row {row}"


def test_per_item_seeds_decide_the_samples(setup):
    """Another seed for item 1 changes its answer only."""
    model, processor, _ = setup
    options = dict(do_sample=True, temperature=TEMPERATURE, top_p=TOP_P)
    first = _describe(model, processor, [0, 1, 2], seed=SEED, **options)
    other = _describe(model, processor, [0, 1, 2], seed=[SEED[0], 99, SEED[2]], **options)
    assert first[0] == other[0] and first[2] == other[2] and first[1] != other[1]


@FULL_ONLY
@pytest.mark.parametrize("decoding", ["fast", "hf"])
def test_a_temperature_below_the_minimum_decodes_greedily(setup, decoding):
    """1e-40 made every logit/temperature inf: NaN probabilities and the same garbage token each step, in both
    decodings; below MIN_TEMPERATURE the row now takes the argmax, the limit of sampling at 0."""
    model, processor, _ = setup
    greedy = _describe(model, processor, [0, 1], decoding=decoding, seed=SEED[:2])
    rows = _describe(model, processor, [0, 1], decoding=decoding, do_sample=True, temperature=[1e-40, 0.9 * MIN_TEMPERATURE],
                     seed=SEED[:2])
    scalar = _describe(model, processor, [0, 1], decoding=decoding, do_sample=True, temperature=1e-40, seed=SEED[:2])
    assert rows == greedy == scalar
    sampled = _describe(model, processor, [0, 1], decoding=decoding, do_sample=True, temperature=[1e-40, 1.3], seed=SEED[:2])
    assert sampled[0] == greedy[0] and sampled[1] != greedy[1]


@FULL_ONLY
@pytest.mark.parametrize("options, message", [
    pytest.param({"temperature": [0.5, 1.0]}, r"temperature has 2 values for a batch of 3 items", id="length"),
    pytest.param({"top_p": [1.0, 0.0, 0.5]}, r"top_p\[1\] must be in \(0, 1\]", id="top-p-zero"),
    pytest.param({"temperature": [0.5, -1.0, 1.0]}, r"temperature\[1\] must be a finite number >= 0", id="negative"),
    pytest.param({"temperature": [0.5, float("nan"), 1.0]}, r"temperature\[1\] must be a finite number", id="nan"),
    pytest.param({"temperature": [0.5, "hot", 1.0]}, r"temperature\[1\] must be a number", id="string"),
    # float32 logits divided by an inf (or a float above float32's range) temperature: 0 and NaN
    pytest.param({"temperature": [0.5, float("inf"), 1.0]}, r"temperature\[1\] must be .* at most 3.4e\+38", id="inf"),
    pytest.param({"temperature": 1e300}, r"temperature must be > 0 when do_sample=True and at most 3.4e\+38", id="huge"),
    pytest.param({"do_sample": [True, "yes", False]}, r"do_sample\[1\] must be True or False", id="do-sample"),
    pytest.param({"seed": [1, 2]}, r"seed has 2 values for 3 items", id="seed-length"),
    pytest.param({"seed": [1, -2, 3]}, r"seed\[1\] must be an integer in \[0, 2\*\*63\)", id="seed-range"),
    pytest.param({"temperature": 0.0, "top_p": [1.0, 0.9, 0.8]}, r"temperature must be > 0 when do_sample=True",
                 id="scalar-temperature"),
])
def test_per_item_lists_are_checked_before_any_work(setup, options, message):
    model, processor, _ = setup
    with pytest.raises(ValueError, match=message):
        model.describe(processor, images=[i["image"] for i in ITEMS], masks=[i["masks"] for i in ITEMS],
                       questions=[i["question"] for i in ITEMS], **{"do_sample": True, **options})


@FULL_ONLY
def test_a_plan_for_another_batch_size_is_refused(setup):
    model, processor, _ = setup
    with pytest.raises(ValueError, match="the batch size is unknown"):
        resolve_options(model.generation_config, processor.tokenizer, 4, {"do_sample": True, "top_p": [0.5, 0.9]})
    plan = resolve_options(model.generation_config, processor.tokenizer, 4, {"do_sample": True, "top_p": [0.5, 0.9]},
                           batch_size=2)
    batch = model.place_inputs(processor([dict(i) for i in ITEMS]))
    with pytest.raises(ValueError, match="the per-item sampling options are for 2 items, the batch has 3"):
        generate_new_tokens(model, batch, plan, seed=0)


@FULL_ONLY
def test_per_row_draws_are_what_multinomial_draws(setup):
    """Row `r` drawn from its own generator picks `torch.multinomial(probs[r], 1)` of a generator in
    the same state; a greedy row (no generator) takes the argmax and its noise is not touched."""
    model, processor, _ = setup
    options = resolve_options(model.generation_config, processor.tokenizer, 4,
                              {"do_sample": [False, True, True], "temperature": [1.0, 1.0, 2.0], "top_p": 1.0,
                               "top_k": 0, "repetition_penalty": 1.0}, batch_size=3).sampling
    state = ProcessorState.allocate(3, 50, torch.device("cpu"))
    state.load(options, 3)
    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    for seed in range(20):
        noise = torch.ones(3, 50)
        draw_noise(noise, [None, torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 100)])
        tokens = choose_tokens(scores, state, options.structure, noise)
        expected = [
            int(scores[0].argmax()),
            int(torch.multinomial(scores[1].softmax(-1)[None], 1, generator=torch.Generator().manual_seed(seed))),
            int(torch.multinomial((scores[2] / 2.0).softmax(-1)[None], 1,
                                  generator=torch.Generator().manual_seed(seed + 100))),
        ]
        assert tokens.tolist() == expected and bool((noise[0] == 1).all())


@FULL_ONLY
def test_the_loop_needs_a_generator_for_every_sampled_row(setup):
    model, processor, _ = setup
    options = resolve_options(model.generation_config, processor.tokenizer, 2,
                              {"do_sample": True, "temperature": TEMPERATURE}, batch_size=3).sampling
    batch = model.place_inputs(processor([dict(i) for i in ITEMS]))
    for generator in ([torch.Generator(), None, torch.Generator()], [None, torch.Generator()], None):
        with pytest.raises(ValueError, match="generator"):
            fast_generate(model, batch, options, generator=generator)
    greedy_row_without_generator = [None, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    with pixelrefer_kernels.force("torch"):
        assert fast_generate(model, batch, options, generator=greedy_row_without_generator).shape[0] == 3
