"""Regression gate: fast/baseline speed ratios measured in the same run vs committed floors.

Absolute times on a shared CI machine are noise; the ratio of a fast path to its baseline measured
seconds apart on the same machine is not. Each benchmark tags itself (`bench/harness.run_pair`)
with `extra_info = {"pair": NAME, "role": "fast" | "baseline"}`; for every pair listed in
`bench/thresholds.json` for the machine class (`cpu` or `cuda`), the gate computes
`ratio = median(baseline) / median(fast)` and fails when it is below `min_ratio`. An entry may
also hold `limits` on values the fast benchmark recorded in its `extra_info` (`{"peak_gb":
{"max": 4.5}, "regions_per_s": {"min": 100}}`): absolute targets, for the CUDA class.

A pair whose benchmarks were skipped on this machine (`bench/harness.skip_pair`: flash-attn not
installed, ...) is reported as "not measured"; any other missing pair is an error. Every floor is at
least `MIN_FLOOR` (1.0): a gated pair claims its fast path is faster than its baseline, so a path
that is not (on that machine class) is not gated there, and `auto` must not pick it.

The benchmark JSON of a gated run is kept (`--save`, default `.benchmarks/gate/<UTC time>.json`,
git-ignored) and its path printed under the table.

The gated CPU benchmarks run with one torch thread (`--threads`): on a shared 2-core machine a
second busy process stalls every parallel region of a 2-thread run, and the fast and the baseline
benchmark, measured seconds apart, would see different load; single-threaded ratios stay steady.

Usage:
    python -m bench.gate                                  # run the CPU benchmarks marked `gate`, check them
    python -m bench.gate --save results.json              # the same, keeping the JSON at results.json
    python -m bench.gate --json results.json              # check an existing pytest-benchmark JSON
    python -m bench.gate --json bench.json --machine cuda # the GPU check's results (bench/gpu_check.sh)

Exit code 0: every measured pair at or above its floor and within its limits; 1: a regression;
2: bad input (a missing pair, a bad role, an unreadable file, a benchmark run that failed).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
THRESHOLDS = BENCH_DIR / "thresholds.json"
SAVE_DIR = BENCH_DIR.parent / ".benchmarks" / "gate"
MIN_FLOOR = 1.0
MACHINES = ("cpu", "cuda")
# timing of the gated run: at least 5 rounds per benchmark, about 1 s each (the CI budget is 3 min)
GATE_PYTEST_ARGS = ("--benchmark-min-rounds=5", "--benchmark-max-time=1.0", "--benchmark-warmup=off")


class GateError(ValueError):
    """The benchmark results cannot be checked (missing pair or role, unreadable file, bad thresholds)."""


@dataclass(frozen=True)
class Threshold:
    """One gated pair: the lowest accepted ratio and optional limits on the fast entry's `extra_info`."""

    min_ratio: float
    limits: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class PairResult:
    """The verdict on one pair; `fast_ms`/`baseline_ms` are None when it was not measured."""

    pair: str
    floor: float
    fast_ms: float | None = None
    baseline_ms: float | None = None
    violations: tuple[str, ...] = ()
    skipped: str | None = None

    @property
    def measured(self) -> bool:
        return self.skipped is None

    @property
    def ratio(self) -> float | None:
        return None if not self.measured else self.baseline_ms / self.fast_ms

    @property
    def passed(self) -> bool:
        """True when not measured (nothing to judge) or the ratio and every limit hold."""
        return not self.measured or (self.ratio >= self.floor and not self.violations)

    @property
    def verdict(self) -> str:
        if not self.measured:
            return f"not measured ({self.skipped})"
        if self.passed:
            return "ok"
        reasons = ([f"ratio below {self.floor:g}x"] if self.ratio < self.floor else []) + list(self.violations)
        return "REGRESSION: " + "; ".join(reasons)


def load_thresholds(path: Path = THRESHOLDS, machine: str = "cpu") -> dict[str, Threshold]:
    """`{pair: Threshold}` for one machine class from the committed thresholds file."""
    data = json.loads(Path(path).read_text())
    if machine not in data:
        raise GateError(f"{path} has no thresholds for machine class {machine!r}; present: {sorted(data)}")
    floors = {}
    for pair, entry in data[machine].items():
        try:
            limits = {name: {bound: float(value) for bound, value in rule.items()} for name, rule in entry.get("limits", {}).items()}
            floors[pair] = Threshold(float(entry["min_ratio"]), limits, entry.get("note", ""))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise GateError(f"{path}: {machine}.{pair} needs a numeric 'min_ratio' and optional 'limits' "
                            f"{{name: {{'max'|'min': number}}}}, got {entry!r}") from None
        if floors[pair].min_ratio < MIN_FLOOR:
            raise GateError(f"{path}: {machine}.{pair} has min_ratio {floors[pair].min_ratio:g}; every gate floor must be "
                            f">= {MIN_FLOOR:g} (a gated fast path is at least as fast as its baseline)")
        bad = {bound for rule in limits.values() for bound in rule} - {"min", "max"}
        if bad:
            raise GateError(f"{path}: {machine}.{pair} limits accept 'min' and 'max', got {sorted(bad)}")
    return floors


