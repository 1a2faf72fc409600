"""kmeans: the Triton kernels against the float64 reference, upstream semantics, bad inputs."""

from __future__ import annotations

import pytest
import torch

from pixelrefer_fast.reference.region_full import kmeans_official
from pixelrefer_kernels import BackendUnavailableError, force, last_backend
from pixelrefer_kernels.kmeans import backend_report, kmeans, kmeans_init_indices, kmeans_ref, kmeans_triton
from tests.helpers import REL_TOL, assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def blob_tokens(sizes, channels, *, dtype=torch.float32, device=DEVICE, blobs=6):
    """Packed tokens of ragged regions, each drawn around a few well separated centres (so argmin ties
    and near ties are improbable), plus their offsets."""
    parts = []
    for n in sizes:
        centres = torch.randn(blobs, channels) * 3
        parts.append(centres[torch.randint(0, blobs, (n,))] + 0.4 * torch.randn(n, channels))
    tokens = torch.cat(parts).to(device=device, dtype=dtype)
    cu = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return tokens, cu


def run_both(tokens, cu, k, **kwargs):
    """(reference in float64, reference in tokens' dtype, forced Triton), each with the same seed."""
    torch.manual_seed(99)
    ref64 = kmeans_ref(tokens.double(), cu, k, **kwargs)
    torch.manual_seed(99)
    base = kmeans_ref(tokens, cu, k, **kwargs)
    torch.manual_seed(99)
    with force("triton"):
        out = kmeans(tokens, cu, k, **kwargs)
    assert last_backend("kmeans") == "triton"
    return ref64, base, out


SIZES = [0, 1, 5, 8, 9, 31, 64, 130]  # empty, one token, n < K, n == K, n == K + 1, n >> K (K = 8)


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")])
@pytest.mark.parametrize(
    "sizes, channels, k, init, pad",
    [
        pytest.param(SIZES, 40, 8, "deterministic", False, id="K8-C40-det"),
        pytest.param(SIZES, 40, 8, "parity", True, id="K8-C40-parity-pad"),
        pytest.param([33, 32, 150, 0, 47], 72, 32, "parity", False, id="K32-C72-parity"),
        pytest.param([6, 40, 17, 3], 130, 5, "deterministic", True, id="K5-C130-det-pad"),
        pytest.param([2, 9, 50], 40, 1, "deterministic", False, id="K1"),
        pytest.param([60, 100], 72, 40, "parity", False, id="K40-two-chunks"),
    ],
)
def test_triton_matches_reference(sizes, channels, k, init, pad, dtype):
    tokens, cu = blob_tokens(sizes, channels, dtype=dtype)
    (ref64, counts64), (base, _), (out, counts) = run_both(tokens, cu, k, num_iters=5, init=init, pad_to_clusters=pad)
    expected_counts = [k if (n > k or pad) else n for n in sizes]
    assert counts.tolist() == counts64.tolist() == expected_counts
    assert out.dtype == dtype and out.shape == (len(sizes), k, channels)
    assert_close(out, ref64, name="centroids", baseline=base, atol=1e-6 if dtype == torch.float32 else 1e-3, rel_tol=REL_TOL[dtype])
    for r, n in enumerate(sizes):  # unclustered regions: their tokens, then exact zeros
        if n <= k:
            start = int(cu[r])
            assert torch.equal(out[r, :n], tokens[start : start + n])
            assert torch.equal(out[r, n:], torch.zeros_like(out[r, n:]))


