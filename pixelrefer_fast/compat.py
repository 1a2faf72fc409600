"""Drop-in twins of the official region encoders, with the official call convention.

- `FastMaskExtractor(config, mm_hidden_size)`: the full model's `MaskExtractor`; same parameters
  (`pos_linear`, `feat_linear.0`, `feat_linear.2`), same `forward(feats, masks, box_params,
  mask_num)` and output, computed by `PixelReferFastRegionEncoder` (batched, Triton on GPUs).
- `FastLiteMaskExtractor(config, mm_hidden_size)`: Lite's `MaskExtractor`; same parameters, same
  `forward(feats, masks, feats_raw, local_feats_raw, masks_raw, box_params, mask_num)` and output,
  computed by `PixelReferFastLiteRegionEncoder`. Feature maps repeated for the masks of one image
  (the same global view, or the same local crop under the parity reuse quirk) are detected and
  projected once.
- `swap_region_encoder(model)`: replaces the region encoder of an official model instance in place
  (`model.get_model().region_encoder`), choosing the twin by variant.

With the default parity settings (random k-means init from the global CPU generator, swapped box
axes) the twins give the official tokens for the same `torch.manual_seed`, to float rounding.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
import torch.nn as nn

from .modeling_infusion import PixelReferFastLiteRegionEncoder
from .modeling_region import PixelReferFastRegionEncoder, RegionInputs, flatten_official_regions

__all__ = ["FastLiteMaskExtractor", "FastMaskExtractor", "swap_region_encoder"]

logger = logging.getLogger("pixelrefer_fast")

OFFICIAL_ITERATIONS = 5


class FastMaskExtractor(PixelReferFastRegionEncoder):
    """Twin of the official full `MaskExtractor` (`pixelrefer/model/region_encoder.py`).

    Args:
        config: any object with `hidden_size` (D) and optionally `mask_num` (default 32).
        mm_hidden_size: C (1152).
        kwargs: `PixelReferFastRegionEncoder` options (`kmeans_init`, `swap_box_axes`, ...);
            the defaults reproduce upstream.
    """

    def __init__(self, config, mm_hidden_size: int, **kwargs):
        kwargs.setdefault("mask_num", getattr(config, "mask_num", 32))
        kwargs.setdefault("num_iters", OFFICIAL_ITERATIONS)
        super().__init__(mm_hidden_size, config.hidden_size, **kwargs)

    @classmethod
    def from_official(cls, module: nn.Module, **kwargs) -> "FastMaskExtractor":
        """A twin holding `module`'s weights (copied), on its device and dtype, in its train/eval mode."""
        for name in ("pos_linear", "feat_linear"):
            if not hasattr(module, name):
                raise TypeError(f"{type(module).__name__} has no {name}; expected an official MaskExtractor")
        hidden = module.feat_linear[0].out_features
        twin = cls(SimpleNamespace(hidden_size=hidden), module.pos_linear.out_features, **kwargs)
        weight = module.pos_linear.weight
        twin.to(device=weight.device, dtype=weight.dtype)
        twin.load_state_dict({k: v for k, v in module.state_dict().items() if k.split(".")[0] in ("pos_linear", "feat_linear")})
        return twin.train(module.training)

    def forward(self, feats, masks, box_params, mask_num):
        """Official convention.

        Args:
            feats: crop features, one `[h, w, C]` per mask in order (a list, or a `[M, h, w, C]`
                tensor).
            masks: a list over images of `[M_i, mh, mw]` masks (or None entries, skipped), or None.
            box_params: a list over images of per-mask `((top, left, bottom, right), H, W)`.
            mask_num: K.

        Returns:
            `[sum(k_i), D]` in the features' dtype (`k_i = min(K, cells > 0)`), or None when
            `masks` is None or holds no mask, as upstream. Unlike upstream, a number of feature
            maps that differs from the number of masks is an error (upstream ignores extra maps).
        """
        if masks is None:
            return None
        region_masks, boxes, image_hw, _ = flatten_official_regions(masks, box_params, float)
        if not region_masks:
            return None
        if len(feats) != len(region_masks):
            raise ValueError(
                f"got {len(feats)} crop feature maps for {len(region_masks)} masks; "
                "give exactly one feature map per mask"
            )
        inputs = RegionInputs.from_lists(list(feats), region_masks, torch.tensor(boxes), torch.tensor(image_hw))
        return super().forward(inputs, mask_num=mask_num)[0]


