"""PixelReferFastRegionEncoder and the compat twin against the official algorithm (pixelrefer_fast/reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pixelrefer_fast import compat
from pixelrefer_fast.compat import FastMaskExtractor, swap_region_encoder
from pixelrefer_fast.modeling_region import PixelReferFastRegionEncoder, RegionInputs
from pixelrefer_fast.reference.region_full import OfficialMaskExtractor
from pixelrefer_kernels import force, last_backend
from tests.helpers import assert_close

C, D, K = 72, 48, 32


def exact_mask(h, w, cells):
    """A binary `[h, w]` uint8 mask with exactly `cells` random cells inside."""
    flat = torch.zeros(h * w, dtype=torch.uint8)
    flat[torch.randperm(h * w)[:cells]] = 1
    return flat.reshape(h, w)


def make_case(kind: str, dtype=torch.float32):
    """(feats list, masks list, boxes [R, 4], image_hw [R, 2]) for one scenario."""
    if kind == "mixed":
        grids = [(10, 12), (22, 22), (14, 14), (6, 6), (3, 5), (9, 7)]
        masks = [
            exact_mask(10, 12, 40),  # n > K
            (torch.rand(22, 22) > 0.55).to(torch.uint8),  # n >> K
            exact_mask(14, 14, 32),  # n == K
            exact_mask(6, 6, 33),  # n == K + 1
            exact_mask(3, 5, 1),  # one cell
            torch.zeros(9, 7, dtype=torch.uint8),  # empty: no tokens
        ]
    elif kind == "resampled":
        grids = [(8, 8), (6, 9), (4, 4)]
        masks = [torch.rand(12, 10) - 0.4, torch.rand(3, 5) - 0.2, torch.ones(1, 1)]  # fractional float masks
    elif kind == "many-tiny":
        grids = [(2 + i % 3, 1 + i % 4) for i in range(24)]
        masks = [(torch.rand(h, w) > 0.3).float() for h, w in grids]
    else:
        raise ValueError(kind)
    feats = [torch.randn(h, w, C).to(dtype) for h, w in grids]
    boxes, image_hw = [], []
    for _ in grids:
        H, W = int(torch.randint(100, 900, ())), int(torch.randint(100, 900, ()))
        top, bottom = sorted(torch.randint(0, H, (2,)).tolist())
        left, right = sorted(torch.randint(0, W, (2,)).tolist())
        boxes.append([top, left, bottom, right])
        image_hw.append([H, W])
    return feats, masks, torch.tensor(boxes), torch.tensor(image_hw)


def official_call(official, feats, masks, boxes, image_hw, mask_num=K):
    """Call the official extractor with its list convention (one image holding every mask)."""
    box_params = [[(tuple(b), h, w) for b, (h, w) in zip(boxes.tolist(), image_hw.tolist())]]
    return official(feats, [masks], box_params, mask_num)


def pair(dtype=torch.float32, **kwargs):
    official = OfficialMaskExtractor(D, C).to(dtype)
    fast = PixelReferFastRegionEncoder(C, D, **kwargs).to(dtype)
    fast.load_state_dict(official.state_dict())
    return official, fast


def compare_per_region(out, expected, counts, *, rel_tol=1e-5, atol=1e-6, name="embeddings"):
    assert out.shape == expected.shape, f"{out.shape} vs {expected.shape}"
    start = 0
    for r, n in enumerate(counts.tolist()):
        if n:
            rows = slice(start, start + n)
            assert_close(out[rows], expected[rows].double(), name=f"{name}[region {r}]", rel_tol=rel_tol, atol=atol)
        start += n


@pytest.mark.parametrize("path", ["torch", "triton"])
@pytest.mark.parametrize("kind", ["mixed", "resampled", "many-tiny"])
def test_module_matches_official_with_same_seed(kind, path):
    official, fast = pair()
    feats, masks, boxes, image_hw = make_case(kind)
    with torch.no_grad():
        torch.manual_seed(11)
        expected = official_call(official, feats, masks, boxes, image_hw)
        torch.manual_seed(11)
        with force(path):
            out, counts = fast(RegionInputs.from_lists(feats, masks, boxes, image_hw))
        assert last_backend("region_pool") == path and last_backend("kmeans") == path
    cells = torch.tensor([int((m > 0).sum()) for m in masks])
    assert counts.tolist() == cells.clamp(max=K).tolist()
    compare_per_region(out, expected, counts)


def test_module_bf16_matches_official_bf16():
    """Dtypes as upstream: feature + position in bf16, pooling in fp32, feat_linear in bf16. Regions of
    at most K cells only: a one-ulp bf16 difference in a token can flip k-means labels, so clustered
    bf16 regions are compared in the kernel tests against the reference instead."""
    official, fast = pair(torch.bfloat16)
    feats, masks, boxes, image_hw = make_case("many-tiny", torch.bfloat16)
    with torch.no_grad():
        torch.manual_seed(5)
        expected = official_call(official, feats, masks, boxes, image_hw)
        torch.manual_seed(5)
        out, counts = fast(RegionInputs.from_lists(feats, masks, boxes, image_hw))
    assert out.dtype == torch.bfloat16
    compare_per_region(out, expected, counts, rel_tol=1e-2, atol=1e-2)


def test_tokenize_then_project_equals_forward():
    _, fast = pair()
    feats, masks, boxes, image_hw = make_case("mixed")
    inputs = RegionInputs.from_lists(feats, masks, boxes, image_hw)
    with torch.no_grad(), force("torch"):
        torch.manual_seed(1)
        out, counts = fast(inputs)
        torch.manual_seed(1)
        tokens, counts2 = fast.tokenize(inputs)
        rows = torch.cat([tokens[r, :n] for r, n in enumerate(counts2.tolist())])
        assert torch.equal(counts, counts2) and tokens.dtype == torch.float32
        assert torch.equal(fast.project(rows, torch.float32), out)


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_deterministic_mode_repeatable_and_leaves_global_rng_alone(path):
    _, fast = pair(kmeans_init="deterministic")
    inputs = RegionInputs.from_lists(*make_case("mixed"))
    state = torch.random.get_rng_state()
    with torch.no_grad(), force(path):
        a, _ = fast(inputs)
        b, _ = fast(inputs)
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_deterministic_torch_and_triton_agree():
    _, fast = pair(kmeans_init="deterministic")
    inputs = RegionInputs.from_lists(*make_case("mixed"))
    with torch.no_grad():
        with force("torch"):
            a, _ = fast.tokenize(inputs)
        with force("triton"):
            b, _ = fast.tokenize(inputs)
    assert_close(b, a.double(), name="tokens", atol=1e-5)


def test_parity_generator_equals_global_seed():
    _, fast = pair()
    inputs = RegionInputs.from_lists(*make_case("mixed"))
    with torch.no_grad(), force("torch"):
        torch.manual_seed(21)
        a, _ = fast(inputs)
        b, _ = fast(inputs, generator=torch.Generator().manual_seed(21))
    assert torch.equal(a, b)


def test_pad_to_mask_num_gives_k_rows_per_region():
    _, fast = pair(pad_to_mask_num=True)
    feats, masks, boxes, image_hw = make_case("mixed")
    with torch.no_grad():
        tokens, counts = fast.tokenize(RegionInputs.from_lists(feats, masks, boxes, image_hw))
        out, _ = fast(RegionInputs.from_lists(feats, masks, boxes, image_hw))
    assert counts.tolist() == [K] * len(masks)
    assert out.shape == (len(masks) * K, D)
    assert torch.equal(tokens[5], torch.zeros(K, C))  # the empty mask: K zero tokens
    assert torch.equal(tokens[4, 1:], torch.zeros(K - 1, C))  # one cell, then zeros


def test_corrected_box_axes_equal_official_with_box_transposed():
    """swap_box_axes=False is the official formula applied to (left, top, right, bottom)."""
    official, fast = pair(swap_box_axes=False)
    feats, masks, boxes, image_hw = make_case("resampled")
    with torch.no_grad():
        torch.manual_seed(2)
        expected = official_call(official, feats, masks, boxes[:, [1, 0, 3, 2]], image_hw)
        torch.manual_seed(2)
        out, counts = fast(RegionInputs.from_lists(feats, masks, boxes, image_hw))
    compare_per_region(out, expected, counts)


def test_gradients_flow_through_reference_in_auto_mode():
    _, fast = pair()
    out, _ = fast(RegionInputs.from_lists(*make_case("resampled")))
    assert last_backend("region_pool") == "torch" and last_backend("kmeans") == "torch"
    out.square().mean().backward()
    assert fast.pos_linear.weight.grad is not None and fast.feat_linear[0].weight.grad is not None


# ----------------------------------------------------------------------------------------------------
# compat: the official call convention
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_fast_mask_extractor_matches_official_convention(path):
    official = OfficialMaskExtractor(D, C)
    twin = FastMaskExtractor.from_official(official)
    assert isinstance(twin, PixelReferFastRegionEncoder)
    feats, masks, boxes, image_hw = make_case("mixed")
    box_params = [(tuple(b), h, w) for b, (h, w) in zip(boxes.tolist(), image_hw.tolist())]
    # three images: two masks, none, four masks (uint8 [M, mh, mw] stacks need equal grids: use lists)
    image_masks = [[masks[0], masks[1]], None, masks[2:]]
    image_boxes = [box_params[:2], None, box_params[2:]]
    with torch.no_grad():
        torch.manual_seed(4)
        expected = official(feats, image_masks, image_boxes, K)
        torch.manual_seed(4)
        with force(path):
            out = twin(feats, image_masks, image_boxes, K)
    counts = torch.tensor([min(K, int((m > 0).sum())) for m in masks])
    compare_per_region(out, expected, counts)


def test_fast_mask_extractor_none_and_empty_outputs():
    official = OfficialMaskExtractor(D, C)
    twin = FastMaskExtractor.from_official(official)
    feats = [torch.randn(4, 4, C)]
    box = [((0, 0, 10, 10), 20, 20)]
    assert twin(feats, None, [box], K) is None and official(feats, None, [box], K) is None
    assert twin(feats, [None], [None], K) is None and official(feats, [None], [None], K) is None
    empty = [torch.zeros(1, 4, 4)]
    with torch.no_grad():
        out, ref = twin(feats, empty, [box], K), official(feats, empty, [box], K)
    assert out.shape == ref.shape == (0, D)
    with pytest.raises(ValueError, match="2 crop feature maps for 1 masks"):
        twin(feats * 2, [torch.ones(1, 4, 4)], [box], K)


class _OfficialLikeModel(nn.Module):
    """The official models keep the encoder at get_model().region_encoder."""

    def __init__(self, encoder):
        super().__init__()
        self.model = nn.Module()
        self.model.region_encoder = encoder

    def get_model(self):
        return self.model


def test_swap_region_encoder_full_model():
    official = OfficialMaskExtractor(D, C).eval()
    model = _OfficialLikeModel(official)
    twin = swap_region_encoder(model)
    assert model.get_model().region_encoder is twin and isinstance(twin, FastMaskExtractor)
    assert not twin.training
    feats, masks, boxes, image_hw = make_case("many-tiny")
    with torch.no_grad():
        torch.manual_seed(8)
        expected = official_call(official, feats, masks, boxes, image_hw)
        torch.manual_seed(8)
        out = official_call(twin, feats, masks, boxes, image_hw)
    assert_close(out, expected.double(), name="swapped", atol=1e-6)
    assert swap_region_encoder(model) is twin


def test_swap_region_encoder_detects_lite(monkeypatch):
    """A Lite encoder (it has fusion_attention_local) goes to compat.FastLiteMaskExtractor."""
    lite = OfficialMaskExtractor(D, C)
    lite.fusion_attention_local = nn.MultiheadAttention(C, 8, batch_first=True)

    class LiteTwin(PixelReferFastRegionEncoder):
        @classmethod
        def from_official(cls, module):
            return cls(C, D, pad_to_mask_num=True)

    monkeypatch.setattr(compat, "FastLiteMaskExtractor", LiteTwin)
    model = _OfficialLikeModel(lite)
    assert isinstance(swap_region_encoder(model), LiteTwin)


@pytest.mark.gpu
@pytest.mark.parametrize("masks_on", ["cpu", "cuda"])
def test_deterministic_tokenize_never_syncs_on_gpu(masks_on):
    _, fast = pair(kmeans_init="deterministic")
    fast = fast.cuda()
    feats, masks, boxes, image_hw = make_case("mixed")
    inputs = RegionInputs.from_lists([f.cuda() for f in feats], [m.to(masks_on) for m in masks], boxes, image_hw)
    with torch.no_grad():
        fast.tokenize(inputs)  # warm-up: compilation and autotuning synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            tokens, _ = fast.tokenize(inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert last_backend("kmeans") == "triton"
    assert torch.isfinite(tokens).all()


# ----------------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------------


def test_bad_module_inputs():
    _, fast = pair()
    feats, masks, boxes, image_hw = make_case("resampled")
    good = RegionInputs.from_lists(feats, masks, boxes, image_hw)
    with pytest.raises(TypeError, match="inputs must be a RegionInputs"):
        fast(feats)
    with pytest.raises(ValueError, match="feature_hw adds up to"):
        fast(RegionInputs(good.features[:-1], good.feature_hw, good.masks, good.mask_hw, good.boxes, good.image_hw))
    with pytest.raises(ValueError, match="mask_hw adds up to"):
        fast(RegionInputs(good.features, good.feature_hw, good.masks[:-1], good.mask_hw, good.boxes, good.image_hw))
    with pytest.raises(ValueError, match="one row per region"):
        fast(RegionInputs(good.features, good.feature_hw, good.masks, good.mask_hw, good.boxes[:1], good.image_hw))
    nan_features = good.features.clone()
    nan_features[0, 0] = float("nan")
    with pytest.raises(ValueError, match="features contains NaN or inf"):
        fast(RegionInputs(nan_features, good.feature_hw, good.masks, good.mask_hw, good.boxes, good.image_hw))
    nan_masks = good.masks.clone()
    nan_masks[0] = float("nan")
    with pytest.raises(ValueError, match="masks contains NaN"):
        fast(RegionInputs(good.features, good.feature_hw, nan_masks, good.mask_hw, good.boxes, good.image_hw))
    outside = good.boxes.clone()
    outside[0, 2] = good.image_hw[0, 0]
    with pytest.raises(ValueError, match="outside its image"):
        fast(RegionInputs(good.features, good.feature_hw, good.masks, good.mask_hw, outside, good.image_hw))
    with pytest.raises(ValueError, match="channels but the encoder expects"):
        fast(RegionInputs.from_lists([f[..., :10] for f in feats], masks, boxes, image_hw))
    with pytest.raises(ValueError, match="masks\\[0\\] must be 2-D"):
        RegionInputs.from_lists(feats, [m[None] for m in masks], boxes, image_hw)
    with pytest.raises(ValueError, match="3 feature maps but 2 masks"):
        RegionInputs.from_lists(feats, masks[:2], boxes, image_hw)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="kmeans_init must be one of"):
        PixelReferFastRegionEncoder(C, D, kmeans_init="random")
    with pytest.raises(ValueError, match="mask_num must be an int >= 1"):
        PixelReferFastRegionEncoder(C, D, mask_num=0)
    with pytest.raises(ValueError, match="num_iters must be an int >= 0"):
        PixelReferFastRegionEncoder(C, D, num_iters=-2)


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_all_masks_empty_give_no_tokens(path):
    _, fast = pair()
    feats = [torch.randn(4, 5, C), torch.randn(3, 3, C)]
    masks = [torch.zeros(4, 5), torch.zeros(2, 2)]
    inputs = RegionInputs.from_lists(feats, masks, torch.tensor([[0, 0, 9, 9], [1, 1, 5, 5]]), torch.tensor([[20, 20], [20, 20]]))
    with torch.no_grad(), force(path):
        out, counts = fast(inputs)
    assert out.shape == (0, D) and counts.tolist() == [0, 0]
