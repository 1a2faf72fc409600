"""PixelRefer and PixelRefer-Lite as drop-in transformers models (docs/spec.md §5, §6, §7).

Classes (the Lite twins share every piece and differ in configuration only):

- `PixelReferFastPreTrainedModel` / `PixelReferFastLitePreTrainedModel`: HF plumbing, strict loading;
- `PixelReferFastModel` / `PixelReferFastLiteModel`: transformers' own `Qwen2Model` plus the children
  `vision_encoder`, `mm_projector` (full only) and `region_encoder`, so the released keys load as they
  are (`model.embed_tokens`, `model.layers.*`, `model.vision_encoder.vision_encoder.*`, ...);
- `PixelReferFastForCausalLM` / `PixelReferFastLiteForCausalLM`: `lm_head` (tied when
  `tie_word_embeddings`) and `GenerationMixin`; `describe()` is the one-call API.

Forward of one batch (`B` items, left padded, any mix of images, videos and regions):

0. `pack_inputs` (run by `place_inputs`, or by `forward` for the processor's fields as they are)
   checks the batch ONCE on the host: placeholders against the announced and the mask-given counts
   (`ValueError` with both numbers), masks thresholded to uint8, every size, offset and placeholder
   row computed (`PixelReferFastBatch`). From there to the logits nothing is read back from the device
   (SDPA/eager attention, deterministic k-means init). The stages below are methods `forward` calls,
   which the profiler times;
1. `encode_pixels`: every pixel source of the batch (global images and video frames, region crops,
   Lite's 336 global and 224 local views) goes through ONE packed vision-encoder call; an image
   several items share (the processor's `share_images`) is in it once;
2. `project_images` (full model, `get_image_features`): stride-2 frames are 2x2 averaged, tokens
   pruned by the video compression are dropped (`image_token_keep`), then the projector; a shared
   image's tokens are repeated for each `<image>` it fills (`image_index`);
3. `tokenize_regions`, `infuse_regions` (Lite), `project_regions` (`get_region_features`): pool +
   k-means, Lite's object-centric infusion into the views, `feat_linear`;
4. `splice`: the features are written over their placeholders (rows found on the host);
5. `run_llm`: Qwen2 on `inputs_embeds` with 1-D positions per item (from the attention mask, so left
   padding gives the official unpadded positions), logits only where asked (`logits_to_keep`).

Upstream differences: batched (upstream asserts batch 1), no `.cuda()`/autocast (device and dtype come
from the parameters), the prefill computes logits only for the last position under `generate`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, Qwen2Model
from transformers.modeling_outputs import CausalLMOutputWithPast

from . import checkpoint
from .attention_mask import causal_padding_mask
from .configuration_pixelrefer_fast import (
    LITE_MODEL_TYPE,
    MODEL_TYPE,
    MODEL_TYPES,
    PixelReferFastConfig,
    PixelReferFastLiteConfig,
)
from .decoding.prefix import PACKED_KEY, SharedPrefixes, shared_prefixes
from .defaults import DEFAULT_MAX_NEW_TOKENS
from .modeling_infusion import PixelReferFastLiteRegionEncoder
from .modeling_projector import PixelReferFastProjector
from .modeling_region import PackedRegions, PixelReferFastRegionEncoder
from .modeling_vision import PixelReferFastVisionEncoder, VisionPacking, merge_windows, pack_layout
from .tokens import IMAGE_TOKEN, REGION_TOKEN

logger = logging.getLogger("pixelrefer_fast")


@dataclass
class PixelReferFastInputs:
    """The multimodal inputs of one batch (the processor's output keys; all optional).

    Full model, global images and video frames (packed in item order):
        pixel_values `[N_img, 588]` float; image_grid_thw `[I, 3]` long (t=1 per image/frame);
        image_merge_sizes `[I]` long (1 images, 2 video frames; default all 1);
        image_token_keep `[sum(h*w/s**2)]` bool (video token compression; absent keeps all);
        image_index `[M]` long: the `image_grid_thw` row whose tokens fill each of the prompts' M
            `<image>`s, in order (an image several items share is encoded once); absent: every row
            once, in order.
    Regions (one crop per region, regions of all items in placeholder order):
        crop_pixel_values `[N_crop, 588]`; crop_grid_thw `[R, 3]`; region_masks `[N_m]` packed mask
        grids; region_mask_hw `[R, 2]`; region_boxes `[R, 4]` (top, left, bottom, right);
        region_image_hw `[R, 2]` (H, W of the source image); region_token_counts `[R]` (tokens the
        prompt reserved per region, checked against the encoder); region_item `[R]` (batch index);
        region_mask_cells `[R]` (mask cells > 0 per region; optional, checked against the masks).
    Lite only (each view encoded once, regions index them):
        global_pixel_values, global_grid_thw `[G, 3]`, region_global `[R]`;
        local_pixel_values, local_grid_thw `[L, 3]`, region_local `[R]`.
    Other:
        kmeans_generator: CPU `torch.Generator` for the parity k-means init, or a list of them, one per
            region (default: the global CPU RNG).
    """

    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    image_merge_sizes: torch.Tensor | None = None
    image_token_keep: torch.Tensor | None = None
    image_index: torch.Tensor | None = None
    crop_pixel_values: torch.Tensor | None = None
    crop_grid_thw: torch.Tensor | None = None
    region_masks: torch.Tensor | None = None
    region_mask_hw: torch.Tensor | None = None
    region_boxes: torch.Tensor | None = None
    region_image_hw: torch.Tensor | None = None
    region_token_counts: torch.Tensor | None = None
    region_item: torch.Tensor | None = None
    region_mask_cells: torch.Tensor | None = None
    global_pixel_values: torch.Tensor | None = None
    global_grid_thw: torch.Tensor | None = None
    region_global: torch.Tensor | None = None
    local_pixel_values: torch.Tensor | None = None
    local_grid_thw: torch.Tensor | None = None
    region_local: torch.Tensor | None = None
    kmeans_generator: torch.Generator | None = None

    @classmethod
    def pop_from(cls, kwargs: dict) -> PixelReferFastInputs:
        """Take this class's keys out of a keyword dict (the rest stays for the LLM)."""
        return cls(**{name: kwargs.pop(name) for name in MULTIMODAL_KEYS if name in kwargs})

    @property
    def has_images(self) -> bool:
        return self.pixel_values is not None

    @property
    def has_regions(self) -> bool:
        return self.crop_grid_thw is not None and self.crop_grid_thw.shape[0] > 0

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) is not None for f in fields(self) if f.name != "kmeans_generator")


