"""region_pool: the Triton kernel against the float64 reference, the official position grid, bad inputs."""

from __future__ import annotations

import pytest
import torch

from pixelrefer_fast.reference.region_full import mask_pooling_official, position_grid
from pixelrefer_kernels import BackendUnavailableError, force, last_backend
from pixelrefer_kernels.region_pool import (
    backend_report,
    box_pos_coefficients,
    pack_region_lists,
    region_pool,
    region_pool_from_lists,
    region_pool_ref,
    region_pool_triton,
)
from tests.helpers import REL_TOL, assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_regions(grids, channels, *, dtype=torch.float32, mask_dtype=torch.float32, coverage=0.5, device=DEVICE):
    """Random regions: `grids` is a list of (h, w, mh, mw) or (h, w); masks are fractional in
    [-0.5, 0.5] + coverage-0.5 shifted (value > 0 = inside), or bool/uint8."""
    features, masks, boxes, image_hw = [], [], [], []
    for grid in grids:
        h, w = grid[:2]
        mh, mw = grid[2:] if len(grid) == 4 else (h, w)
        features.append(torch.randn(h, w, channels, device=device).to(dtype))
        values = torch.rand(mh, mw, device=device) - (1 - coverage)
        if mask_dtype == torch.bool:
            masks.append(values > 0)
        elif mask_dtype == torch.uint8:
            masks.append((values > 0).to(torch.uint8))
        else:
            masks.append(values.to(mask_dtype))
        H, W = int(torch.randint(40, 900, ())), int(torch.randint(40, 900, ()))
        top, bottom = sorted(torch.randint(0, H, (2,)).tolist())
        left, right = sorted(torch.randint(0, W, (2,)).tolist())
        boxes.append([top, left, bottom, right])
        image_hw.append([H, W])
    weight = (torch.randn(channels, 2, device=device) * 0.5).to(dtype)
    bias = (torch.randn(channels, device=device) * 0.1).to(dtype)
    return features, masks, torch.tensor(boxes), torch.tensor(image_hw), weight, bias


def packed_args(features, masks, boxes, image_hw, weight, bias, *, swap_axes=True):
    packed, cu_f, feature_hw, packed_masks, cu_m, mask_hw = pack_region_lists(features, masks)
    pos_params = box_pos_coefficients(boxes, image_hw, swap_axes=swap_axes).to(packed.device)
    return (packed, cu_f, feature_hw, packed_masks, cu_m, mask_hw, pos_params, weight, bias)


def as_float64(args):
    packed, cu_f, feature_hw, packed_masks, cu_m, mask_hw, pos_params, weight, bias = args
    return (packed.double(), cu_f, feature_hw, packed_masks, cu_m, mask_hw, pos_params, weight.double(), bias.double())


CASES = {  # id: (grids as (h, w) or (h, w, mh, mw), C, mask coverage)
    "ragged-C72": ([(10, 12), (22, 22), (7, 9), (14, 14)], 72, 0.5),
    "odd-nonsquare-C130": ([(7, 3), (5, 11), (1, 1), (3, 13)], 130, 0.6),
    "resampled-C40": ([(4, 4, 9, 7), (6, 5, 3, 2), (4, 4, 1, 1), (5, 5, 5, 8)], 40, 0.7),
    "many-tiny-C40": ([(h, w) for h in (1, 2, 3) for w in (1, 2, 3)] * 4, 40, 0.6),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
PARAMS = [pytest.param(*case, dtype, id=f"{name}-{dname}") for name, case in CASES.items() for dname, dtype in DTYPES.items()]
# one case at the real width, fp32 only (the interpreter's cost grows with C)
PARAMS.append(pytest.param([(12, 10), (6, 6, 12, 12)], 1152, 0.4, torch.float32, id="real-C1152-fp32"))


@pytest.mark.parametrize("grids, channels, coverage, dtype", PARAMS)
def test_triton_matches_reference(grids, channels, coverage, dtype):
    data = make_regions(grids, channels, dtype=dtype, coverage=coverage)
    args = packed_args(*data)
    ref64, cu64 = region_pool_ref(*as_float64(args))
    base, _ = region_pool_ref(*args)
    with force("triton"):
        out, cu = region_pool(*args)
    assert last_backend("region_pool") == "triton"
    assert out.dtype == torch.float32
    assert torch.equal(cu.cpu(), cu64.cpu())
    # tokens are fp32, but carry the input dtype's rounding of feature + position embedding
    assert_close(out, ref64, name="tokens", baseline=base, atol=1e-6 if dtype == torch.float32 else 1e-3, rel_tol=REL_TOL[dtype])


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float16], ids=["bool", "uint8", "fp16"])
def test_mask_dtypes_and_empty_full_one_cell(mask_dtype):
    grids = [(6, 7), (5, 5), (4, 6), (3, 3)]
    features, masks, boxes, image_hw, weight, bias = make_regions(grids, 48, mask_dtype=mask_dtype)
    masks[0] = torch.zeros_like(masks[0])  # empty
    masks[1] = torch.ones_like(masks[1])  # full
    masks[2] = torch.zeros_like(masks[2])
    masks[2][2, 3] = 1  # one cell
    args = packed_args(features, masks, boxes, image_hw, weight, bias)
    ref64, cu64 = region_pool_ref(*as_float64(args))
    with force("triton"):
        out, cu = region_pool(*args)
    assert last_backend("region_pool") == "triton"
    counts = (cu[1:] - cu[:-1]).tolist()
    assert counts[:3] == [0, 25, 1]
    assert torch.equal(cu.cpu(), cu64.cpu())
    assert_close(out, ref64, name="tokens", baseline=region_pool_ref(*args)[0])


