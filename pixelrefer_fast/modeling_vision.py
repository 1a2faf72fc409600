"""The NaViT SigLIP vision encoder of PixelRefer (VL3-SigLIP-NaViT architecture, docs/spec.md §4 and §14.9).

Contract: every image, video frame, region crop and Lite view of a batch goes through ONE packed call,
`PixelReferFastVisionEncoder(pixel_values [N, 588], grid_thw [I, 3], merge_sizes [I]) -> [N, C]`.
Rows are patches (C-major `(3, 14, 14)` values) of the images one after another; image `i` holds
`t*h*w` rows, raster order for `merge_sizes[i] == 1` and window-major order (`s x s` windows in
raster order, the patches of a window in raster order inside it) for `merge_sizes[i] == s > 1`.
Attention is block-diagonal per frame and non-causal.

What differs from the official `DAMOVLVisionModel` (same math, same keys):

- the patch embedding is one GEMM (the 14x14 stride-14 convolution's weight viewed as `[C, 588]`);
- 2-D RoPE positions come from `grid_thw` and the merge sizes without a Python loop per image, and
  the cos/sin tables are built once per call, not twice per layer; as upstream, q and k are rotated in
  float32 (also for float64 models) with `inv_freq` computed in float32;
- `cu_seqlens` and `max_seqlen` are computed once per call on the host (upstream reads
  `max_seqlen.item()` in each of the 27 layers);
- attention runs through `pixelrefer_kernels.varlen_attention` (Triton, flash-attn, xformers, SDPA or
  eager), so flash-attn is optional.

Module tree (keys under `model.vision_encoder.vision_encoder.`): `embeddings.patch_embedding`,
`encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}`,
`post_layernorm`. The output is the last block after `post_layernorm` (`mm_vision_select_layer`
is ignored, as upstream).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from pixelrefer_kernels import varlen_attention

from .configuration_pixelrefer_fast import PixelReferFastVisionConfig


@dataclass(frozen=True)
class VisionPacking:
    """Host-side layout of one packed vision call (built once per forward by `pack_layout`).

    Attributes:
        rows_per_image: `[I]` CPU long, `t*h*w` per image.
        cu_seqlens: `[F+1]` int32 on the compute device, attention segment offsets (one per frame).
        max_seqlen: longest segment (`h*w`), a Python int.
        positions: `[N, 2]` CPU long, (row, column) patch position of every packed row.
    """

    rows_per_image: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    positions: torch.Tensor


def _host_long(name: str, value: torch.Tensor | np.ndarray | list | tuple, ndim: int) -> torch.Tensor:
    """An integer tensor, numpy array or (nested) list of ints as a CPU long tensor of `ndim` dims."""
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            value = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be integers ([I, 3] for grid_thw, [I] for merge_sizes), got {value!r}") from exc
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, numpy array or list of ints, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool or value.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D integer tensor, got dtype={value.dtype} shape={tuple(value.shape)}")
    return value.detach().to("cpu", torch.long)


def pack_layout(grid_thw: torch.Tensor, merge_sizes: torch.Tensor, num_rows: int, device: torch.device) -> VisionPacking:
    """Check the packed-call metadata and build its layout (positions, segment offsets).

    Args:
        grid_thw: `[I, 3]` integer (t, h, w) per image, any device (read once on the host).
        merge_sizes: `[I]` integer stride per image (1 images and crops, 2 video frames).
        num_rows: N, rows of the packed `pixel_values`.
        device: where `cu_seqlens` goes.

    Returns:
        `VisionPacking`. Positions follow the row order: raster for stride 1, window-major for stride
        `s` (`hpos = (win // (w/s))*s + (p // s) % s`, `wpos = (win % (w/s))*s + p % s` with
        `win = p // s**2` and `p` the row index inside its frame).

    Raises:
        ValueError: shapes, non-positive sizes, `h`/`w` not divisible by the stride, or
            `sum(t*h*w) != N`.
    """
    grid = _host_long("grid_thw", grid_thw, 2)
    merge = _host_long("merge_sizes", merge_sizes, 1)
    if grid.shape[-1] != 3:
        raise ValueError(f"grid_thw must have shape [I, 3] (t, h, w), got {tuple(grid.shape)}")
    if merge.shape[0] != grid.shape[0]:
        raise ValueError(f"merge_sizes has {merge.shape[0]} entries but grid_thw has {grid.shape[0]} images")
    if grid.numel() and int(grid.min()) < 1:
        raise ValueError(f"grid_thw entries must be >= 1, got min {int(grid.min())}")
    if merge.numel() and int(merge.min()) < 1:
        raise ValueError(f"merge_sizes must be >= 1, got min {int(merge.min())}")
    t, h, w = grid.unbind(-1)
    bad = ((h % merge) != 0) | ((w % merge) != 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"image {i}: grid (h={int(h[i])}, w={int(w[i])}) is not divisible by its merge size {int(merge[i])}"
        )
    frame_rows = h * w
    rows_per_image = t * frame_rows
    total = int(rows_per_image.sum())
    if total != num_rows:
        raise ValueError(f"grid_thw describes {total} patch rows (sum of t*h*w) but pixel_values has {num_rows} rows")

    # Attention segments: one per frame.
    segment_rows = torch.repeat_interleave(frame_rows, t)
    cu_seqlens = F.pad(segment_rows.cumsum(0), (1, 0)).to(torch.int32)
    max_seqlen = int(segment_rows.max()) if segment_rows.numel() else 0

    # Row -> (image, index inside its frame) -> (hpos, wpos); window-major for stride > 1.
    image_of_row = torch.repeat_interleave(torch.arange(grid.shape[0]), rows_per_image, output_size=total)
    image_start = rows_per_image.cumsum(0) - rows_per_image
    local = torch.arange(total) - image_start[image_of_row]
    p = local % frame_rows[image_of_row]
    s = merge[image_of_row]
    windows_per_row = (w // merge)[image_of_row]
    window = p // (s * s)
    hpos = (window // windows_per_row) * s + (p // s) % s
    wpos = (window % windows_per_row) * s + p % s
    positions = torch.stack([hpos, wpos], dim=-1)  # (N, 2)
    return VisionPacking(rows_per_image, cu_seqlens.to(device, non_blocking=True), max_seqlen, positions)


def vision_rope_tables(positions: torch.Tensor, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of the 2-D vision RoPE, float32, `[N, head_dim]` each.

    `inv_freq[k] = theta^(-4k/head_dim)` for `k < head_dim/4` (float32, as upstream); the angle of
    dim `d < head_dim/4` is `hpos * inv_freq[d]`, of `head_dim/4 <= d < head_dim/2` it is
    `wpos * inv_freq[d - head_dim/4]`, and dims `head_dim/2..` repeat the first half.
    """
    rotary_dim = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim))
    pos = positions.to(device=device, dtype=torch.float32, non_blocking=True)
    freqs = (pos[:, :, None] * inv_freq).flatten(1)  # (N, head_dim/2): [hpos*inv | wpos*inv]
    freqs = torch.cat([freqs, freqs], dim=-1)  # (N, head_dim)
    return freqs.cos(), freqs.sin()


