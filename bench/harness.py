"""Timing helpers shared by the pytest-benchmark suites in ``bench/``.

- ``synced(fn, device)``: wraps ``fn`` so the device work finishes inside the timed call.
- ``run_pair(benchmark, fn, *, pair, role, device, **info)``: warms up, times ``fn`` with
  pytest-benchmark and tags the result for the regression gate (``bench/gate.py``): every
  fast/baseline pair shares a ``pair`` name and differs in ``role``.
- ``quantiles_ms(fn, device)``: median / 20th / 80th percentile in ms (``triton.testing.do_bench``
  on CUDA, a wall-clock loop on CPU), for ``extra_info``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

ROLES = ("fast", "baseline")


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced(fn: Callable[[], object], device: torch.device | str) -> Callable[[], object]:
    """``fn`` followed by a device synchronisation, so timers see the finished work."""

    def call():
        out = fn()
        synchronize(device)
        return out

    return call


def quantiles_ms(fn: Callable[[], object], device: torch.device | str, *, reps: int = 20) -> dict[str, float]:
    """Median and 20/80th percentiles of ``fn`` in milliseconds."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return {"p50_ms": p50, "p20_ms": p20, "p80_ms": p80}
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p20_ms": times[int(0.2 * (len(times) - 1))],
        "p80_ms": times[int(0.8 * (len(times) - 1))],
    }


def run_pair(benchmark, fn: Callable[[], object], *, pair: str, role: str, device, warmup: int = 2, **info):
    """Time ``fn`` (synchronised) under pytest-benchmark and tag it for the regression gate."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    call = synced(fn, device)
    for _ in range(warmup):
        call()
    benchmark.extra_info.update({"pair": pair, "role": role, "device": str(device), **info})
    return benchmark(call)
