"""The image table: items of one processor call that carry the same image share one copy of it
(`share_images`); the model encodes it once and the answers equal the unshared batch's."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM

import pixelrefer_kernels
from pixelrefer_fast import PixelReferFastProcessor
from tests.model.fixtures import box_mask, disc_mask, set_kmeans_init, textured
from tests.model.no_sync import forbid_device_reads
from tests.model.tiny_checkpoint import make_tiny_checkpoint

A, B = textured(56, 70, 2), textured(70, 98, 1)


def _video(frames=3, h=56, w=84, seed=5):
    return [textured(h, w, seed + t) for t in range(frames)]


def _items(variant, path_of_a):
    """Image A four times (the same object, an equal copy, its file, and once with two regions), image B
    once, and (full) a video item between them."""
    items = [
        dict(image=A, masks=[disc_mask(56, 70, 20, 20, 9)], question="What is <region>?"),
        dict(image=B, masks=[box_mask(70, 98, 10, 12, 30, 40)], question="Describe <region> in detail, please."),
        dict(image=A.copy(), masks=[box_mask(56, 70, 30, 35, 20, 30)], question="What is <region>?"),
        dict(image=str(path_of_a), masks=[box_mask(56, 70, 5, 5, 20, 40)], question="And <region>?"),
        dict(image=A, masks=[disc_mask(56, 70, 30, 40, 8), box_mask(56, 70, 2, 2, 20, 20)],
             question="Compare <region> with <region>."),
    ]
    if variant == "full":
        items.insert(2, dict(video=_video(), masks=[box_mask(56, 84, 8, 8, 30, 30)], frame_ids=[1],
                             question="Describe <region>."))
    return items


@pytest.fixture(scope="module", params=["full", "lite"])
def setup(request, tmp_path_factory):
    variant = request.param
    directory = make_tiny_checkpoint(tmp_path_factory.mktemp(variant), variant, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa")
    path = tmp_path_factory.mktemp("images") / "a.png"
    Image.fromarray(A).save(path)  # lossless: the file decodes to A's pixels
    shared = PixelReferFastProcessor.from_pretrained(directory)
    separate = PixelReferFastProcessor.from_pretrained(directory, share_images=False)
    assert shared.share_images and not separate.share_images
    items = _items(variant, path)
    return variant, model, shared(items), separate(items)


def _run(model, batch, generators=None):
    """`(inputs_embeds, logits)` of the batch's prefill."""
    inputs = dict(batch)
    if generators is not None:
        inputs["kmeans_generator"] = generators
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        placed = model.place_inputs(inputs)
        embeds = model.model.embed_multimodal(placed["input_ids"], placed["multimodal_inputs"])
        return embeds, model(**model.place_inputs(inputs)).logits


def _assert_same(got, expected):
    """Features (the spliced embeddings) to 1e-6 (absolute plus relative); the logits to fp32's default
    tolerance. Not bit-equal: the packed vision call has fewer rows when images are shared, so the
    crops' GEMMs block differently (their vision features move by up to ~6e-7, the embeddings by up to
    ~1.3e-6 at values ~0.7), which the LLM carries to ~2e-6 in the logits."""
    torch.testing.assert_close(got[0], expected[0], rtol=1e-6, atol=1e-6)
    assert torch.isfinite(got[1]).all()
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)


