"""The ops registered with torch.library: schema and fake implementations checked by `opcheck`, and each
op traced by `torch.compile(fullgraph=True)` on the CPU with the same result as the eager dispatcher.

The compile tests use the `aot_eager` backend: it runs the whole tracing stack that `fullgraph=True`
checks (Dynamo, the fake implementations, AOTAutograd's functionalisation) without Inductor's C++
code generation, which costs about a minute per graph on the CI's two cores and tests nothing of ours.
"""

from __future__ import annotations

import pytest
import torch

import pixelrefer_kernels
from pixelrefer_kernels import InfusionWeights, kmeans, object_infusion, region_pool, varlen_attention
from pixelrefer_kernels.library import NAMESPACE, OPS
from pixelrefer_kernels.region_pool import box_pos_coefficients, pack_region_lists

C = 8


def op(name: str):
    return getattr(getattr(torch.ops, NAMESPACE), name)


def pool_args():
    features = [torch.randn(3, 4, C), torch.randn(2, 2, C), torch.randn(1, 1, C)]
    masks = [torch.rand(3, 4) - 0.4, torch.rand(3, 3) - 0.3, torch.ones(1, 1)]  # the second is resampled
    packed, cu_f, feature_hw, packed_masks, cu_m, mask_hw = pack_region_lists(features, masks)
    boxes = torch.tensor([[1, 2, 30, 40], [0, 0, 10, 12], [5, 5, 6, 6]])
    pos_params = box_pos_coefficients(boxes, torch.tensor([[50, 60], [20, 20], [9, 9]]))
    return (packed, cu_f, feature_hw, packed_masks, cu_m, mask_hw, pos_params, torch.randn(C, 2), torch.randn(C))


def kmeans_args():
    return torch.randn(20, C), torch.tensor([0, 3, 14, 20], dtype=torch.int32), 4


def attention_args():
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    return torch.randn(8, 2, 4), torch.randn(8, 2, 4), torch.randn(8, 2, 4), cu, cu


def infusion_weights():
    return InfusionWeights(
        1 + 0.1 * torch.randn(C), 0.1 * torch.randn(C), torch.randn(3 * C, C) / C**0.5, 0.1 * torch.randn(3 * C),
        torch.randn(C, C) / C**0.5, 0.1 * torch.randn(C),
    )


def infusion_args():
    queries = torch.randn(3, 4, C)
    local_feats, cu_local, region_local = torch.randn(7, C), torch.tensor([0, 4, 7]), torch.tensor([0, 1, 1])
    global_feats, cu_global, region_global = torch.randn(5, C), torch.tensor([0, 5]), torch.tensor([0, 0, 0])
    return (queries, local_feats, cu_local, region_local, global_feats, cu_global, region_global,
            list(infusion_weights()), list(infusion_weights()))


# (op name, inputs builder, keyword arguments, the eager call it must equal)
CASES = [
    pytest.param("region_pool", pool_args, {}, lambda *a, **k: region_pool(*a, **k), id="region_pool-dynamic-rows"),
    pytest.param("region_pool", pool_args, {"max_tokens": 21}, lambda *a, **k: region_pool(*a, **k), id="region_pool-max_tokens"),
    pytest.param("kmeans", kmeans_args, {"num_iters": 2}, lambda *a, **k: kmeans(*a, **k), id="kmeans"),
    pytest.param(
        "kmeans", kmeans_args, {"pad_to_clusters": True, "max_region_tokens": 11},
        lambda *a, **k: kmeans(*a, **k), id="kmeans-lite",
    ),
    pytest.param("varlen_attention", attention_args, {}, lambda *a, **k: varlen_attention(*a, **k), id="varlen_attention"),
    pytest.param(
        "object_infusion", infusion_args, {"num_heads": 2},
        lambda *a, **k: object_infusion(*a[:7], InfusionWeights(*a[7]), InfusionWeights(*a[8]), **k), id="object_infusion",
    ),
]


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def assert_same(got, expected):
    got, expected = as_tuple(got), as_tuple(expected)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, g.dtype, e.shape, e.dtype)
        assert not g.isnan().any()
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_every_op_is_registered_at_import():
    assert set(OPS) == {"region_pool", "kmeans", "varlen_attention", "object_infusion"}
    for name in OPS:
        assert isinstance(op(name), torch._ops.OpOverloadPacket), name
    assert pixelrefer_kernels.library.NAMESPACE == "pixelrefer"


