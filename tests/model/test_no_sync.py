"""No host sync from `place_inputs` to the first logits: the prefill of a checked batch reads nothing
back from the device (`no_sync.forbid_device_reads`; on CUDA also `torch.cuda.set_sync_debug_mode`).

Deterministic k-means init: the parity init draws its rows from the CPU generator, on the host, and
needs the region sizes there (known from the processor's masks, so it does not sync either, but it is
host work per region). SDPA attention: flash-attn's unpadding reads the sequence lengths back.
"""

from __future__ import annotations

import pytest
import torch

import pixelrefer_kernels
from pixelrefer_fast.modeling_pixelrefer_fast import PixelReferFastModel
from tests.model.fixtures import box_mask, disc_mask, textured, tiny_model_and_processor
from tests.model.no_sync import DeviceRead, forbid_device_reads


def _video(frames=3, h=56, w=84, seed=5):
    video = [textured(h, w, seed)]
    for t in range(1, frames):
        frame = textured(h, w, seed + t)
        frame[:28, :28] = video[-1][:28, :28]  # a repeated block: pruned by the token compression
        video.append(frame)
    return video


# two items of different lengths (left padding), two regions, and for the full model a compressed video
ITEMS = {
    "full": [
        dict(image=textured(56, 70, 2), masks=[disc_mask(56, 70, 20, 20, 9), box_mask(56, 70, 30, 35, 20, 30)],
             question="Compare <region> with <region>."),
        dict(video=_video(), masks=[box_mask(56, 84, 8, 8, 30, 30)], frame_ids=[1], question="Describe <region>."),
    ],
    "lite": [
        dict(image=textured(56, 70, 2), masks=[disc_mask(56, 70, 20, 20, 9), box_mask(56, 70, 30, 35, 20, 30)],
             question="Compare <region> with <region> in this picture, please."),
        dict(image=textured(70, 98, 1), masks=[box_mask(70, 98, 10, 12, 30, 40)], question="What is <region>?"),
    ],
}


@pytest.fixture(scope="module", params=["full", "lite"])
def setup(request, tmp_path_factory):
    variant = request.param
    model, processor = tiny_model_and_processor(tmp_path_factory.mktemp(variant), variant)
    raw = dict(processor([dict(item) for item in ITEMS[variant]]))
    assert not bool(raw["attention_mask"].all())  # the padded prefill path is the one under test
    return model, raw


def _prefill(model, placed):
    packed = placed["multimodal_inputs"]
    seeds = (placed["input_ids"], placed["attention_mask"], packed.device_tensors())
    with forbid_device_reads(*seeds, modules=[model]):
        return model(**placed, logits_to_keep=1).logits


def test_prefill_of_a_placed_batch_reads_nothing_back(setup):
    model, raw = setup
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        placed = model.place_inputs(raw)
        guarded = _prefill(model, placed)
        reference = model(**raw, logits_to_keep=1).logits  # the processor's output as it is: checked at entry
    assert torch.isfinite(guarded).all()
    torch.testing.assert_close(guarded, reference)  # the guard's dispatch mode may pick another SDPA kernel


def test_the_guard_catches_a_count_read_back(setup, monkeypatch):
    """Putting back the old `counts.to("cpu")` of `embed_multimodal` fails the no-sync test."""
    model, raw = setup
    original = PixelReferFastModel.project_regions

    def reads_counts(self, batch, tokens, counts, dtype):
        counts.to("cpu", torch.long).tolist()
        return original(self, batch, tokens, counts, dtype)

    monkeypatch.setattr(PixelReferFastModel, "project_regions", reads_counts)
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        placed = model.place_inputs(raw)
        with pytest.raises(DeviceRead, match="tolist"):
            _prefill(model, placed)


def test_the_guard_catches_a_threshold_on_the_device_masks(setup):
    model, raw = setup
    with torch.inference_mode():
        placed = model.place_inputs(raw)
        masks = placed["multimodal_inputs"].regions.masks
        with forbid_device_reads(masks), pytest.raises(DeviceRead):
            bool((masks > 0).any())


@pytest.mark.gpu
def test_prefill_never_syncs_on_cuda(setup):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model, raw = setup
    model = model.cuda()
    with torch.inference_mode():
        placed = model.place_inputs(raw)
        model(**placed, logits_to_keep=1)  # warm-up: compilation and autotuning synchronise
        placed = model.place_inputs(raw)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            logits = model(**placed, logits_to_keep=1).logits
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(logits).all()


def test_processor_output_of_the_old_form_still_works(setup):
    """float32 masks without `region_mask_cells` (what the processor gave before): checked at the
    entry, thresholded once, the same logits."""
    model, raw = setup
    old = {k: v for k, v in raw.items() if k != "region_mask_cells"}
    old["region_masks"] = raw["region_masks"].float() * 0.75  # any value > 0 is inside
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        expected = model(**raw, logits_to_keep=1).logits
        got = model(**old, logits_to_keep=1).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_mask_cells_that_disagree_with_the_masks_are_refused(setup):
    model, raw = setup
    wrong = dict(raw, region_mask_cells=raw["region_mask_cells"] + 1)
    with pytest.raises(ValueError, match="region_mask_cells .* disagree with the cells the masks select"):
        model.place_inputs(wrong)


def test_a_placed_batch_belongs_to_its_prompt(setup):
    model, raw = setup
    placed = model.place_inputs(raw)
    with pytest.raises(ValueError, match="was packed for"), torch.inference_mode():
        model(**dict(placed, input_ids=placed["input_ids"][:, 1:], attention_mask=placed["attention_mask"][:, 1:]))
    with pytest.raises(ValueError, match="either multimodal_inputs"), torch.inference_mode():
        model(**placed, region_masks=raw["region_masks"])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_prefill_mask_equals_transformers_own(setup, attention):
    """The 4-D mask built for a padded prefill (no read-back) gives transformers' results on real tokens."""
    model, raw = setup
    placed = model.place_inputs(raw)
    previous = model.config._attn_implementation
    model.set_attn_implementation(attention)
    try:
        with torch.inference_mode(), pixelrefer_kernels.force("torch"):
            inner = model.model
            embeds = inner.embed_multimodal(placed["input_ids"], placed["multimodal_inputs"])
            mask = placed["attention_mask"]
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            ours = inner.run_llm(inputs_embeds=embeds, attention_mask=inner._prefill_mask(mask, placed["multimodal_inputs"]),
                                 position_ids=positions).last_hidden_state
            theirs = inner.run_llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    finally:
        model.set_attn_implementation(previous)
    assert isinstance(inner._prefill_mask(mask, placed["multimodal_inputs"]), dict)
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)


def test_lite_view_indices_are_checked_once_at_the_entry(setup):
    model, raw = setup
    if not model.config.is_lite:
        pytest.skip("Lite views")
    bad = dict(raw, region_local=raw["region_local"] + raw["local_grid_thw"].shape[0])
    with pytest.raises(ValueError, match="region_local must hold one view index"):
        model.place_inputs(bad)
