"""Shared prompt prefixes (`pixelrefer_fast.decoding.prefix`): rows with the same image and the same text
before it prefill that prefix once; the logits, the prompt's cache and the tokens equal the plain prefill."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import pixelrefer_kernels
from pixelrefer_fast import PixelReferFastProcessor
from pixelrefer_fast.decoding import generate_new_tokens, resolve_options
from pixelrefer_fast.decoding.loop import StaticDecoder
from pixelrefer_fast.decoding.prefix import shared_prefill, shared_prefixes
from tests.model.fixtures import box_mask, disc_mask, textured
from tests.model.no_sync import forbid_device_reads
from tests.model.tiny_checkpoint import make_tiny_checkpoint

NEW = 8



A, B, C = textured(224, 280, 1), textured(168, 196, 2), textured(112, 140, 3)


def _items():
    """Image A three times and B twice (regions of different token counts and questions of different
    lengths, so the rows are padded differently), C once (a group of one)."""
    return [
        dict(image=A, masks=[disc_mask(224, 280, 60, 60, 30)], question="What is <region>?"),
        dict(image=A, masks=[box_mask(224, 280, 100, 120, 8, 10)], question="Describe <region> in detail, please."),
        dict(image=B, masks=[box_mask(168, 196, 10, 12, 60, 80)], question="What is <region>?"),
        dict(image=C, masks=[box_mask(112, 140, 20, 20, 40, 40)], question="And <region>?"),
        dict(image=A, masks=[disc_mask(224, 280, 150, 200, 20), box_mask(224, 280, 2, 2, 20, 20)],
             question="Compare <region> with <region>."),
        dict(image=B, masks=[disc_mask(168, 196, 80, 90, 6)], question="Is <region> large?"),
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = make_tiny_checkpoint(tmp_path_factory.mktemp("full"), "full", tie_word_embeddings=False, seed=3,
                                     config_overrides={"kmeans_init": "deterministic"})
    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa").eval()
    processor = PixelReferFastProcessor.from_pretrained(directory)
    with pixelrefer_kernels.force("torch"):
        placed = model.place_inputs(processor(_items()))
    return model, processor, placed, directory


def test_the_plan_groups_rows_by_image_and_text(setup):
    model, processor, placed, _ = setup
    plan = placed["multimodal_inputs"].shared_prefixes
    assert plan is not None and plan.groups == ((0, 1, 4), (2, 5), (3,))
    mask = placed["attention_mask"].cpu()
    assert list(plan.pads) == (mask.shape[1] - mask.sum(-1)).tolist()
    assert len(set(plan.pads)) > 1  # the rows are padded differently
    assert plan.lengths[0] == plan.lengths[1] == plan.lengths[4] != plan.lengths[2] == plan.lengths[5]
    ids = placed["input_ids"].cpu()
    for rows in plan.groups:  # equal prompt tokens up to the prefix end
        pad, length = plan.pads[rows[0]], plan.lengths[rows[0]]
        for row in rows[1:]:
            assert torch.equal(ids[row, plan.pads[row]:plan.pads[row] + length], ids[rows[0], pad:pad + length])


def test_no_plan_without_shared_images(setup):
    model, processor, _, directory = setup
    separate = PixelReferFastProcessor.from_pretrained(directory, share_images=False)
    items = _items()
    with pixelrefer_kernels.force("torch"):
        assert model.place_inputs(separate(items))["multimodal_inputs"].shared_prefixes is None
        assert model.place_inputs(processor(items[:1]))["multimodal_inputs"].shared_prefixes is None  # one row
        distinct = [items[0], items[2], items[3]]
        assert model.place_inputs(processor(distinct))["multimodal_inputs"].shared_prefixes is None
    ids = torch.arange(12).reshape(2, 6)
    slots = torch.zeros(2, 6, dtype=torch.bool)
    slots[:, 1] = True
    # a shared prefix below MIN_SHARED_TOKENS is not worth two LLM calls
    none = torch.zeros(2, 6, dtype=torch.bool)
    assert shared_prefixes(torch.zeros(2, 6, dtype=torch.long), None, slots, torch.tensor([0, 0]), none) is None
    assert shared_prefixes(ids, None, none, torch.tensor([], dtype=torch.long), none) is None


def test_a_region_before_the_image_ends_the_prefix(setup):
    """`<region>` written before `<image>`: the rows' tokens agree past it but their region features do
    not, so the prefix stops at the region; the tokens still equal the plain prefill's."""
    model, processor, _, _ = setup
    question = ("You are looking at a detailed photograph of a busy scene with many objects in it. "
                "Is <region> shown in <image>? Describe it.")
    # both regions large enough for K tokens: the prompts' tokens agree everywhere, the region features not
    items = [dict(image=A, masks=[mask], question=question)
             for mask in (disc_mask(224, 280, 60, 60, 30), box_mask(224, 280, 100, 120, 60, 80))]
    with pixelrefer_kernels.force("torch"):
        placed = model.place_inputs(processor(items))
    plan = placed["multimodal_inputs"].shared_prefixes
    regions = (placed["input_ids"].cpu() == model.config.region_token_index).int().argmax(-1)  # first <REGION>
    assert torch.equal(placed["input_ids"][0], placed["input_ids"][1])
    assert plan is not None and plan.groups == ((0, 1),)
    assert all(pad + length == int(first) for pad, length, first in zip(plan.pads, plan.lengths, regions))
    options = resolve_options(model.generation_config, processor.tokenizer, NEW, {"min_new_tokens": NEW},
                              batch_size=2).sampling
    decoder = StaticDecoder(model, 2, 512, "eager")
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        shared, plain = (decoder.generate(placed, options, share_prefixes=share) for share in (True, False))
    assert torch.equal(shared, plain)