MULTIMODAL_KEYS = tuple(f.name for f in fields(PixelReferFastInputs))


@dataclass(frozen=True)
class LiteViews:
    """Lite's view offsets (`[V+1]` int32) and each region's view (`[R]` int64), on the host (the
    infusion plans its gathers from them without reading the device)."""

    cu_local: torch.Tensor
    region_local: torch.Tensor
    cu_global: torch.Tensor
    region_global: torch.Tensor


@dataclass(frozen=True)
class PixelReferFastBatch:
    """One batch's multimodal inputs, checked once on the host and placed (`PixelReferFastModel.pack_inputs`).

    Device tensors: `pixel_values` (every pixel source of the batch concatenated: images, crops, Lite
    global then local views), `image_keep_rows`, `image_rows` (the projected image token of each
    `<image>` slot when images are shared, `image_index`; None: in order), `image_slots` / `region_slots` (rows of the
    flattened `[B*T]` prompt holding `<image>` / `<REGION>`) and the device parts of `regions`
    (masks as uint8, offsets, box coefficients, kept token rows). Host facts: the vision grids, merge
    sizes and layout (`vision_packing`), `vision_rows` (rows per source), the image grids, the
    region sizes and counts (`regions`), Lite's view offsets (`lite_views`), `has_padding` (the
    attention mask holds a 0), `sequence_shape` (B, T) and `shared_prefixes` (rows whose prompts
    begin with the same tokens and image, which the fast loop prefills once: `decoding.prefix`). The encoders take it as checked: nothing
    is read back from the device between `place_inputs` and the first logits (SDPA/eager attention,
    deterministic k-means init; the parity init draws from its CPU generator, on the host).
    """

    pixel_values: torch.Tensor | None
    vision_grid_thw: torch.Tensor | None
    vision_merge_sizes: torch.Tensor | None
    vision_packing: VisionPacking | None
    vision_rows: tuple[tuple[str, int], ...]
    image_grid_thw: torch.Tensor | None
    image_merge_sizes: torch.Tensor | None
    image_keep_rows: torch.Tensor | None
    image_rows: torch.Tensor | None
    image_slots: torch.Tensor
    region_slots: torch.Tensor
    regions: PackedRegions | None
    lite_views: LiteViews | None
    kmeans_generator: torch.Generator | None
    has_padding: bool
    sequence_shape: tuple[int, ...]
    shared_prefixes: SharedPrefixes | None = None

    def device_tensors(self) -> list[torch.Tensor]:
        """The tensors that live on the model's device (what a host read would have to sync on)."""
        found = [self.pixel_values, self.image_keep_rows, self.image_rows, self.image_slots, self.region_slots]
        if self.vision_packing is not None:
            found.append(self.vision_packing.cu_seqlens)
        if self.regions is not None:
            r = self.regions
            found += [r.masks, r.cu_features, r.cu_masks, r.pos_params, r.select_rows]
        return [t for t in found if t is not None]


def _host_long(value, name: str) -> torch.Tensor:
    """An integer metadata tensor as CPU int64 (the processor's are on the CPU already: no sync)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {value.dtype}")
    return value.detach().to("cpu", torch.long)
_REGION_KEYS = ("crop_pixel_values", "crop_grid_thw", "region_masks", "region_mask_hw", "region_boxes", "region_image_hw")
_LITE_VIEW_KEYS = ("global_pixel_values", "global_grid_thw", "region_global", "local_pixel_values", "local_grid_thw", "region_local")


_PIXEL_KEYS = {"images": "pixel_values", "crops": "crop_pixel_values", "global": "global_pixel_values",
               "local": "local_pixel_values"}


def check_pixels_finite(name: str, pixels: torch.Tensor) -> None:
    """Refuse NaN/inf pixel values on the CPU (one sum, then a full scan only if the sum is not finite).

    Tensors on an accelerator are not read (that would cost a device sync); the processor's pixels
    are always finite. The same rule as the region encoder's feature check, so every pixel source
    (images, crops, Lite views) is treated alike.
    """
    if pixels.device.type != "cpu" or not pixels.is_floating_point() or pixels.numel() == 0:
        return
    if bool(torch.isfinite(pixels.sum(dtype=torch.float32))):
        return
    bad = ~torch.isfinite(pixels)
    if bool(bad.any()):
        first = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"{name} contains NaN or inf (first at index {first}); accepted: finite pixel values "
                         "(the processor's normalised patches)")


def _host_offsets(grid_thw: torch.Tensor) -> torch.Tensor:
    """CPU int32 `[V+1]` row offsets of the views of a packed call (kept on the host: no device sync)."""
    return F.pad(grid_thw.to("cpu", torch.long).prod(-1).cumsum(0), (1, 0)).to(torch.int32)


def _check_packed(batch) -> None:
    if not isinstance(batch, PixelReferFastBatch):
        raise TypeError(
            f"expected the checked PixelReferFastBatch (model.place_inputs(processor_output) or "
            f"model.model.pack_inputs(input_ids, attention_mask, inputs)), got {type(batch).__name__}"
        )


def _check_count(token: str, slots: int, features: int, source: str) -> None:
    if slots != features:
        raise ValueError(f"the prompt has {slots} {token} tokens but {source} {features} features for them")


def _check_per_item(slots: torch.Tensor, counts: torch.Tensor, region_item: torch.Tensor | None) -> None:
    """`<REGION>` placeholders per item (`[B]`) against the region token counts summed per item."""
    if region_item is None:
        return
    item = region_item.to("cpu", torch.long)
    if item.shape != counts.shape or (item.numel() and (int(item.min()) < 0 or int(item.max()) >= slots.shape[0])):
        raise ValueError(f"region_item must hold one batch index (0..{slots.shape[0] - 1}) per region, got {item.tolist()}")
    per_item = torch.zeros_like(slots).index_add_(0, item, counts)
    if not torch.equal(per_item, slots):
        raise ValueError(
            f"<REGION> tokens per item {slots.tolist()} disagree with the region tokens per item {per_item.tolist()} "
            f"(region_item {item.tolist()})"
        )


def _view_index(value, name: str, views: int, regions: int) -> torch.Tensor:
    """Lite's view of each region, checked once: `[R]` CPU int64 in `0..views-1`."""
    index = _host_long(value, name)
    if index.shape != (regions,) or (regions and (int(index.min()) < 0 or int(index.max()) >= views)):
        raise ValueError(f"{name} must hold one view index (0..{views - 1}) per region ({regions}), got {index.tolist()}")
    return index


