"""PixelRefer / PixelRefer-Lite end to end on tiny random checkpoints: batched generation, kernel paths,
batch vs item-by-item, placeholder/feature count errors, the generation plumbing."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import pixelrefer_kernels
from pixelrefer_fast import PixelReferFastProcessor
from pixelrefer_fast.modeling_pixelrefer_fast import MULTIMODAL_KEYS
from tests.model.fixtures import box_mask, disc_mask, textured
from tests.model.tiny_checkpoint import make_tiny_checkpoint

MAX_NEW = 6



def _video(frames=3, h=56, w=84, seed=5):
    """Frames where some 28x28 blocks repeat the previous frame (pruned by the token compression)."""
    video = [textured(h, w, seed)]
    for t in range(1, frames):
        frame = textured(h, w, seed + t)
        frame[:28, :28] = video[-1][:28, :28]
        video.append(frame)
    return video


ITEMS = {
    "full": [
        dict(image=textured(70, 98, 1), masks=[box_mask(70, 98, 10, 12, 30, 40)], question="What is <region>?"),
        dict(image=textured(56, 70, 2), masks=[disc_mask(56, 70, 20, 20, 9), box_mask(56, 70, 30, 35, 20, 30)],
             question="Compare <region> with <region>."),
        dict(video=_video(), masks=[box_mask(56, 84, 8, 8, 30, 30)], frame_ids=[1], question="Describe <region>."),
    ],
    "lite": [
        dict(image=textured(70, 98, 1), masks=[box_mask(70, 98, 10, 12, 30, 40)], question="What is <region>?"),
        dict(image=textured(56, 70, 2), masks=[disc_mask(56, 70, 20, 20, 9), box_mask(56, 70, 30, 35, 20, 30)],
             question="Compare <region> with <region>."),
        dict(video=_video(), masks=[[box_mask(56, 84, 8, 8, 30, 30), box_mask(56, 84, 10, 10, 30, 30)]],
             frame_ids=[[0, 2]], question="Describe <region>."),
    ],
}


# The interpreter runs Lite's 24x24 global views slowly: one Lite item (two masks on one image) there.
KERNEL_ITEMS = {"full": ITEMS["full"], "lite": ITEMS["lite"][1:2]}


@pytest.fixture(scope="module", params=["full", "lite"])
def setup(request, tmp_path_factory):
    variant = request.param
    directory = make_tiny_checkpoint(tmp_path_factory.mktemp(variant), variant, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(directory)
    processor = PixelReferFastProcessor.from_pretrained(directory)
    return variant, model, processor


def _batch(processor, model, items):
    """The processor's output as it is (the model checks it at its entry); `place_inputs` gives the
    checked batch instead (`test_placed_batch_equals_raw_batch`)."""
    return dict(processor([dict(item) for item in items]))


def _generate(model, batch, seed=0):
    torch.manual_seed(seed)  # parity k-means init draws from the global CPU RNG
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False, min_new_tokens=MAX_NEW)
    return out[:, batch["input_ids"].shape[1]:]


def test_batched_generation_and_kernel_paths(setup):
    variant, model, processor = setup
    if not pixelrefer_kernels.interpret_mode():
        pytest.skip("the Triton path on CPU needs TRITON_INTERPRET=1")
    batch = _batch(processor, model, KERNEL_ITEMS[variant])
    if variant == "full":
        assert bool((batch["image_merge_sizes"] == 2).any()) and not bool(batch["image_token_keep"].all())
    with pixelrefer_kernels.force("torch"):
        torch_tokens = _generate(model, batch)
        assert pixelrefer_kernels.last_backend("varlen_attention") in ("sdpa", "eager")
    with pixelrefer_kernels.force("triton"):
        triton_tokens = _generate(model, batch)
        assert pixelrefer_kernels.last_backend("varlen_attention") == "triton"
        assert pixelrefer_kernels.last_backend("region_pool") == "triton"
    assert torch_tokens.shape == (len(KERNEL_ITEMS[variant]), MAX_NEW)
    assert torch.equal(torch_tokens, triton_tokens), f"torch {torch_tokens.tolist()} != triton {triton_tokens.tolist()}"


def test_batch_equals_item_by_item(setup):
    variant, model, processor = setup
    items = ITEMS[variant]
    with pixelrefer_kernels.force("torch"):
        batched = _generate(model, _batch(processor, model, items))
        torch.manual_seed(0)
        singles = []
        for item in items:  # same global-RNG draws in the same region order as the batch
            with torch.inference_mode():
                batch = _batch(processor, model, [item])
                out = model.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False, min_new_tokens=MAX_NEW)
            singles.append(out[0, batch["input_ids"].shape[1]:])
    assert torch.equal(batched, torch.stack(singles)), f"batched {batched.tolist()} != single {torch.stack(singles).tolist()}"


def test_describe_matches_generate(setup):
    variant, model, processor = setup
    items = ITEMS[variant][:2]
    with pixelrefer_kernels.force("torch"):
        torch.manual_seed(0)
        answers = model.describe(processor, images=[i["image"] for i in items], masks=[i["masks"] for i in items],
                                 questions=[i["question"] for i in items], max_new_tokens=MAX_NEW)
    assert len(answers) == 2 and all(isinstance(a, str) and a == a.strip() for a in answers)


def test_logits_to_keep_and_positions_from_mask(setup):
    variant, model, processor = setup
    batch = _batch(processor, model, ITEMS[variant][:2])
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        torch.manual_seed(0)
        full = model(**batch).logits
        torch.manual_seed(0)
        last = model(**batch, logits_to_keep=1).logits
        # the left-padded item sees the same positions as alone (official 0..L-1)
        torch.manual_seed(0)
        single = model(**_batch(processor, model, ITEMS[variant][:1])).logits
    assert last.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)
    pad = int((batch["attention_mask"][0] == 0).sum())
    torch.testing.assert_close(full[0, pad:], single[0], rtol=1e-4, atol=1e-4)


def test_static_cache_gives_the_same_tokens(setup):
    variant, model, processor = setup
    batch = _batch(processor, model, ITEMS[variant][:1])
    with pixelrefer_kernels.force("torch"):
        dynamic = _generate(model, batch)
        torch.manual_seed(0)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False, min_new_tokens=MAX_NEW,
                                 cache_implementation="static")
    assert torch.equal(dynamic, out[:, batch["input_ids"].shape[1]:])


def test_prepare_inputs_drops_multimodal_inputs_after_prefill(setup):
    variant, model, processor = setup
    batch = _batch(processor, model, ITEMS[variant][:1])
    first = model.prepare_inputs_for_generation(batch["input_ids"], attention_mask=batch["attention_mask"],
                                                is_first_iteration=True, use_cache=True,
                                                **{k: v for k, v in batch.items() if k in MULTIMODAL_KEYS})
    later = model.prepare_inputs_for_generation(batch["input_ids"], attention_mask=batch["attention_mask"],
                                                is_first_iteration=False, use_cache=True,
                                                **{k: v for k, v in batch.items() if k in MULTIMODAL_KEYS})
    assert "crop_pixel_values" in first and "region_masks" in first
    assert not set(later) & set(MULTIMODAL_KEYS)


# ------------------------------------------------------------------------------------------ bad input


def _forward(model, batch):
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        return model(**batch)


def test_region_token_count_disagreeing_with_features_is_an_error(setup):
    variant, model, processor = setup
    batch = _batch(processor, model, ITEMS[variant][1:2])  # two regions
    n = int((batch["input_ids"] == model.config.region_token_index).sum())
    # counts that announce more tokens than the prompt has: refused before any encoder runs
    more = dict(batch, region_token_counts=batch["region_token_counts"] + 1)
    with pytest.raises(ValueError, match=f"the prompt has {n} <REGION> tokens but region_token_counts announce {n + 2}"):
        _forward(model, more)
    # same total, different split: the region encoder's counts disagree
    shifted = dict(batch, region_token_counts=batch["region_token_counts"] + torch.tensor([1, -1]))
    with pytest.raises(ValueError, match="region token counts disagree"):
        _forward(model, shifted)
    # one <REGION> placeholder fewer than the features (no announced counts to compare first)
    ids = batch["input_ids"].clone()
    first = int((ids[0] == model.config.region_token_index).nonzero()[0])
    ids[0, first] = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    fewer = {k: v for k, v in batch.items() if k != "region_token_counts"} | {"input_ids": ids}
    with pytest.raises(ValueError, match=f"the prompt has {n - 1} <REGION> tokens but the region encoder produced {n}"):
        _forward(model, fewer)


def test_region_counts_per_item_are_checked(setup):
    variant, model, processor = setup
    batch = _batch(processor, model, ITEMS[variant][:2])
    swapped = dict(batch, region_item=torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError, match="per item"):
        _forward(model, swapped)


def test_placeholders_without_region_inputs_are_an_error(setup):
    variant, model, processor = setup
    batch = _batch(processor, model, ITEMS[variant][:1])
    text_only = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with pytest.raises(ValueError, match="no pixel or region inputs"):
        _forward(model, text_only)
    if variant == "full":
        no_regions = {k: v for k, v in batch.items() if not k.startswith(("crop_", "region_"))}
        with pytest.raises(ValueError, match="no region inputs were given"):
            _forward(model, no_regions)


def test_incomplete_region_inputs_are_an_error(setup):
    variant, model, processor = setup
    batch = _batch(processor, model, ITEMS[variant][:1])
    missing = "region_local" if variant == "lite" else "region_boxes"
    with pytest.raises(ValueError, match=f"missing {missing}"):
        _forward(model, {k: v for k, v in batch.items() if k != missing})


def test_variant_specific_errors(setup, tmp_path):
    variant, model, processor = setup
    item = ITEMS[variant][0]
    if variant == "lite":
        full_batch = PixelReferFastProcessor(processor.tokenizer, variant="full", mask_num=processor.mask_num)([dict(item)])
        with pytest.raises(ValueError, match="takes no global image tokens"):
            _forward(model, model.place_inputs(full_batch))
        with pytest.raises(ValueError, match="mask"):
            model.describe(processor, images=[item["image"]], masks=[[]], questions=["What is this?"])
    else:
        batch = _batch(processor, model, [item])
        short = dict(batch, pixel_values=batch["pixel_values"][:-1], image_grid_thw=batch["image_grid_thw"].clone())
        short["image_grid_thw"][0, 2] -= 1
        short["pixel_values"] = batch["pixel_values"][: int(short["image_grid_thw"].prod(-1).sum())]
        with pytest.raises(ValueError, match="<image> tokens but the images give"):
            _forward(model, short)
    with pytest.raises(ValueError, match="region"):
        model.describe(processor, images=[item["image"]], masks=[item["masks"] * 2], questions=[item["question"]])
    other = PixelReferFastProcessor(processor.tokenizer, variant="full" if variant == "lite" else "lite",
                                    mask_num=processor.mask_num)
    with pytest.raises(ValueError, match="processor is for"):
        model.describe(other, images=[item["image"]], masks=[item["masks"]], questions=[item["question"]])