def test_shared_prefill_equals_the_plain_prefill(setup):
    model, processor, placed, _ = setup
    packed = placed["multimodal_inputs"]
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        out = model(**placed, use_cache=True, logits_to_keep=1)
        reference = next(out[k] for k in ("cache", "past_key_values") if out.get(k) is not None)
        with forbid_device_reads(placed["input_ids"], placed["attention_mask"], *packed.device_tensors(), modules=[model]):
            logits, cache = shared_prefill(model, placed, packed.shared_prefixes, {})
    torch.testing.assert_close(logits, out.logits[:, -1].float(), rtol=1e-5, atol=1e-5)
    valid = placed["attention_mask"].bool()  # (B, T): padding positions hold no key
    for layer, expected in zip(cache.layers, reference.layers):
        assert layer.keys.shape == expected.keys.shape
        for got, want in ((layer.keys, expected.keys), (layer.values, expected.values)):
            torch.testing.assert_close(got.transpose(1, 2)[valid], want.transpose(1, 2)[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "top_k": 0}], ids=["greedy", "sampled"])
def test_tokens_equal_the_plain_prefill_and_hf(setup, sampling):
    model, processor, placed, _ = setup
    plan = resolve_options(model.generation_config, processor.tokenizer, NEW, {"min_new_tokens": NEW, **sampling},
                           batch_size=6)
    decoder = StaticDecoder(model, 6, 512, "eager")
    results = {}
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        for share in (True, False):
            generator = torch.Generator().manual_seed(5) if sampling else None
            results[share] = decoder.generate(placed, plan.sampling, generator=generator, share_prefixes=share)
        hf = generate_new_tokens(model, placed, plan, decoding="hf", seed=5 if sampling else None)
    assert torch.equal(results[True], results[False]) and torch.equal(results[True], hf)


def test_share_prefixes_must_be_a_bool(setup):
    model, processor, placed, _ = setup
    plan = resolve_options(model.generation_config, processor.tokenizer, 2, {}, batch_size=6)
    with pytest.raises(TypeError, match="share_prefixes must be a bool"):
        StaticDecoder(model, 6, 512, "eager").generate(placed, plan.sampling, share_prefixes="yes")
