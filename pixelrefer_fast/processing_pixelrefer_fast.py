"""`PixelReferFastProcessor`: a batch of (image or video, masks, question) -> model inputs.

One call replaces the official `mm_infer` preprocessing (image/video loading, `resize_image_mask`,
three image-processor calls, chat template, `<image>` expansion, tokenization) for a whole batch,
with left padding. The output keys are the model's inputs: `input_ids`, `attention_mask` and the
multimodal fields of `PixelReferFastInputs` (`modeling_pixelrefer_fast.py`), so `model(**batch)` takes
the batch as it is.

**Prompt (docs/spec.md §7.2, rendered in Python, no system prompt):**

- full, image: `<|im_start|>user\\n<image>\\n{question}<|im_end|>\\n<|im_start|>assistant\\n`.
  A question without `<image>` gets it prepended (as the official `mm_infer`); a question may
  place one `<image>` itself ("A <image> B" renders "A<image>\\nB").
- full, video: `...user\\nTime 0.0s:<image>,Time 1.0s:<image>\\n{question}...`, the times rounded
  to one decimal with NumPy rounding (the official Jinja `round(1)` on NumPy floats); `<video>`
  marks the position like `<image>` for images.
- Lite: `<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n`; `<image>` and
  `<video>` are errors (the official Lite path has no global tokens and crashes on them).

Text chunks around the media token are stripped, empty ones dropped, as the official code does.
Each `<region>` is replaced, in mask order, before that:

- full: `[` + `<REGION>` x k + `]`, k = `min(mask_num, cells)` of the region's grid mask. A mask
  that vanishes on the patch grid (thin or ring-shaped, docs/spec.md §14.6) gets `[]` and 0 tokens, which
  is the official behaviour (a warning is logged);
- Lite image: `[` + `<REGION>` x mask_num + `]`;
- Lite video: one `<region>` per object, `[Time t1:<REGION> x 32,Time t2:<REGION> x 32]` over the
  object's frames (t = Python `round(t, 1)`, no "s").

Each `<image>` then becomes its token count: gh*gw for a still image (no merge: the full model
runs images with downsampling 1), the kept merged tokens for a video frame.

**Regions and errors.** The number of `<region>` placeholders must equal the number of regions
(objects for Lite video); a question without any `<region>` but with masks is an error too (the
official code would leave the masks unreferenced and fail in the model). The full model rejects
empty masks; Lite requires masks and accepts empty ones (official placeholder, `crops.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature

from .chat_template import CHAT_TEMPLATE, render_chat, time_label
from .crops import (
    RegionCrop,
    full_region_crop,
    lite_global_view,
    lite_local_view,
    lite_region_crop,
    plan_lite_views,
)
from .image_processing_pixelrefer_fast import (
    PixelReferFastImageProcessor,
    ProcessedImages,
    _read_json,
    load_image,
    to_rgb_array,
)
from .masks import is_box, to_binary_mask
from .tokens import IMAGE_TOKEN, REGION_PLACEHOLDER, REGION_TOKEN, SPECIAL_TOKENS, VIDEO_TOKEN
from .video import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_VIDEO_FPS,
    check_frame_id,
    check_rate,
    check_timestamps,
    frame_token_keep,
    load_video,
    load_video_frames,
)

logger = logging.getLogger(__name__)

PROCESSOR_CONFIG_NAME = "processor_config.json"
LITE_FRAME_LIST_FPS = 3.0  # the official frame rate of a video given as a folder of frames
VARIANTS = ("full", "lite")
PROCESSOR_OPTIONS = ("variant", "mask_num", "video_fps", "max_frames", "reuse_first_local_crop",
                     "use_token_compression", "share_images")


@dataclass
class PixelReferItem:
    """One sample: a question about regions of an image or a video.

    Attributes:
        question: text with one `<region>` per region (full model, Lite image) or per object
            (Lite video), in mask order.
        image: a path, PIL image, HWC/CHW uint8 array or tensor; or a list of them (several images in
            one conversation, the official image mode: one `<image>` per image). Exactly one of
            image/video.
        video: a video file path, or a list of frames (HWC uint8 arrays / PIL images).
        masks: one entry per region: a 2-D array/tensor, PIL image, COCO RLE dict or a box
            (x0, y0, x1, y1) (see `masks.py`; inside = value > 0); or a 3-D [R, H, W] stack, or an
            (R, 4) array of boxes (`split_masks`). Lite video: an entry may be a list of masks, one
            object over several frames.
        image_ids: several images only: the image (index into `image`) of each mask, as the official
            `mask_ids` (an int applies to every mask; default 0 for a single image).
        frame_ids: video only: the frame of each mask, same nesting as `masks` (an int applies to
            every mask). For a file: source frame indices (0-based, presentation order); for a
            frame list: indices into the list.
        timestamps: frame list only: the time in seconds of each frame of the list.
        fps: video file, full model: sampling rate (default: the processor's `video_fps`, 1).
        frames_fps: frame list only, when `timestamps` is not given: the list's frame rate; times
            are index / frames_fps. Default 1.0 for the full model (a list sampled at 1 fps) and
            3.0 for Lite (the official rate for frame folders).
    """

    question: str
    image: Any = None
    video: Any = None
    masks: Any = ()
    image_ids: Any = None
    frame_ids: Any = None
    timestamps: Sequence[float] | None = None
    fps: float | None = None
    frames_fps: float | None = None


class _ImageTable:
    """The images of one processor call, for `share_images` (internal).

    Two items carry the same image when their decoded pixels are equal: the key of an image is its
    shape and a BLAKE2b digest of its HWC uint8 RGB bytes, so the same object, the same file path,
    or a path and an array holding equal pixels all share. Within the call a file is decoded once
    (keyed by its path) and an object hashed once (keyed by its id; the items keep it alive), and
    each shared view is preprocessed once (`processed`).
    """

    def __init__(self) -> None:
        self._loaded: dict[Hashable, tuple[np.ndarray, Hashable]] = {}
        self._processed: dict[Hashable, ProcessedImages] = {}

    def load(self, source: Any, *, name: str) -> tuple[np.ndarray, Hashable]:
        """`(HWC uint8 RGB image, its key)`; raises as `load_image`."""
        memo = ("path", os.fspath(source)) if isinstance(source, (str, os.PathLike)) else ("object", id(source))
        if memo not in self._loaded:
            image = load_image(source, name=name)
            digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()
            self._loaded[memo] = (image, (image.shape, digest))
        return self._loaded[memo]

    def processed(self, key: Hashable, make: Any) -> ProcessedImages:
        """The preprocessed view `key` names, made by `make()` the first time."""
        if key not in self._processed:
            self._processed[key] = make()
        return self._processed[key]


@dataclass
class _Encoded:
    """One item's share of the batch (internal)."""

    prompt: str = ""
    image_token_counts: list[int] = field(default_factory=list)
    region_token_total: int = 0
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    grid_thw: list[torch.Tensor] = field(default_factory=list)
    image_keys: list[Hashable | None] = field(default_factory=list)  # per `pixel_values` entry; None: never shared
    merge_sizes: list[int] = field(default_factory=list)
    token_keep: list[torch.Tensor] = field(default_factory=list)
    crops: list[RegionCrop] = field(default_factory=list)
    crop_pixel_values: torch.Tensor | None = None
    crop_grid_thw: torch.Tensor | None = None
    global_pixel_values: torch.Tensor | None = None
    global_grid_thw: torch.Tensor | None = None
    global_keys: list[Hashable | None] = field(default_factory=list)  # per global view; None: never shared
    region_global: list[int] = field(default_factory=list)
    local_pixel_values: torch.Tensor | None = None
    local_grid_thw: torch.Tensor | None = None
    region_local: list[int] = field(default_factory=list)


class PixelReferFastProcessor:
    """Processor of PixelRefer (`variant="full"`) and PixelRefer-Lite (`variant="lite"`).

    Args:
        tokenizer: the checkpoint's Qwen2 tokenizer (any HF tokenizer). `<image>`,
            `<|stream_start|>`, `<|stream_end|>` and `<REGION>` are added as special tokens if missing
            (the official `mm_infer` adds the first three on every call).
        image_processor: a `PixelReferFastImageProcessor` (default: the official settings).
        variant: "full" or "lite".
        mask_num: K, the config's `mask_num` (32).
        video_fps, max_frames: full-model video sampling (official eval: 1 fps, 768 frames).
        reuse_first_local_crop: Lite parity quirk (default True, as the weights were trained): later masks on an image or
            frame reuse the first mask's local view. False gives every mask its own.
        use_token_compression: full-model video frame-token pruning (the official code always
            prunes); the config field of the same name.
        share_images: True (default): items of one call that carry the same image (equal decoded
            pixels; see `_ImageTable`) share one copy of its global image (full) or global view (Lite)
            in the batch, which the model encodes once (`image_index`, `region_global`); False gives
            every item its own copy, as separate calls would. The answers are the same either way.

    Call: `processor(items)` with a list of `PixelReferItem` or dicts with the same keys, or
    `processor(images=[...], masks=[[...], ...], text=[...])` / `processor(videos=..., frame_ids=...)`.
    Returns a `BatchFeature` of torch tensors (keys in the module docstring of `__call__`).

    Example:
        >>> proc = PixelReferFastProcessor.from_pretrained("path/to/PixelRefer-2B")
        >>> batch = proc([PixelReferItem(image="cat.jpg", masks=[(10, 20, 200, 220)],
        ...                              question="What is <region>?")])
        >>> batch["input_ids"].shape, batch["region_token_counts"]
    """

    def __init__(self, tokenizer: Any, image_processor: PixelReferFastImageProcessor | None = None, *,
                 variant: str = "full", mask_num: int = 32, video_fps: float = DEFAULT_VIDEO_FPS,
                 max_frames: int = DEFAULT_MAX_FRAMES, reuse_first_local_crop: bool = True,
                 use_token_compression: bool = True, share_images: bool = True) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        for name, value in (("mask_num", mask_num), ("max_frames", max_frames)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("reuse_first_local_crop", reuse_first_local_crop),
                            ("use_token_compression", use_token_compression), ("share_images", share_images)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
        check_rate("video_fps", video_fps)
        self.tokenizer = tokenizer
        self.image_processor = image_processor if image_processor is not None else PixelReferFastImageProcessor()
        self.variant = variant
        self.mask_num = int(mask_num)
        self.video_fps = float(video_fps)
        self.max_frames = int(max_frames)
        self.reuse_first_local_crop = bool(reuse_first_local_crop)
        self.use_token_compression = bool(use_token_compression)
        self.share_images = bool(share_images)
        missing = [tok for tok in SPECIAL_TOKENS if tok not in tokenizer.get_vocab()]
        if missing:
            logger.info("adding special tokens %s to the tokenizer", missing)
            tokenizer.add_tokens(missing, special_tokens=True)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.region_token_id = tokenizer.convert_tokens_to_ids(REGION_TOKEN)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        **kwargs: Any) -> PixelReferFastProcessor:
        """Load from a checkpoint directory (an official one or one we saved).

        Reads the tokenizer (`AutoTokenizer`), the model's `config.json` (`model_type` -> variant: a
        name containing "lite" is Lite; `mask_num`, `reuse_first_local_crop`, `use_token_compression`;
        `spatial_merge_size` and `mm_max_length` for the image processor), `preprocessor_config.json`
        and our `processor_config.json`. An option comes from, in this order of precedence: the
        keyword arguments, `processor_config.json` (written by `save_pretrained`), `config.json`;
        when the two files disagree a warning names both values. Other keyword arguments override
        `image_processor` or go to `AutoTokenizer.from_pretrained`.
        """
        directory = Path(pretrained_model_name_or_path)
        if not directory.is_dir():
            raise ValueError(f"PixelReferFastProcessor.from_pretrained: {str(directory)!r} is not a directory "
                             "(download the checkpoint first, e.g. with huggingface_hub.snapshot_download)")
        from_config = options_from_model_config(_read_json(directory / "config.json"))
        saved = _read_json(directory / PROCESSOR_CONFIG_NAME)
        options: dict[str, Any] = dict(from_config)
        for key in PROCESSOR_OPTIONS:
            if key in saved:
                if key in from_config and saved[key] != from_config[key]:
                    logger.warning("%s: %s=%r in %s overrides %r from config.json", directory, key, saved[key],
                                   PROCESSOR_CONFIG_NAME, from_config[key])
                options[key] = saved[key]
            if key in kwargs:
                options[key] = kwargs.pop(key)
        image_processor = kwargs.pop("image_processor", None)
        if image_processor is None:
            image_processor = PixelReferFastImageProcessor.from_pretrained(directory)
        for key in ("trust_remote_code", "_from_auto"):
            kwargs.pop(key, None)
        tokenizer = AutoTokenizer.from_pretrained(str(directory), **kwargs)
        return cls(tokenizer, image_processor, **options)

    def to_dict(self) -> dict[str, Any]:
        """The processor options as saved in `processor_config.json`."""
        return {"processor_class": type(self).__name__, "variant": self.variant, "mask_num": self.mask_num,
                "video_fps": self.video_fps, "max_frames": self.max_frames,
                "reuse_first_local_crop": self.reuse_first_local_crop,
                "use_token_compression": self.use_token_compression, "share_images": self.share_images}

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        """Write the tokenizer, `preprocessor_config.json` and `processor_config.json`; returns the files."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = [str(p) for p in self.tokenizer.save_pretrained(str(directory), **kwargs)]
        files.append(str(self.image_processor.save_pretrained(directory)))
        path = directory / PROCESSOR_CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        files.append(str(path))
        return files

    chat_template = CHAT_TEMPLATE

    def apply_chat_template(self, conversation: Sequence[dict], *, add_generation_prompt: bool = True,
                            tokenize: bool = False, **kwargs: Any) -> str | list[int]:
        """Render a conversation with `chat_template` (`chat_template.py`): the prompt this processor
        builds for a question, `<region>` placeholders unexpanded; `tokenize=True` returns token ids."""
        text = render_chat(conversation, template=self.chat_template, add_generation_prompt=add_generation_prompt)
        return self.tokenizer(text, add_special_tokens=False, **kwargs)["input_ids"] if tokenize else text

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """`tokenizer.batch_decode`."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        """`tokenizer.decode`."""
        return self.tokenizer.decode(*args, **kwargs)

    # ------------------------------------------------------------------ call
    def __call__(self, items: Any = None, *, images: Sequence[Any] | None = None, videos: Sequence[Any] | None = None,
                 masks: Sequence[Any] | None = None, text: str | Sequence[str] | None = None,
                 frame_ids: Sequence[Any] | None = None, image_ids: Sequence[Any] | None = None,
                 return_tensors: str | None = "pt") -> BatchFeature:
        """Build the model inputs of a batch.

        Args:
            items: a `PixelReferItem`, a dict with its field names, or a list of either.
            images / videos / masks / text / frame_ids / image_ids: the plain form (one entry per
                sample; instead of `items`).
            return_tensors: "pt" (torch; the only choice).

        Returns:
            `BatchFeature` (torch tensors; B samples, R regions of all samples in `<region>` order):
            - `input_ids` [B, T] int64 (left padding with the pad id), `attention_mask` [B, T] int64;
            - full only: `pixel_values` [N, 588] float32 (images raster, video frames window-major),
              `image_grid_thw` [I, 3], `image_merge_sizes` [I] (1 image, 2 video frame),
              `image_token_keep` [sum(gh*gw/merge**2)] bool (only when the batch has a video),
              `image_index` [M] (only when an image is shared, `share_images`: the `image_grid_thw`
              row of each of the M `<image>`s of the prompts, in order; absent = each row once, in order);
            - `crop_pixel_values` [N_crop, 588], `crop_grid_thw` [R, 3], `region_masks` [N_m] uint8
              packed raster grid masks (1 = inside), `region_mask_hw` [R, 2], `region_boxes` [R, 4]
              (top, left, bottom, right), `region_image_hw` [R, 2], `region_token_counts` [R],
              `region_item` [R], `region_mask_cells` [R] (cells inside per region);
            - Lite only: `global_pixel_values`, `global_grid_thw` [G, 3] (one view per distinct image
              with `share_images`), `region_global` [R],
              `local_pixel_values`, `local_grid_thw` [L, 3], `region_local` [R].
        """
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt', got {return_tensors!r}")
        batch = self._collect_items(items, images=images, videos=videos, masks=masks, text=text, frame_ids=frame_ids,
                                    image_ids=image_ids)
        table = _ImageTable() if self.share_images else None
        encoded = [self._encode_item(index, item, table) for index, item in enumerate(batch)]
        return self._pack(encoded)

    # ------------------------------------------------------------------ input normalisation
    def _collect_items(self, items: Any, *, images: Any, videos: Any, masks: Any, text: Any, frame_ids: Any,
                       image_ids: Any = None) -> list[PixelReferItem]:
        plain = any(v is not None for v in (images, videos, masks, text, frame_ids, image_ids))
        if items is not None and plain:
            raise ValueError("pass either `items` or the plain arguments (images/videos/masks/text/frame_ids/"
                             "image_ids), not both")
        if items is None:
            if text is None:
                raise ValueError("no input: pass `items`, or `text` with `images` or `videos`")
            texts = [text] if isinstance(text, str) else list(text)
            count = len(texts)
            columns = {"images": images, "videos": videos, "masks": masks, "frame_ids": frame_ids,
                       "image_ids": image_ids}
            for name, column in columns.items():
                if column is not None and len(column) != count:
                    raise ValueError(f"`{name}` has {len(column)} entries but `text` has {count}")

            def entry(column: Sequence[Any] | None, i: int, default: Any = None) -> Any:
                return column[i] if column is not None else default

            items = [PixelReferItem(question=texts[i], image=entry(images, i), video=entry(videos, i),
                                    masks=entry(masks, i, ()), frame_ids=entry(frame_ids, i),
                                    image_ids=entry(image_ids, i)) for i in range(count)]
        if isinstance(items, (PixelReferItem, Mapping)):
            items = [items]
        names = {f.name for f in fields(PixelReferItem)}
        batch = []
        for index, item in enumerate(items):
            if isinstance(item, Mapping):
                unknown = sorted(set(item) - names)
                if unknown:
                    raise ValueError(f"item {index}: unknown keys {unknown}; accepted: {sorted(names)}")
                if "question" not in item:
                    raise ValueError(f"item {index}: missing 'question'")
                item = PixelReferItem(**item)
            elif not isinstance(item, PixelReferItem):
                raise TypeError(f"item {index}: expected a PixelReferItem or a dict, got {type(item).__name__}")
            if not isinstance(item.question, str):
                raise TypeError(f"item {index}: question must be a str, got {type(item.question).__name__}")
            if (item.image is None) == (item.video is None):
                raise ValueError(f"item {index}: give exactly one of `image` and `video`")
            batch.append(item)
        if not batch:
            raise ValueError("the batch is empty")
        return batch

    # ------------------------------------------------------------------ per item
    def _encode_item(self, index: int, item: PixelReferItem, table: _ImageTable | None) -> _Encoded:
        label = f"item {index}"
        masks = split_masks(item.masks, name=f"{label}: masks")
        if self.variant == "lite" and not masks:
            raise ValueError(f"{label}: PixelRefer-Lite needs at least one region mask (it has no global image tokens)")
        question = item.question
        if REGION_TOKEN in question:
            raise ValueError(f"{label}: the question contains the reserved token {REGION_TOKEN!r}; write "
                             f"{REGION_PLACEHOLDER!r} where each region goes")
        self._check_placeholders(label, question, len(masks))
        if self.variant == "lite":
            for token in (IMAGE_TOKEN, VIDEO_TOKEN):
                if token in question:
                    raise ValueError(f"{label}: PixelRefer-Lite prompts cannot contain {token!r} (Lite has no "
                                     "global image tokens); remove it")
        if item.image is not None:
            extra = [key for key in ("frame_ids", "timestamps", "fps", "frames_fps") if getattr(item, key) is not None]
            if extra:
                raise ValueError(f"{label}: {'/'.join(extra)} are for videos only")
            return self._encode_image_item(label, item, masks, table)
        if item.image_ids is not None:
            raise ValueError(f"{label}: image_ids are for image items (a video's masks take `frame_ids`)")
        if self.variant == "full":
            return self._encode_full_video_item(label, item, masks)
        return self._encode_lite_video_item(label, item, masks)

    def _encode_image_item(self, label: str, item: PixelReferItem, masks: list[Any], table: _ImageTable | None
                           ) -> _Encoded:
        several = isinstance(item.image, (list, tuple))
        sources = list(item.image) if several else [item.image]
        if not sources:
            raise ValueError(f"{label}: image is an empty list; give an image or a list of images")
        names = [f"{label}: image {i}" if several else f"{label}: image" for i in range(len(sources))]
        loaded = [(load_image(src, name=name), None) if table is None else table.load(src, name=name)
                  for src, name in zip(sources, names)]
        images, keys = [image for image, _ in loaded], [key for _, key in loaded]
        image_of = self._image_ids(label, item.image_ids, len(masks), len(images))
        where = [f"{label}, region {r}" + (f" (image {i})" if several else "") for r, i in enumerate(image_of)]
        binary = [to_binary_mask(m, *images[i].shape[:2], name=name) for m, i, name in zip(masks, image_of, where)]
        out = _Encoded()
        if self.variant == "full":
            out.crops = [full_region_crop(images[i], m, patch_size=self.image_processor.patch_size,
                                          mask_num=self.mask_num, name=name)
                         for m, i, name in zip(binary, image_of, where)]
            count = len(images)  # the official call processes all images at once: each gets 1/count of the budget
            for image, key, name in zip(images, keys, names):
                def preprocess(image=image, name=name) -> ProcessedImages:
                    return self.image_processor.preprocess([image], downsampling=1, num_images=count, names=[name])

                processed = preprocess() if table is None else table.processed(("full", key, count), preprocess)
                tokens = int(processed.grid_thw[0].prod())
                out.pixel_values.append(processed.pixel_values)
                out.grid_thw.append(processed.grid_thw)
                out.image_keys.append(key)
                out.merge_sizes.append(1)
                out.token_keep.append(torch.ones(tokens, dtype=torch.bool))
                out.image_token_counts.append(tokens)
            region_strings = [self._region_string([c.token_count]) for c in out.crops]
            self._warn_vanished(label, out.crops)
            question = self._fill_regions(item.question, region_strings)
            try:
                out.prompt = render_prompt(question, variant="full", media="image", images=count)
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
        else:
            out.crops = [lite_region_crop(images[i], m, patch_size=self.image_processor.patch_size,
                                          mask_num=self.mask_num) for m, i in zip(binary, image_of)]
            self._lite_views(out, image_of, dict(enumerate(images)), table, dict(enumerate(keys)))
            question = self._fill_regions(item.question, [self._region_string([self.mask_num])] * len(out.crops))
            out.prompt = render_prompt(question, variant="lite")
        self._crop_pixels(label, out)
        return out

    def _encode_full_video_item(self, label: str, item: PixelReferItem, masks: list[Any]) -> _Encoded:
        frame_of = self._flat_frame_ids(label, item, masks)
        if isinstance(item.video, (str, os.PathLike)):
            if item.timestamps is not None or item.frames_fps is not None:
                raise ValueError(f"{label}: timestamps/frames_fps are for frame lists; use `fps` for a video file")
            fps = check_rate(f"{label}: fps", item.fps) if item.fps is not None else self.video_fps
            sampled = load_video(item.video, fps=fps, max_frames=self.max_frames, frame_ids=sorted(set(frame_of)))
            frames, timestamps, region_frames = sampled.frames, sampled.timestamps, sampled.region_frames
        else:
            frames = self._frame_list(label, item)
            timestamps = self._list_timestamps(label, item, len(frames), default_fps=1.0)
            timestamps = [np.float64(t) for t in timestamps]
            for fid in frame_of:
                if not 0 <= fid < len(frames):
                    raise ValueError(f"{label}: frame id {fid} is out of range for a list of {len(frames)} frames")
            region_frames = {f: frames[f] for f in set(frame_of)}
            if len({f.shape for f in frames}) > 1:
                raise ValueError(f"{label}: all frames of a video must have the same size, got "
                                 f"{sorted({f.shape[:2] for f in frames})}")
        merge = self.image_processor.merge_size
        processed = self.image_processor.preprocess(frames, downsampling=merge,
                                                    names=[f"{label}: video frame {i}" for i in range(len(frames))])
        num_frames = len(frames)
        grid_hw = (int(processed.grid_thw[0, 1]), int(processed.grid_thw[0, 2]))
        if self.use_token_compression:
            keep = frame_token_keep(processed.pixel_values, num_frames, grid_hw, merge_size=merge)
        else:
            keep = torch.ones(num_frames * (grid_hw[0] // merge) * (grid_hw[1] // merge), dtype=torch.bool)
        out = _Encoded()
        out.pixel_values.append(processed.pixel_values)
        out.grid_thw.append(processed.grid_thw)
        out.image_keys.append(None)
        out.merge_sizes.extend([merge] * num_frames)
        out.token_keep.append(keep)
        out.image_token_counts = keep.view(num_frames, -1).sum(dim=1).tolist()
        out.crops = []
        for r, (mask, fid) in enumerate(zip(masks, frame_of)):
            frame = region_frames[fid]
            binary = to_binary_mask(mask, frame.shape[0], frame.shape[1], name=f"{label}, region {r} (frame {fid})")
            out.crops.append(full_region_crop(frame, binary, patch_size=self.image_processor.patch_size,
                                              mask_num=self.mask_num, name=f"{label}, region {r} (frame {fid})"))
        self._warn_vanished(label, out.crops)
        question = self._fill_regions(item.question, [self._region_string([c.token_count]) for c in out.crops])
        out.prompt = render_prompt(question, variant="full", media="video", timestamps=timestamps)
        self._crop_pixels(label, out)
        return out

    def _encode_lite_video_item(self, label: str, item: PixelReferItem, masks: list[Any]) -> _Encoded:
        if item.frame_ids is None:
            raise ValueError(f"{label}: a video item needs `frame_ids` (the frame of each mask)")
        objects = [m if isinstance(m, list) and not is_box(m) else [m] for m in masks]
        ids = item.frame_ids
        if not isinstance(ids, (list, tuple, np.ndarray, torch.Tensor)):
            one = check_frame_id(f"{label}: frame_ids", ids)
            object_ids = [[one] * len(obj) for obj in objects]
        else:
            ids = ids.tolist() if isinstance(ids, (np.ndarray, torch.Tensor)) else list(ids)
            if len(ids) != len(objects):
                raise ValueError(f"{label}: `frame_ids` has {len(ids)} entries for {len(objects)} regions")
            object_ids = [
                [check_frame_id(f"{label}: frame_ids[{r}][{k}]", f) for k, f in enumerate(fids)]
                if isinstance(fids, (list, tuple)) else [check_frame_id(f"{label}: frame_ids[{r}]", fids)]
                for r, fids in enumerate(ids)
            ]
        for r, (obj, fids) in enumerate(zip(objects, object_ids)):
            if len(obj) != len(fids):
                raise ValueError(f"{label}, region {r}: {len(obj)} masks but {len(fids)} frame ids")
            if not obj:
                raise ValueError(f"{label}, region {r}: an object needs at least one mask")
        unique_ids = sorted({f for fids in object_ids for f in fids})
        if isinstance(item.video, (str, os.PathLike)):
            if item.timestamps is not None or item.frames_fps is not None:
                raise ValueError(f"{label}: timestamps/frames_fps are for frame lists")
            if item.fps is not None:
                raise ValueError(f"{label}: `fps` is the full model's sampling rate; PixelRefer-Lite reads only the "
                                 "frames in `frame_ids` (timed by the file's frame rate)")
            frames, times = load_video_frames(item.video, unique_ids)
        else:
            frame_list = self._frame_list(label, item)
            for fid in unique_ids:
                if not 0 <= fid < len(frame_list):
                    raise ValueError(f"{label}: frame id {fid} is out of range for a list of {len(frame_list)} frames")
            all_times = self._list_timestamps(label, item, len(frame_list), default_fps=LITE_FRAME_LIST_FPS)
            frames = {f: frame_list[f] for f in unique_ids}
            times = {f: float(all_times[f]) for f in unique_ids}
        out = _Encoded()
        keys: list[Hashable] = []
        region_strings = []
        for r, (obj, fids) in enumerate(zip(objects, object_ids)):
            for k, (mask, fid) in enumerate(zip(obj, fids)):
                frame = frames[int(fid)]
                binary = to_binary_mask(mask, frame.shape[0], frame.shape[1],
                                        name=f"{label}, region {r}, mask {k} (frame {fid})")
                out.crops.append(lite_region_crop(frame, binary, patch_size=self.image_processor.patch_size,
                                                  mask_num=self.mask_num))
                keys.append(int(fid))
            region_strings.append(self._region_string([self.mask_num] * len(obj),
                                                      times=[times[int(f)] for f in fids]))
        self._lite_views(out, keys, frames)
        question = self._fill_regions(item.question, region_strings)
        out.prompt = render_prompt(question, variant="lite")
        self._crop_pixels(label, out)
        return out

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _image_ids(label: str, ids: Any, masks: int, images: int) -> list[int]:
        """The image of each of `masks` masks (the official `mask_ids`), checked against `images` images."""
        if ids is None:
            if images > 1 and masks:
                raise ValueError(f"{label}: an item with {images} images needs `image_ids` (the image of each mask, "
                                 f"0..{images - 1})")
            return [0] * masks
        if isinstance(ids, (np.ndarray, torch.Tensor)):
            ids = ids.tolist()
        listed = isinstance(ids, (list, tuple))
        if listed and len(ids) != masks:
            raise ValueError(f"{label}: `image_ids` must hold one image index per mask ({masks}), got {len(ids)} entries")
        values = list(ids) if listed else [ids] * masks
        for r, value in enumerate(values):
            name = f"image_ids[{r}]" if listed else "image_ids"
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{label}: {name} must be an int (an index into the item's images), got "
                                f"{type(value).__name__} {value!r}")
            if not 0 <= value < images:
                raise ValueError(f"{label}: {name} = {value} is out of range for {images} image(s) (0..{images - 1})")
        return [int(v) for v in values]

    @staticmethod
    def _flat_frame_ids(label: str, item: PixelReferItem, masks: list[Any]) -> list[int]:
        if any(isinstance(m, list) and not is_box(m) for m in masks):
            raise ValueError(f"{label}: the full model takes one mask per region (a list of masks for one object "
                             "is a PixelRefer-Lite video input); give each mask its own <region>")
        ids = item.frame_ids
        if not masks:
            return []
        if ids is None:
            raise ValueError(f"{label}: a video item with masks needs `frame_ids` (the frame of each mask)")
        if not isinstance(ids, (list, tuple, np.ndarray, torch.Tensor)):
            return [check_frame_id(f"{label}: frame_ids", ids)] * len(masks)
        ids = ids.tolist() if isinstance(ids, (np.ndarray, torch.Tensor)) else list(ids)
        if len(ids) != len(masks):
            raise ValueError(f"{label}: `frame_ids` must hold one int per mask ({len(masks)}), got {len(ids)} entries")
        return [check_frame_id(f"{label}: frame_ids[{r}]", f) for r, f in enumerate(ids)]

    @staticmethod
    def _frame_list(label: str, item: PixelReferItem) -> list[np.ndarray]:
        if isinstance(item.video, (np.ndarray, torch.Tensor)) and item.video.ndim == 4:
            raw = list(item.video)
        elif isinstance(item.video, Sequence) and not isinstance(item.video, (str, bytes)):
            raw = list(item.video)
        else:
            raise TypeError(f"{label}: video must be a file path or a list of frames, got {type(item.video).__name__}")
        if not raw:
            raise ValueError(f"{label}: the video frame list is empty")
        return [to_rgb_array(f, name=f"{label}: video frame {i}") for i, f in enumerate(raw)]

    @staticmethod
    def _list_timestamps(label: str, item: PixelReferItem, count: int, *, default_fps: float) -> list[float]:
        if item.fps is not None:
            raise ValueError(f"{label}: `fps` is the sampling rate of a video file; for a frame list give "
                             "`timestamps` or `frames_fps`")
        if item.timestamps is not None:
            if item.frames_fps is not None:
                raise ValueError(f"{label}: give either `timestamps` or `frames_fps`, not both")
            return check_timestamps(f"{label}: timestamps", item.timestamps, count)
        rate = check_rate(f"{label}: frames_fps", item.frames_fps) if item.frames_fps is not None else default_fps
        return list(np.arange(count) / rate)

    def _region_string(self, counts: list[int], times: list[float] | None = None) -> str:
        if times is None:
            return "[" + REGION_TOKEN * counts[0] + "]"
        return "[" + ",".join(f"Time {round(t, 1)}:" + REGION_TOKEN * c for t, c in zip(times, counts)) + "]"

    @staticmethod
    def _check_placeholders(label: str, question: str, regions: int) -> None:
        found = question.count(REGION_PLACEHOLDER)
        if found != regions:
            raise ValueError(f"{label}: the question has {found} {REGION_PLACEHOLDER!r} placeholder(s) but "
                             f"{regions} region(s) were given; put one {REGION_PLACEHOLDER!r} per region, in mask "
                             "order")

    @staticmethod
    def _fill_regions(question: str, region_strings: list[str]) -> str:
        """Replace the `<region>` placeholders (already counted) by the region strings, in order."""
        pieces = question.split(REGION_PLACEHOLDER)
        return pieces[0] + "".join(s + rest for s, rest in zip(region_strings, pieces[1:]))

    @staticmethod
    def _warn_vanished(label: str, crops: list[RegionCrop]) -> None:
        for r, crop in enumerate(crops):
            if crop.token_count == 0:
                logger.warning("%s, region %d: the mask covers no cell of its %dx%d patch grid (thin or ring-shaped); "
                               "it gets 0 region tokens ('[]'), as in the official model", label, r, *crop.mask.shape)

    def _lite_views(self, out: _Encoded, keys: list[Hashable], frames: Mapping[Hashable, np.ndarray],
                    table: _ImageTable | None = None, shared: Mapping[Hashable, Hashable] | None = None) -> None:
        """Lite's views of one item; `shared`: frame key -> its `_ImageTable` key (image items with a table)."""
        plan = plan_lite_views(keys, out.crops, dict(frames), reuse_first_local_crop=self.reuse_first_local_crop)
        calls = len(out.crops)  # the official code processes one view per mask in each call
        shared = shared or {}
        # the pixel budget depends on `calls`, so a view is shared only between items with as many masks
        out.global_keys = [("lite", shared[k], calls) if shared.get(k) is not None else None for k in plan.global_keys]
        if table is not None and any(key is not None for key in out.global_keys):
            views = [table.processed(key, lambda k=k: self.image_processor.preprocess(
                [lite_global_view(frames[k])], downsampling=1, num_images=calls)) for k, key in
                zip(plan.global_keys, out.global_keys)]
            globals_ = ProcessedImages(pixel_values=torch.cat([v.pixel_values for v in views]),
                                       grid_thw=torch.cat([v.grid_thw for v in views]))
        else:
            globals_ = self.image_processor.preprocess([lite_global_view(frames[k]) for k in plan.global_keys],
                                                       downsampling=1, num_images=calls)
        locals_ = self.image_processor.preprocess([lite_local_view(src) for _, src in plan.local_sources],
                                                  downsampling=1, num_images=calls)
        out.global_pixel_values, out.global_grid_thw = globals_.pixel_values, globals_.grid_thw
        out.local_pixel_values, out.local_grid_thw = locals_.pixel_values, locals_.grid_thw
        out.region_global, out.region_local = plan.region_global, plan.region_local

    def _crop_pixels(self, label: str, out: _Encoded) -> None:
        out.region_token_total = sum(c.token_count for c in out.crops)
        names = [f"{label}, the crop of mask {i} ({c.image.shape[0]}x{c.image.shape[1]} px: its box "
                 f"{c.box[2] - c.box[0] + 1}x{c.box[3] - c.box[1] + 1} px in the {c.image_hw[0]}x{c.image_hw[1]} "
                 "image, scaled by the region crop)" for i, c in enumerate(out.crops)]
        processed = self.image_processor.preprocess([c.image for c in out.crops], downsampling=1, names=names)
        out.crop_pixel_values, out.crop_grid_thw = processed.pixel_values, processed.grid_thw

    # ------------------------------------------------------------------ batching
    def _expand_images(self, prompt: str, counts: list[int]) -> str:
        pieces = prompt.split(IMAGE_TOKEN)
        if len(pieces) - 1 != len(counts):
            raise ValueError(f"internal: {len(pieces) - 1} <image> markers for {len(counts)} images")
        return pieces[0] + "".join(IMAGE_TOKEN * n + rest for n, rest in zip(counts, pieces[1:]))

    def _pack(self, encoded: list[_Encoded]) -> BatchFeature:
        prompts = [self._expand_images(e.prompt, e.image_token_counts) for e in encoded]
        token_lists = self.tokenizer(prompts)["input_ids"]
        for index, (ids, e) in enumerate(zip(token_lists, encoded)):
            n_image = sum(1 for t in ids if t == self.image_token_id)
            n_region = sum(1 for t in ids if t == self.region_token_id)
            if n_image != sum(e.image_token_counts) or n_region != e.region_token_total:
                raise ValueError(
                    f"item {index}: the tokenizer produced {n_image} {IMAGE_TOKEN} / {n_region} {REGION_TOKEN} ids, "
                    f"expected {sum(e.image_token_counts)} / {e.region_token_total}; are they special tokens?")
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        length = max(len(ids) for ids in token_lists)
        if pad_id is None and any(len(ids) < length for ids in token_lists):
            raise ValueError("the tokenizer has neither a pad nor an eos token; cannot pad the batch")
        input_ids = torch.full((len(prompts), length), pad_id if pad_id is not None else 0, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, ids in enumerate(token_lists):
            if ids:
                input_ids[row, length - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, length - len(ids):] = 1
        data: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        width = 3 * self.image_processor.patch_size**2
        crops = [(b, c) for b, e in enumerate(encoded) for c in e.crops]

        def cat(tensors: list[torch.Tensor], empty_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return torch.cat(tensors) if tensors else torch.zeros(empty_shape, dtype=dtype)

        if self.variant == "full":
            data.update(self._pack_images(encoded, width))
        data["crop_pixel_values"] = cat([e.crop_pixel_values for e in encoded], (0, width), torch.float32)
        data["crop_grid_thw"] = cat([e.crop_grid_thw for e in encoded], (0, 3), torch.long)
        region_masks = [torch.from_numpy(np.ascontiguousarray(c.mask > 0, dtype=np.uint8)).reshape(-1) for _, c in crops]
        data["region_masks"] = cat(region_masks, (0,), torch.uint8)
        data["region_mask_cells"] = torch.tensor([int(m.sum()) for m in region_masks], dtype=torch.long)
        data["region_mask_hw"] = torch.tensor([c.mask.shape for _, c in crops], dtype=torch.long).reshape(-1, 2)
        data["region_boxes"] = torch.tensor([c.box for _, c in crops], dtype=torch.long).reshape(-1, 4)
        data["region_image_hw"] = torch.tensor([c.image_hw for _, c in crops], dtype=torch.long).reshape(-1, 2)
        data["region_token_counts"] = torch.tensor([c.token_count for _, c in crops], dtype=torch.long)
        data["region_item"] = torch.tensor([b for b, _ in crops], dtype=torch.long)
        if self.variant == "lite":
            region_global, region_local, n_local = [], [], 0
            table = _SharedViews()
            for e in encoded:
                views = e.global_pixel_values.split(e.global_grid_thw.prod(-1).tolist())
                rows = [table.add(key, pixels, grid[None])[0][0]  # one grid row per view
                        for key, pixels, grid in zip(e.global_keys, views, e.global_grid_thw)]
                region_global += [rows[i] for i in e.region_global]
                region_local += [n_local + i for i in e.region_local]
                n_local += e.local_grid_thw.shape[0]
            data["global_pixel_values"] = torch.cat(table.pixel_values)
            data["global_grid_thw"] = torch.cat(table.grid_thw)
            data["region_global"] = torch.tensor(region_global, dtype=torch.long)
            data["local_pixel_values"] = torch.cat([e.local_pixel_values for e in encoded])
            data["local_grid_thw"] = torch.cat([e.local_grid_thw for e in encoded])
            data["region_local"] = torch.tensor(region_local, dtype=torch.long)
        return BatchFeature(data=data)

    @staticmethod
    def _pack_images(encoded: list[_Encoded], width: int) -> dict[str, torch.Tensor]:
        """The full model's global images and video frames: each shared image once, and `image_index`
        (the `image_grid_thw` row of every `<image>` of the prompts, in order) when one is shared."""
        table = _SharedViews()
        image_index: list[int] = []
        merge_sizes: list[int] = []
        token_keep: list[torch.Tensor] = []
        for e in encoded:
            merges = iter(e.merge_sizes)
            for key, pixels, grid, keep in zip(e.image_keys, e.pixel_values, e.grid_thw, e.token_keep):
                entry_merges = [next(merges) for _ in range(grid.shape[0])]
                rows, new = table.add(key, pixels, grid)
                image_index += rows
                if new:
                    merge_sizes += entry_merges
                    token_keep.append(keep)
        data = {"pixel_values": torch.cat(table.pixel_values) if table.pixel_values else torch.zeros(0, width),
                "image_grid_thw": torch.cat(table.grid_thw) if table.grid_thw else torch.zeros(0, 3, dtype=torch.long),
                "image_merge_sizes": torch.tensor(merge_sizes, dtype=torch.long)}
        if any(m != 1 for m in merge_sizes):
            data["image_token_keep"] = torch.cat(token_keep)
        if image_index != list(range(len(merge_sizes))):
            data["image_index"] = torch.tensor(image_index, dtype=torch.long)
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict())}, image_processor={self.image_processor!r})"


