"""Compile every Triton kernel for a Hopper GPU (sm_90) on a machine without one.

The interpreter runs our kernels' arithmetic on the CPU but never the real compiler, so a kernel can
pass every CPU test and still fail to compile for CUDA (an op the code generator rejects, a dtype
mismatch the interpreter tolerates, a tile that needs more shared memory than an SM has). This script
runs each launcher on small CPU tensors with representative dtypes and head dims while recording the
launches instead of running them, then compiles every distinct (kernel, signature, constexprs,
options) ahead of time with Triton's own CUDA backend (ptxas ships with the Triton wheel), and checks
the shared memory each one needs.

Run in a process WITHOUT `TRITON_INTERPRET` (under the interpreter the kernels are not compilable
objects): `python -m tests.kernels.cuda_compile_check`. Prints one line per compiled variant; the
exit code is the number of failures. `tests/kernels/test_cuda_compile.py` runs it in CI.
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback
from dataclasses import dataclass, field

import torch

# Hopper (H100/H200): 228 KB of shared memory per SM, at most 227 KB for one block.
TARGET_ARCH = 90
MAX_SHARED_BYTES = 227 * 1024

_TORCH_TO_TRITON = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
    torch.int32: "i32", torch.int64: "i64", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1",
}


@dataclass
class Launch:
    kernel: str
    signature: dict[str, str]
    constexprs: dict[str, object]
    options: dict[str, object] = field(default_factory=dict)

    def key(self) -> tuple:
        return (self.kernel, tuple(self.signature.items()), tuple(sorted(self.constexprs.items())), tuple(sorted(self.options.items())))


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _TORCH_TO_TRITON[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type kernel argument {value!r}")


def _launch_records(jit, args, kwargs, configs) -> list[Launch]:
    """One `Launch` per autotune config (or one), from the arguments a launcher passed."""
    import triton

    params = jit.params
    bound = dict(zip((p.name for p in params), args))
    bound.update({k: v for k, v in kwargs.items() if k in {p.name for p in params}})
    options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages", "enable_fp_fusion")}
    signature, constexprs = {}, {}
    for p in params:
        if p.is_constexpr:
            if p.name in bound:
                constexprs[p.name] = bound[p.name]
        elif p.name in bound:
            signature[p.name] = _arg_type(bound[p.name])
    records = []
    for config in configs or [None]:
        merged, opts = dict(constexprs), dict(options)
        if isinstance(config, triton.Config):
            merged.update(config.kwargs)
            opts.update(num_warps=config.num_warps, num_stages=config.num_stages)
        for p in params:  # constexprs left to their defaults
            if p.is_constexpr and p.name not in merged and p.default is not inspect.Parameter.empty:
                merged[p.name] = p.default
        records.append(Launch(jit.fn.__name__, signature, merged, opts))
    return records


def record_launches(run_cases) -> list[Launch]:
    """Run `run_cases()` with kernel launches recorded instead of executed."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    recorded: dict[tuple, Launch] = {}
    original_jit_run, original_autotune_run = JITFunction.run, Autotuner.run

    def jit_run(self, *args, grid, warmup, **kwargs):
        for launch in _launch_records(self, args, kwargs, None):
            recorded.setdefault(launch.key(), launch)

    def autotune_run(self, *args, **kwargs):
        for launch in _launch_records(self.fn, args, kwargs, self.configs):
            recorded.setdefault(launch.key(), launch)

    JITFunction.run, Autotuner.run = jit_run, autotune_run
    try:
        run_cases()
    finally:
        JITFunction.run, Autotuner.run = original_jit_run, original_autotune_run
    return list(recorded.values())


