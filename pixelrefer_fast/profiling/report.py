"""Profile output: the terminal table, JSON, CSV and PNG plots.

One row per (sweep point, stage); every row carries the card, versions, git SHA, preset, device,
dtype and the point's settings, so a CSV line stands on its own (``ROW_SCHEMA`` lists the columns
and their types; ``validate_rows`` checks them before anything is written). The JSON document adds
the machine description, the preset's shapes, the settings, the FLOPs convention and the device's
measured peaks (``DOCUMENT_KEYS``).

Files go to ``<out>/<device-slug>/<YYYY-MM-DD>_<sha>_profile-<preset>.{json,csv,png}`` (style guide
section 8); a rerun on the same day and commit replaces them.
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

SCHEMA_VERSION = 1
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
    "mem_kind": (str,),
    "nvml_used_mb": _OPT_FLOAT,
    "shapes": (dict,),
}
ROW_COLUMNS = tuple(ROW_SCHEMA)

# top-level keys of the JSON document -> type
DOCUMENT_KEYS: dict[str, type] = {
    "schema_version": int,
    "kind": str,
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
    """A row or document does not match ``ROW_SCHEMA`` / ``DOCUMENT_KEYS``."""


def validate_rows(rows: Sequence[dict]) -> None:
    """Raise ``ReportSchemaError`` naming the first row and column that is missing, extra or mistyped."""
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
    validate_rows(document["rows"])


@dataclass(frozen=True)
class OutputPaths:
    """Where one profile's files go."""

    json: Path
    csv: Path
    png: Path


def output_paths(out_dir: str | Path, slug: str, date: str, sha: str, preset: str) -> OutputPaths:
    """``<out_dir>/<slug>/<date>_<sha>_profile-<preset>.{json,csv,png}`` (preset made file-safe)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in preset)
    stem = Path(out_dir) / slug / f"{date}_{sha}_profile-{safe}"
    return OutputPaths(json=stem.with_suffix(".json"), csv=stem.with_suffix(".csv"), png=stem.with_suffix(".png"))


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
    """Validate and write the rows as CSV with ``ROW_COLUMNS`` in order (null -> empty cell)."""
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

    ``decode`` shows ms per generated token (``/t``), on CUDA with its memory-bandwidth use against
    the measured copy bandwidth (weights + KV cache bytes per second). On CUDA the rate column is
    TFLOP/s of the time-to-first-token work with MFU against the measured GEMM peak; on CPU GFLOP/s.
    """
    header = ["variant", "R", "K", "image", "T", "B", "obj tok", "LLM tok", "pre", "vision", "proj", "region", "infuse",
              "prefill", "decode", "TTFT ms", "GFLOP", "TFLOP/s (MFU)" if cuda else "GFLOP/s", "peak MiB"]
    lines = [header]
    for _, stages in sorted(_point_rows(rows).items()):
        summary = stages.get(SUMMARY_STAGE)
        first = summary or next(iter(stages.values()))
        peak = max((r["mem_peak_mb"] for r in stages.values() if r["mem_peak_mb"] is not None), default=None)
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


def plot(rows: Sequence[dict], path: Path, *, title: str) -> Path:
    """PNG with three panels: time to first token and FLOPs vs object tokens (one line per variant and
    mask_num, Lite dashed), and the stage breakdown of every point.

    Raises ``ImportError`` with an install hint when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install matplotlib (or pass --no-plots)") from exc

    points = _point_rows(rows)
    series: dict[tuple, list[tuple[int, float | None, float | None]]] = {}
    for stages in points.values():
        summary = stages.get(SUMMARY_STAGE)
        if summary is None:
            continue
        key = (summary["variant"], summary["mask_num"], summary["image_width"], summary["image_height"],
               summary["max_tokens"], summary["frames"], summary["batch"])
        latency = summary["latency_ms"] if summary["status"] == "ok" else None
        series.setdefault(key, []).append((summary["object_tokens"], latency, summary["flops"]))

    fig, (ax_lat, ax_flops, ax_stage) = plt.subplots(1, 3, figsize=(18, 5.2))
    mask_nums = sorted({key[1] for key in series})
    colours = plt.get_cmap("viridis")
    ordered_series = sorted(series.items(), key=lambda kv: tuple(0 if v is None else v for v in kv[0]))
    for (variant, mask_num, width, height, max_tokens, frames, batch), values in ordered_series:
        values.sort(key=lambda v: v[0])
        label = f"{variant} K={mask_num} {width}x{height}" + (f"<={max_tokens}" if max_tokens else "")
        label += (f" T={frames}" if frames > 1 else "") + (f" B={batch}" if batch > 1 else "")
        style = dict(marker="o" if variant == "full" else "s", linestyle="-" if variant == "full" else "--",
                     color=colours(mask_nums.index(mask_num) / max(len(mask_nums) - 1, 1) * 0.85), label=label)
        xs = [v[0] for v in values if v[1] is not None]
        ax_lat.plot(xs, [v[1] for v in values if v[1] is not None], **style)
        xs = [v[0] for v in values if v[2] is not None]
        ax_flops.plot(xs, [v[2] / 1e9 for v in values if v[2] is not None], **style)
    for axis, ylabel, name in ((ax_lat, "time to first token (ms, median)", "latency"), (ax_flops, "GFLOP (2 per multiply-add)", "FLOPs")):
        axis.set_xlabel("object tokens (regions x mask_num); solid: full, dashed: Lite")
        axis.set_ylabel(ylabel)
        axis.set_xscale("log", base=2)
        axis.set_title(f"{name} vs object tokens")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)

    ordered = sorted(points.items())
    bottoms = [0.0] * len(ordered)
    for stage in STAGES:
        heights = []
        for _, stages in ordered:
            row = stages.get(stage)
            heights.append(row["latency_ms"] if row is not None and row["status"] == "ok" else 0.0)
        if any(heights):
            ax_stage.bar(range(len(ordered)), heights, bottom=bottoms, label=stage)
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    labels = []
    for _, stages in ordered:
        first = next(iter(stages.values()))
        labels.append(f"{first['variant'][0]} R{first['regions']} K{first['mask_num']}")
    ax_stage.set_xticks(range(len(ordered)), labels, rotation=90, fontsize=6)
    ax_stage.set_ylabel("ms (median per stage; decode: all new tokens)")
    ax_stage.set_title("stage breakdown per point")
    ax_stage.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finite_or_none(value: float | None) -> float | None:
    """``value`` unless it is None, NaN or infinite (JSON has no NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
