"""`run_profile`: build the preset's random-weight models, sweep the points, write the report."""

from __future__ import annotations

import datetime as _dt
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..defaults import KERNEL_MODES
from . import progress, report
from .estimate import RunEstimate, estimate_run
from .flops import BYTES_CONVENTION, FLOP_CONVENTION
from .measure import DevicePeaks, device_slug, machine_info, measure_peaks, out_of_memory_errors
from .presets import ArchPreset, ProfileInputError, get_preset, preset_from_model_dir
from .stages import PointOutcome, StageResult, build_model, run_point
from .sweep import SweepPoint, SweepSpec, sweep_name

logger = logging.getLogger("pixelrefer_fast.profiling")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# a profile estimated longer than this needs yes=True (--yes)
DEFAULT_MAX_ESTIMATE_S = 300.0
MAX_SEED = 2**32 - 1


@dataclass
class ProfileResult:
    """What `run_profile` produced.

    Attributes:
        document: the JSON document (`report.DOCUMENT_KEYS`), rows included.
        rows: one dict per (point, stage) plus a `ttft` row per point (`report.ROW_SCHEMA`).
        paths: where the JSON and CSV were written, and where the PNG goes.
        png: the PNG written, None when plots were skipped (`plots=False` or no matplotlib).
        table: the terminal table.
        notes: remarks for the reader (kernel mode, skipped plots, failed stages).
    """

    document: dict
    rows: list[dict]
    paths: report.OutputPaths
    png: Path | None
    table: str
    notes: list[str] = field(default_factory=list)
    estimate: RunEstimate | None = None

    @property
    def status(self) -> str:
        """`complete`, `interrupted` (Ctrl-C) or `failed` (an unexpected error stopped the sweep)."""
        return self.document["status"]

    @property
    def has_errors(self) -> bool:
        """True when a stage failed with an unexpected error (not an out-of-memory point)."""
        return any(r["status"] == "error" for r in self.rows)

    def summary(self) -> str:
        """The table, the FLOPs convention, the notes and the output paths, as the CLI prints them."""
        lines = [self.table, "", report.TABLE_LEGEND, f"FLOPs: {FLOP_CONVENTION}."]
        lines += self.notes
        lines += report.failures(self.rows)
        lines += ["", f"JSON: {self.paths.json}", f"CSV:  {self.paths.csv}", f"rows: {self.paths.rows} (appended per point)"]
        lines.append(f"PNG:  {self.png}" if self.png is not None else "PNG:  not written")
        return "\n".join(lines)


