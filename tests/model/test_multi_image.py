"""Items with several images (the official image mode: `load_images` of a list, `mask_ids` naming the
image of each mask): one `<image>` per image, each region cropped from (full) or viewed in (Lite) its
own image; the official processor call gives every image 1/N of the pixel budget."""

from __future__ import annotations

import pytest
import torch

import pixelrefer_kernels
from pixelrefer_fast import PixelReferFastProcessor
from pixelrefer_fast.image_processing_pixelrefer_fast import PixelReferFastImageProcessor
from tests.model.fixtures import box_mask, disc_mask, textured, tiny_model_and_processor

A, B = textured(56, 70, 2), textured(70, 98, 1)
ON_A, ON_B = disc_mask(56, 70, 20, 20, 9), box_mask(70, 98, 10, 12, 30, 40)
QUESTION = "Compare <region> with <region>."


@pytest.fixture(scope="module", params=["full", "lite"])
def setup(request, tmp_path_factory):
    variant = request.param
    return variant, *tiny_model_and_processor(tmp_path_factory.mktemp(variant), variant)


def _features(model, batch):
    """`(image features or None, region features)` of a processor batch."""
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        packed = model.place_inputs(batch)["multimodal_inputs"]
        vision = model.model.encode_pixels(packed)
        images = model.model.get_image_features(packed, vision) if packed.image_grid_thw is not None else None
        return images, model.model.get_region_features(packed, vision)[0]


def _close(got, expected):
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_each_region_is_pooled_from_its_owntextured(setup):
    """Region 0 lies on image 1 (B), region 1 on image 0 (A): their features are those of B's and A's
    regions asked about alone; the full model's image tokens are A's then B's."""
    variant, model, processor = setup
    two = processor([dict(image=[A, B], image_ids=[1, 0], masks=[ON_B, ON_A], question=QUESTION)])
    alone_b = processor([dict(image=B, masks=[ON_B], question="What is <region>?")])
    alone_a = processor([dict(image=A, masks=[ON_A], question="What is <region>?")])
    assert two["region_image_hw"].tolist() == [[70, 98], [56, 70]]
    images, regions = _features(model, two)
    images_b, regions_b = _features(model, alone_b)
    images_a, regions_a = _features(model, alone_a)
    _close(regions, torch.cat([regions_b, regions_a]))
    if variant == "full":
        assert two["image_grid_thw"].tolist() == [[1, 4, 5], [1, 5, 7]]
        _close(images, torch.cat([images_a, images_b]))
        text = processor.decode(two["input_ids"][0])
        assert text.startswith("<|im_start|>user\n" + "<image>" * 20 + "\n" + "<image>" * 35 + "\nCompare [")
    else:
        assert two["global_grid_thw"].shape[0] == 2 and two["region_global"].tolist() == [0, 1]


def test_swapping_the_images_and_the_indices(setup):
    """The same regions on the swapped list: equal region features; Lite (no image tokens in its prompt)
    gives the same answer, the full model the same tokens with its two images' blocks swapped."""
    variant, model, processor = setup
    first = processor([dict(image=[A, B], image_ids=[1, 0], masks=[ON_B, ON_A], question=QUESTION)])
    swapped = processor([dict(image=[B, A], image_ids=[0, 1], masks=[ON_B, ON_A], question=QUESTION)])
    images, regions = _features(model, first)
    images_swapped, regions_swapped = _features(model, swapped)
    _close(regions_swapped, regions)
    if variant == "full":
        _close(images_swapped, torch.cat([images[20:], images[:20]]))
    else:
        assert torch.equal(first["input_ids"], swapped["input_ids"])
        with torch.inference_mode(), pixelrefer_kernels.force("torch"):
            _close(model(**swapped).logits, model(**first).logits)
        answers = [model.describe(processor, inputs=batch, max_new_tokens=4) for batch in (first, swapped)]
        assert answers[0] == answers[1]


