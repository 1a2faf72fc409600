"""Profile output: the terminal table, JSON, CSV and PNG plots.

One row per (sweep point, stage); every row carries the card, versions, git SHA, preset, device,
dtype and the point's settings, so a CSV line stands on its own (`ROW_SCHEMA` lists the columns
and their types; `validate_rows` checks them before anything is written). The JSON document adds
the machine description, the preset's shapes, the settings, the FLOPs convention and the device's
measured peaks (`DOCUMENT_KEYS`).

Files go to `<out>/<device-slug>/<YYYY-MM-DD>_<sha>_profile-<name>.{json,csv,png}` (style guide
section 8), `<name>` being `--name` or the preset plus the axes that differ from the default sweep
(`sweep_name`); an existing file is never replaced: the stem gets `-2`, `-3`, ... Rows are also
appended to `<stem>.rows.jsonl` as each point finishes, so an interrupted run keeps them.
`COLUMN_DOCS` explains every column (README's profile section lists them).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("pixelrefer_fast.profiling")

SCHEMA_VERSION = 2
STAGES = ("preprocess", "vision", "projector", "region", "infusion", "prefill", "decode")
SUMMARY_STAGE = "ttft"
STATUSES = ("ok", "oom", "skipped", "unavailable", "error")

_OPT_INT = (int, type(None))
_OPT_FLOAT = (float, int, type(None))

# column -> accepted Python types (JSON null is None; CSV writes it as an empty cell)
ROW_SCHEMA: dict[str, tuple[type, ...]] = {
    # provenance
    "timestamp": (str,),
    "git_sha": (str,),
    "gpu": (str,),
    "device": (str,),
    "dtype": (str,),
    "torch": (str,),
    "transformers": (str,),
    "triton": (str,),
    "preset": (str,),
    "kernels": (str,),
    "threads": (int,),
    # sweep point
    "point": (int,),
    "variant": (str,),
    "regions": (int,),
    "mask_num": (int,),
    "image_width": (int,),
    "image_height": (int,),
    "max_tokens": _OPT_INT,
    "frames": (int,),
    "batch": (int,),
    "object_tokens": (int,),
    "image_tokens": _OPT_INT,
    "llm_tokens": _OPT_INT,
    # stage
    "stage": (str,),
    "status": (str,),
    "message": (str,),
    "tokens": _OPT_INT,
    "latency_ms": _OPT_FLOAT,
    "latency_p20_ms": _OPT_FLOAT,
    "latency_p80_ms": _OPT_FLOAT,
    "latency_min_ms": _OPT_FLOAT,
    "latency_max_ms": _OPT_FLOAT,
    "repeats": (int,),
    "regions_per_s": _OPT_FLOAT,
    "tokens_per_s": _OPT_FLOAT,
    "flops": _OPT_INT,
    "bytes": _OPT_INT,
    "achieved_gflops": _OPT_FLOAT,
    "mfu": _OPT_FLOAT,
    "bandwidth_gbps": _OPT_FLOAT,
    "bandwidth_util": _OPT_FLOAT,
    "mem_peak_mb": _OPT_FLOAT,
    "mem_start_mb": _OPT_FLOAT,
    "mem_delta_mb": _OPT_FLOAT,
    "weights_mb": _OPT_FLOAT,
    "mem_kind": (str,),
    "nvml_used_mb": _OPT_FLOAT,
    "shapes": (dict,),
}
ROW_COLUMNS = tuple(ROW_SCHEMA)

# column -> what it holds (the README's profile section shows this table)
COLUMN_DOCS: dict[str, str] = {
    "timestamp": "when the profile started (UTC, ISO 8601)",
    "git_sha": "commit of the code that ran",
    "gpu": "CUDA card name, or none",
    "device": "torch device of the models",
    "dtype": "model dtype",
    "torch": "torch version",
    "transformers": "transformers version",
    "triton": "triton version",
    "preset": "architecture preset (or model:NAME for --model DIR)",
    "kernels": "kernel mode, then the backend each op took at this point",
    "threads": "torch CPU threads during the profile",
    "point": "index of the sweep point (rows of one point share it)",
    "variant": "full (PixelRefer) or lite (PixelRefer-Lite)",
    "regions": "R, regions (masks) per item",
    "mask_num": "K, tokens per region",
    "image_width": "sample image width in pixels",
    "image_height": "sample image height in pixels",
    "max_tokens": "processor vision-token budget (empty: the model's mm_max_length)",
    "frames": "1 = image, n > 1 = video of n frames",
    "batch": "items per call",
    "object_tokens": "object-token budget of one item (crops x K)",
    "image_tokens": "global image tokens the LLM sees per item (0 for Lite)",
    "llm_tokens": "prompt length of the batch (padded)",
    "stage": "preprocess, vision, projector, region, infusion, prefill, decode, or ttft (sum up to prefill)",
    "status": "ok, oom, skipped, unavailable (a missing package) or error",
    "message": "why the stage did not run (empty when ok)",
    "tokens": "rows the stage produced or consumed (patches, object tokens, sequence, new tokens)",
    "latency_ms": "median latency of the timed calls (decode: all new tokens)",
    "latency_p20_ms": "20th percentile of the timed calls",
    "latency_p80_ms": "80th percentile of the timed calls",
    "latency_min_ms": "fastest timed call",
    "latency_max_ms": "slowest timed call",
    "repeats": "timed calls",
    "regions_per_s": "regions handled per second at the median",
    "tokens_per_s": "tokens per second at the median",
    "flops": "analytic FLOPs of one call (2 per multiply-add)",
    "bytes": "analytic bytes moved by one call (weights + activations read and written)",
    "achieved_gflops": "flops / median latency",
    "mfu": "CUDA: achieved / measured GEMM peak of this card",
    "bandwidth_gbps": "bytes / median latency",
    "bandwidth_util": "CUDA: achieved / measured copy bandwidth of this card",
    "mem_peak_mb": "peak during the stage: CUDA allocator bytes (weights included), CPU process RSS (torch itself included)",
    "mem_start_mb": "the same quantity when the stage began",
    "mem_delta_mb": "mem_peak_mb - mem_start_mb: what the stage itself added (CPU: RSS growth)",
    "weights_mb": "bytes of the model's parameters and buffers",
    "mem_kind": "what mem_peak_mb measures: cuda_allocator_peak, process_rss_peak (psutil sampling) or process_peak_rss (high-water mark)",
    "nvml_used_mb": "CUDA: device-wide used memory after the stage (NVML)",
    "shapes": "the stage's input shapes (JSON)",
}

# the terminal table's columns (`format_table`), explained under it
TABLE_LEGEND = (
    "Columns: R regions per item, K tokens per region, image WxH (<= vision-token budget), T frames, B items per call; "
    "obj tok = object-token budget per item, LLM tok = prompt length; pre/vision/proj/region/infuse/prefill = median ms "
    "of each stage, decode = ms per generated token; TTFT = the stages up to prefill; GFLOP = analytic FLOPs to the "
    "first token; the rate is GFLOP/s (CUDA: TFLOP/s with MFU); mem = the largest per-stage memory delta (CPU: RSS "
    "growth during a stage, MiB; CUDA: allocator peak over the weights, MiB)."
)

# top-level keys of the JSON document -> type
DOCUMENT_KEYS: dict[str, type] = {
    "schema_version": int,
    "kind": str,
    "status": str,
    "machine": dict,
    "preset": dict,
    "settings": dict,
    "sweep": dict,
    "flop_convention": str,
    "bytes_convention": str,
    "device_peaks": dict,
    "wall_time_s": float,
    "rows": list,
}


class ReportSchemaError(ValueError):
    """A row or document does not match `ROW_SCHEMA` / `DOCUMENT_KEYS`."""


def validate_rows(rows: Sequence[dict]) -> None:
    """Raise `ReportSchemaError` naming the first row and column that is missing, extra or mistyped."""
    for index, row in enumerate(rows):
        missing = [k for k in ROW_SCHEMA if k not in row]
        extra = [k for k in row if k not in ROW_SCHEMA]
        if missing or extra:
            raise ReportSchemaError(f"row {index}: missing columns {missing}, unknown columns {extra}")
        for key, types in ROW_SCHEMA.items():
            value = row[key]
            if isinstance(value, bool) or not isinstance(value, types):
                names = ", ".join("null" if t is type(None) else t.__name__ for t in types)
                raise ReportSchemaError(f"row {index}: column {key!r} = {value!r} is not of type {names}")
        if row["status"] not in STATUSES:
            raise ReportSchemaError(f"row {index}: status {row['status']!r} not in {STATUSES}")
        if row["stage"] not in (*STAGES, SUMMARY_STAGE):
            raise ReportSchemaError(f"row {index}: stage {row['stage']!r} not in {(*STAGES, SUMMARY_STAGE)}")


def validate_document(document: dict) -> None:
    """Check the JSON document's top-level keys and types, then its rows."""
    for key, kind in DOCUMENT_KEYS.items():
        if key not in document:
            raise ReportSchemaError(f"profile document misses key {key!r}")
        value = document[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, kind):
            raise ReportSchemaError(f"profile document key {key!r} = {value!r} is not a {kind.__name__}")
    if document["status"] not in DOCUMENT_STATUSES:
        raise ReportSchemaError(f"profile document status {document['status']!r} not in {DOCUMENT_STATUSES}")
    validate_rows(document["rows"])


