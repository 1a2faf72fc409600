"""The OFFICIAL PixelRefer region-encoder algorithm, re-implemented from docs/spec.md §5.3, §5.4.

Written from the specification to behave like upstream `pixelrefer/model/region_encoder.py` (full
model) and the k-means of `pixelreferlite/model/region_encoder.py`, including their quirks: one Python
iteration per mask, the position grid built on the CPU in float32 with the box axes swapped, features
resampled to the mask grid when the grids differ, the selection "any channel of x·mask is non-zero",
`torch.randperm` from the global CPU generator, the `[n, K, C]` broadcast distances, the per-cluster
list of means and the `torch.allclose(atol=1e-6)` early exit that keeps the old centroids.

Slow on purpose: it is the oracle of the tests and the baseline the benchmarks measure the fast paths
against.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FULL_ITERATIONS = 5
LITE_ITERATIONS = 3


def position_grid(h: int, w: int, box, raw_h: int, raw_w: int) -> torch.Tensor:
    """Upstream `generate_position_tensor`: `[h, w, 2]` float32 on the CPU.

    Channel 0 runs along the columns but uses the box's first and third numbers (top, bottom) and the
    image width; channel 1 runs along the rows with (left, right) and the height: the swapped axes.
    """
    span_a = box[2] - box[0]
    span_b = box[3] - box[1]
    along_cols = (torch.arange(w, dtype=torch.float32) / w).repeat(h, 1)  # (h, w)
    along_cols = (along_cols * span_a + box[0]) / (raw_w - 1)
    along_rows = (torch.arange(h, dtype=torch.float32) / h).unsqueeze(1).repeat(1, w)  # (h, w)
    along_rows = (along_rows * span_b + box[1]) / (raw_h - 1)
    return torch.stack([along_cols, along_rows], dim=2)


def kmeans_official(tokens: torch.Tensor, num_clusters: int, num_iterations: int = FULL_ITERATIONS) -> torch.Tensor:
    """Upstream `kmeans_fast`: random init from the global CPU RNG, exact broadcast distances,
    per-cluster means (an empty cluster keeps its centroid), allclose early exit with the old centroids."""
    n = tokens.shape[0]
    centroids = tokens[torch.randperm(n)[:num_clusters]]
    for _ in range(num_iterations):
        distances = ((tokens.unsqueeze(1) - centroids.unsqueeze(0)) ** 2).sum(dim=2)  # (n, K)
        labels = distances.argmin(dim=1)
        means = []
        for j in range(num_clusters):
            members = tokens[labels == j]
            means.append(members.mean(dim=0) if members.size(0) > 0 else centroids[j])
        updated = torch.stack(means)
        if torch.allclose(centroids, updated, atol=1e-6):
            break
        centroids = updated
    return centroids


def kmeans_official_lite(tokens: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """The Lite model's `kmeans_fast`: the same algorithm with 3 iterations."""
    return kmeans_official(tokens, num_clusters, LITE_ITERATIONS)


def mask_pooling_official(x: torch.Tensor, mask: torch.Tensor, mask_token_num: int, num_iterations: int = FULL_ITERATIONS) -> torch.Tensor:
    """Upstream full `MaskPooling.forward`: `x [1, C, h, w]`, `mask [1, 1, mh, mw]` -> `[k, C]`."""
    if x.shape[-2:] != mask.shape[-2:]:
        x = F.interpolate(x, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    mask = mask.to(x.device)
    mask = (mask > 0).to(mask.dtype).permute(1, 0, 2, 3)
    masked = x * mask  # (1, C, mh, mw)
    keep = torch.any(masked != 0, dim=(0, 1))  # (mh, mw), row-major
    tokens = masked[:, :, keep][0].permute(1, 0)  # (n, C)
    if len(tokens) > mask_token_num:
        tokens = kmeans_official(tokens, mask_token_num, num_iterations)
    return tokens


class OfficialMaskExtractor(nn.Module):
    """Upstream full `MaskExtractor` (parameters `pos_linear`, `feat_linear.{0,2}`), same call
    convention: `forward(feats, masks, box_params, mask_num)` with `feats` a list of `[h, w, C]`
    crop features (one per mask, in order), `masks` a list per image of `[M, mh, mw]` tensors (or
    None), `box_params` a list per image of `((top, left, bottom, right), H, W)` per mask."""

    def __init__(self, hidden_size: int, mm_hidden_size: int):
        super().__init__()
        self.feat_linear = nn.Sequential(nn.Linear(mm_hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
        self.pos_linear = nn.Linear(2, mm_hidden_size)

    def forward(self, feats, masks, box_params, mask_num):
        if masks is None:
            return None
        pooled = []
        crop = 0
        for image_masks, image_boxes in zip(masks, box_params):
            if image_masks is None:
                continue
            for m in range(len(image_masks)):
                mask = image_masks[m].unsqueeze(0).unsqueeze(0).float()
                box, raw_h, raw_w = image_boxes[m]
                feat = feats[crop].unsqueeze(0)  # (1, h, w, C)
                crop += 1
                pos = position_grid(feat.shape[1], feat.shape[2], box, raw_h, raw_w).unsqueeze(0).to(feat)
                feat = (feat + self.pos_linear(pos)).permute(0, 3, 1, 2).to(mask.dtype)  # (1, C, h, w) fp32
                pooled.append(mask_pooling_official(feat, mask, mask_num))
        if not pooled:
            return None
        tokens = torch.cat(pooled, dim=0).to(feats[0].dtype)
        return self.feat_linear(tokens)