def _pack_maps(maps: list[torch.Tensor], images: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deduplicate the per-mask feature maps of each image and pack them.

    Args:
        maps: one `[h, w, C]` (or `[n, C]`) map per mask.
        images: the image of each mask.

    Returns:
        `(feats [N, C], cu [M+1] int64 CPU, region_map [R] int64 CPU)`. A map equal (same tensor, or
        same values) to an earlier map of the same image is not stored again: the regions share it,
        which gives exactly the same result with one projection instead of several.
    """
    distinct: list[torch.Tensor] = []
    owner: list[int] = []
    region_map: list[int] = []
    for flat, image in zip((m.reshape(-1, m.shape[-1]) for m in maps), images):
        match = next(
            (
                i for i in range(len(distinct))
                if owner[i] == image and (distinct[i] is flat or (distinct[i].shape == flat.shape and torch.equal(distinct[i], flat)))
            ),
            None,
        )
        if match is None:
            match = len(distinct)
            distinct.append(flat)
            owner.append(image)
        region_map.append(match)
    lengths = torch.tensor([0] + [m.shape[0] for m in distinct])
    return torch.cat(distinct), lengths.cumsum(0), torch.tensor(region_map)


class FastLiteMaskExtractor(PixelReferFastLiteRegionEncoder):
    """Twin of upstream's Lite `MaskExtractor` (`pixelreferlite/model/region_encoder.py`).

    Args:
        config: any object with `hidden_size` (D) and optionally `mask_num` (default 32).
        mm_hidden_size: C (1152). num_heads: infusion heads (8).
        kwargs: `PixelReferFastLiteRegionEncoder` options; the defaults reproduce upstream.
    """

    def __init__(self, config, mm_hidden_size: int, num_heads: int = 8, **kwargs):
        kwargs.setdefault("mask_num", getattr(config, "mask_num", 32))
        super().__init__(mm_hidden_size, config.hidden_size, num_heads=num_heads, **kwargs)

    @classmethod
    def from_official(cls, module: nn.Module, **kwargs) -> "FastLiteMaskExtractor":
        """A twin holding `module`'s weights (copied), on its device and dtype, in its train/eval mode."""
        for name in ("pos_linear", "feat_linear", "fusion_attention_local", "fusion_attention_global", "ln_local", "ln_global"):
            if not hasattr(module, name):
                raise TypeError(f"{type(module).__name__} has no {name}; expected an official Lite MaskExtractor")
        hidden = module.feat_linear[0].out_features
        heads = module.fusion_attention_local.num_heads
        twin = cls(SimpleNamespace(hidden_size=hidden), module.pos_linear.out_features, num_heads=heads, **kwargs)
        weight = module.pos_linear.weight
        twin.to(device=weight.device, dtype=weight.dtype)
        twin.load_state_dict(module.state_dict())
        return twin.train(module.training)

    def forward(self, feats, masks, feats_raw, local_feats_raw, masks_raw, box_params, mask_num):
        """Official convention.

        Args:
            feats: crop features, one `[h, w, C]` per mask in order over images.
            masks: a list over images of `[M_i, mh, mw]` masks (None entries are skipped), or None.
            feats_raw: the global (336-px) features, one `[h, w, C]` per mask (repeated per image).
            local_feats_raw: the local (224-px) features, one `[h, w, C]` per mask.
            masks_raw: accepted and unused, as upstream.
            box_params: a list over images of per-mask `((top, left, bottom, right), H, W)`.
            mask_num: K.

        Returns:
            `[sum(M_i) * K, D]` in the features' dtype, or None when `masks` is None or holds no
            mask.
        """
        if masks is None:
            return None
        region_masks, boxes, image_hw, images = flatten_official_regions(masks, box_params, int)
        if not region_masks:
            return None
        num_regions = len(region_masks)
        for name, maps in (("feats", feats), ("feats_raw", feats_raw), ("local_feats_raw", local_feats_raw)):
            if len(maps) != num_regions:
                raise ValueError(f"{name} has {len(maps)} feature maps for {num_regions} masks; give exactly one per mask")
        inputs = RegionInputs.from_lists(list(feats), region_masks, torch.tensor(boxes), torch.tensor(image_hw))
        local_feats, cu_local, region_local = _pack_maps(list(local_feats_raw), images)
        global_feats, cu_global, region_global = _pack_maps(list(feats_raw), images)
        embeddings, _ = super().forward(
            inputs, local_feats, cu_local, region_local, global_feats, cu_global, region_global, mask_num=mask_num
        )
        return embeddings


def _region_encoder_owner(model: nn.Module) -> nn.Module:
    """The module holding `region_encoder`: `model.get_model()`, `model.model` or `model`."""
    candidates = []
    if hasattr(model, "get_model"):
        candidates.append(model.get_model())
    candidates += [getattr(model, "model", None), model]
    for owner in candidates:
        if owner is not None and isinstance(getattr(owner, "region_encoder", None), nn.Module):
            return owner
    raise ValueError(f"{type(model).__name__} has no region_encoder (looked at get_model(), .model and the model itself)")


def _is_lite(encoder: nn.Module) -> bool:
    return hasattr(encoder, "fusion_attention_local") or "pixelreferlite" in type(encoder).__module__


def swap_region_encoder(model: nn.Module) -> nn.Module:
    """Replace the region encoder of an official PixelRefer / PixelRefer-Lite model in place.

    The full model's `MaskExtractor` becomes `FastMaskExtractor`; Lite's becomes
    `FastLiteMaskExtractor`. Weights, device, dtype and train/eval mode carry over. Returns the new
    encoder (the old one unchanged if it already is a fast twin).
    """
    owner = _region_encoder_owner(model)
    old = owner.region_encoder
    if isinstance(old, PixelReferFastRegionEncoder):
        return old
    twin_cls = FastLiteMaskExtractor if _is_lite(old) else FastMaskExtractor
    new = twin_cls.from_official(old)
    owner.region_encoder = new
    logger.info("swapped %s for %s", type(old).__name__, twin_cls.__name__)
    return new

