"""PixelRefer-Lite's region encoder: object tokens, Object-Centric Infusion, ``feat_linear``.

``PixelReferFastLiteRegionEncoder`` extends the full model's tokenizer (``modeling_region``):

1. ``tokenize``: crop features + box position embedding, mask pooling, k-means (3 iterations) and
   zero padding to exactly K tokens per region (``pad_to_mask_num=True``);
2. ``pixelrefer_kernels.object_infusion``: the tokens attend to their region's local-crop features,
   then to their image's global features (LayerNorm on the queries, residuals), with each feature
   map's projections computed once for all regions that use it;
3. ``feat_linear`` to the LLM width: K embeddings per region.

``FastLiteMaskExtractor`` is the drop-in twin of upstream's Lite ``MaskExtractor``, with its call
convention (one crop, global and local map per mask) and output; feature maps repeated for the masks of
one image (the same global view, or the same local crop under the parity reuse quirk) are detected and
projected once.

Dtypes follow upstream Lite, which runs everything in the model dtype (bf16 autocast): pooling and
k-means in the features' dtype, the infusion in the parameters' dtype (LayerNorm statistics and the
softmax in float32 inside the kernels), ``feat_linear`` in the features' dtype. Parameter names match
upstream (``pos_linear``, ``feat_linear.{0,2}``, ``fusion_attention_{local,global}.*``,
``ln_{local,global}.*``, the unused ``mask_embedding.*``), so released state dicts load unchanged.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn

from pixelrefer_kernels import InfusionWeights, object_infusion

from .modeling_region import PixelReferFastRegionEncoder, RegionInputs, flatten_official_regions

__all__ = ["PixelReferFastLiteRegionEncoder", "FastLiteMaskExtractor"]

LITE_ITERATIONS = 3


class PixelReferFastLiteRegionEncoder(PixelReferFastRegionEncoder):
    """Lite region encoder (upstream ``pixelreferlite`` ``MaskExtractor``), batched over regions.

    Args:
        mm_hidden_size: C (1152). hidden_size: D (LLM width).
        mask_num: K (32). num_iters: k-means iterations (3 in Lite).
        kmeans_init, swap_box_axes, check_finite: as ``PixelReferFastRegionEncoder`` (defaults reproduce
            upstream).
        pad_to_mask_num: True (Lite): every region gives exactly K tokens.
        num_heads: infusion attention heads (8).

    Example:
        >>> enc = PixelReferFastLiteRegionEncoder(1152, 1536)
        >>> emb, counts = enc(regions, local_feats, cu_local, region_local, global_feats, cu_global, region_global)
    """

    def __init__(
        self,
        mm_hidden_size: int,
        hidden_size: int,
        mask_num: int = 32,
        num_iters: int = LITE_ITERATIONS,
        kmeans_init: str = "parity",
        swap_box_axes: bool = True,
        pad_to_mask_num: bool = True,
        *,
        num_heads: int = 8,
        check_finite: bool | None = None,
    ):
        super().__init__(mm_hidden_size, hidden_size, mask_num, num_iters, kmeans_init, swap_box_axes, pad_to_mask_num, check_finite=check_finite)
        if mm_hidden_size % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide mm_hidden_size={mm_hidden_size}")
        self.num_heads = num_heads
        self.mask_embedding = nn.Conv2d(1, mm_hidden_size, kernel_size=1)  # in the checkpoints, never used
        self.fusion_attention_local = nn.MultiheadAttention(mm_hidden_size, num_heads, batch_first=True)
        self.fusion_attention_global = nn.MultiheadAttention(mm_hidden_size, num_heads, batch_first=True)
        self.ln_local = nn.LayerNorm(mm_hidden_size)
        self.ln_global = nn.LayerNorm(mm_hidden_size)

    def token_dtype(self, feature_dtype: torch.dtype) -> torch.dtype:
        """Lite pools and clusters in the model dtype (upstream runs it all under bf16 autocast)."""
        return feature_dtype

    def infuse(
        self,
        tokens: torch.Tensor,
        local_feats: torch.Tensor,
        cu_local: torch.Tensor,
        region_local: torch.Tensor,
        global_feats: torch.Tensor,
        cu_global: torch.Tensor,
        region_global: torch.Tensor,
        *,
        validate: bool = True,
    ) -> torch.Tensor:
        """Object-Centric Infusion of ``tokens [R, K, C]`` (before ``feat_linear``), in the parameters' dtype.

        ``local_feats [N_l, C]`` / ``global_feats [N_g, C]``: packed feature maps with offsets
        ``cu_local [L+1]`` / ``cu_global [G+1]``; ``region_local`` / ``region_global`` ``[R]``: the map of
        each region. Keep the offsets and maps on the CPU to avoid a device sync. ``validate=False``
        for offsets already checked (the model's checked batch).
        """
        if self.ln_local.eps != self.ln_global.eps:
            raise ValueError(f"ln_local.eps={self.ln_local.eps} and ln_global.eps={self.ln_global.eps} differ; the fused infusion takes one eps")
        dtype = self.ln_local.weight.dtype
        return object_infusion(
            tokens.to(dtype),
            local_feats.to(dtype),
            cu_local,
            region_local,
            global_feats.to(dtype),
            cu_global,
            region_global,
            InfusionWeights.from_modules(self.ln_local, self.fusion_attention_local),
            InfusionWeights.from_modules(self.ln_global, self.fusion_attention_global),
            num_heads=self.num_heads,
            eps=self.ln_local.eps,
            validate=validate,
        )

    def forward(
        self,
        inputs: RegionInputs,
        local_feats: torch.Tensor,
        cu_local: torch.Tensor,
        region_local: torch.Tensor,
        global_feats: torch.Tensor,
        cu_global: torch.Tensor,
        region_global: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        mask_num: int | None = None,
    ):
        """Object embeddings of every region.

        Args:
            inputs: the packed regions (crop features, masks, boxes).
            local_feats, cu_local, region_local: the local-view features (one map per distinct local
                view; several regions may share one), their offsets and each region's map.
            global_feats, cu_global, region_global: the same for the whole-image views.
            generator: CPU generator of the parity k-means init (default: the global RNG, as upstream).
            mask_num: K for this call (default ``self.mask_num``).

        Returns:
            ``(embeddings [R*K, D] in the features' dtype, counts [R] int32)``; every count is K
            (zero-padded tokens are infused and projected too, as upstream).
        """
        tokens, counts, _ = self._tokenize(inputs, generator, self.mask_num if mask_num is None else mask_num)
        fused = self.infuse(tokens, local_feats, cu_local, region_local, global_feats, cu_global, region_global)  # (R, K, C)
        return self.project(fused.reshape(-1, fused.shape[-1]), inputs.features.dtype), counts


def _pack_maps(maps: list[torch.Tensor], images: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deduplicate the per-mask feature maps of each image and pack them.

    Args:
        maps: one ``[h, w, C]`` (or ``[n, C]``) map per mask.
        images: the image of each mask.

    Returns:
        ``(feats [N, C], cu [M+1] int64 CPU, region_map [R] int64 CPU)``. A map equal (same tensor, or
        same values) to an earlier map of the same image is not stored again: the regions share it,
        which gives exactly the same result with one projection instead of several.
    """
    distinct: list[torch.Tensor] = []
    owner: list[int] = []
    region_map: list[int] = []
    for flat, image in zip((m.reshape(-1, m.shape[-1]) for m in maps), images):
        match = next(
            (i for i in range(len(distinct)) if owner[i] == image and (distinct[i] is flat or (distinct[i].shape == flat.shape and torch.equal(distinct[i], flat)))),
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
    """Twin of upstream's Lite ``MaskExtractor`` (``pixelreferlite/model/region_encoder.py``).

    Args:
        config: any object with ``hidden_size`` (D) and optionally ``mask_num`` (default 32).
        mm_hidden_size: C (1152). num_heads: infusion heads (8).
        kwargs: ``PixelReferFastLiteRegionEncoder`` options; the defaults reproduce upstream.
    """

    def __init__(self, config, mm_hidden_size: int, num_heads: int = 8, **kwargs):
        kwargs.setdefault("mask_num", getattr(config, "mask_num", 32))
        super().__init__(mm_hidden_size, config.hidden_size, num_heads=num_heads, **kwargs)

    @classmethod
    def from_official(cls, module: nn.Module, **kwargs) -> "FastLiteMaskExtractor":
        """A twin holding ``module``'s weights (copied), on its device and dtype, in its train/eval mode."""
        for name in ("pos_linear", "feat_linear", "fusion_attention_local", "fusion_attention_global", "ln_local", "ln_global"):
            if not hasattr(module, name):
                raise TypeError(f"{type(module).__name__} has no {name}; expected an official Lite MaskExtractor")
        hidden = module.feat_linear[0].out_features
        twin = cls(SimpleNamespace(hidden_size=hidden), module.pos_linear.out_features, num_heads=module.fusion_attention_local.num_heads, **kwargs)
        weight = module.pos_linear.weight
        twin.to(device=weight.device, dtype=weight.dtype)
        twin.load_state_dict(module.state_dict())
        return twin.train(module.training)

    def forward(self, feats, masks, feats_raw, local_feats_raw, masks_raw, box_params, mask_num):
        """Official convention.

        Args:
            feats: crop features, one ``[h, w, C]`` per mask in order over images.
            masks: a list over images of ``[M_i, mh, mw]`` masks (None entries are skipped), or None.
            feats_raw: the global (336-px) features, one ``[h, w, C]`` per mask (repeated per image).
            local_feats_raw: the local (224-px) features, one ``[h, w, C]`` per mask.
            masks_raw: accepted and unused, as upstream.
            box_params: a list over images of per-mask ``((top, left, bottom, right), H, W)``.
            mask_num: K.

        Returns:
            ``[sum(M_i) * K, D]`` in the features' dtype, or None when ``masks`` is None or holds no
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
        embeddings, _ = super().forward(inputs, local_feats, cu_local, region_local, global_feats, cu_global, region_global, mask_num=mask_num)
        return embeddings