class ProfileStopped(Exception):
    """The sweep stopped early: Ctrl-C (`status == "interrupted"`) or an unexpected error
    (`"failed"`). `result` holds the finished points, already written (JSON, CSV, PNG, rows)."""

    def __init__(self, result: ProfileResult, reason: str):
        super().__init__(reason)
        self.result = result
        self.reason = reason

    def one_line(self) -> str:
        done = len({r["point"] for r in self.result.rows})
        total = self.result.document["sweep"]["points"]
        what = "interrupted" if self.result.status == "interrupted" else f"failed ({self.reason})"
        return (f"{what} after {done} of {total} point(s); the finished points are in {self.result.paths.json} "
                f"and {self.result.paths.csv}")


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` -> cuda when available, else cpu; `ProfileInputError` for an unusable device."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ProfileInputError(f"--device {device!r} is not a device ({exc}); accepted: auto, cpu, cuda, cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ProfileInputError(f"--device {device}: CUDA is not available here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ProfileInputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif resolved.type != "cpu":
        raise ProfileInputError(f"--device {device}: unsupported device type {resolved.type!r}; accepted: cpu, cuda")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`"auto"` -> bfloat16 on CUDA, float32 on CPU; names from `float32`, `bfloat16`, `float16`."""
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype == "auto":
        resolved = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif dtype in _DTYPES:
        resolved = _DTYPES[dtype]
    else:
        raise ProfileInputError(f"--dtype {dtype!r} is not supported; accepted: auto, {', '.join(_DTYPES)}")
    if resolved not in _DTYPES.values():
        raise ProfileInputError(f"dtype {resolved} is not supported; accepted: {', '.join(_DTYPES)}")
    return resolved


def _resolve_preset(preset: str | ArchPreset, model_dir: str | Path | None) -> ArchPreset:
    if model_dir is not None:
        return preset_from_model_dir(model_dir)
    if isinstance(preset, ArchPreset):
        return preset
    return get_preset(preset)


def _kernel_mode(kernels: str, device: torch.device) -> tuple[str, list[str]]:
    """The mode to force and notes; the Triton interpreter is never timed."""
    from pixelrefer_kernels import interpret_mode

    if kernels not in KERNEL_MODES:
        raise ProfileInputError(f"--kernels {kernels!r} is not supported; accepted: {', '.join(KERNEL_MODES)}")
    if device.type != "cpu":
        return kernels, []
    if kernels == "triton":
        raise ProfileInputError(
            "--kernels triton needs a CUDA device: on the CPU Triton only runs in its interpreter, which is far too slow to time"
        )
    if kernels == "auto" and interpret_mode():
        return "torch", ["Kernels: TRITON_INTERPRET is set; the CPU profile runs the torch paths (interpreter timings are meaningless)."]
    return kernels, []


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{time.time_ns()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ProfileInputError(f"--out: cannot write to {directory} ({exc.strerror or exc})") from None


def _rate(value: float | None, seconds: float | None) -> float | None:
    if value is None or not seconds:
        return None
    return report.finite_or_none(value / seconds)


def _row(context: dict, index: int, point: SweepPoint, outcome: PointOutcome, result: StageResult,
         peaks: DevicePeaks, weights_mb: float | None) -> dict:
    timing, memory, cost = result.timing, result.memory, result.cost
    seconds = timing.median_ms * 1e-3 if timing is not None else None
    gflops = _rate(cost.flops / 1e9, seconds) if cost is not None else None
    bandwidth = _rate(cost.bytes / 1e9, seconds) if cost is not None else None
    row = {
        **context,
        "point": index,
        "variant": point.variant,
        "regions": point.regions,
        "mask_num": point.mask_num,
        "image_width": point.image_size[0],
        "image_height": point.image_size[1],
        "max_tokens": point.max_tokens,
        "frames": point.frames,
        "batch": point.batch,
        "object_tokens": point.object_tokens,
        "image_tokens": outcome.image_tokens,
        "llm_tokens": outcome.llm_tokens,
        "kernels": context["kernels"] + ("; " + ", ".join(f"{k}={v}" for k, v in outcome.kernels.items()) if outcome.kernels else ""),
        "stage": result.stage,
        "status": result.status,
        "message": result.message,
        "tokens": result.tokens,
        "latency_ms": timing.median_ms if timing else None,
        "latency_p20_ms": timing.p20_ms if timing else None,
        "latency_p80_ms": timing.p80_ms if timing else None,
        "latency_min_ms": timing.min_ms if timing else None,
        "latency_max_ms": timing.max_ms if timing else None,
        "repeats": timing.repeats if timing else 0,
        "regions_per_s": _rate(result.regions, seconds),
        "tokens_per_s": _rate(result.tokens, seconds),
        "flops": cost.flops if cost else None,
        "bytes": cost.bytes if cost else None,
        "achieved_gflops": gflops,
        "mfu": report.finite_or_none(gflops / 1e3 / peaks.matmul_tflops) if gflops is not None and peaks.matmul_tflops else None,
        "bandwidth_gbps": bandwidth,
        "bandwidth_util": report.finite_or_none(bandwidth / peaks.copy_gbps) if bandwidth is not None and peaks.copy_gbps else None,
        "mem_peak_mb": memory.peak_mb if memory else None,
        "mem_start_mb": getattr(memory, "start_mb", None),
        "mem_delta_mb": (memory.peak_mb - memory.start_mb) if memory and memory.peak_mb is not None
        and getattr(memory, "start_mb", None) is not None else None,
        "weights_mb": weights_mb,
        "mem_kind": memory.kind if memory else "none",
        "nvml_used_mb": memory.nvml_used_mb if memory else None,
        "shapes": result.shapes,
    }
    return {column: row[column] for column in report.ROW_COLUMNS}


def _summary_row(rows: list[dict], peaks: DevicePeaks) -> dict:
    """The `ttft` row of a point: every stage up to and including the prefill."""
    stages = [r for r in rows if r["stage"] != "decode"]
    ran = [r for r in stages if r["status"] == "ok"]
    blocked = [r for r in stages if r["status"] in ("oom", "error", "unavailable")]
    row = dict(rows[0])
    latency = sum(r["latency_ms"] for r in ran) if ran and not blocked else None
    flop_total = sum(r["flops"] or 0 for r in ran) if ran and not blocked else None
    seconds = latency * 1e-3 if latency else None
    gflops = _rate(flop_total / 1e9, seconds) if flop_total is not None else None
    status = blocked[0]["status"] if blocked else ("ok" if ran else "skipped")
    row.update(
        stage=report.SUMMARY_STAGE, status=status, message=blocked[0]["message"] if blocked else "",
        tokens=rows[0]["llm_tokens"], latency_ms=latency, latency_p20_ms=None, latency_p80_ms=None,
        latency_min_ms=None, latency_max_ms=None, repeats=0,
        regions_per_s=_rate(row["regions"] * row["batch"], seconds), tokens_per_s=None,
        flops=flop_total, bytes=sum(r["bytes"] or 0 for r in ran) if latency else None, achieved_gflops=gflops,
        mfu=report.finite_or_none(gflops / 1e3 / peaks.matmul_tflops) if gflops is not None and peaks.matmul_tflops else None,
        bandwidth_gbps=None, bandwidth_util=None,
        mem_peak_mb=max((r["mem_peak_mb"] for r in rows if r["mem_peak_mb"] is not None), default=None),
        mem_start_mb=None,
        mem_delta_mb=max((r["mem_delta_mb"] for r in rows if r["mem_delta_mb"] is not None), default=None),
        mem_kind=next((r["mem_kind"] for r in rows if r["mem_kind"] != "none"), "none"), nvml_used_mb=None,
        shapes={"stages": [r["stage"] for r in ran]},
    )
    return row


def _failed_outcome(status: str, message: str) -> PointOutcome:
    """A point whose model could not be built: the failure on its first stage, the rest skipped."""
    first, *rest = report.STAGES
    results = [StageResult(first, status, message), *(StageResult(stage, "skipped", f"not run: {message}") for stage in rest)]
    return PointOutcome(results=results)


def run_profile(
    preset: str | ArchPreset = "cpu-default",
    sweep: SweepSpec | None = None,
    *,
    model_dir: str | Path | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    repeats: int = 3,
    warmup: int = 1,
    kernels: str = "auto",
    out_dir: str | Path = "profiles",
    name: str | None = None,
    plots: bool = True,
    progress: bool = False,
    seed: int = 0,
    threads: int | None = None,
    yes: bool = False,
    max_estimate_s: float = DEFAULT_MAX_ESTIMATE_S,
) -> ProfileResult:
    """Profile every stage across the sweep's token budgets with random weights.

    Args:
        preset: a name from `PRESETS` (`cpu-default`, `2b`, `7b`, `lite-2b`, `lite-7b`) or an
            `ArchPreset`.
        sweep: the points (default `SweepSpec()`: R in 1, 4, 16 x K in 8, 16, 32, 64 on a 448x336
            sample, the preset's variants).
        model_dir: a local checkpoint directory; its `config.json` replaces `preset` (no weights read).
        device: `"auto"` (CUDA when available), `"cpu"`, `"cuda[:N]"` or a `torch.device`.
        dtype: `"auto"` (bfloat16 on CUDA, float32 on CPU), `"float32"`, `"bfloat16"`, `"float16"`.
        repeats, warmup: timed and untimed calls per stage.
        kernels: `"auto"`, `"triton"` (CUDA only) or `"torch"`; on CPU under `TRITON_INTERPRET=1`
            auto runs the torch paths.
        out_dir: the files go to `<out_dir>/<device-slug>/`.
        name: the file name part after `profile-` (default: `sweep.sweep_name`, the preset and the
            axes that differ from the default sweep). Existing files are never replaced (`-2`, ...).
        plots: write the PNG (needs matplotlib; without it a note says so and JSON/CSV are still written).
        progress: a tqdm progress bar over the points on stderr, showing the stage and call within a point.
        seed: the sample layout and the weights, 0 .. 2**32 - 1.
        threads: CPU threads for torch (`torch.set_num_threads`) during the profile, at most the CPUs
            here. None: 1 on CPU (steady timings even on a machine busy with other jobs, where OpenMP
            threads that wait for each other make 2-thread runs several times slower), torch's default on CUDA.
        yes: run even when the estimate (`estimate.estimate_run`) is over `max_estimate_s` or over
            the free memory.
        max_estimate_s: the longest estimated run that starts without `yes`.

    Returns:
        `ProfileResult` (document, rows, paths, table). Points that run out of memory are rows with
        status `oom`; the sweep goes on. Each point's rows are appended to `paths.rows` when it finishes.

    Raises:
        ProfileInputError: unknown preset, empty sweep, a budget over the model's limits, a missing
            checkpoint directory, an unwritable `out_dir`, bad repeats/device/dtype/kernels/threads/seed,
            or an estimate over the limits without `yes`.
        ProfileStopped: Ctrl-C or an unexpected error stopped the sweep; its `result` holds the
            finished points, written to the JSON/CSV/PNG like a complete run (status `interrupted` /
            `failed`).
    """
    started = time.perf_counter()
    arch = _resolve_preset(preset, model_dir)
    sweep = sweep or SweepSpec()
    points = sweep.points(arch)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ProfileInputError(f"--repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ProfileInputError(f"--warmup must be an integer >= 0, got {warmup!r}")
    cpus = os.cpu_count() or 1
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cpus):
        raise ProfileInputError(f"--threads must be an integer in 1..{cpus} (the CPUs here), got {threads!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ProfileInputError(f"--seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    mode, notes = _kernel_mode(kernels, device)
    machine = machine_info(device)
    slug = device_slug(machine)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    name = name if name is not None else sweep_name(arch.name, sweep, arch.default_variants)
    if not name.strip():
        raise ProfileInputError("--name must not be empty")
    paths = report.output_paths(out_dir, slug, date, machine["git_sha"], name)
    _check_writable(paths.json.parent)

    default_threads = torch.get_num_threads()
    if threads is None and device.type == "cpu":
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        estimate = estimate_run(arch, points, decode_tokens=sweep.decode_tokens, repeats=repeats, warmup=warmup,
                                device=device, dtype=dtype)
        problems = []
        if estimate.seconds > max_estimate_s:
            problems.append(f"over {max_estimate_s / 60:.0f} min")
        if not estimate.fits:
            problems.append("over the free memory")
        if problems and not yes:
            raise ProfileInputError(f"this profile is estimated at {estimate.describe()}: {' and '.join(problems)}; "
                                    "pass --yes to run it anyway, or use fewer points, repeats or a smaller preset")
        notes.append(f"Estimated {estimate.describe()}.")
        if device.type == "cpu":
            notes.append(f"CPU threads: {torch.get_num_threads()} (--threads N to change).")
        return _sweep(arch, sweep, points, device, dtype, mode, notes, machine, paths, repeats, warmup, plots, progress,
                      seed, started, estimate)
    finally:
        torch.set_num_threads(default_threads)


def _document(arch, sweep, points, device, dtype_name, mode, machine, peaks, repeats, warmup, seed, rows, status) -> dict:
    return {
        "schema_version": report.SCHEMA_VERSION,
        "kind": "pixelrefer_fast.profile",
        "status": status,
        "machine": machine,
        "preset": arch.to_dict(),
        "settings": {"device": str(device), "dtype": dtype_name, "repeats": repeats, "warmup": warmup, "kernels": mode,
                     "threads": torch.get_num_threads(),
                     "seed": seed, "decode_tokens": sweep.decode_tokens, "decoding": sweep.decoding,
                     "timing": "CUDA events around each call, device synchronised" if device.type == "cuda" else "time.perf_counter"},
        "sweep": {"variants": list(dict.fromkeys(p.variant for p in points)), "regions": list(sweep.regions),
                  "mask_nums": list(sweep.mask_nums), "image_sizes": [list(s) for s in sweep.image_sizes],
                  "max_tokens": list(sweep.max_tokens), "frames": list(sweep.frames), "batches": list(sweep.batches),
                  "points": len(points)},
        "flop_convention": FLOP_CONVENTION,
        "bytes_convention": BYTES_CONVENTION,
        "device_peaks": peaks.to_dict(),
        "wall_time_s": 0.0,
        "rows": rows,
    }


def _weights_mb(model: torch.nn.Module) -> float:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _sweep(arch, sweep, points, device, dtype, mode, notes, machine, paths, repeats, warmup, plots, show_progress, seed,
           started, estimate) -> ProfileResult:
    import pixelrefer_kernels

    machine["cpu_threads"] = torch.get_num_threads()
    peaks = measure_peaks(device, dtype)
    dtype_name = str(dtype).replace("torch.", "")
    context = {key: str(machine.get(key, "")) for key in ("timestamp", "git_sha", "gpu", "device", "torch", "transformers", "triton")}
    context.update(dtype=dtype_name, preset=arch.name, kernels=mode, threads=torch.get_num_threads())

    rows: list[dict] = []
    bar = _progress(len(points), show_progress)
    status, reason = "complete", ""
    try:
        with pixelrefer_kernels.force(mode):
            for variant in dict.fromkeys(p.variant for p in points):
                indexed = [(i, p) for i, p in enumerate(points) if p.variant == variant]
                bar.set_description(f"{variant}: building the model")
                built, failure = _build(arch, variant, device, dtype, seed)
                weights_mb = _weights_mb(built.model) if built is not None else None
                for index, point in indexed:
                    where = f"{variant} R={point.regions} K={point.mask_num} T={point.frames} B={point.batch}"
                    bar.set_description(where)
                    if built is None:
                        outcome = _failed_outcome(*failure)
                    else:
                        with progress.listening(_point_progress(bar, where)):
                            outcome = run_point(built, arch, point, warmup=warmup, repeats=repeats,
                                                decode_tokens=sweep.decode_tokens, seed=seed, decoding=sweep.decoding)
                    point_rows = [_row(context, index, point, outcome, result, peaks, weights_mb) for result in outcome.results]
                    point_rows.append(_summary_row(point_rows, peaks))
                    report.append_rows(point_rows, paths.rows)
                    rows += point_rows
                    bar.update(1)
                del built
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    except KeyboardInterrupt:
        status, reason = "interrupted", "KeyboardInterrupt"
    except Exception as exc:  # a bug outside a stage: keep what finished, then report it
        logger.debug("the sweep failed", exc_info=True)
        status, reason = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    finally:
        bar.close()

    document = _document(arch, sweep, points, device, dtype_name, mode, machine, peaks, repeats, warmup, seed, rows, status)
    if status != "complete":
        notes.append(f"Stopped early ({status}: {reason}): {len({r['point'] for r in rows})} of {len(points)} points finished.")
    png = None
    if plots and rows:
        try:
            png = report.plot(rows, paths.png, title=report.plot_title(document))
        except ImportError as exc:
            notes.append(f"Plots skipped: {exc}")
    document["wall_time_s"] = round(time.perf_counter() - started, 2)
    report.write_json(document, paths.json)
    report.write_csv(rows, paths.csv)
    table = report.format_table(rows, cuda=device.type == "cuda")
    result = ProfileResult(document=document, rows=rows, paths=paths, png=png, table=table, notes=notes, estimate=estimate)
    if status != "complete":
        raise ProfileStopped(result, reason)
    return result


def _point_progress(bar, where: str):
    """A `progress` listener that shows the stage and call inside the current point."""
    def show(stage: str, done: int, total: int) -> None:
        bar.set_description(f"{where} {stage}" + (f" {done}/{total}" if total else ""))

    return show


def _build(arch: ArchPreset, variant: str, device: torch.device, dtype: torch.dtype, seed: int):
    """The model of `variant`, or `(None, (status, message))` when it cannot be built."""
    try:
        return build_model(arch, variant, device, dtype, seed=seed), None
    except out_of_memory_errors() as exc:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None, ("oom", f"building the {variant} model ran out of memory: {str(exc).splitlines()[0] if str(exc) else ''}")
    except ImportError as exc:
        return None, ("unavailable", f"the {variant} model cannot be built: {exc}")


class _NoBar:
    def set_description(self, text: str) -> None:
        pass

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="point", leave=False)
