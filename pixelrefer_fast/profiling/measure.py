"""Timing, memory and the device's measured peaks.

- `time_stage(fn, device, warmup, repeats)`: warm-up calls, then `repeats` timed calls. On CUDA
  each call is bracketed by CUDA events and the device is synchronised before reading them; on CPU
  `time.perf_counter`. Returns the median and the 20th/80th percentiles plus min and max.
- `memory_scope(device)`: peak memory of the work inside the block: the CUDA caching allocator's
  peak (`torch.cuda.max_memory_allocated` after a reset) and NVML's device-wide used memory
  (nvidia-ml-py, imported lazily); on CPU the peak resident set size of the process during the
  block, sampled every 5 ms with psutil (without psutil: `resource`'s `ru_maxrss`, the
  process's high-water mark, which never goes down between stages).
- `measure_peaks(device, dtype)`: on CUDA, the achieved TFLOP/s of a large GEMM in `dtype` and
  the bandwidth of a large device-to-device copy, measured once per profile so MFU and bandwidth use
  are relative to what this card really does (not a datasheet); on CPU nothing (GFLOP/s only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import importlib
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from . import progress

logger = logging.getLogger("pixelrefer_fast.profiling")


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "this sweep point does not fit" (CUDA OOM, host MemoryError)."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return (oom, MemoryError)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Latency of a stage over `repeats` calls, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    max_ms: float
    repeats: int

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> Timing:
        if not samples_ms:
            raise ValueError("Timing needs at least one sample")
        ordered = sorted(samples_ms)
        last = len(ordered) - 1
        return cls(
            median_ms=statistics.median(ordered),
            p20_ms=ordered[round(0.2 * last)],
            p80_ms=ordered[round(0.8 * last)],
            min_ms=ordered[0],
            max_ms=ordered[-1],
            repeats=len(ordered),
        )


def time_stage(
    fn: Callable[..., object],
    device: torch.device,
    *,
    warmup: int = 1,
    repeats: int = 3,
    setup: Callable[[], object] | None = None,
) -> tuple[Timing, object]:
    """Time `fn` and return its latency and the output of the last call.

    Args:
        fn: the stage call; its output is returned for the next stage. Called with no arguments, or
            with `setup()`'s result when `setup` is given.
        device: where the stage runs; on CUDA, events time the device work and the host waits.
        warmup: untimed calls first (compilation, allocator growth, autotuning).
        repeats: timed calls (>= 1).
        setup: untimed preparation before every call (e.g. a fresh copy of a KV cache the call
            extends), outside the timed interval.

    Host-only stages (the processor) pass `torch.device("cpu")`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")

    def call():
        return fn() if setup is None else fn(setup())

    out = None
    for done in range(warmup):
        out = call()
        progress.call_done(done + 1, warmup + repeats)
    synchronize(device)
    samples = []
    for _ in range(repeats):
        argument = () if setup is None else (setup(),)
        synchronize(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*argument)
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            out = fn(*argument)
            samples.append((time.perf_counter() - begin) * 1e3)
        progress.call_done(warmup + len(samples), warmup + repeats)
    return Timing.from_samples(samples), out