def test_max_tokens_pads_with_zeros_and_matches():
    features, masks, boxes, image_hw, weight, bias = make_regions([(5, 6), (4, 4, 7, 7)], 40)
    args = packed_args(features, masks, boxes, image_hw, weight, bias)
    bound = sum(m.numel() for m in masks)
    ref, cu_ref = region_pool_ref(*args)
    for mode in ("torch", "triton"):
        with force(mode):
            out, cu = region_pool(*args, max_tokens=bound)
        assert last_backend("region_pool") == mode
        total = int(cu[-1])
        assert out.shape == (bound, 40) and torch.equal(cu, cu_ref)
        assert torch.equal(out[total:], torch.zeros_like(out[total:]))
        assert_close(out[:total], ref.double(), name=f"tokens-{mode}", atol=1e-6)


@pytest.mark.parametrize("swap_axes", [True, False], ids=["swapped-parity", "corrected"])
def test_position_embedding_is_the_official_grid_bit_for_bit(swap_axes):
    """With zero features, W = I and b = 0 the tokens are the position values: they must equal the
    official float32 grid exactly (the corrected layout is the official formula with the box's
    (top, left) and (bottom, right) swapped)."""
    grids = [(10, 12), (7, 5), (22, 22)]
    boxes = torch.tensor([[17, 230, 301, 477], [0, 0, 479, 639], [5, 90, 60, 91]])
    image_hw = torch.tensor([[480, 640], [480, 640], [333, 517]])
    features = [torch.zeros(h, w, 2) for h, w in grids]
    masks = [torch.ones(h, w) for h, w in grids]
    weight, bias = torch.eye(2), torch.zeros(2)
    args = packed_args(features, masks, boxes, image_hw, weight, bias, swap_axes=swap_axes)
    expected = []
    for (h, w), box, (H, W) in zip(grids, boxes.tolist(), image_hw.tolist()):
        b = box if swap_axes else [box[1], box[0], box[3], box[2]]
        expected.append(position_grid(h, w, b, H, W).reshape(-1, 2))
    expected = torch.cat(expected)
    for mode in ("torch", "triton"):
        with force(mode):
            out, _ = region_pool(*args)
        assert torch.equal(out.cpu(), expected), f"{mode}: max diff {(out.cpu() - expected).abs().max()}"


def test_list_api_matches_packed():
    data = make_regions([(5, 6), (3, 3, 4, 5)], 40)
    args = packed_args(*data)
    with force("triton"):
        out, cu = region_pool_from_lists(*data)
        ref, cu_ref = region_pool(*args)
    assert torch.equal(out, ref) and torch.equal(cu, cu_ref)


def test_grad_takes_reference_in_auto_and_forced_triton_refuses():
    features, masks, boxes, image_hw, weight, bias = make_regions([(4, 5), (3, 3)], 40)
    args = list(packed_args(features, masks, boxes, image_hw, weight, bias))
    args[7] = weight.clone().requires_grad_(True)
    out, _ = region_pool(*args)
    assert last_backend("region_pool") == "torch"
    out.sum().backward()
    assert args[7].grad is not None and torch.isfinite(args[7].grad).all()
    with force("triton"), pytest.raises(BackendUnavailableError, match="require"):
        region_pool(*args)
    with pytest.raises(RuntimeError, match="inference only"):
        region_pool_triton(*args)
    with torch.no_grad(), force("triton"):
        region_pool(*args)
    assert last_backend("region_pool") == "triton"


def test_backend_report_lists_both():
    rows = backend_report(torch.device("cpu"), torch.float32)
    assert [name for name, _ in rows] == ["triton", "torch"]
    assert rows[1][1] == []


@pytest.mark.gpu
@pytest.mark.parametrize("grids", [[(10, 12), (22, 22), (7, 9)], [(4, 4, 9, 7), (6, 5, 3, 2)]], ids=["same-grid", "resampled"])
def test_triton_bf16_on_gpu(grids):
    data = make_regions(grids, 1152, dtype=torch.bfloat16, device="cuda")
    args = packed_args(*data)
    ref64, _ = region_pool_ref(*as_float64(args))
    with force("triton"):
        out, _ = region_pool(*args)
    assert last_backend("region_pool") == "triton"
    assert_close(out, ref64, name="tokens-bf16", baseline=region_pool_ref(*args)[0], atol=1e-2, rel_tol=REL_TOL[torch.bfloat16])


