"""The OFFICIAL PixelRefer-Lite region encoder (`MaskExtractor` of
`pixelreferlite/model/region_encoder.py`), re-implemented from docs/spec.md §6, §5.3, §5.4, §14.

Behaviour reproduced, quirks included:

- one Python iteration per mask; crop, global and local feature maps are lists with ONE entry per
  mask in order (the global map of an image is repeated, once per mask);
- position grid (swapped box axes) + `pos_linear` added to the crop features;
- pooling: features resampled to the mask grid when the grids differ, cells with mask > 0 picked by
  boolean indexing in row-major order, k-means (3 iterations, `randperm` from the global CPU RNG)
  when a mask has more than `mask_num` cells, then zero padding to exactly `mask_num` rows;
- per image: the padded tokens `[M, K, C]` attend to a stack of the masks' local maps `[M, n_l, C]`
  and then to a stack of their global maps `[M, n_g, C]` through `nn.MultiheadAttention`
  (default `need_weights=True`), each after a LayerNorm of the queries, with a residual;
- `feat_linear` on all tokens of all images.

Upstream runs under CUDA bf16 autocast; this oracle runs in the module's dtype (float32 for parity
tests), which is what upstream's code computes without autocast. Slow on purpose: the oracle of the
tests and the baseline of the benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .region_full import kmeans_official_lite, position_grid


def mask_pooling_official_lite(x: torch.Tensor, mask: torch.Tensor, mask_token_num: int) -> torch.Tensor:
    """Lite `MaskPooling`: `x [1, C, h, w]`, `mask [1, 1, mh, mw]` -> `[n or K, C]` (unpadded)."""
    if x.shape[-2:] != mask.shape[-2:]:
        x = F.interpolate(x, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    inside = (mask.to(x.device) > 0).any(dim=0).any(dim=0)  # (mh, mw)
    tokens = x[..., inside]  # (1, C, n), row-major cells
    tokens = tokens.permute(2, 0, 1).reshape(-1, x.shape[1])  # (n, C)
    if len(tokens) > mask_token_num:
        tokens = kmeans_official_lite(tokens, mask_token_num)
    return tokens


class OfficialLiteMaskExtractor(nn.Module):
    """Upstream Lite `MaskExtractor`: parameters `feat_linear.{0,2}`, `mask_embedding` (unused),
    `fusion_attention_{local,global}` (`nn.MultiheadAttention(C, num_heads, batch_first=True)`),
    `ln_{local,global}` (LayerNorm, eps 1e-5), `pos_linear`.

    `forward(feats, masks, feats_raw, local_feats_raw, masks_raw, box_params, mask_num)`:
    `feats` / `feats_raw` / `local_feats_raw`: one `[h, w, C]` crop / global / local feature map
    per mask, in order over images; `masks`: a list per image of `[M_i, mh, mw]` (None entries are
    skipped); `masks_raw`: unused by the computation; `box_params`: per image, per mask
    `((top, left, bottom, right), H, W)`. Returns `[sum(M_i) * mask_num, D]` or None.
    """

    def __init__(self, config, mm_hidden_size: int, depth: int = 2, num_heads: int = 8):
        super().__init__()
        layers = [nn.Linear(mm_hidden_size, config.hidden_size)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        self.feat_linear = nn.Sequential(*layers)
        self.mask_embedding = nn.Conv2d(1, mm_hidden_size, kernel_size=1)
        self.fusion_attention_local = nn.MultiheadAttention(mm_hidden_size, num_heads, batch_first=True)
        self.fusion_attention_global = nn.MultiheadAttention(mm_hidden_size, num_heads, batch_first=True)
        self.ln_local = nn.LayerNorm(mm_hidden_size)
        self.ln_global = nn.LayerNorm(mm_hidden_size)
        self.pos_linear = nn.Linear(2, mm_hidden_size)
        self.num_heads = num_heads

    def _infuse(self, queries: torch.Tensor, keys: torch.Tensor, stage: str) -> torch.Tensor:
        if stage == "local":
            norm, attention = self.ln_local, self.fusion_attention_local
        else:
            norm, attention = self.ln_global, self.fusion_attention_global
        return queries + attention(norm(queries), keys, keys)[0]

    def forward(self, feats, masks, feats_raw, local_feats_raw, masks_raw, box_params, mask_num):
        if masks is None:
            return None
        dtype = self.pos_linear.weight.dtype
        per_image = []
        view = 0  # one crop / global / local map per mask, over all images
        for image_masks, image_boxes in zip(masks, box_params):
            if image_masks is None:
                continue
            tokens, local_maps, global_maps = [], [], []
            for m in range(len(image_masks)):
                mask = image_masks[m][None, None].to(dtype)
                box, raw_h, raw_w = image_boxes[m]
                feat = feats[view][None]  # (1, h, w, C)
                pos = position_grid(feat.shape[1], feat.shape[2], box, raw_h, raw_w)[None].to(feat)
                feat = (feat + self.pos_linear(pos)).permute(0, 3, 1, 2)  # (1, C, h, w)
                pooled = mask_pooling_official_lite(feat, mask, mask_num)
                tokens.append(F.pad(pooled, (0, 0, 0, mask_num - len(pooled))))  # (K, C)
                local_maps.append(local_feats_raw[view].reshape(-1, local_feats_raw[view].shape[-1]))
                global_maps.append(feats_raw[view].reshape(-1, feats_raw[view].shape[-1]))
                view += 1
            fused = self._infuse(torch.stack(tokens), torch.stack(local_maps), "local")  # (M, K, C)
            fused = self._infuse(fused, torch.stack(global_maps), "global")
            per_image.append(fused.reshape(-1, fused.shape[-1]))
        return self.feat_linear(torch.cat(per_image))