def apply_vision_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x [N, H, hd]` by the tables `[N, hd]` in float32; returns `x`'s dtype."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
    return (x32 * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


class PixelReferFastVisionEmbeddings(nn.Module):
    """Patch embedding: `Conv2d(3, C, 14, stride 14)` on one patch per row, computed as one GEMM."""

    def __init__(self, config: PixelReferFastVisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.patch_embedding.weight
        return F.linear(pixel_values.to(weight.dtype), weight.flatten(1), self.patch_embedding.bias)  # (N, C)


class PixelReferFastVisionAttention(nn.Module):
    """Block-diagonal multi-head self-attention with 2-D RoPE on q and k (scale `head_dim**-0.5`)."""

    def __init__(self, config: PixelReferFastVisionConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        c = config.hidden_size
        self.q_proj = nn.Linear(c, c)
        self.k_proj = nn.Linear(c, c)
        self.v_proj = nn.Linear(c, c)
        self.out_proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, packing: VisionPacking) -> torch.Tensor:
        n = x.shape[0]
        q = apply_vision_rope(self.q_proj(x).view(n, self.num_heads, self.head_dim), cos, sin)
        k = apply_vision_rope(self.k_proj(x).view(n, self.num_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(n, self.num_heads, self.head_dim)
        # pack_layout checked the grids and built these offsets: skip the per-layer re-validation (a host sync)
        out = varlen_attention(
            q, k, v, packing.cu_seqlens, packing.cu_seqlens, packing.max_seqlen, packing.max_seqlen, validate=False
        )  # (N, H, hd)
        return self.out_proj(out.reshape(n, -1))


class PixelReferFastVisionMLP(nn.Module):
    def __init__(self, config: PixelReferFastVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PixelReferFastVisionLayer(nn.Module):
    """Pre-norm block: `x + attn(LN1(x))`, then `x + mlp(LN2(x))`."""

    def __init__(self, config: PixelReferFastVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = PixelReferFastVisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = PixelReferFastVisionMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, packing: VisionPacking) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), cos, sin, packing)
        return x + self.mlp(self.layer_norm2(x))


class PixelReferFastVisionBlocks(nn.Module):
    """Holds `layers` so the keys read `encoder.layers.{i}.*`."""

    def __init__(self, config: PixelReferFastVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(PixelReferFastVisionLayer(config) for _ in range(config.num_hidden_layers))


class PixelReferFastVisionTransformer(nn.Module):
    """Embeddings, blocks and `post_layernorm` (the official `DAMOVLVisionModel` tree)."""

    def __init__(self, config: PixelReferFastVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = PixelReferFastVisionEmbeddings(config)
        self.encoder = PixelReferFastVisionBlocks(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, packing: VisionPacking) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        cos, sin = vision_rope_tables(packing.positions, self.config.head_dim, self.config.rope_theta, x.device)
        for layer in self.encoder.layers:
            x = layer(x, cos, sin, packing)
        return self.post_layernorm(x)


class PixelReferFastVisionEncoder(nn.Module):
    """The packed vision encoder; its child `vision_encoder` carries the weights (official wrapper layout).

    Example:
        >>> feats = model.model.vision_encoder(pixel_values, grid_thw, merge_sizes)  # (N, 1152)
    """

    def __init__(self, config: PixelReferFastVisionConfig):
        super().__init__()
        self.config = config
        self.vision_encoder = PixelReferFastVisionTransformer(config)

    def forward(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor | list, merge_sizes: torch.Tensor | list | None = None,
        *, packing: VisionPacking | None = None,
    ) -> torch.Tensor:
        """Encode a packed batch of images.

        Args:
            pixel_values: `[N, num_channels*patch_size**2]` (588) normalised patches, any float dtype
                (cast to the encoder's dtype).
            grid_thw: `[I, 3]` integer (t, h, w) per image, a tensor, numpy array or list of lists;
                `sum(t*h*w) == N`.
            merge_sizes: `[I]` integer stride per image (row order, see the module docstring), a tensor,
                array or list; default all 1 (still images in raster order).
            packing: the layout `pack_layout` already built and checked for these grids (the model's
                checked batch); None builds it here.

        Returns:
            `[N, C]` features in the encoder's dtype, rows in the input order. On CPU the attention
            runs through the torch backends (or Triton under `TRITON_INTERPRET=1`).
        """
        patch_dim = self.config.patch_dim
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 2 or pixel_values.shape[1] != patch_dim:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must have shape [N, {patch_dim}], got {shape}")
        if not pixel_values.is_floating_point():
            raise TypeError(f"pixel_values must be a float tensor, got {pixel_values.dtype}")
        weight = self.vision_encoder.embeddings.patch_embedding.weight
        if packing is None:
            grid_thw = _host_long("grid_thw", grid_thw, 2)
            if merge_sizes is None:
                merge_sizes = torch.ones(grid_thw.shape[0], dtype=torch.long)
            packing = pack_layout(grid_thw, merge_sizes, pixel_values.shape[0], weight.device)
        if pixel_values.shape[0] == 0:
            return pixel_values.new_zeros((0, self.config.hidden_size), dtype=weight.dtype, device=weight.device)
        return self.vision_encoder(pixel_values.to(weight.device), packing)


def merge_windows(features: torch.Tensor, grid_thw: torch.Tensor, merge_sizes: torch.Tensor) -> torch.Tensor:
    """Average each `s x s` window of the window-major rows of images with stride `s > 1`.

    Equals the official `spatial_downsampling` (bilinear resize by exactly 1/s, align_corners=False,
    which is a 2x2 mean for s = 2; identity for s = 1).

    Args:
        features: `[N, C]` vision output in the packed order of `grid_thw` / `merge_sizes`.
        grid_thw: `[I, 3]` integer; merge_sizes: `[I]` integer.

    Returns:
        `[sum(t*h*w / s**2), C]`, tokens of the images in order, raster order of windows inside each.
    """
    grid = _host_long("grid_thw", grid_thw, 2)
    merge = _host_long("merge_sizes", merge_sizes, 1)
    if bool((merge == 1).all()):
        return features
    rows = grid.prod(-1)
    tokens = rows // (merge * merge)
    distinct = torch.unique(merge).tolist()
    if len(distinct) == 1:
        s = distinct[0]
        return features.view(-1, s * s, features.shape[-1]).mean(1)  # (N / s^2, C)
    out = features.new_empty((int(tokens.sum()), features.shape[-1]))
    row_start = rows.cumsum(0) - rows
    token_start = tokens.cumsum(0) - tokens
    for s in distinct:
        chosen = merge == s
        row_idx = _ranges(row_start[chosen], rows[chosen])
        token_idx = _ranges(token_start[chosen], tokens[chosen])
        picked = features.index_select(0, row_idx.to(features.device))
        out[token_idx.to(features.device)] = picked.view(-1, s * s, features.shape[-1]).mean(1)
    return out


def _ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenated `arange(start, start+length)` for each pair (CPU long)."""
    total = int(lengths.sum())
    owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths, output_size=total)
    offsets = torch.arange(total) - (lengths.cumsum(0) - lengths)[owner]
    return starts[owner] + offsets


__all__ = [
    "PixelReferFastVisionEncoder",
    "VisionPacking",
    "apply_vision_rope",
    "merge_windows",
    "pack_layout",
    "vision_rope_tables",
]