# ----------------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------------


def _valid():
    data = make_regions([(4, 5), (3, 3)], 40, device="cpu")
    return data, list(packed_args(*data))


def test_list_masks_must_be_2d():
    (features, masks, boxes, image_hw, weight, bias), _ = _valid()
    masks[1] = masks[1][None]
    with pytest.raises(ValueError, match=r"masks\[1\] must be 2-D"):
        region_pool_from_lists(features, masks, boxes, image_hw, weight, bias)


def test_fewer_masks_than_feature_maps():
    (features, masks, boxes, image_hw, weight, bias), _ = _valid()
    with pytest.raises(ValueError, match="2 feature maps but 1 masks"):
        region_pool_from_lists(features, masks[:1], boxes, image_hw, weight, bias)


def test_packed_masks_wrong_size_or_rank():
    _, args = _valid()
    bad = list(args)
    bad[3] = args[3][:-1]
    with pytest.raises(ValueError, match="cu_masks ends at"):
        region_pool(*bad)
    bad[3] = args[3].reshape(1, -1)
    with pytest.raises(ValueError, match="masks must be 1-D"):
        region_pool(*bad)


def test_cu_features_disagreeing_with_grid_sizes():
    _, args = _valid()
    bad = list(args)
    bad[1] = torch.tensor([0, 19, 29], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"cu_features\[1\] = 19"):
        region_pool(*bad)


def test_counts_disagree():
    _, args = _valid()
    bad = list(args)
    bad[2] = args[2][:1]
    with pytest.raises(ValueError, match="feature_hw has 1 rows but there are 2 regions"):
        region_pool(*bad)


def test_nan_masks():
    _, args = _valid()
    bad = list(args)
    bad[3] = args[3].clone()
    bad[3][3] = float("nan")
    with pytest.raises(ValueError, match="masks contains NaN"):
        region_pool(*bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_features(value):
    _, args = _valid()
    bad = list(args)
    bad[0] = args[0].clone()
    bad[0][2, 5] = value
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        region_pool(*bad)


def test_integer_features():
    _, args = _valid()
    bad = list(args)
    bad[0] = args[0].to(torch.int32)
    with pytest.raises(TypeError, match="features has dtype torch.int32"):
        region_pool(*bad)


@pytest.mark.parametrize(
    "box, hw, message",
    [
        ([0, 0, 480, 10], [480, 640], "outside its image"),
        ([-1, 0, 10, 10], [480, 640], "outside its image"),
        ([50, 0, 10, 10], [480, 640], "inverted"),
        ([0, 0, 0, 0], [1, 640], "must be >= 2"),
    ],
    ids=["bottom-past-image", "negative", "inverted", "one-pixel-image"],
)
def test_bad_boxes(box, hw, message):
    with pytest.raises(ValueError, match=message):
        box_pos_coefficients(torch.tensor([box]), torch.tensor([hw]))


def test_pos_weight_shape():
    _, args = _valid()
    bad = list(args)
    bad[7] = args[7].t()
    with pytest.raises(ValueError, match=r"pos_weight must be \[C, 2\]"):
        region_pool(*bad)


def test_tensors_on_different_devices():
    _, args = _valid()
    bad = list(args)
    bad[8] = torch.zeros(40, device="meta")  # the only second device on a CPU machine
    with pytest.raises(ValueError, match="pos_bias is on the meta device"):
        region_pool(*bad)


def test_max_tokens_too_small():
    _, args = _valid()
    with pytest.raises(ValueError, match="max_tokens=1 is smaller"):
        region_pool(*args, max_tokens=1)


@pytest.mark.parametrize("grid", [(4, 4, 9, 7), (6, 5, 3, 2), (4, 4, 1, 1), (7, 3, 7, 10)], ids=["up", "down", "to-1x1", "cols-only"])
def test_resampling_matches_official_interpolate(grid):
    """The official path: feature + pos_linear(grid) at the feature grid, F.interpolate to the mask grid,
    cells with mask > 0 (no k-means: the mask has fewer cells than the token budget)."""
    features, masks, boxes, image_hw, weight, bias = make_regions([grid], 40, device="cpu", coverage=0.8)
    h, w = grid[:2]
    pos = position_grid(h, w, boxes[0].tolist(), *image_hw[0].tolist())
    x = (features[0] + torch.nn.functional.linear(pos, weight, bias)).permute(2, 0, 1)[None]  # (1, C, h, w)
    expected = mask_pooling_official(x, masks[0][None, None], mask_token_num=10_000)
    args = packed_args(features, masks, boxes, image_hw, weight, bias)
    for mode in ("torch", "triton"):
        with force(mode):
            out, _ = region_pool(*args)
        assert_close(out, expected.double(), name=f"resampled-{mode}", atol=1e-6)