def run_cases() -> None:
    """Call every launcher with the dtypes and shapes the models use (values do not matter)."""
    from pixelrefer_kernels.infusion import InfusionWeights, object_infusion_triton
    from pixelrefer_kernels.kmeans import kmeans_triton
    from pixelrefer_kernels.region_pool import box_pos_coefficients, region_pool_triton
    from pixelrefer_kernels.varlen import varlen_attention_triton

    channels, clusters = 1152, 32
    grids = torch.tensor([[10, 12], [22, 22]])
    masks_hw = torch.tensor([[10, 12], [11, 11]])  # the second mask grid differs: resampling taps
    cu_feat = torch.tensor([0, 120, 604], dtype=torch.int32)
    cu_mask = torch.tensor([0, 120, 241], dtype=torch.int32)
    boxes = torch.tensor([[10, 20, 150, 200], [0, 0, 300, 300]])
    image_hw = torch.tensor([[480, 640], [480, 640]])
    pos = box_pos_coefficients(boxes, image_hw)
    masks = torch.ones(241)
    for dtype, out_dtype in ((torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)):
        feats = torch.randn(604, channels, dtype=dtype)
        region_pool_triton(feats, cu_feat, grids, masks, cu_mask, masks_hw, pos, torch.randn(channels, 2, dtype=dtype),
                           torch.randn(channels, dtype=dtype), out_dtype=out_dtype)  # fmt: skip

    cu_tokens = torch.tensor([0, 100, 130, 280], dtype=torch.int32)
    for dtype in (torch.float32, torch.bfloat16):
        for pad in (False, True):
            kmeans_triton(torch.randn(280, channels, dtype=dtype), cu_tokens, clusters, num_iters=2, init="deterministic",
                          pad_to_clusters=pad, max_region_tokens=150)  # fmt: skip

    for dtype, head_dim, heads in ((torch.bfloat16, 72, 16), (torch.float16, 72, 16), (torch.float32, 72, 16), (torch.bfloat16, 144, 8), (torch.bfloat16, 128, 4)):
        cu = torch.tensor([0, 300, 900], dtype=torch.int32)
        q = torch.randn(900, heads, head_dim, dtype=dtype)
        varlen_attention_triton(q, q, q, cu, cu, max_seqlen_q=600)
        cu_q = torch.tensor([0, 256, 288], dtype=torch.int32)
        kv = torch.randn(900, heads, head_dim, dtype=dtype)
        varlen_attention_triton(q[:288], kv, kv, cu_q, cu, max_seqlen_q=256)  # few queries, many keys

    for dtype in (torch.bfloat16, torch.float32):
        def weights():
            return InfusionWeights(
                torch.ones(channels, dtype=dtype), torch.zeros(channels, dtype=dtype),
                torch.randn(3 * channels, channels, dtype=dtype), torch.randn(3 * channels, dtype=dtype),
                torch.randn(channels, channels, dtype=dtype), torch.randn(channels, dtype=dtype),
            )  # fmt: skip

        regions = 3
        object_infusion_triton(
            torch.randn(regions, clusters, channels, dtype=dtype),
            torch.randn(2 * 256, channels, dtype=dtype), torch.tensor([0, 256, 512]), torch.tensor([0, 1, 1]),
            torch.randn(576, channels, dtype=dtype), torch.tensor([0, 576]), torch.zeros(regions, dtype=torch.long),
            weights(), weights(), num_heads=8,
        )  # fmt: skip


def compile_launch(launch: Launch, kernels: dict) -> int:
    """Compile one recorded launch for sm_90; returns the shared memory it needs (bytes)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=kernels[launch.kernel], signature=launch.signature, constexprs=launch.constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", TARGET_ARCH, 32), options=launch.options)
    return int(compiled.metadata.shared)


def kernel_functions() -> dict:
    """`{name: JITFunction}` for every Triton kernel of the package."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    import pixelrefer_kernels  # noqa: F401  (imports every op module)

    found = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("pixelrefer_kernels."):
            continue
        for value in vars(module).values():
            jit = value.fn if isinstance(value, Autotuner) else value
            if isinstance(jit, JITFunction):
                found[jit.fn.__name__] = jit
    return found


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.stderr.write("run without TRITON_INTERPRET: the interpreter replaces the kernels with Python functions\n")
        return 99
    kernels = kernel_functions()
    launches = record_launches(run_cases)
    launched = {launch.kernel for launch in launches}
    failures = 0
    entry_points = {name for name in kernels if name.endswith("_kernel")}
    for name in sorted(entry_points - launched):
        sys.stdout.write(f"FAIL {name}: no launcher case reached this kernel; add one to run_cases()\n")
        failures += 1
    for launch in sorted(launches, key=lambda launch: launch.key()):
        label = f"{launch.kernel} {launch.signature} {launch.constexprs} {launch.options}"
        try:
            shared = compile_launch(launch, kernels)
        except Exception:
            failures += 1
            sys.stdout.write(f"FAIL {label}\n{traceback.format_exc(limit=3)}\n")
            continue
        verdict = "ok" if shared <= MAX_SHARED_BYTES else "FAIL (shared memory over the sm_90 limit)"
        failures += verdict != "ok"
        sys.stdout.write(f"{verdict} shared={shared} {label}\n")
    sys.stdout.write(f"{len(launches)} kernel variants compiled for sm_{TARGET_ARCH}, {failures} failure(s)\n")
    return failures


if __name__ == "__main__":
    sys.exit(main())