@pytest.mark.parametrize("path", ["torch", "triton"])
@pytest.mark.parametrize("iterations", [5, 3], ids=["full-5", "lite-3"])
def test_parity_with_official_kmeans(path, iterations):
    """Same torch.manual_seed -> the official per-region kmeans_fast and ours give the same centroids
    (random Gaussian tokens, not blobs: the realistic case where the early exit rarely fires)."""
    sizes = [40, 7, 33, 90, 32]
    tokens = torch.randn(sum(sizes), 72, device=DEVICE)
    cu = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    torch.manual_seed(7)
    expected = []
    for r, n in enumerate(sizes):
        x = tokens[int(cu[r]) : int(cu[r + 1])]
        expected.append(kmeans_official(x, 32, iterations) if n > 32 else x)
    torch.manual_seed(7)
    with force(path):
        out, counts = kmeans(tokens, cu, 32, num_iters=iterations, init="parity")
    assert last_backend("kmeans") == path
    for r, n in enumerate(sizes):
        assert int(counts[r]) == min(n, 32)
        assert_close(out[r, : min(n, 32)], expected[r].double(), name=f"region{r}", atol=1e-6)


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_convergence_returns_old_centroids(path):
    """A huge atol converges at the first update: upstream returns the OLD (initial) centroids."""
    tokens, cu = blob_tokens([50, 12], 40)
    init = kmeans_init_indices(torch.tensor([50, 12]), 8, "deterministic")
    with force(path):
        out, _ = kmeans(tokens, cu, 8, num_iters=5, init=init, atol=1e3)
    assert torch.equal(out[0], tokens[init[0]])


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_num_iters_zero_returns_initial_tokens(path):
    tokens, cu = blob_tokens([50, 20], 40)
    init = kmeans_init_indices(torch.tensor([50, 20]), 8, "deterministic")
    with force(path):
        out, _ = kmeans(tokens, cu, 8, num_iters=0)
    assert torch.equal(out[0], tokens[init[0]])
    assert torch.equal(out[1], tokens[50 + init[1]])


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_ties_go_to_lowest_index_and_empty_cluster_keeps_centroid(path):
    """Two identical initial centroids: every token picks the lower index, so the higher one's cluster
    stays empty and keeps its centroid."""
    tokens, cu = blob_tokens([30], 40)
    init = torch.tensor([[3, 3, 10, 20]])
    with force(path):
        out, _ = kmeans(tokens, cu, 4, num_iters=1, init=init)
    assert torch.equal(out[0, 1], tokens[3])
    assert not torch.equal(out[0, 0], tokens[3])


def test_init_indices():
    counts = torch.tensor([40, 8, 3, 33])
    det = kmeans_init_indices(counts, 8, "deterministic")
    assert det[0].tolist() == [k * 40 // 8 for k in range(8)]
    assert det[1].tolist() == det[2].tolist() == list(range(8))
    torch.manual_seed(3)
    par = kmeans_init_indices(counts, 8, "parity")
    torch.manual_seed(3)
    assert torch.equal(par[0], torch.randperm(40)[:8]) and torch.equal(par[3], torch.randperm(33)[:8])
    gen = torch.Generator().manual_seed(5)
    again = torch.Generator().manual_seed(5)
    assert torch.equal(kmeans_init_indices(counts, 8, "parity", generator=gen), kmeans_init_indices(counts, 8, "parity", generator=again))


def test_deterministic_is_repeatable_and_padded_rows_ignored():
    tokens, cu = blob_tokens([40, 70], 40)
    padded = torch.cat([tokens, torch.randn(9, 40, device=tokens.device)])  # rows past cu[-1]
    with force("triton"):
        a, _ = kmeans(tokens, cu, 8, max_region_tokens=70)
        b, _ = kmeans(padded, cu, 8, max_region_tokens=70)
    assert torch.equal(a, b)


def test_grad_takes_reference_in_auto_and_forced_triton_refuses():
    tokens, cu = blob_tokens([40, 5], 40)
    tokens.requires_grad_(True)
    out, _ = kmeans(tokens, cu, 8)
    assert last_backend("kmeans") == "torch"
    out.sum().backward()
    assert torch.isfinite(tokens.grad).all()
    with force("triton"), pytest.raises(BackendUnavailableError, match="require"):
        kmeans(tokens, cu, 8)
    with pytest.raises(RuntimeError, match="inference only"):
        kmeans_triton(tokens, cu, 8)


def test_backend_report_lists_both():
    assert [name for name, _ in backend_report(torch.device("cpu"), torch.float32)] == ["triton", "torch"]


@pytest.mark.gpu
def test_triton_bf16_on_gpu():
    tokens, cu = blob_tokens([150, 33, 12, 64] * 4, 1152, dtype=torch.bfloat16, device="cuda")
    (ref64, counts64), (base, _), (out, counts) = run_both(tokens, cu, 32, num_iters=5, init="parity")
    assert torch.equal(counts.cpu(), counts64.cpu())
    assert_close(out, ref64, name="centroids-bf16", baseline=base, atol=1e-2, rel_tol=REL_TOL[torch.bfloat16])


# ----------------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def valid():
    return blob_tokens([40, 5], 40, device="cpu")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_clusters": 0}, ValueError, "num_clusters must be >= 1"),
        ({"num_clusters": 2.5}, TypeError, "num_clusters must be an int"),
        ({"num_iters": -1}, ValueError, "num_iters must be >= 0"),
        ({"init": "random"}, ValueError, "init must be one of"),
        ({"init": torch.zeros(2, 3, dtype=torch.long)}, ValueError, r"shape \[R, K\]"),
        ({"init": torch.full((2, 8), 40)}, ValueError, r"init\[0, 0\] = 40 is not a row"),
        ({"generator": "seed"}, TypeError, "generator must be None or a CPU"),
        ({"atol": -1.0}, ValueError, "atol must be a real number >= 0"),
        ({"max_region_tokens": 10}, ValueError, "below the largest region"),
    ],
    ids=["K0", "K-float", "iters-negative", "init-name", "init-shape", "init-range", "generator", "atol", "max-region-tokens"],
)
def test_bad_arguments(valid, kwargs, error, message):
    tokens, cu = valid
    args = {"num_clusters": 8, **kwargs}
    k = args.pop("num_clusters")
    with pytest.raises(error, match=message):
        kmeans(tokens, cu, k, **args)


