"""The analytic FLOPs of `pixelrefer_fast.profiling.flops` equal FlopCounterMode's count.

Every stage that is pure matmul work is run on a tiny configuration under
`torch.utils.flop_counter.FlopCounterMode` (with `register_flop_formulas()` so the CPU SDPA
kernel is counted) and compared exactly with the formula: the vision encoder (packed images and a
stride-2 frame), the projector, the region encoder's `feat_linear` and `pos_linear`, the Lite
infusion (projections + attention, K/V shared per distinct segment), and the Qwen2 prefill (logits
for the last position only) and decode step. K-means' distance term is analytic only (its official
form is a broadcast, which FlopCounterMode does not see).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import pixelrefer_kernels
from pixelrefer_fast.profiling import flops
from pixelrefer_fast.profiling.presets import LLMShape, VisionShape
from pixelrefer_fast.profiling.stages import cache_keyword, output_cache


@pytest.fixture(autouse=True, scope="module")
def _formulas():
    flops.register_flop_formulas()


def counted(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_register_flop_formulas_is_idempotent():
    assert flops.register_flop_formulas() == []
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8)
    assert counted(lambda: F.scaled_dot_product_attention(q, k, k)) == flops.attention_flops([5], [7], 2, 8)


@pytest.mark.parametrize(
    "grid, merge",
    [
        pytest.param([[1, 4, 6]], [1], id="one-image"),
        pytest.param([[1, 4, 6], [1, 3, 5], [2, 4, 4]], [1, 1, 2], id="images-and-video-frames"),
    ],
)
def test_vision_encoder(grid, merge):
    from pixelrefer_fast.configuration_pixelrefer_fast import PixelReferFastVisionConfig
    from pixelrefer_fast.modeling_vision import PixelReferFastVisionEncoder

    config = PixelReferFastVisionConfig(hidden_size=48, intermediate_size=70, num_hidden_layers=2, num_attention_heads=2)
    encoder = PixelReferFastVisionEncoder(config).eval()
    grid_thw, merge_sizes = torch.tensor(grid), torch.tensor(merge)
    pixels = torch.randn(int(grid_thw.prod(-1).sum()), config.patch_dim)
    segments = [h * w for t, h, w in grid for _ in range(t)]
    shape = VisionShape(hidden_size=48, intermediate_size=70, num_layers=2, num_heads=2)
    expected = flops.vision_encoder_cost(shape, segments)
    with pixelrefer_kernels.force("torch"):  # Triton kernels (the interpreter in CI) are invisible to the counter
        assert counted(lambda: encoder(pixels, grid_thw, merge_sizes)) == expected.flops
    assert expected.flops == sum(expected.parts.values())


def test_projector():
    from pixelrefer_fast.modeling_projector import PixelReferFastProjector

    projector = PixelReferFastProjector(48, 40, "mlp2x_gelu")
    features = torch.randn(37, 48)
    assert counted(lambda: projector(features)) == flops.mlp2_cost(37, 48, 40).flops


def _feat_linear(channels: int, hidden: int) -> nn.Module:
    try:
        from pixelrefer_fast.modeling_region import PixelReferFastRegionEncoder
    except ImportError:
        return nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    return PixelReferFastRegionEncoder(channels, hidden, mask_num=4).feat_linear


def test_feat_linear():
    feat_linear = _feat_linear(48, 40)
    tokens = torch.randn(23, 48)
    assert counted(lambda: feat_linear(tokens)) == flops.mlp2_cost(23, 48, 40, name="feat_linear").flops


def test_pos_linear_part():
    pos_linear = nn.Linear(2, 48)
    cells = [12, 30, 7]
    positions = torch.rand(sum(cells), 2)
    cost = flops.region_tokenizer_cost(cells, [5, 9, 3], mask_num=4, channels=48, kmeans_iters=3)
    assert counted(lambda: pos_linear(positions)) == cost.parts["pos_linear"]
    # k-means runs only on the regions with more selected cells than clusters: 5 and 9 rows
    assert cost.parts["kmeans"] == 3 * 2 * (5 + 9) * 4 * 48


def _cross_attention(queries, keys, cu_keys, key_of_region, weight, bias, out_weight, out_bias, heads):
    """Multi-head cross-attention (nn.MultiheadAttention layout), per used key segment the cheaper of:
    K/V projected once and shared by its regions, or the absorbed form (W_k^T q against raw keys)."""
    channels = queries.shape[-1]
    hd = channels // heads
    mask_num = queries.shape[1]
    q = F.linear(queries, weight[:channels], bias[:channels])  # (R, K, C)
    w_k, w_v = weight[channels : 2 * channels].view(heads, hd, channels), weight[2 * channels :].view(heads, hd, channels)
    out = torch.zeros_like(q)
    for seg in sorted(set(key_of_region)):
        regions = [r for r, s in enumerate(key_of_region) if s == seg]
        keys_seg = keys[cu_keys[seg] : cu_keys[seg + 1]]
        n, nq = keys_seg.shape[0], len(regions) * mask_num
        qh = q[regions].reshape(nq, heads, hd).transpose(0, 1)  # (H, nq, hd)
        if 2 * nq * channels**2 + 2 * heads * nq * n * channels < 2 * n * channels**2 + 2 * nq * n * channels:
            absorbed = qh @ w_k  # (H, nq, C)
            probs = torch.softmax(absorbed @ keys_seg.T / hd**0.5, dim=-1)  # (H, nq, n)
            heads_out = (probs @ keys_seg) @ w_v.transpose(1, 2)  # (H, nq, hd)
        else:
            kv = F.linear(keys_seg, weight[channels:], bias[channels:])  # (n, 2C)
            kh, vh = (t.reshape(n, heads, hd).transpose(0, 1) for t in kv.split(channels, dim=-1))
            heads_out = torch.softmax(qh @ kh.transpose(1, 2) / hd**0.5, dim=-1) @ vh  # (H, nq, hd)
        out[regions] = heads_out.transpose(0, 1).reshape(len(regions), mask_num, channels)
    return F.linear(out, out_weight, out_bias)


def _infusion_reference(queries, local, global_, heads):
    channels = queries.shape[-1]
    weights = [(torch.randn(3 * channels, channels), torch.randn(3 * channels), torch.randn(channels, channels), torch.randn(channels))
               for _ in range(2)]
    x = queries
    for (feats, cu, of_region), (w, b, ow, ob) in zip((local, global_), weights):
        x = x + _cross_attention(F.layer_norm(x, (channels,)), feats, cu, of_region, w, b, ow, ob, heads)
    return x


def _infusion_real(queries, local, global_, heads):
    from pixelrefer_kernels import InfusionWeights, object_infusion

    channels = queries.shape[-1]

    def weights():
        return InfusionWeights(torch.ones(channels), torch.zeros(channels), torch.randn(3 * channels, channels),
                               torch.randn(3 * channels), torch.randn(channels, channels), torch.randn(channels))

    (lf, lcu, lr), (gf, gcu, gr) = local, global_
    as_tensor = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    return object_infusion(queries, lf, as_tensor(lcu), torch.tensor(lr), gf, as_tensor(gcu), torch.tensor(gr),
                           weights(), weights(), num_heads=heads)


def _infusion_impls():
    impls = [pytest.param(_infusion_reference, id="torch-standin")]
    if importlib.util.find_spec("pixelrefer_kernels.infusion") is None:
        return impls
    return [*impls, pytest.param(_infusion_real, id="object_infusion")]


@pytest.mark.parametrize("impl", _infusion_impls())
def test_infusion(impl):
    """Local maps used by one region take the absorbed path, the shared global map the projected one."""
    channels, heads, mask_num = 48, 4, 5
    local_lengths, global_lengths = [9, 16], [25]
    region_local, region_global = [0, 1, 1], [0, 0, 0]
    local = (torch.randn(sum(local_lengths), channels), [0, 9, 25], region_local)
    global_ = (torch.randn(sum(global_lengths), channels), [0, 25], region_global)
    queries = torch.randn(3, mask_num, channels)
    expected = flops.infusion_cost(mask_num, channels, heads, local_lengths, region_local, global_lengths, region_global)
    assert expected.parts["local.absorbed"] > 0 and expected.parts["global.kv"] > 0
    with pixelrefer_kernels.force("torch"):
        assert counted(lambda: impl(queries, local, global_, heads)) == expected.flops


def _tiny_llm(attn: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = LLMShape(hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=101)
    config = Qwen2Config(
        hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads, head_dim=shape.head_dim,
        vocab_size=shape.vocab_size, tie_word_embeddings=True, attn_implementation=attn,
    )
    return shape, Qwen2ForCausalLM(config).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_llm_prefill_and_decode(attn):
    shape, model = _tiny_llm(attn)
    batch, seq = 2, 7
    embeds = torch.randn(batch, seq, shape.hidden_size)
    holder = {}

    def prefill():
        holder["out"] = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)

    assert counted(prefill) == flops.llm_prefill_cost(shape, batch, seq, logits_positions=1).flops
    cache = output_cache(holder["out"])
    step = torch.tensor([[3], [5]])
    decode = {"input_ids": step, "use_cache": True, cache_keyword(): cache}
    assert counted(lambda: model(**decode)) == flops.llm_decode_cost(shape, batch, seq + 1).flops


def test_decode_steps_sum_single_steps():
    shape = LLMShape(hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=101)
    total = flops.llm_decode_steps_cost(shape, 2, 10, 3)
    assert total.flops == sum(flops.llm_decode_cost(shape, 2, 10 + j + 1).flops for j in range(3))


def test_real_sizes_are_plausible():
    """PixelRefer-2B at 1564 image tokens: ~ 2 * params * tokens for the LLM, ~ 1.6 TFLOP for the ViT."""
    llm = LLMShape()
    prefill = flops.llm_prefill_cost(llm, 1, 1600)
    dense = 2 * (flops.llm_weight_count(llm) - llm.vocab_size * llm.hidden_size) * 1600
    assert 1.0 < prefill.flops / dense < 1.15  # the rest is attention and one row of lm_head
    vision = flops.vision_encoder_cost(VisionShape(), [1564])
    assert 1.5e12 < vision.flops < 1.7e12


def test_bad_segments():
    with pytest.raises(ValueError, match="seqlens_q has 2 segments"):
        flops.attention_flops([1, 2], [3], 1, 8)
    with pytest.raises(ValueError, match="region_local has 1 regions"):
        flops.infusion_cost(4, 48, 4, [9], [0], [16], [0, 0])
    with pytest.raises(ValueError, match="refers to segment 1"):
        flops.infusion_cost(4, 48, 4, [9], [1], [16], [0])
