"""Review findings on the kernels (issue 9): strided arguments, degenerate position parameters,
overflowing attention, unbounded k-means, meta tensors and the smaller crash cases.

Each test failed before its fix: strided views were read as dense (wrong values or a crash), the
other cases crashed deep inside torch or Triton, returned non-finite values or ran without bound.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from pixelrefer_kernels import force, last_backend, object_infusion, varlen_attention, varlen_attention_ref
from pixelrefer_kernels.kmeans import MAX_ITERS, kmeans, kmeans_ref
from pixelrefer_kernels.region_pool import region_pool, region_pool_from_lists, region_pool_ref
from tests.helpers import assert_close
from tests.kernels.test_infusion import Case
from tests.kernels.test_kmeans import blob_tokens
from tests.kernels.test_region_pool import as_float64, make_regions, packed_args


def strided(t: torch.Tensor) -> torch.Tensor:
    """The values of `t` as a non-contiguous view (every other element of a buffer twice as long
    along the last dim); the gaps hold garbage that a dense read would pick up."""
    buffer = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    buffer.fill_(float("nan") if t.is_floating_point() else 1 << 20)
    view = buffer[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous() and torch.equal(view, t)
    return view


# ---- strided views read as dense ------------------------------------------------------------------------


@pytest.mark.parametrize("argument", [1, 4, 7, 8], ids=["cu_features", "cu_masks", "pos_weight", "pos_bias"])
def test_region_pool_triton_reads_strided_arguments(argument):
    args = list(packed_args(*make_regions([(5, 6), (4, 4, 7, 3), (3, 2)], 40)))
    ref, ref_cu = region_pool_ref(*as_float64(args))
    args[argument] = strided(args[argument])
    with force("triton"):
        out, cu = region_pool(*args)
    assert last_backend("region_pool") == "triton"
    assert torch.equal(cu, ref_cu)
    assert_close(out, ref, name="region_pool strided")


@pytest.mark.parametrize("which", ["q", "k"])
def test_varlen_triton_reads_strided_offsets(which):
    cu = torch.tensor([0, 3, 8, 13], dtype=torch.int32)
    q, k, v = (torch.randn(13, 2, 16) for _ in range(3))
    ref = varlen_attention_ref(q.double(), k.double(), v.double(), cu, cu)
    cu_q, cu_k = (strided(cu), cu) if which == "q" else (cu, strided(cu))
    with force("triton"):
        out = varlen_attention(q, k, v, cu_q, cu_k)
    assert last_backend("varlen_attention") == "triton"
    assert_close(out, ref, name="varlen strided offsets")


@pytest.mark.parametrize("stage", [0, 1], ids=["local", "global"])
@pytest.mark.parametrize("field", ["ln_weight", "ln_bias", "out_proj_bias", "in_proj_bias"])
def test_object_infusion_triton_reads_strided_weights(stage, field):
    case = Case(32, 2, 4, [5, 7], [0, 1, 1], [9], [0, 0, 0])
    expected = case.reference()
    args = list(case.args(torch.float32))
    weights = args[7 + stage]
    args[7 + stage] = weights._replace(**{field: strided(getattr(weights, field))})
    with force("triton"):
        out = object_infusion(*args, num_heads=case.heads)
    assert last_backend("object_infusion") == "triton"
    assert_close(out, expected, name="infusion strided weights")


def test_object_infusion_triton_reads_strided_queries():
    case = Case(32, 2, 4, [5, 7], [0, 1, 1], [9], [0, 0, 0])
    expected = case.reference()
    args = list(case.args(torch.float32))
    args[0], args[1] = strided(args[0]), strided(args[1])
    with force("triton"):
        out = object_infusion(*args, num_heads=case.heads)
    assert_close(out, expected, name="infusion strided queries")


def test_kmeans_triton_reads_strided_offsets_and_init():
    tokens, cu = blob_tokens([20, 3, 40], 24)
    init = torch.tensor([[0, 5, 9, 11], [0, 1, 2, 3], [1, 7, 30, 39]])
    ref, ref_counts = kmeans_ref(tokens.double(), cu, 4, init=init)
    with force("triton"):
        out, counts = kmeans(strided(tokens), strided(cu), 4, init=strided(init))
    assert last_backend("kmeans") == "triton"
    assert torch.equal(counts, ref_counts)
    assert_close(out, ref, name="kmeans strided")


# ---- degenerate or overflowing values -------------------------------------------------------------------


@pytest.mark.parametrize("column", [2, 5], ids=["col_norm", "row_norm"])
@pytest.mark.parametrize("path", ["triton", "torch"])
def test_region_pool_zero_norm_is_rejected(column, path):
    args = list(packed_args(*make_regions([(3, 3)], 8)))
    args[6] = args[6].clone()
    args[6][0, column] = 0.0
    with force(path), pytest.raises(ValueError, match="pos_params.*norm"):
        region_pool(*args)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["to-inf", "to-minus-inf"])
@pytest.mark.parametrize("path", ["triton", "sdpa", "eager"])
def test_varlen_overflowing_scores_raise(path, sign):
    """fp32 inputs of magnitude 1e20: scores past float32. +inf gave NaN rows; -inf on every key gave
    NaN (eager, Triton) or, from SDPA, silent rows of zeros."""
    cu = torch.tensor([0, 4], dtype=torch.int32)
    q = torch.full((4, 1, 16), 1e20)
    with force(path), pytest.raises(ValueError, match="overflow"):
        varlen_attention(q, sign * q, q, cu, cu)


@pytest.mark.parametrize("path", ["triton", "sdpa", "eager"])
def test_varlen_nan_key_of_a_single_key_segment_raises(path):
    """SDPA turned the NaN score of a one-key segment into a row of zeros."""
    cu = torch.tensor([0, 1], dtype=torch.int32)
    q, k, v = (torch.randn(1, 1, 4) for _ in range(3))
    k[0, 0, 0] = float("nan")
    with force(path), pytest.raises(ValueError, match="k contains NaN"):
        varlen_attention(q, k, v, cu, cu)


def test_varlen_nan_input_is_named():
    cu = torch.tensor([0, 4], dtype=torch.int32)
    q = torch.randn(4, 1, 16)
    k = q.clone()
    k[2, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="k contains NaN"):
        varlen_attention(q, k, q, cu, cu)


# ---- unbounded or crashing k-means arguments -----------------------------------------------------------


def test_kmeans_rejects_more_clusters_than_tokens():
    tokens, cu = blob_tokens([5, 7], 8)
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(tokens, cu, 10**9)


def test_kmeans_caps_iterations():
    tokens, cu = blob_tokens([5, 7], 8)
    with pytest.raises(ValueError, match=f"num_iters.*{MAX_ITERS}"):
        kmeans(tokens, cu, 2, num_iters=10**7)
    with pytest.raises(ValueError, match="num_iters"):
        kmeans(tokens, cu, 2, num_iters=10**7, validate=False)


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_kmeans_many_iterations_stop_once_converged(path):
    """300 iterations on converging data: the result equals 5 iterations' (every region stops early)
    and the Triton path stops launching (a host check every few iterations), so this runs quickly."""
    tokens, cu = blob_tokens([40, 60, 9], 16)
    with force(path):
        few, _ = kmeans(tokens, cu, 4, num_iters=5)
        many, _ = kmeans(tokens, cu, 4, num_iters=300)
    assert torch.equal(few, many)


def test_kmeans_triton_launches_stop_after_convergence(monkeypatch):
    kmeans_module = importlib.import_module("pixelrefer_kernels.kmeans")

    launches = []
    real = kmeans_module._kmeans_assign_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return real[grid]

    monkeypatch.setattr(kmeans_module, "_kmeans_assign_kernel", Counting())
    tokens, cu = blob_tokens([40, 60], 16)
    with force("triton"):
        kmeans(tokens, cu, 4, num_iters=300)
    assert len(launches) <= 2 * kmeans_module.CONVERGENCE_CHECK_EVERY


# ---- meta tensors, empty channels, unchecked indices ----------------------------------------------------


def test_meta_tensors_get_a_clear_error():
    meta = torch.empty(8, 4, device="meta")
    cu = torch.tensor([0, 8], device="meta")
    with pytest.raises(ValueError, match="meta"):
        kmeans(meta, cu, 2)
    with pytest.raises(ValueError, match="meta"):
        varlen_attention(meta[:, None], meta[:, None], meta[:, None], cu, cu)
    hw = torch.tensor([[2, 4]])
    with pytest.raises(ValueError, match="meta"):
        region_pool(meta, cu, hw, meta[:, 0], cu, hw, torch.ones(1, 6, device="meta"), torch.ones(4, 2, device="meta"), torch.ones(4, device="meta"))
    case = Case(32, 2, 4, [5, 7], [0, 1, 1], [9], [0, 0, 0])
    args = list(case.args(torch.float32))
    args[0] = args[0].to("meta")
    with pytest.raises(ValueError, match="meta"):
        object_infusion(*args, num_heads=2)


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_region_pool_from_lists_with_no_channels_gives_empty_rows(path):
    features = [torch.randn(3, 3, 0), torch.randn(2, 2, 0)]
    masks = [torch.ones(3, 3), torch.tensor([[1.0, 0.0], [0.0, 0.0]])]
    with force(path):
        tokens, cu = region_pool_from_lists(features, masks, [[0, 0, 2, 2], [1, 1, 2, 2]], [[4, 4], [4, 4]], torch.randn(0, 2), torch.randn(0))
    assert tokens.shape == (10, 0) and cu.tolist() == [0, 9, 10]


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_object_infusion_unvalidated_out_of_range_region_is_rejected(path):
    case = Case(32, 2, 4, [5, 7], [0, 1, 1], [9], [0, 0, 0])
    args = list(case.args(torch.float32))
    args[3] = torch.tensor([0, 5, 1])
    with force(path), pytest.raises(ValueError, match="region_local"):
        object_infusion(*args, num_heads=2, validate=False)


def test_region_pool_huge_mask_grid_falls_back_to_torch_in_auto_mode():
    """A mask grid past the Triton kernel's cell limit (65,535 blocks of cells): auto mode runs the
    torch path (the interpreter's block makes the limit 8.4M cells) and forced Triton says why."""
    from pixelrefer_kernels import BackendUnavailableError
    from pixelrefer_kernels.region_pool import _pool_tile

    side = int((65_535 * _pool_tile()["BLOCK_M"]) ** 0.5) + 2
    features = torch.randn(1, 4)
    masks = torch.zeros(side * side, dtype=torch.uint8)
    masks[[5, side * side // 2, side * side - 1]] = 1
    cu_f, cu_m = torch.tensor([0, 1]), torch.tensor([0, side * side])
    args = (features, cu_f, torch.tensor([[1, 1]]), masks, cu_m, torch.tensor([[side, side]]),
            torch.tensor([[0.0, 0.0, 9.0, 0.0, 0.0, 9.0]]), torch.randn(4, 2), torch.randn(4))  # fmt: skip
    out, cu = region_pool(*args)
    assert last_backend("region_pool") == "torch"
    assert cu.tolist() == [0, 3] and torch.isfinite(out).all()
    with force("triton"), pytest.raises(BackendUnavailableError, match="cell limit"):
        region_pool(*args)


@pytest.mark.parametrize("argument", [2, 5], ids=["feature_hw", "mask_hw"])
def test_region_pool_triton_reads_column_major_grid_sizes(argument):
    """Found by the fuzz suite: a column-major [R, 2] grid-size tensor made the launcher's per-region
    scale tensor column-major too, which the kernel read as row-major."""
    args = list(packed_args(*make_regions([(1, 1), (2, 3, 4, 1), (3, 2, 2, 5)], 8)))
    ref, _ = region_pool_ref(*as_float64(args))
    args[argument] = args[argument].t().contiguous().t()
    with force("triton"):
        out, _ = region_pool(*args)
    assert_close(out, ref, name="region_pool column-major grid sizes")