DOCUMENT_STATUSES = ("complete", "interrupted", "failed")


@dataclass(frozen=True)
class OutputPaths:
    """Where one profile's files go: the final JSON, CSV and PNG, and the rows appended per point."""

    json: Path
    csv: Path
    png: Path
    rows: Path

    def all(self) -> tuple[Path, ...]:
        return (self.json, self.csv, self.png, self.rows)


def _file_safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text)


def output_paths(out_dir: str | Path, slug: str, date: str, sha: str, name: str) -> OutputPaths:
    """`<out_dir>/<slug>/<date>_<sha>_profile-<name>[-N].{json,csv,png,rows.jsonl}` (name made file-safe).

    `-N` (2, 3, ...) is added when any of the four files already exists, so nothing is overwritten.
    """
    base = Path(out_dir) / slug / f"{date}_{sha}_profile-{_file_safe(name)}"
    suffix = 1
    while True:
        stem = base if suffix == 1 else base.with_name(f"{base.name}-{suffix}")
        paths = OutputPaths(json=stem.with_name(stem.name + ".json"), csv=stem.with_name(stem.name + ".csv"),
                            png=stem.with_name(stem.name + ".png"), rows=stem.with_name(stem.name + ".rows.jsonl"))
        if not any(path.exists() for path in paths.all()):
            return paths
        suffix += 1


