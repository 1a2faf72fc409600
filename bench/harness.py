"""Timing helpers shared by the pytest-benchmark suites in `bench/`.

- `run_pair(benchmark, fn, *, pair, role, device, ...)`: warms up, times `fn` (synchronised)
  with pytest-benchmark and tags the result for the regression gate (`bench/gate.py`): every
  fast/baseline pair shares a `pair` name and differs in `role`. Once both roles of a pair have
  run, both entries get `ratio` (baseline median / fast median) in `extra_info`; every entry gets
  the 20/50/80th percentiles of its rounds in ms.
- `skip_pair(pair, reason)`: skips a benchmark whose pair cannot run on this machine (flash-attn
  not installed, ...) and records it, so the gate reports the pair as "not measured" instead of
  missing (`skipped_pairs` in the saved JSON, written by `bench/conftest.py`).
- `synced(fn, device)`: `fn` followed by a device synchronisation.
- `MODEL_SLOT`: the one benchmark model alive at a time (`ModelSlot`), freed after each module
  (`bench/conftest.py`), so GPU memory peaks never count a previous case's weights.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
import torch

ROLES = ("fast", "baseline")

# pair -> role -> (median seconds, that benchmark's extra_info dict), for the ratio of this session
_measured: dict[str, dict[str, tuple[float, dict]]] = {}
# pair -> why it was skipped on this machine (saved in the JSON by bench/conftest.py)
SKIPPED_PAIRS: dict[str, str] = {}


class ModelSlot:
    """Holds one built value (a model and what goes with it) under a key; asking for another key frees
    the held one first."""

    def __init__(self):
        self._key: Any = None
        self._value: Any = None

    def get(self, key, build: Callable[[], Any]) -> Any:
        """The value built for `key`: the held one, or `build()` once the held one is freed."""
        if self._value is None or self._key != key:
            self.clear()
            self._value, self._key = build(), key
        return self._value

    def clear(self) -> None:
        """Drop the held value and return its memory (the CUDA cache too)."""
        self._key = self._value = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


MODEL_SLOT = ModelSlot()


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced(fn: Callable[[], object], device: torch.device | str) -> Callable[[], object]:
    """`fn` followed by a device synchronisation, so timers see the finished work."""

    def call():
        out = fn()
        synchronize(device)
        return out

    return call


def _percentiles_ms(data: list[float]) -> dict[str, float]:
    times = sorted(t * 1e3 for t in data)
    last = len(times) - 1
    return {f"p{q}_ms": round(times[round(q / 100 * last)], 4) for q in (20, 50, 80)}


def _record(benchmark, pair: str, role: str) -> None:
    """Percentiles of this entry; the pair's ratio into both entries once both roles have run."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: the callable ran once, untimed
        return
    benchmark.extra_info.update(_percentiles_ms(stats.stats.data))
    roles = _measured.setdefault(pair, {})
    roles[role] = (stats.stats.median, benchmark.extra_info)
    if len(roles) == 2:
        ratio = round(roles["baseline"][0] / roles["fast"][0], 3)
        for _, info in roles.values():
            info["ratio"] = ratio


def run_pair(benchmark, fn: Callable[[], object], *, pair: str, role: str, device, warmup: int = 2,
             rounds: int | None = None, after_warmup: Callable[[], object] | None = None, **info):
    """Time `fn` (synchronised) under pytest-benchmark and tag it for the regression gate.

    Args:
        benchmark: the pytest-benchmark fixture.
        fn: the callable to time (no arguments); its device work is synchronised inside the timed call.
        pair: the name the fast and the baseline benchmark share (the key in `thresholds.json`).
        role: `"fast"` or `"baseline"`.
        device: where `fn` runs (CUDA is synchronised after each call).
        warmup: untimed calls first (compilation, autotuning, allocator warm-up).
        rounds: a fixed number of timed calls (`benchmark.pedantic`), for calls of a second or
            more; None lets pytest-benchmark calibrate (`--benchmark-min-rounds`/`max-time`).
        after_warmup: called once between the warm-up and the timed calls (e.g. resetting the CUDA
            peak memory, so autotuning buffers do not count).
        **info: recorded in `extra_info` (shapes, dtype, ...).

    Returns:
        `fn`'s result of the last call. Raises `ValueError` for an unknown role.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    call = synced(fn, device)
    for _ in range(warmup):
        call()
    if after_warmup is not None:
        after_warmup()
    benchmark.extra_info.update({"pair": pair, "role": role, "device": str(device), **info})
    if rounds is None:
        result = benchmark(call)
    else:
        result = benchmark.pedantic(call, rounds=rounds, iterations=1)
    _record(benchmark, pair, role)
    return result


def skip_pair(pair: str, reason: str) -> None:
    """Skip the current benchmark and record that `pair` was not measured on this machine, and why."""
    SKIPPED_PAIRS[pair] = reason
    pytest.skip(reason)
