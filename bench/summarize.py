"""Keep measured results as data: import a GPU check's output and regenerate `profiles/SUMMARY.md`.

    python -m bench.summarize --import OUTDIR   # copy a bench/gpu_check.sh OUTDIR (bench.json, logs,
                                                # the profile files in profile.tar.gz) to
                                                # profiles/<gpu-slug>/<date>_<sha>_<name>
    python -m bench.summarize                   # regenerate profiles/SUMMARY.md (and README's copy)

`SUMMARY.md` is generated, never edited by hand: one speedup table per machine from the newest
benchmark file in each `profiles/<slug>/` folder (pairs tagged by `bench/harness.run_pair`; pairs
skipped on that machine listed as not measured).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

from bench.gate import pair_entries
from bench.machine import REPO_ROOT, gpu_slug

PROFILES = REPO_ROOT / "profiles"
SUMMARY = PROFILES / "SUMMARY.md"
README = REPO_ROOT / "README.md"
README_START, README_END = "<!-- summary:start -->", "<!-- summary:end -->"
# text files of a gpu_check.sh output folder that are kept beside its bench.json
OUTDIR_TEXT_FILES = ("steps.txt", "info.txt", "gpu_tests.log", "bench.log", "gate.txt", "profile.log")
_DATED = re.compile(r"^\d{4}-\d{2}-\d{2}_[0-9a-z]+_")  # a name that already starts with <date>_<sha>_


def _machine_of(results: dict) -> dict:
    return results.get("pixelrefer_fast_machine") or results.get("machine_info", {}).get("pixelrefer_fast", {})


def import_outdir(outdir: Path, profiles: Path = PROFILES) -> list[Path]:
    """Copy a `bench/gpu_check.sh` output folder into `profiles/<slug>/`; returns the new files."""
    bench_json = outdir / "bench.json"
    if not bench_json.is_file():
        raise FileNotFoundError(f"{bench_json} not found: run bench/gpu_check.sh OUTDIR first")
    results = json.loads(bench_json.read_text())
    machine = _machine_of(results)
    slug = gpu_slug(machine)
    date = machine.get("timestamp", "unknown")[:10]
    sha = machine.get("git_sha", "unknown")
    dest = profiles / slug
    dest.mkdir(parents=True, exist_ok=True)
    written = [dest / f"{date}_{sha}_bench.json"]
    shutil.copyfile(bench_json, written[0])
    for name in OUTDIR_TEXT_FILES:
        if (outdir / name).is_file():
            target = dest / f"{date}_{sha}_{name}"
            shutil.copyfile(outdir / name, target)
            written.append(target)
    archive = outdir / "profile.tar.gz"
    if archive.is_file():
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith((".json", ".csv", ".png")):
                    name = Path(member.name).name
                    target = dest / (name if _DATED.match(name) else f"{date}_{sha}_{name}")
                    target.write_bytes(tar.extractfile(member).read())
                    written.append(target)
    return written


def newest_bench(folder: Path) -> Path | None:
    """The benchmark file measured last (by its recorded timestamp; names sort by SHA within a day)."""
    files = list(folder.glob("*_bench.json"))
    if not files:
        return None
    return max(files, key=lambda path: (_machine_of(json.loads(path.read_text())).get("timestamp", ""), path.name))


def _machine_heading(machine: dict, folder: Path) -> str:
    if machine.get("gpu", "none") != "none":
        return str(machine["gpu"])
    if not machine:
        return folder.name
    threads = machine.get("cpu_threads", "?")
    return f"CPU ({threads} torch thread{'' if threads == 1 else 's'})"


def _pair_tables(results: dict) -> list[str]:
    """The speedup table of one results file, plus a model table where entries recorded model extras."""
    entries = pair_entries(results)
    lines = ["| pair | fast (ms) | baseline (ms) | speedup |", "|---|---:|---:|---:|"]
    for pair, roles in sorted(entries.items()):
        if "fast" in roles and "baseline" in roles:
            fast, baseline = (roles[r]["stats"]["median"] * 1e3 for r in ("fast", "baseline"))
            lines.append(f"| {pair} | {fast:.3f} | {baseline:.3f} | {baseline / fast:.2f}x |")
    for pair, reason in sorted(results.get("skipped_pairs", {}).items()):
        lines.append(f"| {pair} | - | - | not measured: {reason} |")
    model_rows = [
        f"| {pair} | {role} | {info['ms_per_call']:.1f} | {info.get('peak_gb', '-')} | {info['regions_per_s']:.1f} |"
        for pair, roles in sorted(entries.items())
        for role, bench in sorted(roles.items(), reverse=True)
        if "ms_per_call" in (info := bench.get("extra_info", {}))
    ]
    if model_rows:
        lines += ["", "| model pair | role | ms per call | peak GB | regions/s |", "|---|---|---:|---:|---:|", *model_rows]
    return lines


def render_summary(profiles: Path = PROFILES) -> str:
    """The text of `SUMMARY.md` from the newest benchmark file of every machine folder."""
    lines = [
        "# Measured speedups",
        "",
        "Generated by `python -m bench.summarize` from the JSON files in `profiles/`; do not edit by hand.",
        "Each ratio is baseline median / fast median, both measured in the same run on the same machine;",
        "compare numbers only within one machine's table.",
        "",
    ]
    folders = sorted(p for p in profiles.iterdir() if p.is_dir()) if profiles.is_dir() else []
    found = False
    for folder in folders:
        newest = newest_bench(folder)
        if newest is None:
            continue
        found = True
        results = json.loads(newest.read_text())
        machine = _machine_of(results)
        lines += [
            f"## {_machine_heading(machine, folder)}",
            "",
            f"`{newest.relative_to(profiles)}`: torch {machine.get('torch', '?')}, triton {machine.get('triton', '?')}, "
            f"git {machine.get('git_sha', '?')}, {machine.get('timestamp', '?')}",
            "",
            *_pair_tables(results),
            "",
        ]
    if not found:
        lines += ["No measured results yet.", ""]
    return "\n".join(lines)


def embed_in_readme(summary: str, readme_text: str) -> str:
    """`readme_text` with the machine tables of `summary` between the README's summary markers."""
    start, end = readme_text.find(README_START), readme_text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md needs the markers {README_START} and {README_END} (in that order)")
    tables = summary[summary.index("\n## ") + 1 :] if "\n## " in summary else "No measured results yet.\n"
    tables = tables.replace("\n## ", "\n### ")
    tables = "### " + tables[3:] if tables.startswith("## ") else tables
    return readme_text[: start + len(README_START)] + "\n" + tables.rstrip() + "\n" + readme_text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.summarize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--import", dest="outdir", type=Path, help="a bench/gpu_check.sh output folder to import first")
    args = parser.parse_args(argv)
    if args.outdir is not None:
        try:
            for path in import_outdir(args.outdir):
                sys.stdout.write(f"imported {path.relative_to(REPO_ROOT)}\n")
        except (FileNotFoundError, json.JSONDecodeError) as exc:
            sys.stderr.write(f"bench.summarize: {exc}\n")
            return 2
    summary = render_summary()
    SUMMARY.write_text(summary)
    README.write_text(embed_in_readme(summary, README.read_text()))
    sys.stdout.write(f"wrote {SUMMARY.relative_to(REPO_ROOT)} and the tables in {README.relative_to(REPO_ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