def pair_entries(results: dict) -> dict[str, dict[str, dict]]:
    """`{pair: {role: benchmark entry}}` from a pytest-benchmark JSON document."""
    pairs: dict[str, dict[str, dict]] = {}
    for bench in results.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "pair" not in info:
            continue
        role = info.get("role")
        if role not in ("fast", "baseline"):
            raise GateError(f"benchmark {bench.get('fullname')} has role {role!r}; accepted: 'fast', 'baseline'")
        if role in pairs.get(info["pair"], {}):
            raise GateError(f"pair {info['pair']!r} has two {role!r} benchmarks (the second: {bench.get('fullname')})")
        pairs.setdefault(info["pair"], {})[role] = bench
    return pairs


def _limit_violations(pair: str, info: dict, limits: dict[str, dict[str, float]]) -> tuple[str, ...]:
    violations = []
    for name, rule in sorted(limits.items()):
        if name not in info:
            raise GateError(f"pair {pair!r}: the fast benchmark recorded no {name!r} in extra_info (needed by its limits)")
        value = float(info[name])
        if "max" in rule and value > rule["max"]:
            violations.append(f"{name} {value:g} > {rule['max']:g}")
        if "min" in rule and value < rule["min"]:
            violations.append(f"{name} {value:g} < {rule['min']:g}")
    return tuple(violations)


def check(results: dict, floors: dict[str, Threshold]) -> list[PairResult]:
    """Judge every gated pair; `GateError` on a pair that is neither measured nor recorded as skipped."""
    entries = pair_entries(results)
    skipped = results.get("skipped_pairs", {})
    checked = []
    for pair, threshold in sorted(floors.items()):
        roles = entries.get(pair, {})
        if "fast" in roles and "baseline" in roles:
            medians = {role: bench["stats"]["median"] * 1e3 for role, bench in roles.items()}
            violations = _limit_violations(pair, roles["fast"].get("extra_info", {}), threshold.limits)
            checked.append(PairResult(pair, threshold.min_ratio, medians["fast"], medians["baseline"], violations))
        elif pair in skipped:
            checked.append(PairResult(pair, threshold.min_ratio, skipped=skipped[pair]))
        else:
            raise GateError(f"pair {pair!r} needs a 'fast' and a 'baseline' benchmark in the results, found {sorted(roles)} "
                            "(and it is not among the skipped pairs)")
    return checked


def format_table(checked: list[PairResult]) -> str:
    """A fixed-width table: pair, medians, ratio, floor, verdict."""
    width = max([36, *(len(r.pair) for r in checked)])
    lines = [f"{'pair':<{width}} {'fast ms':>10} {'baseline ms':>12} {'ratio':>8} {'floor':>7}  verdict"]
    for r in checked:
        if r.measured:
            numbers = f"{r.fast_ms:>10.2f} {r.baseline_ms:>12.2f} {r.ratio:>7.2f}x"
        else:
            numbers = f"{'-':>10} {'-':>12} {'-':>8}"
        lines.append(f"{r.pair:<{width}} {numbers} {r.floor:>6.2f}x  {r.verdict}")
    return "\n".join(lines)


def run_gated_benchmarks(json_path: Path, threads: int = 1) -> None:
    """Run the benchmarks marked `gate` with timing enabled and `threads` torch threads
    (`OMP_NUM_THREADS`), saving pytest-benchmark JSON to `json_path`. `TRITON_INTERPRET` is
    dropped from the environment: the CPU benchmarks time the torch paths, never the interpreter."""
    cmd = [
        sys.executable, "-m", "pytest", str(BENCH_DIR), "-m", "gate", "-q", "-p", "no:cacheprovider",
        "--benchmark-enable", *GATE_PYTEST_ARGS, f"--benchmark-json={json_path}",
    ]
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    subprocess.run(cmd, check=True, env={**env, "OMP_NUM_THREADS": str(threads)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="check this pytest-benchmark JSON instead of running the benchmarks")
    parser.add_argument("--machine", default="cpu", choices=MACHINES, help="which thresholds to apply (default cpu)")
    parser.add_argument("--thresholds", type=Path, default=THRESHOLDS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the gated CPU run (default 1)")
    parser.add_argument("--save", type=Path, default=None,
                        help="where the run's benchmark JSON is kept (default .benchmarks/gate/<UTC time>.json)")
    args = parser.parse_args(argv)
    path = args.json
    try:
        floors = load_thresholds(args.thresholds, args.machine)
        if path is None:
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
            path = args.save or SAVE_DIR / f"{stamp}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            run_gated_benchmarks(path, args.threads)
        results = json.loads(path.read_text())
        checked = check(results, floors)
    except (GateError, OSError, json.JSONDecodeError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"bench.gate: {exc}\n")
        return 2
    sys.stdout.write(format_table(checked) + f"\nresults: {path}\n")
    failed = [r.pair for r in checked if not r.passed]
    if failed:
        sys.stderr.write(f"bench.gate: speed regression in {', '.join(failed)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
