"""PixelRefer-Lite's region encoder: object tokens, Object-Centric Infusion, `feat_linear`.

`PixelReferFastLiteRegionEncoder` extends the full model's tokenizer (`modeling_region`):

1. `tokenize`: crop features + box position embedding, mask pooling, k-means (3 iterations) and
   zero padding to exactly K tokens per region (`pad_to_mask_num=True`);
2. `pixelrefer_kernels.object_infusion`: the tokens attend to their region's local-crop features,
   then to their image's global features (LayerNorm on the queries, residuals), with each feature
   map's projections computed once for all regions that use it;
3. `feat_linear` to the LLM width: K embeddings per region.

Its drop-in twin with upstream's call convention, `FastLiteMaskExtractor`, lives in `compat.py`.

Dtypes follow upstream Lite, which runs everything in the model dtype (bf16 autocast): pooling and
k-means in the features' dtype, the infusion in the parameters' dtype (LayerNorm statistics and the
softmax in float32 inside the kernels), `feat_linear` in the features' dtype. Parameter names match
upstream (`pos_linear`, `feat_linear.{0,2}`, `fusion_attention_{local,global}.*`,
`ln_{local,global}.*`, the unused `mask_embedding.*`), so released state dicts load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pixelrefer_kernels import InfusionWeights, object_infusion

from .modeling_region import PixelReferFastRegionEncoder, RegionInputs

__all__ = ["PixelReferFastLiteRegionEncoder"]

LITE_ITERATIONS = 3


class PixelReferFastLiteRegionEncoder(PixelReferFastRegionEncoder):
    """Lite region encoder (upstream `pixelreferlite` `MaskExtractor`), batched over regions.

    Args:
        mm_hidden_size: C (1152). hidden_size: D (LLM width).
        mask_num: K (32). num_iters: k-means iterations (3 in Lite).
        kmeans_init, swap_box_axes, check_finite: as `PixelReferFastRegionEncoder` (defaults reproduce
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
        super().__init__(
            mm_hidden_size, hidden_size, mask_num, num_iters, kmeans_init, swap_box_axes, pad_to_mask_num, check_finite=check_finite
        )
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
        """Object-Centric Infusion of `tokens [R, K, C]` (before `feat_linear`), in the parameters' dtype.

        `local_feats [N_l, C]` / `global_feats [N_g, C]`: packed feature maps with offsets
        `cu_local [L+1]` / `cu_global [G+1]`; `region_local` / `region_global` `[R]`: the map of
        each region. Keep the offsets and maps on the CPU to avoid a device sync. `validate=False`
        for offsets already checked (the model's checked batch).
        """
        if self.ln_local.eps != self.ln_global.eps:
            raise ValueError(
                f"ln_local.eps={self.ln_local.eps} and ln_global.eps={self.ln_global.eps} differ; the fused infusion takes one eps"
            )
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
            mask_num: K for this call (default `self.mask_num`).

        Returns:
            `(embeddings [R*K, D] in the features' dtype, counts [R] int32)`; every count is K
            (zero-padded tokens are infused and projected too, as upstream).
        """
        tokens, counts, _ = self._tokenize(inputs, generator, self.mask_num if mask_num is None else mask_num)
        fused = self.infuse(tokens, local_feats, cu_local, region_local, global_feats, cu_global, region_global)  # (R, K, C)
        return self.project(fused.reshape(-1, fused.shape[-1]), inputs.features.dtype), counts