def append_rows(rows: Sequence[dict], path: Path) -> Path:
    """Validate `rows` and append them to the JSON-lines file `path` (one row per line), flushed."""
    validate_rows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()
    return path


def read_rows(path: Path) -> list[dict]:
    """The rows of a `.rows.jsonl` file (what an interrupted profile kept)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_json(document: dict, path: Path) -> Path:
    """Validate and write the profile document (indented JSON)."""
    validate_document(document)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, sort_keys=False, default=str) + "\n")
    return path


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    """Validate and write the rows as CSV with `ROW_COLUMNS` in order (null -> empty cell)."""
    validate_rows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(ROW_COLUMNS)
        for row in rows:
            writer.writerow([_csv_cell(row[k]) for k in ROW_COLUMNS])
    return path


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _point_rows(rows: Sequence[dict]) -> dict[int, dict[str, dict]]:
    points: dict[int, dict[str, dict]] = {}
    for row in rows:
        points.setdefault(row["point"], {})[row["stage"]] = row
    return points


def _stage_cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["status"] == "ok":
        if row["stage"] == "decode" and row["tokens"]:
            cell = _fmt_ms(row["latency_ms"] / row["tokens"] * row["batch"]) + "/t"
            if row["bandwidth_util"] is not None:
                cell += f" ({row['bandwidth_util'] * 100:.0f}% bw)"
            return cell
        return _fmt_ms(row["latency_ms"])
    return {"oom": "OOM", "skipped": "skip", "unavailable": "n/a", "error": "ERR"}[row["status"]]


def format_table(rows: Sequence[dict], *, cuda: bool) -> str:
    """One line per sweep point: settings, median ms per stage, time to first token, FLOPs, rate, memory.

    `decode` shows ms per generated token (`/t`), on CUDA with its memory-bandwidth use against
    the measured copy bandwidth (weights + KV cache bytes per second). On CUDA the rate column is
    TFLOP/s of the time-to-first-token work with MFU against the measured GEMM peak; on CPU GFLOP/s.
    """
    header = ["variant", "R", "K", "image", "T", "B", "obj tok", "LLM tok", "pre", "vision", "proj", "region", "infuse",
              "prefill", "decode", "TTFT ms", "GFLOP", "TFLOP/s (MFU)" if cuda else "GFLOP/s",
              "mem MiB (alloc over weights)" if cuda else "mem MiB (RSS growth)"]
    lines = [header]
    for _, stages in sorted(_point_rows(rows).items()):
        summary = stages.get(SUMMARY_STAGE)
        first = summary or next(iter(stages.values()))
        peak = max((m for r in stages.values() if r["stage"] != SUMMARY_STAGE and (m := stage_memory_mb(r)) is not None), default=None)
        rate = "-"
        if summary is not None and summary["achieved_gflops"] is not None:
            if cuda:
                mfu = f" ({summary['mfu'] * 100:.0f}%)" if summary["mfu"] is not None else ""
                rate = f"{summary['achieved_gflops'] / 1e3:.1f}{mfu}"
            else:
                rate = f"{summary['achieved_gflops']:.1f}"
        size = f"{first['image_width']}x{first['image_height']}"
        if first["max_tokens"] is not None:
            size += f"<={first['max_tokens']}"
        lines.append([
            first["variant"], str(first["regions"]), str(first["mask_num"]), size, str(first["frames"]), str(first["batch"]),
            str(first["object_tokens"]), "-" if first["llm_tokens"] is None else str(first["llm_tokens"]),
            *(_stage_cell(stages.get(stage)) for stage in STAGES),
            "-" if summary is None else (_fmt_ms(summary["latency_ms"]) if summary["status"] == "ok" else _stage_cell(summary)),
            "-" if summary is None or summary["flops"] is None else f"{summary['flops'] / 1e9:.1f}",
            rate,
            "-" if peak is None else f"{peak:.0f}",
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def failures(rows: Sequence[dict]) -> list[str]:
    """One line per stage that did not run (OOM, error, missing module), for the end of the report."""
    lines = []
    for row in rows:
        if row["status"] in ("oom", "error", "unavailable") and row["stage"] != SUMMARY_STAGE:
            lines.append(f"point {row['point']} ({row['variant']}, R={row['regions']}, K={row['mask_num']}) "
                         f"{row['stage']}: {row['status']}: {row['message']}")
    return lines


def stage_memory_mb(row: dict) -> float | None:
    """The memory a stage row is plotted and tabulated with: on CUDA the allocator peak over the
    weights, on CPU the RSS growth during the stage (`mem_delta_mb`); None when not measured."""
    if row["mem_kind"] == "cuda_allocator_peak":
        if row["mem_peak_mb"] is None or row["weights_mb"] is None:
            return None
        return max(row["mem_peak_mb"] - row["weights_mb"], 0.0)
    return row["mem_delta_mb"]


# fixed stage colours (matplotlib's tab10 order), the same in every run
STAGE_COLOURS = {"preprocess": "#7f7f7f", "vision": "#1f77b4", "projector": "#17becf", "region": "#ff7f0e",
                 "infusion": "#9467bd", "prefill": "#2ca02c", "decode": "#d62728"}
# sweep axes other than R (the x axis), with their label in the legend
SERIES_AXES = (("variant", "{}"), ("mask_num", "K={}"), ("image", "{}"), ("max_tokens", "<={}"), ("frames", "T={}"),
               ("batch", "B={}"))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _axis_value(row: dict, axis: str):
    if axis == "image":
        return f"{row['image_width']}x{row['image_height']}"
    return row[axis]


def swept_axes(rows: Sequence[dict]) -> list[str]:
    """The `SERIES_AXES` that take more than one value in `rows` (the series differ in these)."""
    return [axis for axis, _ in SERIES_AXES if len({_axis_value(r, axis) for r in rows}) > 1]


def _sort_key(values: tuple) -> tuple:
    """Numbers in numeric order, then text (None first)."""
    return tuple((0, 0.0, "") if v is None else (1, float(v), "") if isinstance(v, (int, float)) else (2, 0.0, str(v))
                 for v in values)


def _series_label(key: tuple, axes: list[str]) -> str:
    formats = dict(SERIES_AXES)
    return " ".join(formats[axis].format(value) for axis, value in zip(axes, key)) or "all points"


def build_figure(rows: Sequence[dict], *, title: str):
    """The profile figure (`matplotlib.figure.Figure`); `plot` saves it.

    Panels: time to first token (median, p20-p80 band: the sums of the stages' p20 and p80) and FLOPs
    against object tokens, one series per combination of the swept axes other than R (colour: the
    series; marker: the image size / frames / batch / budget combination; dashed: Lite; every swept
    value in the label); the memory of each stage per point (CUDA: allocator peak over the weights;
    CPU: RSS growth during the stage); the stage breakdown of every point with p20-p80 whiskers.
    Stage colours are fixed (`STAGE_COLOURS`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = _point_rows(rows)
    summaries = [stages[SUMMARY_STAGE] for stages in points.values() if SUMMARY_STAGE in stages]
    axes_swept = swept_axes(summaries)
    series: dict[tuple, list[tuple[int, dict]]] = {}
    for summary in summaries:
        key = tuple(_axis_value(summary, axis) for axis in axes_swept)
        series.setdefault(key, []).append((summary["object_tokens"], points[summary["point"]]))
    shape_axes = [a for a in axes_swept if a not in ("variant", "mask_num")]
    shapes = sorted({tuple(_axis_value(s, a) for a in shape_axes) for s in summaries}, key=_sort_key)
    colours = plt.get_cmap("tab20" if len(series) > 10 else "tab10")

    fig = plt.figure(figsize=(20, 10.5), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    ax_lat, ax_flops, ax_mem = (fig.add_subplot(grid[0, i]) for i in range(3))
    ax_stage = fig.add_subplot(grid[1, :])
    for index, (key, values) in enumerate(sorted(series.items(), key=lambda kv: _sort_key(kv[0]))):
        values.sort(key=lambda v: v[0])
        values_of = dict(zip(axes_swept, key))
        shape = tuple(values_of[a] for a in shape_axes)
        style = dict(color=colours(index % colours.N), marker=_MARKERS[shapes.index(shape) % len(_MARKERS)],
                     linestyle="--" if values_of.get("variant", values[0][1][SUMMARY_STAGE]["variant"]) == "lite" else "-",
                     label=_series_label(key, axes_swept))
        ok = [(x, stages) for x, stages in values if stages[SUMMARY_STAGE]["status"] == "ok"]
        xs = [x for x, _ in ok]
        ax_lat.plot(xs, [stages[SUMMARY_STAGE]["latency_ms"] for _, stages in ok], **style)
        timed = [[r for n, r in stages.items() if n not in (SUMMARY_STAGE, "decode") and r["status"] == "ok"] for _, stages in ok]
        low = [sum(r["latency_p20_ms"] or 0 for r in rows) for rows in timed]
        high = [sum(r["latency_p80_ms"] or 0 for r in rows) for rows in timed]
        if xs:
            ax_lat.fill_between(xs, low, high, color=style["color"], alpha=0.15, linewidth=0)
        flops = [(x, stages[SUMMARY_STAGE]["flops"]) for x, stages in values if stages[SUMMARY_STAGE]["flops"] is not None]
        ax_flops.plot([x for x, _ in flops], [f / 1e9 for _, f in flops], **style)
    for axis, ylabel, name in ((ax_lat, "time to first token (ms): median, band p20-p80", "latency"),
                               (ax_flops, "GFLOP to the first token (2 per multiply-add)", "FLOPs")):
        axis.set_xlabel("object tokens per item (regions x K); dashed: Lite")
        axis.set_ylabel(ylabel)
        axis.set_xscale("log", base=2)
        axis.set_title(f"{name} vs object tokens" + (f" (series: {', '.join(axes_swept)})" if axes_swept else ""))
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)

    ordered = sorted(points.items())
    labels = []
    for _, stages in ordered:
        first = next(iter(stages.values()))
        label = f"{first['variant'][0]} R{first['regions']} K{first['mask_num']}"
        label += "".join(" " + dict(SERIES_AXES)[a].format(_axis_value(first, a)) for a in shape_axes)
        labels.append(label)
    cuda = any(r["mem_kind"] == "cuda_allocator_peak" for r in rows)
    for stage in STAGES:
        memory = [(i, stage_memory_mb(stages[stage])) for i, (_, stages) in enumerate(ordered)
                  if stage in stages and stages[stage]["status"] == "ok"]
        memory = [(i, m) for i, m in memory if m is not None]
        if memory:
            ax_mem.plot([i for i, _ in memory], [m for _, m in memory], marker="o", linestyle="-",
                        color=STAGE_COLOURS[stage], label=stage)
    ax_mem.set_xticks(range(len(ordered)), labels, rotation=90, fontsize=6)
    ax_mem.set_ylabel("MiB: CUDA allocator peak over the weights" if cuda else "MiB: process RSS growth during the stage (CPU)")
    ax_mem.set_title("memory per stage" + ("" if cuda else " (CPU RSS delta, not a device-memory peak)"))
    ax_mem.grid(True, alpha=0.3)
    ax_mem.legend(fontsize=7)

    bottoms = [0.0] * len(ordered)
    for stage in STAGES:
        rows_of = [stages.get(stage) for _, stages in ordered]
        heights = [r["latency_ms"] if r is not None and r["status"] == "ok" else 0.0 for r in rows_of]
        if not any(heights):
            continue
        centres = [b + h for b, h in zip(bottoms, heights)]
        lower = [max(h - (r["latency_p20_ms"] or h), 0.0) if h else 0.0 for r, h in zip(rows_of, heights)]
        upper = [max((r["latency_p80_ms"] or h) - h, 0.0) if h else 0.0 for r, h in zip(rows_of, heights)]
        ax_stage.bar(range(len(ordered)), heights, bottom=bottoms, color=STAGE_COLOURS[stage], label=stage,
                     yerr=[lower, upper], error_kw={"elinewidth": 0.6, "capsize": 1.5, "ecolor": "black"})
        bottoms = centres
    ax_stage.set_xticks(range(len(ordered)), labels, rotation=90, fontsize=6)
    ax_stage.set_ylabel("ms (median per stage, whiskers p20-p80; decode: all new tokens)")
    ax_stage.set_title("stage breakdown per point")
    ax_stage.legend(fontsize=7, ncols=len(STAGES))
    fig.suptitle(title, fontsize=10)
    return fig


def plot(rows: Sequence[dict], path: Path, *, title: str) -> Path:
    """Write `build_figure(rows, title=title)` as a PNG at `path`.

    Raises `ImportError` with an install hint when matplotlib is missing.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install matplotlib (or pass --no-plots)") from exc
    import matplotlib.pyplot as plt

    fig = build_figure(rows, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_title(document: dict) -> str:
    """`pixelrefer-fast profile: <preset> on <device> (<dtype>, <threads> threads), <date>, git <sha>`."""
    machine, settings = document["machine"], document["settings"]
    where = machine.get("gpu") if str(settings.get("device", "")).startswith("cuda") else f"CPU ({machine.get('cpu', '')})"
    status = "" if document.get("status", "complete") == "complete" else f" [{document['status']}]"
    return (f"pixelrefer-fast profile: {document['preset']['name']} on {where} ({settings['dtype']}, "
            f"{settings['threads']} threads, kernels {settings['kernels']}), {machine['timestamp'][:10]}, "
            f"git {machine['git_sha']}{status}")


def finite_or_none(value: float | None) -> float | None:
    """`value` unless it is None, NaN or infinite (JSON has no NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
