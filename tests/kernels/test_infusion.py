"""object_infusion: Triton and torch paths against the float64 per-region reference and against
nn.MultiheadAttention itself; the path planner; NaN isolation; dispatch and input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import pixelrefer_kernels
from pixelrefer_kernels import BackendUnavailableError, InfusionWeights, force, last_backend, object_infusion, object_infusion_ref
from pixelrefer_kernels.infusion import _plan_stage, backend_report
from tests.helpers import assert_close

OP = "object_infusion"
ATOL = {torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# two chained attention blocks in fp16 reach ~2e-3 relative error in PyTorch itself (the 2x rule still applies)
REL_TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 1e-2}


def _modules(channels, heads, dtype=torch.float64, device="cpu"):
    """(LayerNorm, MultiheadAttention) for the local and the global stage, random non-trivial weights."""
    stages = []
    for _ in range(2):
        norm = nn.LayerNorm(channels).to(device, dtype)
        attention = nn.MultiheadAttention(channels, heads, batch_first=True).to(device, dtype)
        with torch.no_grad():  # std 1.5/sqrt(C): logits of a few units, softmax neither flat nor one-hot
            for p in [*norm.parameters(), *attention.parameters()]:
                p.normal_(0.0, 1.5 / channels**0.5)
            norm.weight.add_(1.0)
        stages.append((norm.requires_grad_(False), attention.requires_grad_(False)))
    return stages


class Case:
    """Inputs of one infusion call in float64."""

    def __init__(self, channels, heads, tokens, local_lengths, region_local, global_lengths, region_global, device="cpu"):
        self.heads = heads
        self.modules = _modules(channels, heads, device=device)
        self.queries = torch.randn(len(region_local), tokens, channels, dtype=torch.float64, device=device)
        self.queries[0, tokens // 2 :] = 0.0  # zero-padded rows, as Lite pads small regions
        self.local_feats = torch.randn(sum(local_lengths), channels, dtype=torch.float64, device=device)
        self.global_feats = torch.randn(sum(global_lengths), channels, dtype=torch.float64, device=device)
        self.cu_local = torch.tensor([0, *local_lengths]).cumsum(0).to(torch.int32)
        self.cu_global = torch.tensor([0, *global_lengths]).cumsum(0).to(torch.int32)
        self.region_local = torch.tensor(region_local)
        self.region_global = torch.tensor(region_global)

    def weights(self, dtype):
        return [InfusionWeights(*(t.to(dtype) for t in InfusionWeights.from_modules(*stage))) for stage in self.modules]

    def args(self, dtype):
        return (
            self.queries.to(dtype), self.local_feats.to(dtype), self.cu_local, self.region_local,
            self.global_feats.to(dtype), self.cu_global, self.region_global, *self.weights(dtype),
        )  # fmt: skip

    def reference(self, dtype=torch.float64):
        return object_infusion_ref(*self.args(dtype), num_heads=self.heads)


CASES = {
    # one global map shared by 6 regions (project path), a distinct small local map each (absorbed path)
    "shared-global": dict(channels=96, heads=2, tokens=8, local_lengths=[10, 17, 12, 19, 11, 21], region_local=[0, 1, 2, 3, 4, 5],
                          global_lengths=[40], region_global=[0] * 6),
    # ragged maps, unsorted region -> map, a map of one row, shared local map, an unused global map
    "ragged-unsorted": dict(channels=144, heads=2, tokens=5, local_lengths=[20, 7, 30, 1], region_local=[2, 0, 1, 3, 2],
                            global_lengths=[40, 13, 9], region_global=[1, 0, 1, 0, 1]),
    # equal-length local maps, one per region, in order: the absorbed path reads them as a view
    "uniform-local-view": dict(channels=96, heads=2, tokens=4, local_lengths=[12] * 4, region_local=[0, 1, 2, 3],
                               global_lengths=[30, 30], region_global=[0, 0, 1, 1]),
    # both paths inside one stage: global map 0 for 6 regions (project), map 1 for one (absorb); 3 heads of 32
    "mixed-paths": dict(channels=96, heads=3, tokens=8, local_lengths=[9] * 7, region_local=[0] * 6 + [1],
                        global_lengths=[40, 30], region_global=[0] * 6 + [1]),
}


def test_planner_covers_both_paths():
    c = CASES["shared-global"]
    local = _plan_stage(torch.tensor([0, *c["local_lengths"]]).cumsum(0).tolist(), c["region_local"], c["tokens"], c["channels"], c["heads"])
    assert local.absorb_regions == list(range(6)) and not local.project_regions
    glob = _plan_stage([0, 40], c["region_global"], c["tokens"], c["channels"], c["heads"])
    assert glob.project_regions == list(range(6)) and not glob.absorb_regions
    c = CASES["mixed-paths"]
    mixed = _plan_stage([0, 40, 70], c["region_global"], c["tokens"], c["channels"], c["heads"])
    assert mixed.project_regions == list(range(6)) and mixed.absorb_regions == [6]
    c = CASES["uniform-local-view"]
    assert _plan_stage([0, 12, 24, 36, 48], c["region_local"], c["tokens"], c["channels"], c["heads"]).absorb_regions == [0, 1, 2, 3]
    unsorted = _plan_stage([0, 9, 18, 27], [2, 0, 2, 2, 2, 1], 8, 96, 2)
    assert unsorted.project_regions == [0, 2, 3, 4] and unsorted.absorb_regions == [1, 5]
    # the real Lite shapes: a distinct 16x16 local map per region is absorbed, a 24x24 global map shared by 8 is projected
    assert _plan_stage([0, 256], [0], 32, 1152, 8).absorb_regions == [0]
    assert _plan_stage([0, 576], [0] * 8, 32, 1152, 8).project_regions == list(range(8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference(name, backend, dtype):
    case = Case(**CASES[name])
    with force(backend):
        out = object_infusion(*case.args(dtype), num_heads=case.heads)
    assert last_backend(OP) == backend
    assert out.dtype == dtype and out.shape == case.queries.shape
    assert_close(out, case.reference(), name=f"{backend}-{name}", baseline=case.reference(dtype), atol=ATOL[dtype], rel_tol=REL_TOL[dtype])


def test_matches_torch_multihead_attention():
    """The op against nn.LayerNorm + nn.MultiheadAttention run exactly as upstream (batched per image)."""
    case = Case(**CASES["shared-global"])
    (ln_local, mha_local), (ln_global, mha_global) = case.modules
    queries, num_regions = case.queries, case.queries.shape[0]
    expected = []
    for r in range(num_regions):  # the local maps differ in length: one region at a time
        keys = case.local_feats[case.cu_local[r] : case.cu_local[r + 1]][None]
        expected.append(queries[r : r + 1] + mha_local(ln_local(queries[r : r + 1]), keys, keys)[0])
    x1 = torch.cat(expected)
    global_keys = case.global_feats[None].expand(num_regions, -1, -1)  # upstream repeats the image's keys per region
    x2 = x1 + mha_global(ln_global(x1), global_keys, global_keys)[0]
    for backend in ("triton", "torch"):
        with force(backend):
            out = object_infusion(*case.args(torch.float32), num_heads=case.heads)
        assert_close(out, x2, name=f"{backend}-vs-nn.MultiheadAttention", rel_tol=1e-5)
    assert_close(case.reference(), x2, name="reference-vs-nn.MultiheadAttention", rel_tol=1e-12)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_nan_in_unused_maps_and_strided_gaps_does_not_leak(backend):
    case = Case(**CASES["ragged-unsorted"])  # global map 2 (rows 53..61) is used by no region
    channels = case.queries.shape[-1]
    buffer = torch.full((case.global_feats.shape[0], channels + 5), float("nan"), dtype=torch.float32)
    global_view = buffer[:, :channels]  # row stride C + 5: NaN in every gap
    global_view.copy_(case.global_feats)
    global_view[53:] = float("nan")
    local_buffer = torch.full((case.local_feats.shape[0] + 4, channels), float("nan"))
    local_buffer[: case.local_feats.shape[0]] = case.local_feats  # NaN rows after the last map
    args = list(case.args(torch.float32))
    args[1], args[4] = local_buffer[: case.local_feats.shape[0]], global_view
    with force(backend):
        out = object_infusion(*args, num_heads=case.heads)
    assert_close(out, case.reference(), name=backend, baseline=case.reference(torch.float32), atol=ATOL[torch.float32])

    # NaN in a map that one region uses (local map 0 -> region 1; global map 0 -> regions 1, 3) stays there
    for stage, rows, hit in (("local", slice(3, 5), [1]), ("global", slice(10, 11), [1, 3])):
        poisoned = list(case.args(torch.float32))
        feats = poisoned[1 if stage == "local" else 4].clone()
        feats[rows] = float("nan")
        poisoned[1 if stage == "local" else 4] = feats
        with force(backend):
            out = object_infusion(*poisoned, num_heads=case.heads)
        clean = [r for r in range(out.shape[0]) if r not in hit]
        assert torch.isnan(out[hit]).any(), f"{stage}: the region using the NaN map must show it"
        assert_close(out[clean], case.reference()[clean], name=f"{backend}-{stage}-other-regions", rel_tol=1e-5)


def test_no_regions():
    case = Case(**CASES["shared-global"])
    args = list(case.args(torch.float32))
    args[0], args[3], args[6] = args[0][:0], args[3][:0], args[6][:0]
    for backend in ("triton", "torch"):
        with force(backend):
            assert object_infusion(*args, num_heads=case.heads).shape == (0, 8, 96)


def test_requires_grad_forced_triton_refuses_and_auto_falls_back():
    case = Case(**CASES["shared-global"])
    args = list(case.args(torch.float32))
    args[0] = args[0].requires_grad_()
    with force("triton"), pytest.raises(BackendUnavailableError, match="require"):
        object_infusion(*args, num_heads=case.heads)
    out = object_infusion(*args, num_heads=case.heads)
    assert last_backend(OP) == "torch"
    out.square().sum().backward()
    assert args[0].grad is not None and torch.isfinite(args[0].grad).all()


def test_auto_on_cpu_and_report(monkeypatch):
    case = Case(**CASES["shared-global"])
    object_infusion(*case.args(torch.float32), num_heads=case.heads)
    assert last_backend(OP) == ("triton" if pixelrefer_kernels.interpret_mode() else "torch")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    object_infusion(*case.args(torch.float32), num_heads=case.heads)
    assert last_backend(OP) == "torch"
    object_infusion(*case.args(torch.float64), num_heads=case.heads)
    assert last_backend(OP) == "torch"
    rows = backend_report(torch.device("cpu"), torch.float32)
    assert [name for name, _ in rows] == ["triton", "torch", "ref"] and rows[1][1] == []
    with force("ref"):
        object_infusion(*case.args(torch.float64), num_heads=case.heads)
    assert last_backend(OP) == "ref"


def _bad_call(**change):
    case = Case(**CASES["ragged-unsorted"])
    names = ["queries", "local_feats", "cu_local", "region_local", "global_feats", "cu_global", "region_global", "local_weights", "global_weights"]
    args = dict(zip(names, case.args(torch.float32)))
    kwargs = {"num_heads": change.pop("num_heads", case.heads)}
    if "eps" in change:
        kwargs["eps"] = change.pop("eps")
    for key, value in change.items():
        args[key] = value(args) if callable(value) else value
    return lambda: object_infusion(*args.values(), **kwargs)


def _with(field, value):
    return lambda args: args["local_weights"]._replace(**{field: value})


BAD_INPUTS = [
    pytest.param({"region_global": torch.tensor([1, 0, 3, 0, 1])}, ValueError, r"region_global\[2\]=3 refers to no global map", id="region-out-of-range"),
    pytest.param({"region_local": torch.tensor([2, 0, 1, -1, 2])}, ValueError, r"region_local\[3\]=-1", id="region-negative"),
    pytest.param({"cu_global": torch.tensor([0, 40, 40, 62])}, ValueError, "map 1, which is empty", id="region-empty-map"),
    pytest.param({"region_local": torch.tensor([0, 1])}, ValueError, "region_local has 2 entries", id="region-count"),
    pytest.param({"cu_local": torch.tensor([1, 20, 27, 57, 58])}, ValueError, "cu_local must start at 0", id="cu-not-from-0"),
    pytest.param({"cu_local": torch.tensor([0, 20, 17, 57, 58])}, ValueError, "non-decreasing", id="cu-decreasing"),
    pytest.param({"cu_global": torch.tensor([0, 40, 53, 60])}, ValueError, "end at the packed length 62", id="cu-wrong-end"),
    pytest.param({"cu_local": torch.tensor([0.0, 58.0])}, TypeError, "cu_local has dtype", id="cu-float"),
    pytest.param({"local_feats": torch.randn(58, 100)}, ValueError, "local_feats has 100 channels", id="channels-differ"),
    pytest.param({"global_feats": torch.randn(62, 144, dtype=torch.float16)}, TypeError, "share queries' dtype", id="dtype-mismatch"),
    pytest.param({"global_feats": torch.randn(62, 144, device="meta")}, ValueError, "global_feats is on the meta device", id="device-mismatch"),
    pytest.param({"local_weights": _with("in_proj_weight", torch.randn(144, 144))}, ValueError, r"in_proj_weight must have shape \(432, 144\)", id="weight-shape"),
    pytest.param({"local_weights": _with("ln_bias", torch.randn(144, dtype=torch.float64))}, TypeError, "share queries' dtype", id="weight-dtype"),
    pytest.param({"global_weights": lambda args: tuple(args["global_weights"])}, TypeError, "must be an InfusionWeights", id="weights-plain-tuple"),
    pytest.param({"num_heads": 5}, ValueError, "num_heads=5 must divide", id="heads-do-not-divide"),
    pytest.param({"num_heads": 0}, ValueError, "num_heads must be >= 1", id="heads-zero"),
    pytest.param({"eps": 0.0}, TypeError, "eps must be a float > 0", id="eps-zero"),
    pytest.param({"queries": torch.randn(5, 144)}, ValueError, "queries must be 3-D", id="queries-2d"),
]


@pytest.mark.parametrize("change, error, message", BAD_INPUTS)
def test_bad_input_is_rejected_with_a_clear_error(change, error, message):
    with pytest.raises(error, match=message):
        _bad_call(**change)()


# ---- GPU ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_real_sizes_on_gpu(dtype):
    """8 images x 8 regions, C=1152, 8 heads of 144, K=32: 24x24 global maps, a 16x16 local map per region."""
    case = Case(1152, 8, 32, [256] * 64, list(range(64)), [576] * 8, [r // 8 for r in range(64)], device="cuda")
    with force("triton"):
        out = object_infusion(*case.args(dtype), num_heads=8)
    assert last_backend(OP) == "triton"
    assert_close(out, case.reference(), name="triton-cuda", baseline=case.reference(dtype), atol=ATOL[dtype], rel_tol=REL_TOL[dtype])