class _SharedViews:
    """Pixel entries of a batch, each key once (internal): `add` returns the grid rows of an entry
    and whether it is new; a None key is never shared."""

    def __init__(self) -> None:
        self.pixel_values: list[torch.Tensor] = []
        self.grid_thw: list[torch.Tensor] = []
        self._rows: dict[Hashable, list[int]] = {}
        self._count = 0

    def add(self, key: Hashable | None, pixels: torch.Tensor, grid: torch.Tensor) -> tuple[list[int], bool]:
        if key is not None and key in self._rows:
            return self._rows[key], False
        rows = list(range(self._count, self._count + grid.shape[0]))
        self._count += grid.shape[0]
        self.pixel_values.append(pixels)
        self.grid_thw.append(grid)
        if key is not None:
            self._rows[key] = rows
        return rows, True


def split_masks(masks: Any, *, name: str = "masks") -> list[Any]:
    """An item's `masks` as a list of per-region entries.

    A list or tuple is taken as one entry per region. A single mask (2-D array or tensor, PIL image,
    RLE dict or one box) becomes a list of one; a 3-D array/tensor is an [R, H, W] stack; a 2-D
    array/tensor of shape (R, 4) is R boxes (x0, y0, x1, y1).

    Raises:
        ValueError: a 3-D array whose last dimension is 1, 3 or 4 (an HxWxC mask image, ambiguous
            with a stack of R masks: take one channel and wrap it in a list), or an array of
            another number of dimensions.
    """
    if masks is None:
        return []
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        shape = tuple(masks.shape)
        if masks.ndim == 3:
            if shape[-1] in (1, 3, 4):
                raise ValueError(f"{name}: a 3-D array of shape {shape} is read as an [R, H, W] stack of masks, "
                                 f"which would be {shape[0]} masks {shape[2]} px wide; for one HxWxC mask image "
                                 "pass [mask[..., 0]] (one 2-D mask per region, in a list)")
            return list(masks)
        if masks.ndim == 2:
            return list(masks) if shape[-1] == 4 else [masks]  # (R, 4) boxes, else one HxW mask
        if masks.ndim == 1 and is_box(masks):
            return [masks]
        raise ValueError(f"{name}: expected a list of masks, an [R, H, W] stack, an (R, 4) box array or a single "
                         f"2-D mask, got an array of shape {shape}")
    if isinstance(masks, (Mapping, Image.Image)) or is_box(masks):
        return [masks]
    if isinstance(masks, (list, tuple)):
        return list(masks)
    raise TypeError(f"{name}: expected a list of masks (arrays, tensors, PIL images, RLE dicts or boxes), got "
                    f"{type(masks).__name__}")


