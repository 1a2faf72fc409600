"""Eager float64 re-implementation of the official NaViT SigLIP vision encoder (docs/spec.md §4, §14.9).

Written from the specification as the oracle of the tests: a Python loop per image builds the RoPE positions the way the
official `rot_pos_emb` does (reshape to `(h/s, s, w/s, s)` and permute), attention runs image by
image with an explicit softmax, the patch embedding is a real convolution. Like the official code, q and
k are rotated in float32 (`official_casts=True`) even when everything else is float64; with
`official_casts=False` the rotation is float64 too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _positions(h: int, w: int, stride: int) -> torch.Tensor:
    hpos = torch.arange(h)[:, None].expand(h, w).reshape(h // stride, stride, w // stride, stride)
    wpos = torch.arange(w)[None, :].expand(h, w).reshape(h // stride, stride, w // stride, stride)
    hpos = hpos.permute(0, 2, 1, 3).flatten()
    wpos = wpos.permute(0, 2, 1, 3).flatten()
    return torch.stack([hpos, wpos], dim=-1)


def _rotate(x: torch.Tensor, freqs: torch.Tensor, official_casts: bool) -> torch.Tensor:
    dtype = x.dtype
    work = torch.float32 if official_casts else torch.float64
    x = x.to(work)
    cos = freqs.cos().repeat(1, 2)[:, None, :].to(work)
    sin = freqs.sin().repeat(1, 2)[:, None, :].to(work)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(dtype)


def official_vision_forward(
    state: dict[str, torch.Tensor],
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor,
    strides: list[int],
    *,
    num_heads: int,
    eps: float = 1e-6,
    theta: float = 10000.0,
    dtype: torch.dtype = torch.float64,
    official_casts: bool = True,
) -> torch.Tensor:
    """Vision features `[N, C]` from weights named as under `model.vision_encoder.vision_encoder.`."""
    sd = {k: v.detach().to(dtype) for k, v in state.items()}
    weight = sd["embeddings.patch_embedding.weight"]
    c, channels, p, _ = weight.shape
    x = pixel_values.to(dtype).view(-1, channels, p, p)
    x = F.conv2d(x, weight, sd["embeddings.patch_embedding.bias"], stride=p).view(-1, c)

    head_dim = c // num_heads
    rotary_dim = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    if not official_casts:
        inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    positions, sizes = [], []
    for (t, h, w), s in zip(grid_thw.tolist(), strides):
        positions.append(_positions(h, w, s).repeat(t, 1))
        sizes += [h * w] * t
    pos = torch.cat(positions).to(inv_freq.dtype)
    freqs = torch.cat([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], dim=-1)

    layer = 0
    while f"encoder.layers.{layer}.layer_norm1.weight" in sd:
        pre = f"encoder.layers.{layer}."
        h_in = F.layer_norm(x, (c,), sd[pre + "layer_norm1.weight"], sd[pre + "layer_norm1.bias"], eps)
        q = F.linear(h_in, sd[pre + "self_attn.q_proj.weight"], sd[pre + "self_attn.q_proj.bias"]).view(-1, num_heads, head_dim)
        k = F.linear(h_in, sd[pre + "self_attn.k_proj.weight"], sd[pre + "self_attn.k_proj.bias"]).view(-1, num_heads, head_dim)
        v = F.linear(h_in, sd[pre + "self_attn.v_proj.weight"], sd[pre + "self_attn.v_proj.bias"]).view(-1, num_heads, head_dim)
        q, k = _rotate(q, freqs, official_casts), _rotate(k, freqs, official_casts)
        outs = []
        for qi, ki, vi in zip(q.split(sizes), k.split(sizes), v.split(sizes)):
            scores = torch.einsum("qhd,khd->hqk", qi, ki) / math.sqrt(head_dim)
            outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), vi))
        attn = torch.cat(outs).reshape(-1, c)
        x = x + F.linear(attn, sd[pre + "self_attn.out_proj.weight"], sd[pre + "self_attn.out_proj.bias"])
        h_in = F.layer_norm(x, (c,), sd[pre + "layer_norm2.weight"], sd[pre + "layer_norm2.bias"], eps)
        mlp = F.gelu(F.linear(h_in, sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"]), approximate="tanh")
        x = x + F.linear(mlp, sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"])
        layer += 1
    return F.layer_norm(x, (c,), sd["post_layernorm.weight"], sd["post_layernorm.bias"], eps)


def official_spatial_downsampling(features: torch.Tensor, grid_thw: torch.Tensor, strides: list[int]) -> torch.Tensor:
    """The official per-image undo-window-major + bilinear resize by 1/s (align_corners=False)."""
    out = []
    c = features.shape[-1]
    for feat, (t, h, w), s in zip(features.split(grid_thw.prod(-1).tolist()), grid_thw.tolist(), strides):
        feat = feat.view(t, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(t, h, w, c).permute(0, 3, 1, 2)
        feat = F.interpolate(feat, (math.ceil(h / s), math.ceil(w / s)), mode="bilinear", align_corners=False)
        out.append(feat.permute(0, 2, 3, 1).reshape(-1, c))
    return torch.cat(out)