def _image_merge_sizes(inputs: PixelReferFastInputs) -> torch.Tensor:
    """Per-image stride (`image_merge_sizes`; all 1 when absent), CPU int64."""
    if inputs.image_merge_sizes is not None:
        return _host_long(inputs.image_merge_sizes, "image_merge_sizes")
    return torch.ones(inputs.image_grid_thw.shape[0], dtype=torch.long)


def _image_token_counts(grid: torch.Tensor, merge: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Tokens each `image_grid_thw` row gives the LLM (`[I]` CPU int64): its kept tokens when
    `keep` (the host `image_token_keep`) is given, else t*h*w / s**2."""
    merged = grid.prod(-1) // (merge * merge)  # (I,)
    if keep is None:
        return merged
    kept = F.pad(keep.to(torch.long).cumsum(0), (1, 0))  # (sum(merged) + 1,)
    ends = merged.cumsum(0)
    return kept[ends] - kept[ends - merged]


def _image_rows(index, counts: torch.Tensor) -> torch.Tensor:
    """The projected-token row of every `<image>` slot (`[sum(counts[index])]` CPU int64) for the
    `image_index` `index` into images of `counts` tokens each."""
    index = _host_long(index, "image_index")
    images = counts.shape[0]
    if index.dim() != 1 or (index.numel() and (int(index.min()) < 0 or int(index.max()) >= images)):
        raise ValueError(f"image_index must be a 1-D tensor of image_grid_thw rows (0..{images - 1}), got "
                         f"{index.tolist()}")
    starts = counts.cumsum(0) - counts  # (I,)
    lengths = counts[index]  # (M,)
    total = int(lengths.sum())
    offsets = torch.arange(total) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)  # (total,)
    return torch.repeat_interleave(starts[index], lengths) + offsets


def default_llm_attention(dtype) -> str:
    """`"flash_attention_2"` when flash-attn is installed, CUDA is there and `dtype` is fp16/bf16; else `"sdpa"`."""
    from pixelrefer_kernels import has_flash_attn

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if dtype in (torch.float16, torch.bfloat16) and torch.cuda.is_available() and has_flash_attn():
        return "flash_attention_2"
    return "sdpa"


class PixelReferFastPreTrainedModel(PreTrainedModel):
    """Shared HF plumbing of the PixelRefer models; `from_pretrained` adds the strict checks of `checkpoint.py`."""

    config_class = PixelReferFastConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Qwen2DecoderLayer", "PixelReferFastVisionLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _keys_to_ignore_on_load_unexpected = list(checkpoint.ALLOWED_UNEXPECTED_KEYS[MODEL_TYPE])
    _keys_to_ignore_on_load_missing = list(checkpoint.ALLOWED_MISSING_KEYS[MODEL_TYPE])

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained` plus the model-type check, the strict key check and the token ids.

        Besides the usual arguments (`dtype`, `device_map`, `attn_implementation`, ...):
        the LLM attention defaults to flash-attn when installed (CUDA, fp16/bf16), else SDPA; the ids of
        `<image>` / `<REGION>` are taken from the checkpoint's tokenizer files when present.

        Raises:
            ValueError: a `model_type` this class cannot load, or keys missing from / foreign to the
                checkpoint (listed by name; see `checkpoint.ALLOWED_*_KEYS` for the exceptions).
        """
        source = str(pretrained_model_name_or_path)
        model_type = cls.config_class.model_type
        config = kwargs.get("config")
        found = config.model_type if isinstance(config, PixelReferFastConfig) else checkpoint.read_model_type(source)
        checkpoint.check_model_type(found, (model_type,), source)
        if "attn_implementation" not in kwargs:
            dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
            if dtype == "auto":
                dtype = getattr(config, "dtype", None) if config is not None else cls.config_class.from_pretrained(source).dtype
            kwargs["attn_implementation"] = default_llm_attention(dtype)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs)
        checkpoint.check_loading_info(info, model_type, source)
        token_ids = checkpoint.special_token_ids(source)
        for token, name in ((IMAGE_TOKEN, "image_token_index"), (REGION_TOKEN, "region_token_index")):
            if token in token_ids and token_ids[token] != getattr(model.config, name):
                logger.info("%s: %s = %d from the tokenizer (config.json: %s)", source, name, token_ids[token], getattr(model.config, name))
                setattr(model.config, name, token_ids[token])
        return (model, info) if want_info else model


class PixelReferFastLitePreTrainedModel(PixelReferFastPreTrainedModel):
    """Lite: its own config class and the allow-list of unused Lite weights."""

    config_class = PixelReferFastLiteConfig
    _keys_to_ignore_on_load_unexpected = list(checkpoint.ALLOWED_UNEXPECTED_KEYS[LITE_MODEL_TYPE])
    _keys_to_ignore_on_load_missing = list(checkpoint.ALLOWED_MISSING_KEYS[LITE_MODEL_TYPE])


def build_region_encoder(config: PixelReferFastConfig) -> nn.Module:
    """The region encoder of the variant: the full model's pooling + k-means encoder, or Lite's infusion encoder."""
    options = dict(
        mm_hidden_size=config.mm_hidden_size,
        hidden_size=config.hidden_size,
        mask_num=config.mask_num,
        num_iters=config.region_kmeans_iters,
        kmeans_init=config.kmeans_init,
        swap_box_axes=config.swap_box_axes,
    )
    if config.is_lite:
        return PixelReferFastLiteRegionEncoder(**options)
    return PixelReferFastRegionEncoder(**options)