def process_peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far, in MiB (None where the platform has no `resource`)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def nvml_used_mb(device: torch.device) -> float | None:
    """Device-wide used memory from NVML in MiB; None without nvidia-ml-py or NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML missing in a container: report nothing rather than fail the profile
        logger.debug("NVML unavailable: %s", exc)
        return None


@dataclass
class MemoryReading:
    """Memory of one stage. `kind` says what `peak_mb` is.

    Attributes:
        kind: `"cuda_allocator_peak"` (torch's peak allocated bytes inside the block),
            `"process_rss_peak"` (CPU: the largest sampled RSS inside the block) or
            `"process_peak_rss"` (CPU without psutil: the process's high-water mark so far).
        peak_mb: the peak in MiB (None when it cannot be read).
        nvml_used_mb: CUDA: device-wide used memory after the block (NVML), else None.
        start_mb: the same quantity when the block began (CUDA: allocated bytes; CPU: the RSS), so
            `peak_mb - start_mb` is what the block itself added (None when it cannot be read).
    """

    kind: str
    peak_mb: float | None = None
    nvml_used_mb: float | None = None
    start_mb: float | None = None


@contextlib.contextmanager
def memory_scope(device: torch.device) -> Iterator[MemoryReading]:
    """Measure the peak memory of the block (see the module docstring); fills the reading on exit."""
    if device.type == "cuda":
        reading = MemoryReading(kind="cuda_allocator_peak")
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        reading.start_mb = torch.cuda.memory_allocated(device) / 2**20
        yield reading
        torch.cuda.synchronize(device)
        reading.peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        reading.nvml_used_mb = nvml_used_mb(device)
    else:
        sampler = _RssSampler.start()
        reading = MemoryReading(kind="process_rss_peak" if sampler else "process_peak_rss")
        reading.start_mb = sampler.start_bytes / 2**20 if sampler else None
        try:
            yield reading
        finally:
            reading.peak_mb = sampler.stop() if sampler else process_peak_rss_mb()


class _RssSampler:
    """Samples this process's resident set size every `period_s` on a daemon thread (psutil)."""

    def __init__(self, process, period_s: float):
        self._process = process
        self._period_s = period_s
        self._stop = threading.Event()
        self.start_bytes = self.peak_bytes = process.memory_info().rss
        self._thread = threading.Thread(target=self._run, name="pixelrefer-rss-sampler", daemon=True)

    @classmethod
    def start(cls, period_s: float = 0.005) -> _RssSampler | None:
        try:
            import psutil
        except ImportError:
            return None
        sampler = cls(psutil.Process(), period_s)
        sampler._thread.start()
        return sampler

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
        return self.peak_bytes / 2**20


@dataclass(frozen=True)
class DevicePeaks:
    """What this device achieved on a large GEMM and a large copy (None on CPU)."""

    matmul_tflops: float | None
    copy_gbps: float | None
    matmul_shape: tuple[int, int, int] | None = None
    copy_bytes: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def measure_peaks(device: torch.device, dtype: torch.dtype, *, gemm_size: int = 8192, copy_mib: int = 1024) -> DevicePeaks:
    """Measured GEMM TFLOP/s (`gemm_size`-cubed in `dtype`) and copy GB/s (read + write) on CUDA.

    On CPU returns empty peaks: the CPU report gives achieved GFLOP/s without a utilisation ratio.
    """
    if device.type != "cuda":
        return DevicePeaks(matmul_tflops=None, copy_gbps=None)
    n = gemm_size
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    gemm, _ = time_stage(functools.partial(torch.mm, a, b), device, warmup=3, repeats=10)
    del a, b
    numel = copy_mib * 2**20 // 4
    src = torch.empty(numel, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    copy, _ = time_stage(functools.partial(dst.copy_, src), device, warmup=3, repeats=10)
    del src, dst
    torch.cuda.empty_cache()
    return DevicePeaks(
        matmul_tflops=2 * n**3 / (gemm.min_ms * 1e-3) / 1e12,
        copy_gbps=2 * numel * 4 / (copy.min_ms * 1e-3) / 1e9,
        matmul_shape=(n, n, n),
        copy_bytes=numel * 4,
    )


def _version(name: str) -> str:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:
        return "not installed"


def git_sha() -> str:
    """Short SHA of the checkout this package runs from: `PIXELREFER_FAST_GIT_SHA` when set (a copy
    without `.git`, e.g. `bench/gpu_check.sh` on a GPU machine), else git ("unknown" for a wheel)."""
    stamped = os.environ.get("PIXELREFER_FAST_GIT_SHA", "").strip()
    if stamped:
        return stamped
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: torch.device) -> dict:
    """Versions, git SHA, timestamp, CPU, and on CUDA the card, memory and NVML driver/clocks."""
    info = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "pixelrefer_fast": _version("pixelrefer_fast"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": "none",
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
        info.update(_nvml_clocks(index))
    return info


def _nvml_clocks(index: int) -> dict:
    try:
        import pynvml
    except ImportError:
        return {"nvml": "nvidia-ml-py not installed (pip install 'pixelrefer-fast[bench]')"}
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            values = {
                "driver": pynvml.nvmlSystemGetDriverVersion(),
                "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            }
        finally:
            pynvml.nvmlShutdown()
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}
    except Exception as exc:  # NVML missing in a container is informative, not fatal
        return {"nvml": f"unavailable: {exc}"}


def device_slug(info: dict) -> str:
    """Folder name for a card (`nvidia-h100-80gb-hbm3`), `cpu` without one."""
    name = info.get("gpu", "none")
    if name == "none":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


_LAUNCH_EVENTS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


class StageTimer:
    """Times bound methods of the model on its real forward: each listed method is wrapped on its
    instance while the timer is active (the class is untouched; leaving the block restores it).

    Args:
        device: on CUDA each call is bracketed by CUDA events (read after one synchronisation in
            `collect`) and the allocator's peak over `baseline_bytes` (the weights and inputs) is
            recorded per stage; on the CPU `time.perf_counter` and no per-stage memory.
        targets: `{stage: [(owner, method_name), ...]}`; calls of several methods (or several calls)
            of one stage add up.

        clock: the CPU clock in seconds (default `time.perf_counter`; `time.thread_time` counts only
            this thread's CPU time, steadier on a shared machine with one torch thread).
        on_first_call: called with the stage's name when a stage is entered the first time.

    `collect()` returns `{stage: ms}` of the calls since the last `collect`; `calls` counts the
    calls per stage, `peaks_mb` holds the last per-stage memory peaks.
    """

    def __init__(self, device: torch.device, targets: dict[str, list[tuple[object, str]]], *,
                 clock: Callable[[], float] = time.perf_counter, on_first_call: Callable[[str], object] | None = None):
        self.device = device
        self.clock = clock
        self.on_first_call = on_first_call
        self.targets = targets
        self._pending: dict[str, list] = {}
        self.calls: dict[str, int] = {}
        self.peaks_mb: dict[str, float] = {}
        self.failed_stage: str | None = None  # the stage whose method raised (first one)
        self.baseline_bytes = 0
        self._installed: list[tuple[object, str]] = []

    def _wrap(self, stage: str, method):
        cuda = self.device.type == "cuda"

        @functools.wraps(method)  # keeps the signature (generate inspects the forward's arguments)
        def timed(*args, **kwargs):
            try:
                return timed_call(*args, **kwargs)
            except BaseException:
                if self.failed_stage is None:
                    self.failed_stage = stage
                raise

        def timed_call(*args, **kwargs):
            if stage not in self.calls and self.on_first_call is not None:
                self.on_first_call(stage)
            if cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                with torch.profiler.record_function(f"stage::{stage}"):
                    out = method(*args, **kwargs)
                end.record()
                self._pending.setdefault(stage, []).append((start, end))
                peak = (torch.cuda.max_memory_allocated(self.device) - self.baseline_bytes) / 2**20
                self.peaks_mb[stage] = max(self.peaks_mb.get(stage, 0.0), peak)
            else:
                begin = self.clock()
                with torch.profiler.record_function(f"stage::{stage}"):
                    out = method(*args, **kwargs)
                self._pending.setdefault(stage, []).append(self.clock() - begin)
            self.calls[stage] = self.calls.get(stage, 0) + 1
            return out

        return timed

    def __enter__(self) -> StageTimer:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
        for stage, methods in self.targets.items():
            for owner, name in methods:
                setattr(owner, name, self._wrap(stage, getattr(owner, name)))
                self._installed.append((owner, name))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name in reversed(self._installed):
            delattr(owner, name)  # the instance attribute shadowed the class's method
        self._installed.clear()

    def start_pass(self) -> None:
        """Forget per-stage peaks (call before each measured forward)."""
        self.peaks_mb = {}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)

    def collect_calls(self) -> dict[str, list[float]]:
        """`{stage: [ms of each call]}` since the last collect (one synchronisation on CUDA)."""
        synchronize(self.device)
        calls = {}
        for stage, samples in self._pending.items():
            if self.device.type == "cuda":
                calls[stage] = [start.elapsed_time(end) for start, end in samples]
            else:
                calls[stage] = [seconds * 1e3 for seconds in samples]
        self._pending = {}
        return calls

    def collect(self) -> dict[str, float]:
        """`{stage: ms}`: the calls of each stage since the last collect, added up."""
        return {stage: sum(calls) for stage, calls in self.collect_calls().items()}


def count_launches(fn: Callable[[], object], device: torch.device) -> dict[str, int] | None:
    """Kernel launches per `stage::<name>` range of one call of `fn` (CUDA only; None elsewhere or
    when the profiler cannot say)."""
    if device.type != "cuda":
        return None
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(device)
        counts: dict[str, int] = {}
        for event in prof.events():
            if event.name.startswith("stage::"):
                counts[event.name[len("stage::"):]] = counts.get(event.name[len("stage::"):], 0) + _launches_under(event)
        return counts
    except Exception as exc:  # the launch count is informative; a profiler failure must not stop the profile
        logger.debug("launch counting failed: %s", exc)
        return None


def _launches_under(event) -> int:
    found, stack = 0, list(event.cpu_children)
    while stack:
        child = stack.pop()
        if child.name in _LAUNCH_EVENTS:
            found += 1
        stack.extend(child.cpu_children)
    return found
