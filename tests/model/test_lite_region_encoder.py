"""PixelReferFastLiteRegionEncoder and FastLiteMaskExtractor against the official Lite algorithm
(pixelrefer_fast/reference/region_lite.py): parity after the same seed, shared feature maps, keys, swapping."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from pixelrefer_fast.compat import FastLiteMaskExtractor, _pack_maps, swap_region_encoder
from pixelrefer_fast.modeling_infusion import PixelReferFastLiteRegionEncoder
from pixelrefer_fast.modeling_region import RegionInputs
from pixelrefer_fast.reference.region_lite import OfficialLiteMaskExtractor
from pixelrefer_kernels import force, last_backend
from tests.helpers import assert_close

C, D, K, HEADS = 96, 40, 6, 2


def official_module(dtype=torch.float32) -> OfficialLiteMaskExtractor:
    module = OfficialLiteMaskExtractor(SimpleNamespace(hidden_size=D), C, num_heads=HEADS).to(dtype)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.normal_(0.0, 0.2)
            if name.startswith("ln_") and name.endswith("weight"):
                p.add_(1.0)
    return module.eval()


def lite_call(dtype=torch.float32):
    """Official-convention arguments: image 0 with three masks, a None image, image 2 with two masks.

    Covers: k-means (n > K), a resampled crop (mask grid != crop grid), an empty mask (K zero tokens),
    the global map repeated per mask (same tensor and an equal copy), the parity local-crop reuse (the
    same local map for two masks) and distinct local maps.
    """
    crop_hw = [(5, 7), (6, 6), (4, 4), (7, 5), (3, 4)]
    mask_hw = [(5, 7), (6, 6), (8, 8), (7, 5), (3, 4)]
    feats = [torch.randn(h, w, C).to(dtype) for h, w in crop_hw]
    masks = [(torch.rand(h, w) > 0.3).float() for h, w in mask_hw]
    masks[1][:2] = 0.0
    masks[4].zero_()
    global0, global2 = torch.randn(6, 6, C).to(dtype), torch.randn(5, 5, C).to(dtype)
    feats_raw = [global0, global0.clone(), global0, global2, global2]
    local = [torch.randn(4, 4, C).to(dtype) for _ in range(5)]
    local[2] = local[1]
    boxes = [
        [((1, 2, 30, 40), 50, 60), ((0, 0, 10, 10), 50, 60), ((5, 5, 20, 30), 50, 60)],
        None,
        [((2, 3, 9, 9), 20, 30), ((0, 0, 0, 0), 20, 30)],
    ]
    masks_per_image = [masks[:3], None, masks[3:]]
    return feats, masks_per_image, feats_raw, local, None, boxes, K


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_matches_official_after_the_same_seed(path):
    official = official_module()
    fast = FastLiteMaskExtractor.from_official(official)
    args = lite_call()
    with torch.no_grad():
        torch.manual_seed(7)
        expected = official(*args)
        torch.manual_seed(7)
        with force(path):
            out = fast(*args)
    assert last_backend("object_infusion") == path
    assert out.shape == expected.shape == (5 * K, D)
    assert_close(out, expected.double(), name=f"lite-{path}", rel_tol=2e-6, atol=1e-5)


def test_shared_maps_are_packed_once():
    g0, g1 = torch.randn(3, 3, 4), torch.randn(3, 3, 4)
    maps = [g0, g0.clone(), g0, g1, g0]
    feats, cu, region_map = _pack_maps(maps, images=[0, 0, 0, 1, 1])
    assert cu.tolist() == [0, 9, 18, 27]  # g0 (image 0), g1, g0 again: images never share maps
    assert region_map.tolist() == [0, 0, 0, 1, 2]
    assert torch.equal(feats[9:18], g1.reshape(9, 4))


def test_state_dict_keys_match_official_and_load_strictly():
    official = official_module()
    fast = PixelReferFastLiteRegionEncoder(C, D, mask_num=K, num_heads=HEADS)
    assert set(fast.state_dict()) == set(official.state_dict())
    fast.load_state_dict(official.state_dict())  # strict
    for name in ("fusion_attention_local.in_proj_weight", "ln_global.bias", "mask_embedding.weight", "feat_linear.2.weight"):
        assert torch.equal(fast.state_dict()[name], official.state_dict()[name])
    assert fast.num_iters == 3 and fast.pad_to_mask_num and fast.ln_local.eps == 1e-5


def test_packed_forward_gives_k_tokens_per_region():
    official = official_module()
    encoder = PixelReferFastLiteRegionEncoder(C, D, mask_num=K, num_heads=HEADS, kmeans_init="deterministic")
    encoder.load_state_dict(official.state_dict())
    feats, masks, feats_raw, local, _, boxes, _ = lite_call()
    flat_masks = masks[0] + masks[2]
    flat_boxes = [b for image in (boxes[0], boxes[2]) for b in image]
    boxes, image_hw = torch.tensor([b for b, _, _ in flat_boxes]), torch.tensor([[h, w] for _, h, w in flat_boxes])
    inputs = RegionInputs.from_lists(feats, flat_masks, boxes, image_hw)
    local_feats = torch.cat([m.reshape(-1, C) for m in local])
    global_feats = torch.cat([feats_raw[0].reshape(-1, C), feats_raw[3].reshape(-1, C)])
    maps = (local_feats, torch.arange(6) * 16, torch.arange(5), global_feats, torch.tensor([0, 36, 61]), torch.tensor([0, 0, 0, 1, 1]))
    with torch.no_grad(), force("torch"):
        embeddings, counts = encoder(inputs, *maps)
        again, _ = encoder(inputs, *maps)
    assert embeddings.shape == (5 * K, D) and counts.tolist() == [K] * 5
    assert torch.isfinite(embeddings).all()
    assert torch.equal(embeddings, again), "deterministic k-means init: the same tokens every call"


def test_masks_none_and_bad_calls():
    fast = FastLiteMaskExtractor.from_official(official_module())
    feats, masks, feats_raw, local, _, boxes, _ = lite_call()
    assert fast(feats, None, feats_raw, local, None, boxes, K) is None
    assert fast(feats, [None], feats_raw, local, None, [None], K) is None
    with pytest.raises(ValueError, match="box_params"):
        fast(feats, masks, feats_raw, local, None, boxes[:2], K)
    with pytest.raises(ValueError, match="feats_raw has 2 feature maps for 5 masks"):
        fast(feats, masks, feats_raw[:2], local, None, boxes, K)
    # more maps than masks is a miscount too (it used to pool the first maps and drop the rest)
    with pytest.raises(ValueError, match="feats has 6 feature maps for 5 masks"):
        fast([*feats, feats[0]], masks, feats_raw, local, None, boxes, K)
    with pytest.raises(ValueError, match="local_feats_raw has 6 feature maps for 5 masks"):
        fast(feats, masks, feats_raw, [*local, local[0]], None, boxes, K)
    with pytest.raises(TypeError, match="expected an official Lite MaskExtractor"):
        FastLiteMaskExtractor.from_official(nn.Linear(2, 3))
    with pytest.raises(ValueError, match="num_heads=5 must divide"):
        PixelReferFastLiteRegionEncoder(C, D, num_heads=5)


def test_swap_region_encoder_picks_the_lite_twin():
    official = official_module()
    holder = nn.Module()
    holder.region_encoder = official
    model = nn.Module()
    model.model = holder
    args = lite_call()
    with torch.no_grad():
        torch.manual_seed(3)
        expected = official(*args)
        twin = swap_region_encoder(model)
        assert isinstance(twin, FastLiteMaskExtractor) and model.model.region_encoder is twin
        torch.manual_seed(3)
        with force("torch"):
            out = twin(*args)
    assert_close(out, expected.double(), name="swapped", rel_tol=2e-6, atol=1e-5)