@pytest.mark.parametrize("name, make, kwargs, eager", CASES)
def test_opcheck(name, make, kwargs, eager):
    """Schema, fake implementation (shapes, dtypes, strides, devices) and AOT dispatch agree with the real op."""
    results = torch.library.opcheck(op(name).default, make(), kwargs)
    assert set(results.values()) == {"SUCCESS"}, results


@pytest.mark.parametrize("name, make, kwargs, eager", CASES)
def test_registered_op_equals_dispatcher(name, make, kwargs, eager):
    args = make()
    assert_same(op(name)(*args, **kwargs), eager(*args, **kwargs))


@pytest.mark.parametrize("name, make, kwargs, eager", CASES)
def test_compile_fullgraph(name, make, kwargs, eager):
    torch._dynamo.reset()
    args = make()
    compiled = torch.compile(lambda *a: op(name)(*a, **kwargs), fullgraph=True, backend="aot_eager")
    assert_same(compiled(*args), eager(*args, **kwargs))


def test_compile_chains_data_dependent_rows():
    """The pooled rows (known only from the masks) flow into k-means and a torch op in one graph."""
    torch._dynamo.reset()
    args = pool_args()

    def tokenize(*pool_inputs):
        tokens, cu_tokens = op("region_pool")(*pool_inputs)
        centroids, counts = op("kmeans")(tokens, cu_tokens, 2, num_iters=2)
        return tokens.sum(0), centroids, counts

    expected = tokenize(*args)
    selected = int((args[3] > 0).sum())
    assert expected[1].shape == (3, 2, C) and selected > 2
    assert_same(torch.compile(tokenize, fullgraph=True, backend="aot_eager")(*args), expected)


def test_errors_come_through_the_registered_op():
    args = list(pool_args())
    args[6] = args[6][:, :4]  # pos_params must be [R, 6]
    with pytest.raises(ValueError, match="pos_params must be"):
        op("region_pool")(*args)
    tokens, cu_tokens, k = kmeans_args()
    with pytest.raises(ValueError, match="either init='parity' or init_indices"):
        op("kmeans")(tokens, cu_tokens, k, torch.zeros(3, k, dtype=torch.long), init="parity")
    with pytest.raises(ValueError, match="local_weights has 5 tensors"):
        infusion = list(infusion_args())
        infusion[7] = infusion[7][:5]
        op("object_infusion")(*infusion, num_heads=2)


def test_kmeans_index_init():
    tokens, cu_tokens, k = kmeans_args()
    init = torch.stack([torch.arange(k), torch.arange(k) * 2, torch.arange(k)])  # rows of regions with n > K
    assert_same(op("kmeans")(tokens, cu_tokens, k, init, num_iters=3), kmeans(tokens, cu_tokens, k, num_iters=3, init=init))


@pytest.mark.gpu
def test_compile_fullgraph_inductor_on_cuda():
    """On a GPU the Triton backends run inside the compiled graph (Inductor), with the eager result."""
    torch._dynamo.reset()
    pool = [t if i in (2, 5) else t.cuda() for i, t in enumerate(pool_args())]  # feature_hw, mask_hw stay on the host
    infusion = [t.cuda() if isinstance(t, torch.Tensor) else [w.cuda() for w in t] for t in infusion_args()]

    def encode(pool_inputs, infusion_inputs):
        tokens, cu_tokens = op("region_pool")(*pool_inputs)
        centroids, counts = op("kmeans")(tokens, cu_tokens, 4, num_iters=3, pad_to_clusters=True)
        fused = op("object_infusion")(centroids, *infusion_inputs[1:], num_heads=2)
        return tokens.sum(0), centroids, counts, fused

    expected = encode(pool, infusion)
    assert pixelrefer_kernels.last_backend("region_pool") == "triton"
    assert_same(torch.compile(encode, fullgraph=True)(pool, infusion), expected)
