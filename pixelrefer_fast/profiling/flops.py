"""Analytic FLOPs and minimum memory traffic of every PixelRefer stage, from shapes alone.

Convention (`FLOP_CONVENTION`, written into every profile):

- **2 FLOPs per multiply-add** (a GEMM `[M, K] @ [K, N]` costs `2*M*N*K`), as
  `torch.utils.flop_counter.FlopCounterMode` counts.
- Only matmul-like work is counted: GEMMs (patch embedding, projections, MLPs, `lm_head`),
  attention's `Q K^T` and `P V` (`4 * s_q * s_k * head_dim` per head), and k-means' distance
  term (`2 * n * K * C` per Lloyd iteration, the dot-product form `|x|^2 - 2 x.c + |c|^2`).
  Norms, softmax, activations, RoPE, bias adds and gathers are not counted (they are memory-bound;
  their cost shows in the bytes and the latency).
- Attention is counted over the whole score matrix of each block-diagonal segment (the sum of
  `s_i^2` terms); causal LLM attention is not halved, as dense and SDPA kernels compute it whole.
- Prefill counts `lm_head` only for the positions whose logits are kept (1 per sequence when
  generating).

Bytes (`StageCost.bytes`) are a lower bound on memory traffic: every weight read once, the
stage's inputs read once and its outputs written once, plus the KV cache read per decode step.
Achieved bandwidth from them is therefore a lower bound too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from pixelrefer_kernels.infusion import absorbed_path_is_cheaper

from .presets import LLMShape, VisionShape

FLOP_CONVENTION = (
    "2 FLOPs per multiply-add; matmul-like work only (GEMMs, attention QK^T and PV over whole "
    "block-diagonal segments, causal not halved; k-means distance 2*n*K*C per iteration); norms, "
    "softmax, activations and gathers not counted"
)
BYTES_CONVENTION = "lower bound: weights read once, stage inputs read once, outputs written once, KV cache read per decode step"


class StageCost(NamedTuple):
    """Analytic cost of one stage call.

    Attributes:
        flops: total FLOPs (2 per multiply-add, see the module docstring).
        bytes: lower bound on memory traffic in bytes.
        parts: FLOPs per named part (`{"qkv": ..., "attention": ...}`), summing to `flops`.
    """

    flops: int
    bytes: int
    parts: dict[str, int]


def _gemm(m: int, k: int, n: int) -> int:
    """FLOPs of `[m, k] @ [k, n]`."""
    return 2 * m * k * n


def _cost(parts: dict[str, int], nbytes: int) -> StageCost:
    return StageCost(flops=int(sum(parts.values())), bytes=int(nbytes), parts={k: int(v) for k, v in parts.items()})


def attention_flops(seqlens_q: Sequence[int], seqlens_k: Sequence[int], num_heads: int, head_dim: int) -> int:
    """`Q K^T` plus `P V` over block-diagonal segments: `sum_i 4 * s_q,i * s_k,i * head_dim * heads`."""
    if len(seqlens_q) != len(seqlens_k):
        raise ValueError(f"seqlens_q has {len(seqlens_q)} segments but seqlens_k has {len(seqlens_k)}")
    return sum(4 * sq * sk * head_dim * num_heads for sq, sk in zip(seqlens_q, seqlens_k))


def vision_weight_count(vision: VisionShape) -> int:
    """Parameters of the vision encoder (patch embedding, blocks, final LayerNorm)."""
    c, i = vision.hidden_size, vision.intermediate_size
    patch = vision.patch_dim * c + c
    block = 4 * (c * c + c) + (c * i + i) + (i * c + c) + 4 * c
    return patch + vision.num_layers * block + 2 * c


def vision_encoder_cost(vision: VisionShape, seqlens: Sequence[int], *, dtype_bytes: int = 2) -> StageCost:
    """One packed vision-encoder call over images/frames of `seqlens[i] = t*gh*gw` patches.

    Parts: `patch_embed` (the Conv2d as a `[N, 3*14*14] @ [3*14*14, C]` GEMM), `qkv`, `out`,
    `mlp` (per layer, all layers summed) and `attention` (`4 * C * sum(s_i^2)` per layer).
    """
    n = int(sum(seqlens))
    c, i, layers = vision.hidden_size, vision.intermediate_size, vision.num_layers
    parts = {
        "patch_embed": _gemm(n, vision.patch_dim, c),
        "qkv": layers * 3 * _gemm(n, c, c),
        "out": layers * _gemm(n, c, c),
        "mlp": layers * (_gemm(n, c, i) + _gemm(n, i, c)),
        "attention": layers * attention_flops(seqlens, seqlens, vision.num_heads, vision.head_dim),
    }
    nbytes = vision_weight_count(vision) * dtype_bytes + n * vision.patch_dim * 4 + n * c * dtype_bytes
    return _cost(parts, nbytes)


def mlp2_cost(n_tokens: int, in_features: int, hidden: int, *, dtype_bytes: int = 2, name: str = "mlp") -> StageCost:
    """`Linear(in, hidden) -> GELU -> Linear(hidden, hidden)` on `n_tokens` rows.

    This is both the projector (`mm_projector.readout`, 1152 -> D -> D) and the region encoder's
    `feat_linear` (1152 -> D -> D).
    """
    parts = {f"{name}.0": _gemm(n_tokens, in_features, hidden), f"{name}.2": _gemm(n_tokens, hidden, hidden)}
    weights = in_features * hidden + hidden + hidden * hidden + hidden
    nbytes = (weights + n_tokens * (in_features + hidden)) * dtype_bytes
    return _cost(parts, nbytes)


def region_tokenizer_cost(
    feature_cells: Sequence[int],
    selected_cells: Sequence[int],
    mask_num: int,
    channels: int,
    kmeans_iters: int,
    *,
    dtype_bytes: int = 2,
) -> StageCost:
    """Position embedding, mask pooling and k-means of R regions (before `feat_linear`).

    Args:
        feature_cells: `h_r * w_r` feature cells of each region's crop (`pos_linear` runs on each).
        selected_cells: cells inside each mask (on the mask grid); k-means runs where it exceeds
            `mask_num`, on all `selected_cells[r]` rows for `kmeans_iters` iterations.
        mask_num: K clusters per region.
        channels: C.
        kmeans_iters: Lloyd iterations (5 full, 3 Lite; counted in full, no early stop).

    Parts: `pos_linear` (`Linear(2, C)` per feature cell) and `kmeans` (distance term).
    """
    if len(feature_cells) != len(selected_cells):
        raise ValueError(f"feature_cells has {len(feature_cells)} regions but selected_cells has {len(selected_cells)}")
    clustered = [n for n in selected_cells if n > mask_num]
    parts = {
        "pos_linear": _gemm(int(sum(feature_cells)), 2, channels),
        "kmeans": kmeans_iters * sum(2 * n * mask_num * channels for n in clustered),
    }
    rows_out = len(selected_cells) * mask_num
    nbytes = (int(sum(feature_cells)) + rows_out) * channels * dtype_bytes + (2 * channels + channels) * dtype_bytes
    return _cost(parts, nbytes)


def infusion_cost(
    mask_num: int,
    channels: int,
    num_heads: int,
    local_lengths: Sequence[int],
    region_local: Sequence[int],
    global_lengths: Sequence[int],
    region_global: Sequence[int],
    *,
    dtype_bytes: int = 2,
) -> StageCost:
    """Lite object-centric infusion: a local then a global cross-attention, K queries per region.

    Args:
        mask_num: K queries per region.
        channels: C; num_heads: heads (8 upstream).
        local_lengths, global_lengths: rows of each local / global feature map (segment).
        region_local, region_global: the segment index of each region (R entries each).

    Mirrors `pixelrefer_kernels.object_infusion`: the query and output projections run on all
    `R*K` rows; each used segment (N rows, u regions, q = u*K queries) takes the cheaper of

    - the shared-projection path: K/V projected once (`2 * 2*N*C*C`) and attention
      `4 * q * N * C`;
    - the absorbed path: `W_k^T q` and `W_v` applied per head (`2 * 2*q*C*C`) and attention
      on the raw features in C dims per head (`4 * heads * q * N * C`),

    choosing the absorbed path only when it is strictly cheaper. Parts per block (`local.*`,
    `global.*`): `q`, `kv`, `attention` (shared path), `absorbed` (absorbed path), `out`.
    """
    if len(region_local) != len(region_global):
        raise ValueError(f"region_local has {len(region_local)} regions but region_global has {len(region_global)}")
    num_regions = len(region_local)
    queries = num_regions * mask_num
    parts: dict[str, int] = {}
    key_rows = 0
    for name, lengths, of_region in (("local", local_lengths, region_local), ("global", global_lengths, region_global)):
        users: dict[int, int] = {}
        for segment in of_region:
            if not 0 <= segment < len(lengths):
                raise ValueError(f"region_{name} refers to segment {segment}, but there are {len(lengths)} {name} maps")
            users[segment] = users.get(segment, 0) + 1
        kv = attention = absorbed = 0
        for segment, count in users.items():
            rows, seg_queries = lengths[segment], count * mask_num
            key_rows += rows
            if absorbed_path_is_cheaper(rows, seg_queries, channels, num_heads):  # the kernel's own choice
                absorbed += 2 * _gemm(seg_queries, channels, channels) + 4 * num_heads * seg_queries * rows * channels
            else:
                kv += 2 * _gemm(rows, channels, channels)
                attention += 4 * seg_queries * rows * channels
        parts[f"{name}.q"] = _gemm(queries, channels, channels)
        parts[f"{name}.kv"] = kv
        parts[f"{name}.attention"] = attention
        parts[f"{name}.absorbed"] = absorbed
        parts[f"{name}.out"] = _gemm(queries, channels, channels)
    weights = 2 * (4 * channels * channels + 4 * channels + 2 * channels)
    nbytes = (weights + key_rows * channels + 2 * queries * channels) * dtype_bytes
    return _cost(parts, nbytes)


def llm_weight_count(llm: LLMShape, *, include_embedding: bool = False) -> int:
    """Parameters a forward reads: decoder layers, final norm and `lm_head` (embedding rows apart)."""
    d, i, hd = llm.hidden_size, llm.intermediate_size, llm.head_dim
    q, kv = llm.num_heads * hd, llm.num_kv_heads * hd
    attn = d * q + q + 2 * (d * kv + kv) + q * d
    layer = attn + 3 * d * i + 2 * d
    total = llm.num_layers * layer + d + llm.vocab_size * d
    if include_embedding and not llm.tie_word_embeddings:
        total += llm.vocab_size * d
    return total


def _llm_layer_parts(llm: LLMShape, tokens: int) -> dict[str, int]:
    d, i, hd = llm.hidden_size, llm.intermediate_size, llm.head_dim
    q, kv = llm.num_heads * hd, llm.num_kv_heads * hd
    return {
        "qkv": llm.num_layers * (_gemm(tokens, d, q) + 2 * _gemm(tokens, d, kv)),
        "o": llm.num_layers * _gemm(tokens, q, d),
        "mlp": llm.num_layers * 3 * _gemm(tokens, d, i),
    }


def llm_prefill_cost(
    llm: LLMShape, batch: int, seq_len: int, *, logits_positions: int = 1, dtype_bytes: int = 2
) -> StageCost:
    """Prefill of `batch` sequences padded to `seq_len` tokens (inputs_embeds in, KV cache out).

    `logits_positions` is the number of positions per sequence whose logits are computed (1 when
    generating; `seq_len` for a plain forward). Parts: `qkv`, `o`, `mlp`, `attention`
    (causal, not halved) and `lm_head`.
    """
    tokens = batch * seq_len
    parts = _llm_layer_parts(llm, tokens)
    parts["attention"] = llm.num_layers * batch * attention_flops([seq_len], [seq_len], llm.num_heads, llm.head_dim)
    parts["lm_head"] = _gemm(batch * logits_positions, llm.hidden_size, llm.vocab_size)
    kv_bytes = 2 * llm.num_layers * tokens * llm.num_kv_heads * llm.head_dim * dtype_bytes
    nbytes = llm_weight_count(llm) * dtype_bytes + tokens * llm.hidden_size * dtype_bytes + kv_bytes
    nbytes += batch * logits_positions * llm.vocab_size * 4
    return _cost(parts, nbytes)


def llm_decode_cost(llm: LLMShape, batch: int, context_len: int, *, dtype_bytes: int = 2) -> StageCost:
    """One decode step: one new token per sequence attending to `context_len` cached+new positions."""
    parts = _llm_layer_parts(llm, batch)
    parts["attention"] = llm.num_layers * batch * attention_flops([1], [context_len], llm.num_heads, llm.head_dim)
    parts["lm_head"] = _gemm(batch, llm.hidden_size, llm.vocab_size)
    kv_bytes = 2 * llm.num_layers * batch * context_len * llm.num_kv_heads * llm.head_dim * dtype_bytes
    nbytes = llm_weight_count(llm) * dtype_bytes + kv_bytes + batch * llm.vocab_size * 4
    return _cost(parts, nbytes)


def llm_decode_steps_cost(llm: LLMShape, batch: int, prompt_len: int, new_tokens: int, *, dtype_bytes: int = 2) -> StageCost:
    """`new_tokens` decode steps after a `prompt_len` prefill (step j sees `prompt_len + j + 1` positions)."""
    parts: dict[str, int] = {}
    nbytes = 0
    for step in range(new_tokens):
        cost = llm_decode_cost(llm, batch, prompt_len + step + 1, dtype_bytes=dtype_bytes)
        nbytes += cost.bytes
        for key, value in cost.parts.items():
            parts[key] = parts.get(key, 0) + value
    return _cost(parts, nbytes)


def register_flop_formulas() -> list[str]:
    """Teach `torch.utils.flop_counter.FlopCounterMode` the ops it cannot see yet; idempotent.

    Registers, when absent from `flop_registry`:

    - `aten._scaled_dot_product_flash_attention_for_cpu` (the CPU SDPA kernel, uncounted by torch):
      the same `Q K^T` + `P V` count as the CUDA SDPA kernels.

    Returns the names registered by this call (empty when everything was already known).
    """
    from torch.utils import flop_counter

    registered = []
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None and cpu_sdpa not in flop_counter.flop_registry:

        def cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

        flop_counter.register_flop_formula(cpu_sdpa)(cpu_sdpa_flops)
        registered.append("aten._scaled_dot_product_flash_attention_for_cpu")
    return registered