def test_each_image_gets_its_share_of_the_pixel_budget(full):
    """As the official processor call: N images are resized with `max_pixels // N` each (full model;
    Lite's 336 global view has a fixed size)."""
    small = PixelReferFastProcessor(full.tokenizer, PixelReferFastImageProcessor(max_pixels=28 * 28 * 12))
    big = textured(140, 196, 3)
    on_big = box_mask(140, 196, 10, 10, 40, 40)
    batch = small([dict(image=[big, big.copy()], image_ids=[0, 1], masks=[on_big, on_big], question="<region> <region>")])
    alone = small.image_processor.preprocess([big], num_images=2)
    assert batch["image_grid_thw"].tolist() == [alone.grid_thw[0].tolist()]  # shared: one copy, used twice
    assert batch["image_index"].tolist() == [0, 0]
    one = small([dict(image=big, masks=[on_big], question="<region>")])
    assert int(one["image_grid_thw"].prod()) > int(batch["image_grid_thw"].prod())


def test_image_markers_where_the_question_puts_them(full):
    batch = full([dict(image=[A, B], image_ids=[0, 1], masks=[ON_A, ON_B],
                            question="First <image> then <image> : <region> vs <region>")])
    text = full.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>user\nFirst" + "<image>" * 20 + "\nthen" + "<image>" * 35 + "\n:")


def test_items_with_several_images_share_them(setup):
    """[A, B] and [B, A] in one call: each image once in the batch; the same logits as unshared."""
    variant, model, processor = setup
    items = [dict(image=[A, B], image_ids=[1, 0], masks=[ON_B, ON_A], question=QUESTION),
             dict(image=[B, A], image_ids=[0, 1], masks=[ON_B, ON_A], question=QUESTION)]
    shared = processor(items)
    separate = PixelReferFastProcessor(processor.tokenizer, processor.image_processor, variant=variant,
                                       mask_num=processor.mask_num, share_images=False)(items)
    if variant == "full":
        assert shared["image_index"].tolist() == [0, 1, 1, 0] and shared["image_grid_thw"].shape[0] == 2
    else:
        assert shared["global_grid_thw"].shape[0] == 2 and shared["region_global"].tolist() == [0, 1, 0, 1]  # B first
    with torch.inference_mode(), pixelrefer_kernels.force("torch"):
        torch.testing.assert_close(model(**shared).logits, model(**separate).logits, rtol=1e-5, atol=1e-5)


BAD = [
    (dict(image=[A, B], masks=[ON_A], question="<region>"), ValueError, "needs `image_ids`"),
    (dict(image=[A, B], image_ids=[2], masks=[ON_A], question="<region>"), ValueError,
     r"image_ids\[0\] = 2 is out of range for 2 image\(s\) \(0\.\.1\)"),
    (dict(image=[A, B], image_ids=[0, 1], masks=[ON_A], question="<region>"), ValueError, "one image index per mask"),
    (dict(image=[A, B], image_ids=[True], masks=[ON_A], question="<region>"), TypeError, r"image_ids\[0\] must be an int"),
    (dict(image=[A, B], image_ids=[1], masks=[ON_A], question="<region>"), ValueError,
     r"region 0 \(image 1\).*size"),
    (dict(image=[], masks=[ON_A], question="<region>"), ValueError, "image is an empty list"),
    (dict(video=[A], frame_ids=[0], image_ids=[0], masks=[ON_A], question="<region>"), ValueError,
     "image_ids are for image items"),
]


@pytest.mark.parametrize("item, error, message", BAD, ids=["no-ids", "out-of-range", "length", "bool", "mask-size",
                                                           "empty", "video"])
def test_bad_multi_image_items(setup, item, error, message):
    _, _, processor = setup
    with pytest.raises(error, match=message):
        processor([item])


def test_full_image_markers_must_match_the_images(full):
    with pytest.raises(ValueError, match=r"item 0: the question contains '<image>' 1 times but 2 image\(s\)"):
        full([dict(image=[A, B], image_ids=[0], masks=[ON_A], question="<image> <region>")])