def test_each_image_is_in_the_batch_once(setup):
    variant, _, shared, separate = setup
    if variant == "full":
        # separate: A, B, the video's 3 frames, A, A, A; shared: A, B, the frames
        assert separate["image_grid_thw"].shape[0] == 8 and "image_index" not in separate
        assert shared["image_grid_thw"].shape[0] == 5
        assert shared["image_index"].tolist() == [0, 1, 2, 3, 4, 0, 0, 0]
        assert shared["image_merge_sizes"].tolist() == [1, 1, 2, 2, 2]
        rows = shared["image_grid_thw"].prod(-1)
        assert shared["pixel_values"].shape[0] == int(rows.sum())
        keep = shared["image_token_keep"]
        assert keep.shape[0] == int(rows[:2].sum() + rows[2:].sum() // 4)
    else:
        # A's two-region item has another pixel budget (two views per call): a view of its own
        assert separate["global_grid_thw"].shape[0] == 5 and shared["global_grid_thw"].shape[0] == 3
        assert shared["region_global"].tolist() == [0, 1, 0, 0, 2, 2]
        assert "image_index" not in shared
        torch.testing.assert_close(shared["global_pixel_values"][: int(shared["global_grid_thw"][0].prod())],
                                   separate["global_pixel_values"][: int(separate["global_grid_thw"][0].prod())],
                                   rtol=0, atol=0)
    for key in ("input_ids", "attention_mask", "crop_pixel_values", "region_masks", "local_pixel_values"):
        if key in separate:
            assert torch.equal(shared[key], separate[key]), key


def test_shared_images_give_the_same_logits(setup):
    _, model, shared, separate = setup
    set_kmeans_init(model, "deterministic")
    _assert_same(_run(model, shared), _run(model, separate))


def test_parity_kmeans_draws_from_the_same_generators(setup):
    """The parity init draws from the per-region generators in region order, as without sharing."""
    _, model, shared, separate = setup
    set_kmeans_init(model, "parity")
    regions = shared["crop_grid_thw"].shape[0]
    try:
        expected = _run(model, separate, [torch.Generator().manual_seed(10 + r) for r in range(regions)])
        got = _run(model, shared, [torch.Generator().manual_seed(10 + r) for r in range(regions)])
    finally:
        set_kmeans_init(model, "deterministic")
    _assert_same(got, expected)


def test_shared_greedy_answers_equal_the_separate_ones(setup):
    variant, model, shared, separate = setup
    set_kmeans_init(model, "deterministic")
    processor = PixelReferFastProcessor.from_pretrained(model.name_or_path)
    answers = [model.describe(processor, inputs=batch, max_new_tokens=4, min_new_tokens=4)
               for batch in (shared, separate)]
    assert answers[0] == answers[1]


def test_distinct_images_are_not_indexed(setup):
    variant, model, _, _ = setup
    processor = PixelReferFastProcessor.from_pretrained(model.name_or_path)
    batch = processor([dict(image=A, masks=[disc_mask(56, 70, 20, 20, 9)], question="What is <region>?"),
                       dict(image=B, masks=[box_mask(70, 98, 10, 12, 30, 40)], question="What is <region>?")])
    assert "image_index" not in batch
    grid = batch["image_grid_thw"] if variant == "full" else batch["global_grid_thw"]
    assert grid.shape[0] == 2


def test_a_shared_batch_reads_nothing_back(setup):
    variant, model, shared, _ = setup
    set_kmeans_init(model, "deterministic")
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        placed = model.place_inputs(shared)
        packed = placed["multimodal_inputs"]
        assert (packed.image_rows is not None) == (variant == "full")
        with forbid_device_reads(placed["input_ids"], placed["attention_mask"], *packed.device_tensors(), modules=[model]):
            logits = model(**placed, logits_to_keep=1).logits
    assert torch.isfinite(logits).all()


BAD_INDEX = [
    (lambda i: i[:-1], "prompt has .* <image> tokens but the images give"),
    (lambda i: torch.where(i == 0, 99, i), r"image_index must be a 1-D tensor of image_grid_thw rows \(0\.\.4\)"),
    (lambda i: i.float(), "image_index must be an integer tensor"),
]


def test_a_bad_index_is_refused(setup):
    """Full: a bad `image_index`; Lite: a shared view index out of range."""
    variant, model, shared, _ = setup
    if variant == "lite":
        bad = dict(shared, region_global=torch.where(shared["region_global"] == 2, 3, shared["region_global"]))
        with pytest.raises(ValueError, match=r"region_global must hold one view index \(0\.\.2\)"):
            model.place_inputs(bad)
        return
    for index, message in BAD_INDEX:
        bad = dict(shared, image_index=index(shared["image_index"]))
        with pytest.raises((ValueError, TypeError), match=message):
            model.place_inputs(bad)
    no_pixels = {k: v for k, v in shared.items() if k not in ("pixel_values", "image_grid_thw", "image_merge_sizes")}
    with pytest.raises(ValueError, match="image_index was given without pixel_values"):
        model.place_inputs(no_pixels)
