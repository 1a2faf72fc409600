"""varlen_attention: the Triton kernel and every torch backend against a float64 per-segment reference,
NaN isolation between segments and strided gaps, dispatch order and reasons, and input checks."""

from __future__ import annotations

import pytest
import torch

import pixelrefer_kernels
from pixelrefer_kernels import BackendUnavailableError, force, last_backend, varlen_attention, varlen_attention_ref
from pixelrefer_kernels.attention import backend_report
from pixelrefer_kernels.varlen import head_dim_blocks, varlen_attention_triton
from tests.helpers import assert_close

OP = "varlen_attention"
# absolute slack on top of the 2x-baseline rule: fp16 rounds outputs near 1 to ~5e-4
ATOL = {torch.float32: 1e-6, torch.float16: 5e-4, torch.bfloat16: 4e-3}


def _cu(lengths, device="cpu") -> torch.Tensor:
    return torch.tensor([0, *lengths]).cumsum(0).to(torch.int32).to(device)


def _inputs(lengths_q, lengths_k, heads, head_dim, device="cpu"):
    """float64 q, k, v and the offsets (values of order 1, logits of order a few units)."""
    q = torch.randn(sum(lengths_q), heads, head_dim, dtype=torch.float64, device=device)
    k = torch.randn(sum(lengths_k), heads, head_dim, dtype=torch.float64, device=device)
    v = torch.randn(sum(lengths_k), heads, head_dim, dtype=torch.float64, device=device)
    return q, k, v, _cu(lengths_q, device), _cu(lengths_k, device)


def _check_against_reference(out, q, k, v, cu_q, cu_k, dtype, name):
    ref = varlen_attention_ref(q, k, v, cu_q, cu_k)
    base = varlen_attention_ref(q.to(dtype), k.to(dtype), v.to(dtype), cu_q, cu_k)
    assert_close(out, ref, name=name, baseline=base, atol=ATOL[dtype])