class PixelReferFastModel(PixelReferFastPreTrainedModel, Qwen2Model):
    """Qwen2 decoder plus the multimodal encoders; `forward` splices image and region features in.

    Keys: `embed_tokens`, `layers.*`, `norm` (Qwen2), `vision_encoder.vision_encoder.*`,
    `mm_projector.readout.*` (full only), `region_encoder.*`.
    """

    def __init__(self, config: PixelReferFastConfig):
        super().__init__(config)
        self.vision_encoder = PixelReferFastVisionEncoder(config.vision_encoder_config)
        if not config.is_lite:
            self.mm_projector = PixelReferFastProjector(config.mm_hidden_size, config.hidden_size, config.mm_projector_type)
        self.region_encoder = build_region_encoder(config)
        self.post_init()

    # ---- the checked batch (host side, once) ----------------------------------------------------

    def _token_id(self, name: str) -> int:
        value = getattr(self.config, name)
        if value is None:
            raise ValueError(
                f"config.{name} is not set: load the model from a directory with its tokenizer files, or call "
                "model.set_special_token_ids(tokenizer)"
            )
        return value

    def pack_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, inputs: PixelReferFastInputs, *,
        mask_num: int | None = None,
    ) -> PixelReferFastBatch:
        """Validate the multimodal inputs of a batch ONCE, on the host, and place them for the forward.

        Placeholders are counted on the host `input_ids` (a device `input_ids` costs one sync) and
        checked against the counts the inputs announce and the regions' masks give; region masks are
        thresholded once to uint8; every size, offset and row index the encoders and the splice need
        is computed here. `mask_num`: K for this batch (default `config.mask_num`; the official
        forward takes it per call), which the processor must have used too. The forward then reads
        nothing back from the device (see `PixelReferFastBatch`).

        Raises:
            ValueError: placeholders and features disagree (both numbers given), incomplete region
                inputs, Lite given global image tokens, bad grids or masks.
        """
        device = self.embed_tokens.weight.device
        host_ids = input_ids.detach().to("cpu")
        image_id, region_id = self._token_id("image_token_index"), self._token_id("region_token_index")
        image_slots, region_slots = host_ids == image_id, host_ids == region_id
        n_image_slots, n_region_slots = int(image_slots.sum()), int(region_slots.sum())
        if inputs.has_images and self.config.is_lite:
            raise ValueError(
                "PixelRefer-Lite takes no global image tokens (Object-Only framework); pass region inputs "
                "(crops, masks and the Lite views) without pixel_values"
            )
        if not inputs.has_images and inputs.image_index is not None:
            raise ValueError("image_index was given without pixel_values (it names the image_grid_thw row of each <image>)")
        if not inputs.has_images and n_image_slots:
            raise ValueError(f"the prompt has {n_image_slots} <image> tokens but no pixel_values were given")
        if not inputs.has_regions and n_region_slots:
            raise ValueError(
                f"the prompt has {n_region_slots} <REGION> tokens but no region inputs were given "
                f"({', '.join(_REGION_KEYS)}); every <region> needs a mask"
            )
        sources = []
        image_grid = image_merge = keep_rows = image_rows = None
        if inputs.has_images:
            if inputs.image_grid_thw is None:
                raise ValueError("pixel_values were given without image_grid_thw")
            image_grid, image_merge = _host_long(inputs.image_grid_thw, "image_grid_thw"), _image_merge_sizes(inputs)
            keep = None
            if inputs.image_token_keep is not None:
                keep = inputs.image_token_keep.detach().to("cpu").to(torch.bool)
                merged = int((image_grid.prod(-1) // (image_merge * image_merge)).sum())
                if keep.dim() != 1 or keep.shape[0] != merged:
                    raise ValueError(
                        f"image_token_keep must have one entry per merged image token ({merged}), got shape {tuple(keep.shape)}"
                    )
                keep_rows = keep.nonzero().squeeze(1).to(device, non_blocking=True)
            per_image = _image_token_counts(image_grid, image_merge, keep)
            announced = int(per_image.sum())
            if inputs.image_index is not None:
                rows = _image_rows(inputs.image_index, per_image)
                announced = rows.shape[0]
                image_rows = rows.to(device, non_blocking=True)
            _check_count("<image>", n_image_slots, announced, "the images give")
            sources.append(("images", inputs.pixel_values, image_grid, image_merge))
        regions = lite_views = None
        if inputs.has_regions:
            self._check_region_inputs(inputs)
            crop_grid = _host_long(inputs.crop_grid_thw, "crop_grid_thw")
            if bool((crop_grid[:, 0] != 1).any()):
                raise ValueError(f"crop_grid_thw must have t == 1 for every crop, got {crop_grid[:, 0].tolist()}")
            # the processor keeps the masks on the host; masks already on a device are read back once,
            # here, so the region sizes are known before the forward
            masks = inputs.region_masks.to("cpu") if isinstance(inputs.region_masks, torch.Tensor) else inputs.region_masks
            regions = self.region_encoder.pack(
                crop_grid[:, 1:], masks, inputs.region_mask_hw, inputs.region_boxes, inputs.region_image_hw,
                device, mask_num, region_cells=inputs.region_mask_cells,
            )
            self._check_region_counts(n_region_slots, regions, inputs, region_slots.sum(-1))
            sources.append(("crops", inputs.crop_pixel_values, crop_grid, torch.ones(crop_grid.shape[0], dtype=torch.long)))
            if self.config.is_lite:
                global_grid = _host_long(inputs.global_grid_thw, "global_grid_thw")
                local_grid = _host_long(inputs.local_grid_thw, "local_grid_thw")
                sources.append(("global", inputs.global_pixel_values, global_grid, torch.ones(global_grid.shape[0], dtype=torch.long)))
                sources.append(("local", inputs.local_pixel_values, local_grid, torch.ones(local_grid.shape[0], dtype=torch.long)))
                lite_views = LiteViews(
                    _host_offsets(local_grid),
                    _view_index(inputs.region_local, "region_local", local_grid.shape[0], crop_grid.shape[0]),
                    _host_offsets(global_grid),
                    _view_index(inputs.region_global, "region_global", global_grid.shape[0], crop_grid.shape[0]),
                )
        for name, pixels, _, _ in sources:
            if pixels is None:
                raise ValueError(f"{name} grid_thw was given without its pixels")
            check_pixels_finite(_PIXEL_KEYS[name], pixels)
        pixels = torch.cat([p.to(device, non_blocking=True) for _, p, _, _ in sources]) if sources else None
        grid = torch.cat([g for _, _, g, _ in sources]) if sources else None
        merge = torch.cat([m for _, _, _, m in sources]) if sources else None
        packing = pack_layout(grid, merge, pixels.shape[0], device) if sources else None
        host_mask = None
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            host_mask = attention_mask.detach().to("cpu")
            has_padding = not bool(host_mask.bool().all())
        else:  # none, or a prepared mask (generate's static cache): used as it is
            has_padding = attention_mask is not None
        shared = None
        if image_rows is not None and (host_mask is not None or attention_mask is None):
            shared = shared_prefixes(host_ids, host_mask, image_slots, rows, region_slots)
        return PixelReferFastBatch(
            pixel_values=pixels,
            vision_grid_thw=grid,
            vision_merge_sizes=merge,
            vision_packing=packing,
            vision_rows=tuple((name, int(g.prod(-1).sum())) for name, _, g, _ in sources),
            image_grid_thw=image_grid,
            image_merge_sizes=image_merge,
            image_keep_rows=keep_rows,
            image_rows=image_rows,
            image_slots=image_slots.flatten().nonzero().squeeze(1).to(device, non_blocking=True),
            region_slots=region_slots.flatten().nonzero().squeeze(1).to(device, non_blocking=True),
            regions=regions,
            lite_views=lite_views,
            kmeans_generator=inputs.kmeans_generator,
            has_padding=has_padding,
            sequence_shape=tuple(host_ids.shape),
            shared_prefixes=shared,
        )

    def _check_region_inputs(self, inputs: PixelReferFastInputs) -> None:
        required = _REGION_KEYS + (_LITE_VIEW_KEYS if self.config.is_lite else ())
        missing = [key for key in required if getattr(inputs, key) is None]
        if missing:
            raise ValueError(f"region inputs are incomplete: missing {', '.join(missing)}")

    def _check_region_counts(self, n_region_slots: int, regions, inputs: PixelReferFastInputs, slots_per_item) -> None:
        """`<REGION>` placeholders against the announced counts and the counts the masks give."""
        announced = None
        if inputs.region_token_counts is not None:
            announced = _host_long(inputs.region_token_counts, "region_token_counts")
            _check_count("<REGION>", n_region_slots, int(announced.sum()), "region_token_counts announce")
            _check_per_item(slots_per_item, announced, inputs.region_item)
        counts = regions.counts
        if announced is not None and not torch.equal(counts, announced):
            bad = [i for i, (a, b) in enumerate(zip(announced.tolist(), counts.tolist())) if a != b]
            raise ValueError(
                f"region token counts disagree: the prompt reserved {announced.tolist()} tokens per region but "
                f"the region encoder produced {counts.tolist()} (first differing regions {bad[:8]}); the mask "
                "grids must be the processor's"
            )
        _check_count("<REGION>", n_region_slots, int(counts.sum()), "the region encoder produced")
        _check_per_item(slots_per_item, counts, inputs.region_item)

    # ---- stages (each a method the forward calls; the profiler times these) ---------------------

    def encode_pixels(self, batch: PixelReferFastBatch) -> dict[str, torch.Tensor]:
        """Every pixel source of the batch through ONE packed vision-encoder call.

        Returns:
            `{"images", "crops", "global", "local"}` -> `[rows, C]` features, for the sources present.
        """
        if batch.pixel_values is None:
            return {}
        features = self.vision_encoder(batch.pixel_values, batch.vision_grid_thw, batch.vision_merge_sizes, packing=batch.vision_packing)
        return dict(zip([name for name, _ in batch.vision_rows], features.split([rows for _, rows in batch.vision_rows])))

    def project_images(self, batch: PixelReferFastBatch, vision: dict[str, torch.Tensor]) -> torch.Tensor:
        """Global image / video-frame tokens for the LLM (full model): 2x2 merge of stride-2 frames,
        compressed tokens dropped, the projector, then each shared image's tokens repeated for every
        `<image>` it fills (`image_index`): `[n_image_tokens, D]`."""
        tokens = merge_windows(vision["images"], batch.image_grid_thw, batch.image_merge_sizes)  # (n_tokens, C)
        if batch.image_keep_rows is not None:
            tokens = tokens.index_select(0, batch.image_keep_rows)
        features = self.mm_projector(tokens)
        if batch.image_rows is not None:
            features = features.index_select(0, batch.image_rows)
        return features

    def tokenize_regions(self, batch: PixelReferFastBatch, vision: dict[str, torch.Tensor]):
        """Box position embedding, mask pooling and k-means: `(tokens [R, K, C], counts [R])`."""
        return self.region_encoder.tokenize_packed(vision["crops"], batch.regions, batch.kmeans_generator)

    def infuse_regions(self, batch: PixelReferFastBatch, vision: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """Lite's object-centric infusion of the tokens into their local and global views: `[R, K, C]`."""
        views = batch.lite_views
        return self.region_encoder.infuse(
            tokens, vision["local"], views.cu_local, views.region_local, vision["global"], views.cu_global, views.region_global,
            validate=False,
        )

    def project_regions(self, batch: PixelReferFastBatch, tokens: torch.Tensor, counts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The kept region tokens through `feat_linear`: `[sum(counts), D]`."""
        encoder = self.region_encoder
        return encoder.project(encoder.select_tokens(tokens, counts, batch.regions), dtype)

    def get_image_features(self, batch: PixelReferFastBatch, vision: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Global image / video-frame tokens for the LLM: `[n_image_tokens, D]` (full model).

        Args:
            batch: the checked batch (`pack_inputs` / `place_inputs`).
            vision: the output of `encode_pixels` when already computed (else it is run here).
        """
        _check_packed(batch)
        if batch.image_grid_thw is None:
            raise ValueError("the batch has no images (pixel_values were not given)")
        return self.project_images(batch, self.encode_pixels(batch) if vision is None else vision)

    def get_region_features(
        self, batch: PixelReferFastBatch, vision: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Region tokens for the LLM: `(embeddings [sum(counts), D], counts [R] int32 on the device)`;
        counts are `min(K, cells)` (full) or K (Lite). Stages: `tokenize_regions`, `infuse_regions`
        (Lite), `project_regions`."""
        _check_packed(batch)
        if batch.regions is None:
            raise ValueError("the batch has no regions (crop_pixel_values, region_masks, ... were not given)")
        vision = self.encode_pixels(batch) if vision is None else vision
        tokens, counts = self.tokenize_regions(batch, vision)
        if self.config.is_lite:
            tokens = self.infuse_regions(batch, vision, tokens)
        return self.project_regions(batch, tokens, counts, vision["crops"].dtype), counts

    def splice(self, input_ids: torch.Tensor, batch: PixelReferFastBatch, image_features, region_features) -> torch.Tensor:
        """`inputs_embeds [B, T, D]`: token embeddings with the features written over their placeholders
        (row indices found on the host by `pack_inputs`)."""
        embeds = self.embed_tokens(input_ids)
        flat = embeds.reshape(-1, embeds.shape[-1])  # (B*T, D)
        for token, slots, features in (("<image>", batch.image_slots, image_features), ("<REGION>", batch.region_slots, region_features)):
            rows = 0 if features is None else features.shape[0]
            _check_count(token, slots.shape[0], rows, "the encoders produced")
            if rows:
                flat = flat.index_copy(0, slots, features.to(flat.dtype))
        return flat.view(embeds.shape)

    def embed_multimodal(self, input_ids: torch.Tensor, batch: PixelReferFastBatch | PixelReferFastInputs) -> torch.Tensor:
        """`inputs_embeds [B, T, D]` with image and region features written over their placeholders.

        `batch`: a checked `PixelReferFastBatch` (no host sync), or raw `PixelReferFastInputs`
        (checked here first by `pack_inputs`).
        """
        if not isinstance(batch, PixelReferFastBatch):
            batch = self.pack_inputs(input_ids, None, batch)
        if tuple(input_ids.shape) != batch.sequence_shape:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)} but the batch was packed for {batch.sequence_shape}")
        vision = self.encode_pixels(batch)
        image_features = self.get_image_features(batch, vision) if batch.image_grid_thw is not None else None
        region_features = self.get_region_features(batch, vision)[0] if batch.regions is not None else None
        return self.splice(input_ids, batch, image_features, region_features)

    def run_llm(self, inputs_embeds=None, attention_mask=None, position_ids=None, input_ids=None, **kwargs):
        """The Qwen2 decoder (prefill, or one decode step): transformers' own `Qwen2Model.forward`."""
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs
        )

    def _prefill_mask(self, attention_mask, batch: PixelReferFastBatch):
        """The attention mask of the prefill (the only step with multimodal inputs) without reading it
        back: None when the host saw no padding (causal attention), else the 4-D mask for SDPA / eager
        built on the device. Other attention implementations (flash-attn) get the 2-D mask (their
        unpadding syncs); a prepared mask (a dict, from generate) is used as it is."""
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
            return attention_mask
        if not batch.has_padding:
            return None
        implementation = self.config._attn_implementation
        if implementation not in ("sdpa", "eager") or getattr(self, "has_sliding_layers", False):
            return attention_mask
        return causal_padding_mask(attention_mask.bool(), 0, implementation, self.embed_tokens.weight.dtype)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        multimodal_inputs: PixelReferFastBatch | PixelReferFastInputs | None = None,
        **kwargs,
    ):
        """Qwen2 forward with the multimodal inputs spliced in.

        Args:
            input_ids: `[B, T]`, left padded; needed whenever multimodal inputs are given.
            attention_mask: `[B, T_past + T]` (1 = token, 0 = padding).
            position_ids: `[B, T]`; default from the attention mask (per-item 1-D positions).
            inputs_embeds: instead of `input_ids` when there are no multimodal inputs.
            multimodal_inputs: a checked `PixelReferFastBatch` (`place_inputs` / `pack_inputs`:
                no host sync from here to the logits with SDPA/eager attention and the deterministic
                k-means init), or raw `PixelReferFastInputs` (checked here once); alternatively pass
                the raw fields as keyword arguments.
            **kwargs: the usual Qwen2 arguments (cache, `use_cache`, ...).
        """
        batch = multimodal_inputs if multimodal_inputs is not None else PixelReferFastInputs.pop_from(kwargs)
        if isinstance(batch, PixelReferFastInputs):
            if batch.is_empty:
                batch = None
            else:
                if input_ids is None or inputs_embeds is not None:
                    raise ValueError("multimodal inputs need input_ids (to find the placeholders) and no inputs_embeds")
                batch = self.pack_inputs(input_ids, attention_mask, batch)
        if batch is not None:
            if input_ids is None or inputs_embeds is not None:
                raise ValueError("multimodal inputs need input_ids (to find the placeholders) and no inputs_embeds")
            inputs_embeds = self.embed_multimodal(input_ids, batch)
            input_ids = None
        elif input_ids is not None and input_ids.shape[-1] > 1:
            self._refuse_unfilled_placeholders(input_ids)
        if position_ids is None and isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        if batch is not None:
            attention_mask = self._prefill_mask(attention_mask, batch)
        return self.run_llm(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs
        )

    def _refuse_unfilled_placeholders(self, input_ids: torch.Tensor) -> None:
        ids = [i for i in (self.config.image_token_index, self.config.region_token_index) if i is not None]
        if not ids:
            return
        counts = torch.stack([(input_ids == i).sum() for i in ids]).tolist()
        if any(counts):
            raise ValueError(
                f"the prompt has {counts} <image>/<REGION> placeholder tokens but no pixel or region inputs were given"
            )


class PixelReferFastLiteModel(PixelReferFastLitePreTrainedModel, PixelReferFastModel):
    """PixelRefer-Lite: the same model without the projector, with the infusion region encoder."""


class PixelReferFastForCausalLM(PixelReferFastPreTrainedModel, GenerationMixin):
    """PixelRefer with a language-model head: `forward`, `generate` and `describe`.

    Example:
        >>> import pixelrefer_fast
        >>> from transformers import AutoModelForCausalLM
        >>> model = AutoModelForCausalLM.from_pretrained("PixelRefer-2B", dtype="auto", device_map="cuda")
        >>> processor = pixelrefer_fast.PixelReferFastProcessor.from_pretrained("PixelRefer-2B")
        >>> model.describe(processor, images=[image], masks=[[mask]], questions=["What is <region>?"])
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    model_class = PixelReferFastModel

    def __init__(self, config: PixelReferFastConfig):
        super().__init__(config)
        self.model = self.model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def set_special_token_ids(self, tokenizer) -> None:
        """Take the ids of `<image>` and `<REGION>` from `tokenizer` (the official runtime rule)."""
        for token, name in ((IMAGE_TOKEN, "image_token_index"), (REGION_TOKEN, "region_token_index")):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != getattr(tokenizer, "unk_token_id", None):
                setattr(self.config, name, int(token_id))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        image_merge_sizes: torch.Tensor | None = None,
        image_token_keep: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        crop_pixel_values: torch.Tensor | None = None,
        crop_grid_thw: torch.Tensor | None = None,
        region_masks: torch.Tensor | None = None,
        region_mask_hw: torch.Tensor | None = None,
        region_boxes: torch.Tensor | None = None,
        region_image_hw: torch.Tensor | None = None,
        region_token_counts: torch.Tensor | None = None,
        region_item: torch.Tensor | None = None,
        region_mask_cells: torch.Tensor | None = None,
        global_pixel_values: torch.Tensor | None = None,
        global_grid_thw: torch.Tensor | None = None,
        region_global: torch.Tensor | None = None,
        local_pixel_values: torch.Tensor | None = None,
        local_grid_thw: torch.Tensor | None = None,
        region_local: torch.Tensor | None = None,
        kmeans_generator: torch.Generator | None = None,
        multimodal_inputs: PixelReferFastBatch | None = None,
        **kwargs,
    ):
        """Logits for `[B, T]` (left-padded) tokens and the batch's pixel and region inputs.

        Args:
            input_ids, attention_mask, position_ids, inputs_embeds: as for Qwen2 (see
                `PixelReferFastModel.forward`).
            logits_to_keep: 0 = every position; `n` = the last `n` (`generate` uses 1 at prefill);
                or a 1-D tensor of positions.
            pixel_values ... kmeans_generator: the processor's multimodal outputs, described in
                `PixelReferFastInputs` (only the prefill step gets them), checked here once.
            multimodal_inputs: instead of those, the checked `PixelReferFastBatch` that
                `place_inputs` builds (no host sync from there to the logits).
            **kwargs: Qwen2 arguments (cache, `use_cache`, ...).

        Returns:
            `CausalLMOutputWithPast` (`logits [B, kept, V]` in the model dtype, the cache, ...).
        """
        raw = PixelReferFastInputs(
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            image_merge_sizes=image_merge_sizes,
            image_token_keep=image_token_keep,
            image_index=image_index,
            crop_pixel_values=crop_pixel_values,
            crop_grid_thw=crop_grid_thw,
            region_masks=region_masks,
            region_mask_hw=region_mask_hw,
            region_boxes=region_boxes,
            region_image_hw=region_image_hw,
            region_token_counts=region_token_counts,
            region_item=region_item,
            region_mask_cells=region_mask_cells,
            global_pixel_values=global_pixel_values,
            global_grid_thw=global_grid_thw,
            region_global=region_global,
            local_pixel_values=local_pixel_values,
            local_grid_thw=local_grid_thw,
            region_local=region_local,
            kmeans_generator=kmeans_generator,
        )
        if multimodal_inputs is not None and not raw.is_empty:
            raise ValueError("pass either multimodal_inputs (from place_inputs) or the processor's fields, not both")
        multimodal = multimodal_inputs if multimodal_inputs is not None else raw
        if multimodal_inputs is not None and kmeans_generator is not None:  # a generator given with a placed batch
            multimodal = dataclasses.replace(multimodal_inputs, kmeans_generator=kmeans_generator)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            multimodal_inputs=multimodal,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        result = CausalLMOutputWithPast(logits=logits, **{k: v for k, v in outputs.items() if k != "last_hidden_state"})
        return result if return_dict is not False else result.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, *args, inputs_embeds=None, is_first_iteration: bool | None = False,
                                      **kwargs):
        """transformers' preparation; pixel, mask and view inputs go only to the prefill step. `inputs_embeds`
        is accepted (the official call convention, `generate(inputs_embeds=...)`)."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, *args, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        if not is_first_iteration and model_inputs.get("use_cache", True):
            for key in (*MULTIMODAL_KEYS, PACKED_KEY):
                model_inputs.pop(key, None)
        return model_inputs

    def describe(
        self,
        processor,
        images=None,
        masks=None,
        questions=None,
        videos=None,
        frame_ids=None,
        *,
        image_ids=None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        decoding: str = "fast",
        seed: int | list[int] | None = None,
        streamer=None,
        on_tokens=None,
        static_cache: bool = False,
        graph: str = "auto",
        check_every: int | None = None,
        inputs=None,
        return_details: bool = False,
        **generate_kwargs,
    ) -> list[str] | list[dict]:
        """Answer one question per item about its image or video and its masks (batched).

        Args:
            processor: the `PixelReferFastProcessor` of this checkpoint (same variant and `mask_num`).
            images: per item, an image (path, PIL image, HWC uint8 array), a list of images (then
                `image_ids`), or None for a video item.
            masks: per item, the list of its masks (H x W, nonzero = inside; see the processor for
                boxes and RLE), one per `<region>` of its question, in order.
            questions: per item, the question with `<region>` placeholders; a single string means a
                batch of one (then images / masks / videos / frame_ids are that item's values).
            videos: per item, a video path or frame list, or None for an image item.
            frame_ids: per video item, the frame of each mask (see the processor).
            image_ids: per item with several images, the image of each mask (see the processor).
            max_new_tokens: generation budget, an integer >= 1 (default `defaults.DEFAULT_MAX_NEW_TOKENS`
                = 2048, the official scripts'); rows stop at their eos.
            decoding: `"fast"` (default): the static-cache decode loop of `pixelrefer_fast.decoding`
                (CUDA-graph step on CUDA); `"hf"`: transformers' `generate`. Both pick the same tokens.
                Options the fast loop does not implement make it fall back to `"hf"` with one logged line.
            seed: seeds the sampling draws (`do_sample=True`) and the k-means init (unless
                `kmeans_generator` is given): the same seed gives the same answers in both decodings.
                A list (one int per item) seeds each item's own sampling and k-means generators:
                an item then gets the answer it gets alone with its seed, whatever its batch-mates.
            streamer: a transformers streamer (`TextStreamer`) for a batch of one item.
            on_tokens: streaming callback for any batch: gets a `decoding.StreamChunk` (new token ids
                per row) as they come; returns the rows to cancel.
            static_cache: `"hf"` only: `generate` with `cache_implementation="static"` (the fast loop
                always uses its own static cache).
            graph: the fast loop's step on CUDA: `"auto"` (= `"cuda_graph"`), `"cuda_graph"`,
                `"compile"` (`torch.compile` reduce-overhead) or `"eager"`; CPU runs eager.
            check_every: fast loop: decode steps between two host reads of the finished flags (default
                8; 1 when streaming).
            inputs: the processor's output for the batch, made beforehand (e.g. in a worker process);
                then images / masks / questions / videos / frame_ids are not given.
            return_details: return one dict per item, `{"text", "prompt_tokens", "completion_tokens"}`
                (prompt tokens without padding; generated tokens up to and including eos).
            **generate_kwargs: generation options (`do_sample=True`, `temperature`, `top_k`,
                `top_p`, `repetition_penalty`, `min_new_tokens`, `eos_token_id`, ...) and model
                inputs (`kmeans_generator`). `do_sample`, `temperature` and `top_p` also take a
                list, one value per item (a 0 in a `temperature` list: that item is greedy).

        Returns:
            One answer per item (or its details dict), special tokens skipped, stripped. Decoding is greedy
            by default (as the official scripts) and keeps the checkpoint's `generation_config` processors
            (`repetition_penalty`, over the generated tokens only as in the official code) and eos.

        Raises:
            ValueError: bad inputs, e.g. no masks for Lite, more or fewer `<region>` than masks, a
                processor of the other variant, beam search or `num_return_sequences > 1`, a
                `max_new_tokens` that is not an integer >= 1.
        """
        from .decoding import (
            check_decoding,
            check_loop_options,
            check_seed,
            generate_new_tokens,
            kmeans_generators_per_item,
            resolve_options,
        )

        self._check_processor(processor)
        if inputs is None and questions is None:
            raise ValueError("describe() needs questions (one per item)")
        check_decoding(decoding)
        items = len(inputs["input_ids"]) if inputs is not None else 1 if isinstance(questions, str) else len(questions)
        seed = check_seed(seed, items)
        check_loop_options(graph, check_every)
        plan = resolve_options(self.generation_config, processor.tokenizer, max_new_tokens, generate_kwargs, items)
        if static_cache:
            plan.generation_config.cache_implementation = "static"
        if inputs is not None:
            if any(v is not None for v in (images, masks, questions, videos, frame_ids, image_ids)):
                raise ValueError("describe(): pass either `inputs` (a processor output) or images/masks/questions/"
                                 "videos/frame_ids/image_ids, not both")
            batch = inputs
        else:
            if isinstance(questions, str):
                questions = [questions]
                images, masks, videos, frame_ids, image_ids = (
                    None if v is None else [v] for v in (images, masks, videos, frame_ids, image_ids))
            extra = {} if image_ids is None else {"image_ids": image_ids}
            batch = processor(images=images, videos=videos, masks=masks, text=questions, frame_ids=frame_ids, **extra)
        self.set_special_token_ids(processor.tokenizer)
        if "kmeans_generator" in generate_kwargs:  # a model input: it must be packed with the batch
            batch = {**batch, "kmeans_generator": generate_kwargs.pop("kmeans_generator")}
        elif isinstance(seed, tuple):  # per-item seeds: each item's regions draw from its own generator
            batch = {**batch, "kmeans_generator": kmeans_generators_per_item(seed, batch)}
        batch = self.place_inputs(batch)
        new_tokens = generate_new_tokens(self, batch, plan, decoding=decoding, seed=seed, streamer=streamer,
                                         on_tokens=on_tokens, graph=graph, check_every=check_every)
        texts = [text.strip() for text in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        if not return_details:
            return texts
        prompt_tokens = batch["attention_mask"].sum(-1).tolist()
        completion_tokens = _completion_lengths(new_tokens, list(plan.sampling.eos_token_ids))
        return [{"text": t, "prompt_tokens": p, "completion_tokens": c}
                for t, p, c in zip(texts, prompt_tokens, completion_tokens)]

    def place_inputs(self, batch, *, mask_num: int | None = None) -> dict:
        """Check a processor batch once and place it for this model.

        Returns `{"input_ids", "attention_mask"}` on the model's device plus `multimodal_inputs`, the
        checked `PixelReferFastBatch` (`PixelReferFastModel.pack_inputs`: host facts computed from
        the processor's CPU tensors, pixels and masks copied asynchronously; `mask_num` as there), and
        any other key as given.
        `model(**placed)` and `generate(**placed)` then read nothing back from the device up to the
        first logits (SDPA/eager attention, deterministic k-means init).
        """
        device = self.device
        batch = dict(batch.items())
        input_ids, attention_mask = batch.pop("input_ids"), batch.pop("attention_mask", None)
        inputs = PixelReferFastInputs.pop_from(batch)
        placed = {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        placed["input_ids"] = input_ids.to(device, non_blocking=True)
        if attention_mask is not None:
            placed["attention_mask"] = attention_mask.to(device, non_blocking=True)
        if not inputs.is_empty:
            placed[PACKED_KEY] = self.model.pack_inputs(input_ids, attention_mask, inputs, mask_num=mask_num)
        return placed

    def _check_processor(self, processor) -> None:
        variant = "lite" if self.config.is_lite else "full"
        if getattr(processor, "variant", variant) != variant:
            raise ValueError(f"the processor is for the {processor.variant!r} model but this model is {variant!r}")
        if getattr(processor, "mask_num", self.config.mask_num) != self.config.mask_num:
            raise ValueError(f"processor mask_num={processor.mask_num} differs from config.mask_num={self.config.mask_num}")


def _completion_lengths(new_tokens: torch.Tensor, eos_token_id) -> list[int]:
    """Generated tokens per row up to and including the first eos (all of them when none); host values."""
    eos = torch.as_tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
    tokens = new_tokens.to("cpu")
    is_eos = torch.isin(tokens, eos)  # (B, N)
    lengths = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, tokens.shape[1])  # (B,)
    return lengths.tolist()


class PixelReferFastLiteForCausalLM(PixelReferFastLitePreTrainedModel, PixelReferFastForCausalLM):
    """PixelRefer-Lite with a language-model head (`forward`, `generate`, `describe`)."""

    model_class = PixelReferFastLiteModel


def load_pretrained(source: str | os.PathLike, **kwargs) -> PixelReferFastForCausalLM:
    """Load a PixelRefer or PixelRefer-Lite checkpoint with the class its `model_type` names.

    Args:
        source: a checkpoint directory (or hub id).
        **kwargs: passed to `from_pretrained` (`dtype`, `device_map`, `attn_implementation`, ...).

    Returns:
        `PixelReferFastForCausalLM` or `PixelReferFastLiteForCausalLM`, in eval mode.

    Raises:
        ValueError: a folder without config.json, an unknown model type, or missing / unexpected keys
            (listed by name).
    """
    source = os.fspath(source)
    checkpoint.check_checkpoint_folder(source)
    model_type = checkpoint.read_model_type(source)
    checkpoint.check_model_type(model_type, MODEL_TYPES, source)
    cls = PixelReferFastLiteForCausalLM if model_type == LITE_MODEL_TYPE else PixelReferFastForCausalLM
    return cls.from_pretrained(source, **kwargs)


__all__ = [
    "MULTIMODAL_KEYS",
    "PixelReferFastBatch",
    "PixelReferFastForCausalLM",
    "PixelReferFastInputs",
    "PixelReferFastLiteForCausalLM",
    "PixelReferFastLiteModel",
    "PixelReferFastLitePreTrainedModel",
    "PixelReferFastModel",
    "PixelReferFastPreTrainedModel",
    "load_pretrained",
]
