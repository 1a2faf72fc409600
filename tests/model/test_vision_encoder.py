"""The packed NaViT vision encoder against an eager float64 port of the official one (pixelrefer_fast/reference/vision.py)."""

from __future__ import annotations

import math

import pytest
import torch

import pixelrefer_kernels
from pixelrefer_fast.configuration_pixelrefer_fast import PixelReferFastVisionConfig
from pixelrefer_fast.modeling_vision import PixelReferFastVisionEncoder, merge_windows, pack_layout
from pixelrefer_fast.reference.vision import _positions, official_spatial_downsampling, official_vision_forward
from tests.helpers import assert_close


def tiny_vision_config(**overrides) -> PixelReferFastVisionConfig:
    fields = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2)
    fields.update(overrides)
    return PixelReferFastVisionConfig(**fields)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """O(1) activations: weights ~ N(0, 1/fan_in), biases and LayerNorm offsets ~ N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    return module


def make_encoder(dtype=torch.float64, **overrides) -> PixelReferFastVisionEncoder:
    return randomize_(PixelReferFastVisionEncoder(tiny_vision_config(**overrides))).to(dtype)


# (t, h, w), stride: odd raster grids, a 1x1 crop, window-major video frames (t=2)
MIXED = [((1, 3, 5), 1), ((1, 1, 1), 1), ((2, 4, 6), 2), ((1, 5, 2), 1), ((1, 2, 2), 2)]


def make_batch(specs, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    grid = torch.tensor([list(thw) for thw, _ in specs])
    strides = [s for _, s in specs]
    pixels = torch.rand(int(grid.prod(-1).sum()), 588, generator=gen) * 2 - 1
    return pixels, grid, torch.tensor(strides), strides


def _state(enc):
    return dict(enc.vision_encoder.state_dict())


@pytest.mark.parametrize("specs", [pytest.param(MIXED, id="mixed"), pytest.param(MIXED[:1], id="one-image"),
                                   pytest.param([((3, 2, 4), 2)], id="video-only")])
def test_float64_matches_official_port(specs):
    enc = make_encoder()
    pixels, grid, merge, strides = make_batch(specs)
    with torch.no_grad():
        out = enc(pixels, grid, merge)
    ref = official_vision_forward(_state(enc), pixels, grid, strides, num_heads=2)
    assert out.dtype == torch.float64
    assert_close(out, ref, name="vision float64", rel_tol=1e-12, atol=1e-10)
    # The float32 RoPE of upstream is the only gap to an all-float64 computation (docs/spec.md §14.9).
    full64 = official_vision_forward(_state(enc), pixels, grid, strides, num_heads=2, official_casts=False)
    assert_close(out, full64, name="vision vs all-float64", rel_tol=1e-5)


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")])
def test_low_precision_within_twice_the_torch_error(dtype):
    enc = make_encoder(dtype=dtype)
    pixels, grid, merge, strides = make_batch(MIXED)
    with torch.no_grad():
        out = enc(pixels, grid, merge)
    ref = official_vision_forward(_state(enc), pixels, grid, strides, num_heads=2)
    baseline = official_vision_forward(_state(enc), pixels, grid, strides, num_heads=2, dtype=dtype)
    assert_close(out, ref, name=f"vision {dtype}", baseline=baseline, atol=1e-3 if dtype == torch.float16 else 1e-5)


def test_packed_equals_one_by_one():
    enc = make_encoder()
    pixels, grid, merge, _ = make_batch(MIXED)
    with torch.no_grad():
        packed = enc(pixels, grid, merge)
        singles = [enc(p, g[None], m[None]) for p, g, m in zip(pixels.split(grid.prod(-1).tolist()), grid, merge)]
    assert_close(packed, torch.cat(singles), name="packed vs single", rel_tol=1e-13, atol=1e-12)


def test_positions_follow_official_order():
    pixels, grid, merge, strides = make_batch(MIXED)
    layout = pack_layout(grid, merge, pixels.shape[0], torch.device("cpu"))
    expected = torch.cat([_positions(h, w, s).repeat(t, 1) for (t, h, w), s in zip(grid.tolist(), strides)])
    assert torch.equal(layout.positions, expected)
    frames = [h * w for t, h, w in grid.tolist() for _ in range(t)]
    assert layout.cu_seqlens.tolist() == [0] + torch.tensor(frames).cumsum(0).tolist()
    assert layout.cu_seqlens.dtype == torch.int32 and layout.max_seqlen == max(frames)


@pytest.mark.parametrize("specs", [pytest.param(MIXED, id="mixed-strides"), pytest.param([((2, 4, 6), 2)], id="stride2"),
                                   pytest.param([((1, 3, 5), 1)], id="stride1")])
def test_merge_windows_equals_official_downsampling(specs):
    gen = torch.Generator().manual_seed(3)
    _, grid, merge, strides = make_batch(specs)
    feats = torch.randn(int(grid.prod(-1).sum()), 7, generator=gen, dtype=torch.float64)
    out = merge_windows(feats, grid, merge)
    ref = official_spatial_downsampling(feats, grid, strides)
    assert_close(out, ref, name="merge_windows", rel_tol=1e-14, atol=1e-14)


@pytest.mark.parametrize(
    "pixels_shape, grid, merge, message",
    [
        pytest.param((14, 588), [[1, 3, 5]], [1], "15 patch rows", id="row-count"),
        pytest.param((15, 500), [[1, 3, 5]], [1], "shape [N, 588]", id="patch-dim"),
        pytest.param((15, 588), [[1, 3, 5]], [2], "not divisible by its merge size", id="stride"),
        pytest.param((15, 588), [[1, 3, 5]], [1, 1], "merge_sizes has 2 entries", id="merge-count"),
        pytest.param((15, 588), [[1, 0, 5]], [1], "must be >= 1", id="zero-grid"),
        pytest.param((15, 588), [[3, 5]], [1], "shape [I, 3]", id="grid-shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(pixels_shape, grid, merge, message):
    enc = make_encoder(dtype=torch.float32)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        enc(torch.zeros(pixels_shape), torch.tensor(grid), torch.tensor(merge))


def test_float_grid_is_refused():
    enc = make_encoder(dtype=torch.float32)
    with pytest.raises(ValueError, match="integer tensor"):
        enc(torch.zeros(15, 588), torch.tensor([[1.0, 3.0, 5.0]]), torch.tensor([1]))


def test_triton_attention_path_matches_torch():
    if not pixelrefer_kernels.interpret_mode():
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    enc = make_encoder(dtype=torch.float32)
    pixels, grid, merge, _ = make_batch(MIXED)
    with torch.no_grad(), pixelrefer_kernels.force("torch"):
        ref = enc(pixels, grid, merge)
    with torch.no_grad(), pixelrefer_kernels.force("triton"):
        out = enc(pixels, grid, merge)
        assert pixelrefer_kernels.last_backend("varlen_attention") == "triton"
    assert_close(out, ref, name="triton vs torch attention", rel_tol=1e-5, atol=1e-5)