SHAPES = [
    pytest.param([3, 17, 1, 40], [5, 1, 33, 20], 2, 72, id="ragged-hd72"),
    pytest.param([64, 30], [150, 97], 2, 144, id="few-q-many-k-hd144"),
    pytest.param([70, 41], [9, 30], 3, 64, id="nq-gt-nk-hd64"),
    pytest.param([1, 0, 5, 2, 0, 3], [1, 3, 0, 7, 0, 2], 2, 48, id="len0-len1-hd48"),
    pytest.param([150], [20], 1, 24, id="multi-block-hd24"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("lengths_q, lengths_k, heads, head_dim", SHAPES)
def test_triton_matches_float64_reference(lengths_q, lengths_k, heads, head_dim, dtype):
    q, k, v, cu_q, cu_k = _inputs(lengths_q, lengths_k, heads, head_dim)
    with force("triton"):
        out = varlen_attention(q.to(dtype), k.to(dtype), v.to(dtype), cu_q, cu_k)
    assert last_backend(OP) == "triton"
    assert out.dtype == dtype and out.shape == q.shape
    _check_against_reference(out, q, k, v, cu_q, cu_k, dtype, "triton")


def test_triton_segment_with_queries_but_no_keys_is_zero():
    q, k, v, cu_q, cu_k = _inputs([4, 3], [0, 5], 2, 32)
    with force("triton"):
        out = varlen_attention(q.float(), k.float(), v.float(), cu_q, cu_k)
    assert torch.equal(out[:4], torch.zeros_like(out[:4]))
    _check_against_reference(out, q, k, v, cu_q, cu_k, torch.float32, "triton")


def test_triton_custom_scale_int64_offsets_and_max_seqlen():
    q, k, v, cu_q, cu_k = _inputs([9, 30], [12, 5], 2, 40)
    with force("triton"):
        out = varlen_attention(q.float(), k.float(), v.float(), cu_q.long(), cu_k.long(), 30, 12, softmax_scale=0.3)
    ref = varlen_attention_ref(q, k, v, cu_q, cu_k, softmax_scale=0.3)
    base = varlen_attention_ref(q.float(), k.float(), v.float(), cu_q, cu_k, softmax_scale=0.3)
    assert_close(out, ref, baseline=base, atol=ATOL[torch.float32])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter on the NaN segment
@pytest.mark.parametrize("backend", ["triton", "sdpa", "eager"])
def test_nan_in_strided_gaps_and_other_segments_does_not_leak(backend):
    lengths_q, lengths_k, heads, head_dim = [5, 9, 4], [7, 3, 11], 2, 72
    q, k, v, cu_q, cu_k = _inputs(lengths_q, lengths_k, heads, head_dim)
    # q, k, v are views into NaN-filled buffers: padded head dims, a spare slot per row, trailing rows.
    q_buf = torch.full((sum(lengths_q) + 3, heads, head_dim + 8), float("nan"))
    kv_buf = torch.full((sum(lengths_k) + 3, 3, heads, head_dim + 8), float("nan"))
    q_view, k_view, v_view = q_buf[: q.shape[0], :, :head_dim], kv_buf[: k.shape[0], 0, :, :head_dim], kv_buf[: k.shape[0], 2, :, :head_dim]
    q_view.copy_(q), k_view.copy_(k), v_view.copy_(v)
    # NaN in the keys and values of segment 1 only
    k_view[7:10, 1] = float("nan")
    v_view[8, 0] = float("nan")
    with force(backend):  # validate=False: the kernel's isolation, not the NaN check (which raises)
        out = varlen_attention(q_view, k_view, v_view, cu_q, cu_k, validate=False)
    assert last_backend(OP) == backend
    ref = varlen_attention_ref(q, k, v, cu_q, cu_k)
    rows = torch.cat([torch.arange(0, 5), torch.arange(14, 18)])  # segments 0 and 2
    assert_close(out[rows], ref[rows], name=f"{backend} outside the NaN segment", rel_tol=1e-5)
    assert torch.isnan(out[5:14]).any(), "segment 1 holds NaN keys; its output must show it"


@pytest.mark.parametrize(
    "lengths_q, lengths_k",
    [pytest.param([6, 6, 6], [9, 9, 9], id="uniform-one-call"), pytest.param([3, 0, 8, 2], [4, 5, 0, 1], id="ragged-loop")],
)
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_torch_backends_match_reference(backend, lengths_q, lengths_k):
    q, k, v, cu_q, cu_k = _inputs(lengths_q, lengths_k, 3, 20)
    with force(backend):
        out = varlen_attention(q, k, v, cu_q, cu_k)
    assert last_backend(OP) == backend
    assert_close(out, varlen_attention_ref(q, k, v, cu_q, cu_k), name=backend)
    with force(backend):
        out32 = varlen_attention(q.float(), k.float(), v.float(), cu_q, cu_k)
    _check_against_reference(out32, q, k, v, cu_q, cu_k, torch.float32, backend)


def test_auto_order_on_cpu(monkeypatch):
    q, k, v, cu_q, cu_k = _inputs([4, 6], [5, 2], 2, 16)
    q, k, v = q.float(), k.float(), v.float()
    varlen_attention(q, k, v, cu_q, cu_k)
    assert last_backend(OP) == ("triton" if pixelrefer_kernels.interpret_mode() else "sdpa")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    varlen_attention(q, k, v, cu_q, cu_k)
    assert last_backend(OP) == "sdpa", "without the interpreter a CPU call takes PyTorch SDPA"
    varlen_attention(q.double(), k.double(), v.double(), cu_q, cu_k)
    assert last_backend(OP) == "sdpa"


def test_backend_report_lists_every_backend_in_order():
    rows = backend_report(torch.device("cpu"), torch.float32)
    assert [name for name, _ in rows] == ["flash_attn", "triton", "xformers", "sdpa", "eager"]
    reasons = dict(rows)
    assert reasons["sdpa"] == [] and reasons["eager"] == []
    assert any("CUDA" in r or "not installed" in r for r in reasons["flash_attn"])


def test_head_dim_blocks():
    assert head_dim_blocks(72) == (64, 16)
    assert head_dim_blocks(144) == (128, 16)
    assert head_dim_blocks(48) == (32, 16)
    assert head_dim_blocks(64) == (64, 0)
    assert head_dim_blocks(200) == (256, 0)
    assert head_dim_blocks(24) == (32, 0)
    assert head_dim_blocks(8) == (16, 0)


# ---- refusals and bad input -----------------------------------------------------------------------------


def test_requires_grad_forced_triton_refuses_and_auto_falls_back():
    q, k, v, cu_q, cu_k = _inputs([3, 5], [4, 4], 2, 16)
    q = q.float().requires_grad_()
    k, v = k.float(), v.float()
    with force("triton"), pytest.raises(BackendUnavailableError, match="require"):
        varlen_attention(q, k, v, cu_q, cu_k)
    with pytest.raises(RuntimeError, match="require.s. grad"):
        varlen_attention_triton(q, k, v, cu_q, cu_k)
    out = varlen_attention(q, k, v, cu_q, cu_k)
    assert last_backend(OP) != "triton"
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with torch.no_grad(), force("triton"):
        varlen_attention(q, k, v, cu_q, cu_k)
    assert last_backend(OP) == "triton"


@pytest.mark.parametrize(
    "dtype, head_dim, reason",
    [
        pytest.param(torch.float64, 16, "dtype=torch.float64", id="fp64"),
        pytest.param(torch.float32, 264, "head_dim=264", id="head-dim-264"),
        pytest.param(torch.bfloat16, 16, "interpreter" if pixelrefer_kernels.interpret_mode() else "bf16", id="bf16-cpu"),
    ],
)
def test_forced_triton_states_why_it_cannot_run(dtype, head_dim, reason):
    if dtype == torch.bfloat16 and not pixelrefer_kernels.interpret_mode():
        pytest.skip("the bf16 refusal applies to the interpreter")
    q, k, v, cu_q, cu_k = _inputs([3, 5], [4, 4], 1, head_dim)
    with force("triton"), pytest.raises(BackendUnavailableError, match=reason):
        varlen_attention(q.to(dtype), k.to(dtype), v.to(dtype), cu_q, cu_k)
    out = varlen_attention(q.to(dtype), k.to(dtype), v.to(dtype), cu_q, cu_k)
    assert last_backend(OP) == "sdpa" and out.dtype == dtype


def _bad(**change):
    q, k, v, cu_q, cu_k = (t.float() if t.is_floating_point() else t for t in _inputs([3, 5], [4, 6], 2, 16))
    args = {"q": q, "k": k, "v": v, "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k}
    args.update(change)
    kwargs = {key: args.pop(key) for key in ("max_seqlen_q", "softmax_scale") if key in args}
    return lambda: varlen_attention(args["q"], args["k"], args["v"], args["cu_seqlens_q"], args["cu_seqlens_k"], **kwargs)


BAD_INPUTS = [
    pytest.param({"cu_seqlens_q": torch.tensor([1, 3, 8], dtype=torch.int32)}, ValueError, "must start at 0", id="cu-not-from-0"),
    pytest.param({"cu_seqlens_k": torch.tensor([0, 7, 4, 10], dtype=torch.int32)}, ValueError, "entries", id="cu-length-differs"),
    pytest.param({"cu_seqlens_q": torch.tensor([0, 9, 8], dtype=torch.int32)}, ValueError, "non-decreasing", id="cu-decreasing"),
    pytest.param({"cu_seqlens_q": torch.tensor([0, 3, 7], dtype=torch.int32)}, ValueError, "end at the packed length 8", id="cu-wrong-end"),
    pytest.param({"cu_seqlens_q": torch.tensor([0.0, 3.0, 8.0])}, TypeError, "cu_seqlens_q has dtype", id="cu-float"),
    pytest.param({"k": torch.randn(10, 3, 16), "v": torch.randn(10, 3, 16)}, ValueError, "head counts must agree", id="heads-differ"),
    pytest.param({"k": torch.randn(10, 2, 8), "v": torch.randn(10, 2, 8)}, ValueError, "head dims must agree", id="head-dims-differ"),
    pytest.param({"v": torch.randn(10, 2, 12)}, ValueError, "same shape", id="k-v-differ"),
    pytest.param({"k": torch.randn(10, 2, 16, dtype=torch.float16)}, TypeError, "share one dtype", id="dtype-mismatch"),
    pytest.param({"k": torch.randn(10, 2, 16, device="meta")}, ValueError, "k is on the meta device", id="device-mismatch"),
    pytest.param({"q": torch.randn(8, 32)}, ValueError, "must be 3-D", id="q-2d"),
    pytest.param({"q": torch.randint(0, 3, (8, 2, 16))}, TypeError, "q has dtype", id="q-int"),
    pytest.param({"max_seqlen_q": 4}, ValueError, "smaller than the longest", id="max-seqlen-too-small"),
    pytest.param({"max_seqlen_q": 4.0}, TypeError, "max_seqlen_q must be", id="max-seqlen-float"),
    pytest.param({"softmax_scale": float("nan")}, TypeError, "softmax_scale", id="scale-nan"),
]


@pytest.mark.parametrize("change, error, message", BAD_INPUTS)
def test_bad_input_is_rejected_with_a_clear_error(change, error, message):
    with pytest.raises(error, match=message):
        _bad(**change)()


# ---- GPU ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    "lengths_q, lengths_k, heads, head_dim",
    [
        pytest.param([256, 256, 64, 8], [576, 576, 576, 100], 8, 144, id="infusion-few-q-hd144"),
        pytest.param([100, 600, 333, 1, 512], [100, 600, 333, 1, 512], 16, 72, id="vit-square-hd72"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_triton_on_gpu(lengths_q, lengths_k, heads, head_dim, dtype):
    q, k, v, cu_q, cu_k = _inputs(lengths_q, lengths_k, heads, head_dim, device="cuda")
    with force("triton"):
        out = varlen_attention(q.to(dtype), k.to(dtype), v.to(dtype), cu_q, cu_k)
    assert last_backend(OP) == "triton"
    _check_against_reference(out, q, k, v, cu_q, cu_k, dtype, "triton-cuda")


@pytest.mark.gpu
@pytest.mark.flash_attn
def test_flash_attn_backend_matches_reference():
    if not pixelrefer_kernels.has_flash_attn():
        pytest.skip("flash-attn is not installed")
    q, k, v, cu_q, cu_k = _inputs([100, 37, 256], [100, 80, 576], 16, 72, device="cuda")
    with force("flash_attn"):
        out = varlen_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu_q, cu_k)
    _check_against_reference(out, q, k, v, cu_q, cu_k, torch.bfloat16, "flash_attn")