@pytest.mark.parametrize(
    "cu, message",
    [
        ([1, 40, 45], "must start at 0"),
        ([0, 40, 30], "non-decreasing"),
        ([0, 40, 46], "only 45 rows"),
    ],
    ids=["start", "decreasing", "past-end"],
)
def test_bad_offsets(valid, cu, message):
    tokens, _ = valid
    with pytest.raises(ValueError, match=message):
        kmeans(tokens, torch.tensor(cu, dtype=torch.int32), 8)


def test_non_finite_and_integer_tokens(valid):
    tokens, cu = valid
    bad = tokens.clone()
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError, match="tokens contains NaN or inf"):
        kmeans(bad, cu, 8)
    with pytest.raises(TypeError, match="tokens has dtype torch.int64"):
        kmeans(tokens.long(), cu, 8)


def test_tensors_on_different_devices(valid):
    tokens, cu = valid
    with pytest.raises(ValueError, match="cu_tokens is on the meta device"):
        kmeans(tokens, cu.to("meta"), 8)


def test_reference_is_exact_despite_a_large_common_offset():
    """Tokens far from the origin (|x|² >> distances) would defeat a plain fp32 expansion; the reference
    must still pick the labels of the exact differences, like upstream."""
    sizes = [60, 45]
    tokens = torch.randn(sum(sizes), 40) * 0.05 + 300.0
    cu = torch.tensor([0, 60, 105], dtype=torch.int32)
    torch.manual_seed(4)
    expected = [kmeans_official(tokens[:60], 8), kmeans_official(tokens[60:], 8)]
    torch.manual_seed(4)
    with force("torch"):
        out, _ = kmeans(tokens, cu, 8, init="parity")
    for r in range(2):
        assert_close(out[r], expected[r].double(), name=f"region{r}", atol=1e-4)


@pytest.mark.parametrize("channels", [144, 1152], ids=["C144", "C1152"])
def test_nearest_centroid_margin_scales_with_channels_and_keeps_exact_labels(channels):
    """The expansion's rounding margin is 4·C·u: tighter for narrow features, and still wide enough
    that labels equal the float64 argmin on data far from the origin (where cancellation is worst)."""
    from pixelrefer_kernels.kmeans import _nearest_centroid, _rounding_margin

    assert _rounding_margin(channels, torch.float32) == pytest.approx(4 * channels * 2.0**-24)
    assert _rounding_margin(144, torch.float32) < _rounding_margin(1152, torch.float32)
    x = (20.0 + 0.05 * torch.randn(2, 150, channels)).float()  # (Rc, n, C), tightly packed far out
    centroids = x[:, torch.randperm(150)[:16]].clone()  # (Rc, K, C)
    valid = torch.ones(2, 150, dtype=torch.bool)
    labels = _nearest_centroid(x, (x.double() ** 2).sum(-1).float(), valid, centroids)
    exact = ((x.double()[:, :, None, :] - centroids.double()[:, None]) ** 2).sum(-1).argmin(-1)
    assert torch.equal(labels, exact)