def options_from_model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The processor options a model `config.json` dict sets: `variant` (from `model_type`: Lite when it
    contains "lite"), `mask_num`, `reuse_first_local_crop`, `use_token_compression`."""
    options: dict[str, Any] = {}
    model_type = str(config.get("model_type") or "")
    if model_type:
        options["variant"] = "lite" if "lite" in model_type.lower() else "full"
    for key in ("mask_num", "reuse_first_local_crop", "use_token_compression"):
        if config.get(key) is not None:
            options[key] = config[key]
    return options


def render_prompt(question: str, *, variant: str, media: str | None = None,
                  timestamps: Sequence[Any] | None = None, images: int = 1) -> str:
    """Render the official chat template for one user turn plus the generation prompt.

    Args:
        question: the question with its region strings already filled in.
        variant: "full" or "lite" (Lite never has media).
        media: full only: "image" or "video".
        timestamps: full video: the time of each frame (one `<image>` per frame).
        images: full image: the number of images; the question places one `<image>` per image, or
            none, and then they all go first, in order (the official code prepends one `<image>`,
            which with several images fails its image-count check).

    Returns:
        The prompt with one `<image>` per image/frame (not yet expanded to its token count).

    Raises:
        ValueError: media markers in a full-model question that are neither 0 nor one per image (one
            `<video>`), or `<image>` in a video one.
    """
    if variant == "lite":
        content = question.strip()
        return f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
    marker = IMAGE_TOKEN if media == "image" else VIDEO_TOKEN
    if media == "video" and IMAGE_TOKEN in question:
        raise ValueError(f"a video question cannot contain {IMAGE_TOKEN!r}; use {VIDEO_TOKEN!r} to place the video")
    expected = images if media == "image" else 1
    count = question.count(marker)
    if count not in (0, expected):
        given = f"{expected} image(s) are" if media == "image" else "one video is"
        raise ValueError(f"the question contains {marker!r} {count} times but {given} given; put one {marker!r} per "
                         f"{media} where it goes, or none (then it goes first)")
    if count == 0:
        question = marker * expected + question
    if media == "image":
        rendered_media = IMAGE_TOKEN + "\n"
    else:
        stamps = list(timestamps or [])
        rendered_media = "".join(f"Time {time_label(t)}s:" + IMAGE_TOKEN + ("," if i < len(stamps) - 1 else "\n")
                                 for i, t in enumerate(stamps))
    chunks = [chunk.strip() for chunk in question.split(marker)]
    return "<|im_start|>user\n" + rendered_media.join(chunks) + "<|im_end|>\n<|im_start|>assistant\n"
