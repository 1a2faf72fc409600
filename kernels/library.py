"""The ops registered with `torch.library`, so `torch.compile(fullgraph=True)` traces through them.

Each public dispatcher is a custom op of the `pixelrefer` namespace, callable as
`torch.ops.pixelrefer.<op>` once `pixelrefer_kernels` is imported:

- `region_pool(features, cu_features, feature_hw, masks, cu_masks, mask_hw, pos_params, pos_weight,
  pos_bias, *, max_tokens=None, out_dtype=None, validate=True) -> (tokens, cu_tokens)`;
- `kmeans(tokens, cu_tokens, num_clusters, init_indices=None, *, num_iters=5, init="deterministic",
  pad_to_clusters=False, max_region_tokens=None, atol=1e-6, rtol=1e-5, validate=True)
  -> (centroids, counts)`; an index init goes in `init_indices` (a schema has no str-or-tensor
  argument), and `"parity"` draws from the global CPU generator, as upstream;
- `varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, *,
  softmax_scale=None, validate=True) -> out`;
- `object_infusion(queries, local_feats, cu_local, region_local, global_feats, cu_global,
  region_global, local_weights, global_weights, *, num_heads=8, eps=1e-5, validate=True) -> out`;
  the weights are the six tensors of `InfusionWeights` as a list.

They are `custom_op`s around the dispatchers rather than `triton_op`s around the launchers: a
`triton_op` body is traced, and ours read offsets and region sizes on the host, validate values and
choose a backend at run time, none of which a trace can hold.

Arguments, results and errors are the dispatchers' (same backends, same `last_backend`). The graph
holds each op as one node; its fake implementation gives the output shapes from the input shapes
alone. `region_pool` without `max_tokens` returns as many rows as the masks select, a number only
the data knows: its fake declares that size dynamic (`new_dynamic_size`), so `fullgraph=True`
still holds. Outputs are fresh, contiguous tensors (never views of the inputs), as custom ops must
return. Inference only, like the launchers: no autograd formula is registered.

Registering runs at import, touches no device and needs no Triton.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .attention import varlen_attention
from .infusion import InfusionWeights, object_infusion
from .kmeans import kmeans
from .region_pool import region_pool

NAMESPACE = "pixelrefer"
OPS = ("region_pool", "kmeans", "varlen_attention", "object_infusion")

__all__ = ["NAMESPACE", "OPS"]


def _fresh(result: torch.Tensor, inputs: Sequence[object]) -> torch.Tensor:
    """`result`, contiguous and sharing no storage with `inputs` (copied only when it would)."""
    result = result.contiguous()
    storages = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    return result.clone() if result.untyped_storage().data_ptr() in storages else result


def _pool_dtype(features: torch.Tensor, out_dtype: torch.dtype | None) -> torch.dtype:
    if out_dtype is not None:
        return out_dtype
    return torch.float64 if features.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------------
# region_pool
# ----------------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::region_pool", mutates_args=())
def _region_pool_op(
    features: torch.Tensor,
    cu_features: torch.Tensor,
    feature_hw: torch.Tensor,
    masks: torch.Tensor,
    cu_masks: torch.Tensor,
    mask_hw: torch.Tensor,
    pos_params: torch.Tensor,
    pos_weight: torch.Tensor,
    pos_bias: torch.Tensor,
    *,
    max_tokens: int | None = None,
    out_dtype: torch.dtype | None = None,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = (features, cu_features, feature_hw, masks, cu_masks, mask_hw, pos_params, pos_weight, pos_bias)
    tokens, cu_tokens = region_pool(*inputs, max_tokens=max_tokens, out_dtype=out_dtype, validate=validate)
    return _fresh(tokens, inputs), _fresh(cu_tokens, inputs)


@_region_pool_op.register_fake
def _(features, cu_features, feature_hw, masks, cu_masks, mask_hw, pos_params, pos_weight, pos_bias, *,
      max_tokens=None, out_dtype=None, validate=True):
    rows = torch.library.get_ctx().new_dynamic_size() if max_tokens is None else max_tokens
    tokens = features.new_empty(rows, features.shape[1], dtype=_pool_dtype(features, out_dtype))
    cu_tokens = features.new_empty(pos_params.shape[0] + 1, dtype=torch.int32)
    return tokens, cu_tokens


# ----------------------------------------------------------------------------------------------------
# kmeans
# ----------------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::kmeans", mutates_args=())
def _kmeans_op(
    tokens: torch.Tensor,
    cu_tokens: torch.Tensor,
    num_clusters: int,
    init_indices: torch.Tensor | None = None,
    *,
    num_iters: int = 5,
    init: str = "deterministic",
    pad_to_clusters: bool = False,
    max_region_tokens: int | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    if init_indices is not None and init != "deterministic":
        raise ValueError(f"give either init={init!r} or init_indices, not both (init_indices replaces init)")
    centroids, counts = kmeans(
        tokens, cu_tokens, num_clusters,
        num_iters=num_iters, init=init if init_indices is None else init_indices, pad_to_clusters=pad_to_clusters,
        max_region_tokens=max_region_tokens, atol=atol, rtol=rtol, validate=validate,
    )
    inputs = (tokens, cu_tokens, init_indices)
    return _fresh(centroids, inputs), _fresh(counts, inputs)


@_kmeans_op.register_fake
def _(tokens, cu_tokens, num_clusters, init_indices=None, *, num_iters=5, init="deterministic", pad_to_clusters=False,
      max_region_tokens=None, atol=1e-6, rtol=1e-5, validate=True):
    num_regions = cu_tokens.shape[0] - 1
    centroids = tokens.new_empty(num_regions, num_clusters, tokens.shape[1])
    counts = tokens.new_empty(num_regions, dtype=torch.int32)
    return centroids, counts


# ----------------------------------------------------------------------------------------------------
# varlen_attention
# ----------------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::varlen_attention", mutates_args=())
def _varlen_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    softmax_scale: float | None = None,
    validate: bool = True,
) -> torch.Tensor:
    out = varlen_attention(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=softmax_scale, validate=validate
    )
    return _fresh(out, (q, k, v))


@_varlen_attention_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, *, softmax_scale=None, validate=True):
    return q.new_empty(q.shape)


# ----------------------------------------------------------------------------------------------------
# object_infusion
# ----------------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::object_infusion", mutates_args=())
def _object_infusion_op(
    queries: torch.Tensor,
    local_feats: torch.Tensor,
    cu_local: torch.Tensor,
    region_local: torch.Tensor,
    global_feats: torch.Tensor,
    cu_global: torch.Tensor,
    region_global: torch.Tensor,
    local_weights: list[torch.Tensor],
    global_weights: list[torch.Tensor],
    *,
    num_heads: int = 8,
    eps: float = 1e-5,
    validate: bool = True,
) -> torch.Tensor:
    stages = {}
    for stage, weights in (("local", local_weights), ("global", global_weights)):
        if len(weights) != len(InfusionWeights._fields):
            raise ValueError(
                f"{stage}_weights has {len(weights)} tensors; give the {len(InfusionWeights._fields)} of InfusionWeights "
                f"in order ({', '.join(InfusionWeights._fields)})"
            )
        stages[stage] = InfusionWeights(*weights)
    out = object_infusion(
        queries, local_feats, cu_local, region_local, global_feats, cu_global, region_global, stages["local"], stages["global"],
        num_heads=num_heads, eps=eps, validate=validate,
    )
    return _fresh(out, (queries, local_feats, global_feats, *local_weights, *global_weights))


@_object_infusion_op.register_fake
def _(queries, local_feats, cu_local, region_local, global_feats, cu_global, region_global, local_weights, global_weights, *,
      num_heads=8, eps=1e-5, validate=True):
    return queries.new_empty(queries.shape)
