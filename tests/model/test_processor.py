"""PixelReferFastProcessor: prompts (docs/spec.md §7.1, §7.2, §8), output keys, batching, loading, errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from pixelrefer_fast.crops import full_region_crop
from pixelrefer_fast.image_processing_pixelrefer_fast import load_image
from pixelrefer_fast.processing_pixelrefer_fast import PixelReferFastProcessor, PixelReferItem, render_prompt
from tests.model.fixtures import DEMO_DIR, box_mask, demo_path, disc_mask, make_tiny_tokenizer, ring_mask, textured, threshold_mask

needs_demo = pytest.mark.skipif(not DEMO_DIR.is_dir(), reason="shared demo media not available")
R = "<REGION>"
USER, END = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
REGION_KEYS = {"crop_pixel_values", "crop_grid_thw", "region_masks", "region_mask_hw", "region_boxes",
               "region_image_hw", "region_token_counts", "region_item", "region_mask_cells"}
FULL_KEYS = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "image_merge_sizes"} | REGION_KEYS
LITE_KEYS = ({"input_ids", "attention_mask", "global_pixel_values", "global_grid_thw", "region_global",
              "local_pixel_values", "local_grid_thw", "region_local"} | REGION_KEYS)


def text_of(processor, batch, row=0):
    ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
    return processor.decode(ids)


# ------------------------------------------------------------------------ chat template (docs/spec.md §7.2)
def test_render_prompt_exact_strings():
    assert render_prompt("What is [x]?", variant="full", media="image") == f"{USER}<image>\nWhat is [x]?{END}"
    assert render_prompt("<image>\n  What is [x]? ", variant="full", media="image") == f"{USER}<image>\nWhat is [x]?{END}"
    assert render_prompt("Look: <image> then answer.", variant="full", media="image") == (
        f"{USER}Look:<image>\nthen answer.{END}")
    video = render_prompt("<video>\nDescribe it.", variant="full", media="video", timestamps=[0.0, 1.0, 2.5])
    assert video == f"{USER}Time 0.0s:<image>,Time 1.0s:<image>,Time 2.5s:<image>\nDescribe it.{END}"
    assert render_prompt(" Describe [x]. ", variant="lite") == f"{USER}Describe [x].{END}"
    # NumPy rounding of the template's round(1): 0.35 -> 0.4 (Python's round gives 0.3).
    assert "Time 0.4s:" in render_prompt("q", variant="full", media="video", timestamps=[np.float64(0.35)])


def test_full_image_prompt_keys_and_counts(full):
    image = textured(480, 640)
    batch = full([PixelReferItem(image=image, masks=[box_mask(480, 640, 200, 250, 80, 100)],
                                 question="What is <region>?")])
    assert set(batch) == FULL_KEYS
    assert text_of(full, batch) == f"{USER}{'<image>' * 1564}\nWhat is [{R * 32}]?{END}"
    assert batch["pixel_values"].shape == (1564, 588) and batch["pixel_values"].dtype == torch.float32
    assert batch["image_grid_thw"].tolist() == [[1, 34, 46]] and batch["image_merge_sizes"].tolist() == [1]
    assert batch["crop_grid_thw"].tolist() == [[1, 10, 12]] and batch["crop_pixel_values"].shape == (120, 588)
    assert batch["region_mask_hw"].tolist() == [[10, 12]] and batch["region_masks"].shape == (120,)
    # masks travel as uint8 (only > 0 is ever read), with their cells inside per region
    assert batch["region_masks"].dtype == torch.uint8 and set(batch["region_masks"].unique().tolist()) <= {0, 1}
    assert batch["region_mask_cells"].tolist() == [int(batch["region_masks"].sum())]
    assert batch["region_boxes"].tolist() == [[172, 222, 307, 377]]
    assert batch["region_image_hw"].tolist() == [[480, 640]]
    assert batch["region_token_counts"].tolist() == [32] and batch["region_item"].tolist() == [0]
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long


def test_lite_image_prompt_and_keys(lite):
    image = textured(300, 400, seed=1)
    batch = lite([PixelReferItem(image=image, masks=[box_mask(300, 400, 20, 30, 50, 60), disc_mask(300, 400, 200, 300, 6)],
                                 question="Compare <region> with <region>.")])
    assert set(batch) == LITE_KEYS
    assert text_of(lite, batch) == f"{USER}Compare [{R * 32}] with [{R * 32}].{END}"
    assert batch["global_grid_thw"].tolist() == [[1, 24, 24]] and batch["global_pixel_values"].shape == (576, 588)
    assert batch["local_grid_thw"].tolist() == [[1, 16, 16]] and batch["local_pixel_values"].shape == (256, 588)
    assert batch["region_global"].tolist() == [0, 0] and batch["region_local"].tolist() == [0, 0]
    assert batch["region_token_counts"].tolist() == [32, 32]


def test_lite_reuse_option_and_empty_mask():
    image = textured(200, 300, seed=2)
    masks = [box_mask(200, 300, 10, 10, 30, 30), np.zeros((200, 300), np.uint8), box_mask(200, 300, 100, 150, 40, 40)]
    item = PixelReferItem(image=image, masks=masks, question="<region> <region> <region>")
    parity = PixelReferFastProcessor(make_tiny_tokenizer(), variant="lite")(item)
    fixed = PixelReferFastProcessor(make_tiny_tokenizer(), variant="lite", reuse_first_local_crop=False)(item)
    assert parity["region_local"].tolist() == [0, 0, 0] and parity["local_grid_thw"].shape[0] == 1
    assert fixed["region_local"].tolist() == [0, 1, 2] and fixed["local_grid_thw"].shape[0] == 3
    # The empty mask: 14x14 zero crop enlarged to 4x4 patches, 1x1 zero mask, box 0, 32 tokens (docs/spec.md §14.3).
    assert parity["crop_grid_thw"][1].tolist() == [1, 4, 4] and parity["region_mask_hw"][1].tolist() == [1, 1]
    assert parity["region_boxes"][1].tolist() == [0, 0, 0, 0] and parity["region_token_counts"][1] == 32


@pytest.mark.parametrize("count, global_grid, local_grid", [(16, 22, 16), (33, 15, 15)])
def test_lite_view_budget_depends_on_mask_count(lite, count, global_grid, local_grid):
    image = textured(120, 160, seed=3)
    masks = [box_mask(120, 160, (i * 7) % 100, (i * 11) % 140, 8, 8) for i in range(count)]
    batch = lite(PixelReferItem(image=image, masks=masks, question=" ".join(["<region>"] * count)))
    assert batch["global_grid_thw"].tolist() == [[1, global_grid, global_grid]]
    assert batch["local_grid_thw"].tolist() == [[1, local_grid, local_grid]]


def test_batch_left_padding_and_packing(full):
    items = [PixelReferItem(image=textured(56, 56), masks=[box_mask(56, 56, 10, 10, 20, 20)], question="Is <region> red?"),
             {"image": textured(240, 320, 1), "question": "Name <region> and <region>, please.",
              "masks": np.stack([box_mask(240, 320, 5, 5, 50, 50), box_mask(240, 320, 100, 100, 60, 90)])}]
    batch = full(items)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert lengths[0] < lengths[1] == batch["input_ids"].shape[1]
    pad = full.tokenizer.pad_token_id
    gap = lengths[1] - lengths[0]
    assert batch["input_ids"][0, :gap].eq(pad).all() and batch["attention_mask"][0, :gap].eq(0).all()
    assert batch["attention_mask"][0, gap:].eq(1).all()
    assert batch["region_item"].tolist() == [0, 1, 1]
    grids = batch["image_grid_thw"]
    assert batch["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    assert batch["crop_pixel_values"].shape[0] == int(batch["crop_grid_thw"].prod(dim=1).sum())
    assert batch["region_masks"].shape[0] == int(batch["region_mask_hw"].prod(dim=1).sum())
    for row in range(2):
        ids = batch["input_ids"][row]
        assert int((ids == full.image_token_id).sum()) == int(grids[row].prod())
        assert int((ids == full.region_token_id).sum()) == int(batch["region_token_counts"][batch["region_item"] == row].sum())


def test_plain_call_form(full):
    image = textured(100, 120, 4)
    a = full(images=[image], masks=[[box_mask(100, 120, 10, 10, 30, 30)]], text=["What is <region>?"])
    b = full([PixelReferItem(image=image, masks=[box_mask(100, 120, 10, 10, 30, 30)], question="What is <region>?")])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    single = full(PixelReferItem(image=image, masks=(10, 10, 40, 40), question="What is <region>?"))
    assert single["region_boxes"].shape == (1, 4)
    assert torch.equal(single["region_masks"], b["region_masks"])  # the box equals the box mask above
    no_masks = full(images=[image], text="Describe the image.")
    assert no_masks["crop_grid_thw"].shape == (0, 3) and no_masks["region_token_counts"].numel() == 0


def test_vanished_region_gets_empty_brackets(full, caplog):
    image = textured(300, 500, 5)
    with caplog.at_level(logging.WARNING, logger="pixelrefer_fast.processing_pixelrefer_fast"):
        batch = full(PixelReferItem(image=image, masks=[ring_mask(300, 500, border=5)], question="What is <region>?"))
    assert batch["region_token_counts"].tolist() == [0]
    assert text_of(full, batch).endswith(f"What is []?{END}")
    assert "0 region tokens" in caplog.text


@needs_demo
@pytest.mark.parametrize("variant", ["full", "lite"])
def test_real_photos(variant):
    processor = PixelReferFastProcessor(make_tiny_tokenizer(), variant=variant)
    items = []
    for name, seed in (("1.jpg", 0), ("2.jpg", 1), ("8.jpg", 2)):
        image = load_image(demo_path(name))
        h, w = image.shape[:2]
        masks = [(w * 0.1, h * 0.2, w * 0.5, h * 0.7), disc_mask(h, w, h // 2, w // 3, 4),
                 threshold_mask(image, channel=seed, level=230)]
        items.append(PixelReferItem(image=str(demo_path(name)), masks=masks,
                                    question="Describe <region>, <region> and <region>."))
    batch = processor(items)
    assert batch["region_item"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    if variant == "full":
        grids = batch["image_grid_thw"]
        assert (grids.prod(dim=1) <= 8192).all() and grids[1].tolist() == [1, 67, 120]  # 2.jpg hits the budget
        assert batch["region_image_hw"][3].tolist() == [1846, 3295]
    else:
        assert batch["global_grid_thw"].tolist() == [[1, 24, 24]] * 3
        assert batch["region_global"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    counts = batch["region_token_counts"]
    assert int((batch["input_ids"] == processor.region_token_id).sum()) == int(counts.sum())


# ------------------------------------------------------------------------ video
@needs_demo
def test_full_video_file():
    pytest.importorskip("av")
    from pixelrefer_fast.video import decode_frames

    processor = PixelReferFastProcessor(make_tiny_tokenizer())
    mask = box_mask(720, 1280, 200, 300, 150, 200)
    batch = processor(PixelReferItem(video=str(demo_path("1.mp4")), masks=[mask], frame_ids=[10],
                                     question="<video>\nWhat is <region> doing?"))
    assert set(batch) == FULL_KEYS | {"image_token_keep"}
    assert batch["image_grid_thw"].tolist() == [[1, 52, 92]] * 5 and batch["image_merge_sizes"].tolist() == [2] * 5
    keep = batch["image_token_keep"]
    assert keep.shape == (5 * 26 * 46,) and keep.dtype == torch.bool
    per_frame = keep.view(5, -1).sum(dim=1).tolist()
    frames = "".join(f"Time {t}.0s:" + "<image>" * n + ("," if t < 4 else "\n") for t, n in enumerate(per_frame))
    crop = full_region_crop(decode_frames(demo_path("1.mp4"), [10])[10], mask)
    assert text_of(processor, batch) == f"{USER}{frames}What is [{R * crop.token_count}] doing?{END}"
    assert batch["crop_grid_thw"][0, 1:].tolist() == [crop.image.shape[0] // 14, crop.image.shape[1] // 14]
    assert batch["region_image_hw"].tolist() == [[720, 1280]]


def test_full_video_frame_list(full):
    frames = [textured(56, 84, i) for i in range(3)]
    frames.append(frames[2].copy())  # frozen: pruned to one token
    batch = full(PixelReferItem(video=frames, masks=[box_mask(56, 84, 10, 10, 20, 30)], frame_ids=[1],
                                timestamps=[0.0, 0.5, 1.25, 2.0], question="What is <region>?"))
    assert batch["image_token_keep"].view(4, -1).sum(dim=1).tolist() == [6, 6, 6, 1]
    text = text_of(full, batch)
    assert "Time 0.0s:" + "<image>" * 6 + ",Time 0.5s:" in text and "Time 1.2s:" in text
    assert ",Time 2.0s:<image>\nWhat is" in text
    default_times = full(PixelReferItem(video=frames, question="Describe."))
    assert "Time 3.0s:<image>\n" in text_of(full, default_times)


@needs_demo
def test_lite_video_file(lite):
    pytest.importorskip("av")
    box = (300, 200, 500, 350)
    batch = lite(PixelReferItem(video=str(demo_path("1.mp4")), masks=[[box, box], box], frame_ids=[[10, 20], 20],
                                question="What do <region> and <region> do?"))
    object_a = f"[Time 0.3:{R * 32},Time 0.7:{R * 32}]"
    assert text_of(lite, batch) == f"{USER}What do {object_a} and [Time 0.7:{R * 32}] do?{END}"
    assert batch["region_global"].tolist() == [0, 1, 1] and batch["global_grid_thw"].shape[0] == 2
    assert batch["region_local"].tolist() == [0, 1, 1]
    assert batch["region_image_hw"].tolist() == [[720, 1280]] * 3


def test_lite_video_frame_list(lite):
    frames = [textured(60, 80, i) for i in range(6)]
    batch = lite(PixelReferItem(video=frames, masks=[[box_mask(60, 80, 5, 5, 20, 20)] * 2], frame_ids=[[0, 4]],
                                question="Track <region>."))
    assert text_of(lite, batch) == f"{USER}Track [Time 0.0:{R * 32},Time 1.3:{R * 32}].{END}"


# ------------------------------------------------------------------------ loading and saving
def test_from_pretrained_official_layout_and_round_trip(tmp_path):
    make_tiny_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "pixelreferlite_qwen2", "mask_num": 16,
                                                      "mm_max_length": 4096, "spatial_merge_size": 2}))
    processor = PixelReferFastProcessor.from_pretrained(tmp_path)
    assert processor.variant == "lite" and processor.mask_num == 16
    assert processor.image_processor.max_pixels == 4096 * 4 * 196
    processor.reuse_first_local_crop = False
    saved = tmp_path / "saved"
    processor.save_pretrained(saved)
    again = PixelReferFastProcessor.from_pretrained(saved)
    assert again.to_dict() == processor.to_dict()
    assert again.image_processor.to_dict() == processor.image_processor.to_dict()
    item = PixelReferItem(image=textured(90, 100), masks=[box_mask(90, 100, 5, 5, 30, 30)] * 2, question="<region><region>")
    a, b = processor(item), again(item)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert PixelReferFastProcessor.from_pretrained(saved, variant="full").variant == "full"


def test_auto_processor(tmp_path):
    from transformers import AutoConfig, AutoProcessor, PreTrainedConfig

    class ProcessorTestConfig(PreTrainedConfig):
        model_type = "pixelrefer_fast_processor_test"

    AutoConfig.register(ProcessorTestConfig.model_type, ProcessorTestConfig, exist_ok=True)
    AutoProcessor.register(ProcessorTestConfig, PixelReferFastProcessor, exist_ok=True)
    PixelReferFastProcessor(make_tiny_tokenizer(), variant="lite").save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": ProcessorTestConfig.model_type}))
    loaded = AutoProcessor.from_pretrained(str(tmp_path))
    assert isinstance(loaded, PixelReferFastProcessor) and loaded.variant == "lite"


def test_missing_special_tokens_are_added():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1, "<|im_end|>": 2}, unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base, unk_token="<unk>", eos_token="<|im_end|>")
    processor = PixelReferFastProcessor(tokenizer)
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in ("<image>", "<|stream_start|>", "<|stream_end|>", "<REGION>")] == [3, 4, 5, 6]
    assert processor.image_token_id == 3 and processor.region_token_id == 6


# ------------------------------------------------------------------------ errors
IMG = np.zeros((60, 80, 3), np.uint8)
BOX = box_mask(60, 80, 10, 10, 20, 20)


@pytest.mark.parametrize(
    "variant, item, error, match",
    [
        pytest.param("lite", dict(image=IMG, question="Describe."), ValueError, "needs at least one region mask",
                     id="lite-without-masks"),
        pytest.param("full", dict(image=IMG, masks=[BOX], question="<region> and <region>"), ValueError,
                     "2 '<region>' placeholder", id="more-placeholders"),
        pytest.param("full", dict(image=IMG, masks=[BOX, BOX], question="<region>"), ValueError,
                     "1 '<region>' placeholder", id="fewer-placeholders"),
        pytest.param("full", dict(image=IMG, masks=[BOX], question="Describe it."), ValueError,
                     "0 '<region>' placeholder", id="no-placeholder"),
        pytest.param("full", dict(image=IMG, masks=[BOX, np.zeros((60, 80))], question="<region><region>"),
                     ValueError, "item 0, region 1: the mask is empty", id="full-empty-mask"),
        pytest.param("full", dict(image=IMG, masks=[np.ones((61, 80))], question="<region>"), ValueError,
                     "differs from the image size", id="mask-size"),
        pytest.param("lite", dict(image=IMG, masks=[np.ones((60, 81))], question="<region>"), ValueError,
                     "differs from the image size", id="lite-mask-size"),
        pytest.param("full", dict(image="/no/such/photo.jpg", question="Hi"), ValueError, "/no/such/photo.jpg",
                     id="unreadable-image"),
        pytest.param("full", dict(video="/no/such/clip.mp4", question="Hi"), ValueError, "/no/such/clip.mp4",
                     id="unreadable-video"),
        pytest.param("lite", dict(image=IMG, masks=[BOX], question="<image>\n<region>"), ValueError,
                     "cannot contain '<image>'", id="image-token-in-lite"),
        pytest.param("lite", dict(image=IMG, masks=[BOX], question="<video> <region>"), ValueError,
                     "cannot contain '<video>'", id="video-token-in-lite"),
        pytest.param("full", dict(image=IMG, masks=[BOX], question="<REGION> <region>"), ValueError,
                     "reserved token", id="region-token-in-question"),
        pytest.param("full", dict(image=IMG, masks=[BOX], question="<image><image><region>"), ValueError,
                     "2 times", id="two-image-markers"),
        pytest.param("full", dict(video=[IMG], question="<image> hi"), ValueError, "cannot contain '<image>'",
                     id="image-marker-in-video"),
        pytest.param("full", dict(image=IMG, video=[IMG], question="hi"), ValueError, "exactly one",
                     id="image-and-video"),
        pytest.param("full", dict(question="hi"), ValueError, "exactly one", id="no-media"),
        pytest.param("full", dict(image=IMG, question="hi", colour="red"), ValueError, "unknown keys",
                     id="unknown-key"),
        pytest.param("full", dict(video=[IMG, IMG], masks=[[BOX, BOX]], frame_ids=[[0, 1]], question="<region>"),
                     ValueError, "one mask per region", id="full-video-object-list"),
        pytest.param("full", dict(video=[IMG], masks=[BOX], question="<region>"), ValueError, "needs `frame_ids`",
                     id="full-video-no-frame-ids"),
        pytest.param("lite", dict(video=[IMG], masks=[BOX], question="<region>"), ValueError, "needs `frame_ids`",
                     id="lite-video-no-frame-ids"),
        pytest.param("lite", dict(video=[IMG], masks=[BOX], frame_ids=[3], question="<region>"), ValueError,
                     "out of range", id="lite-frame-id-range"),
        pytest.param("full", dict(video=[IMG], masks=[BOX], frame_ids=[1], question="<region>"), ValueError,
                     "out of range", id="full-frame-id-range"),
        pytest.param("full", dict(video=[IMG, np.zeros((30, 40, 3), np.uint8)], question="hi"), ValueError,
                     "same size", id="mixed-frame-sizes"),
        pytest.param("full", dict(image=IMG, question="hi", frame_ids=[0]), ValueError, "for videos only",
                     id="frame-ids-on-image"),
        pytest.param("full", dict(image=IMG.astype(np.float32), question="hi"), TypeError, "uint8",
                     id="float-image"),
    ],
)
def test_bad_inputs(variant, item, error, match):
    processor = PixelReferFastProcessor(make_tiny_tokenizer(), variant=variant)
    with pytest.raises(error, match=match):
        processor([item])


def test_bad_call_arguments(full):
    with pytest.raises(ValueError, match="either `items` or"):
        full([{"image": IMG, "question": "x"}], text=["x"])
    with pytest.raises(ValueError, match="`images` has 2 entries"):
        full(images=[IMG, IMG], text=["x"])
    with pytest.raises(ValueError, match="return_tensors"):
        full({"image": IMG, "question": "x"}, return_tensors="np")
    with pytest.raises(ValueError, match="empty"):
        full([])
    with pytest.raises(TypeError, match="PixelReferItem or a dict"):
        full(["just a string"])
    with pytest.raises(ValueError, match="variant"):
        PixelReferFastProcessor(make_tiny_tokenizer(), variant="medium")
    with pytest.raises(ValueError, match="not a directory"):
        PixelReferFastProcessor.from_pretrained("/no/such/checkpoint")
