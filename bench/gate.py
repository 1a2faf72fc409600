"""Regression gate: fast/baseline speed ratios measured in the same run vs committed floors.

Absolute times on a shared CI machine are noise; the ratio of a fast path to its baseline measured
seconds apart on the same machine is not. Each benchmark tags itself (``bench/harness.run_pair``)
with ``extra_info = {"pair": NAME, "role": "fast" | "baseline"}``; for every pair listed in
``bench/thresholds.json`` for the current machine class (``cpu`` or ``cuda``), the gate computes
``ratio = median(baseline) / median(fast)`` and fails when it is below the floor.

Usage:
    python -m bench.gate                      # run the gated CPU benchmarks, then check them
    python -m bench.gate --json results.json  # check an existing pytest-benchmark JSON

Exit code 0: every ratio at or above its floor; 1: a regression; 2: bad input (missing pair, ...).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
THRESHOLDS = BENCH_DIR / "thresholds.json"


class GateError(ValueError):
    """The benchmark results cannot be checked (missing pair or role, unreadable file)."""


@dataclass(frozen=True)
class PairResult:
    pair: str
    fast_ms: float
    baseline_ms: float
    floor: float

    @property
    def ratio(self) -> float:
        return self.baseline_ms / self.fast_ms

    @property
    def passed(self) -> bool:
        return self.ratio >= self.floor


def load_thresholds(path: Path = THRESHOLDS, machine: str = "cpu") -> dict[str, float]:
    """``{pair: floor}`` for one machine class from the committed thresholds file."""
    data = json.loads(Path(path).read_text())
    if machine not in data:
        raise GateError(f"{path} has no thresholds for machine class {machine!r}; present: {sorted(data)}")
    return {pair: float(entry["min_ratio"]) for pair, entry in data[machine].items()}


def pair_medians(results: dict) -> dict[str, dict[str, float]]:
    """``{pair: {role: median_ms}}`` from a pytest-benchmark JSON document."""
    pairs: dict[str, dict[str, float]] = {}
    for bench in results.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "pair" not in info:
            continue
        role = info.get("role")
        if role not in ("fast", "baseline"):
            raise GateError(f"benchmark {bench.get('fullname')} has role {role!r}; accepted: 'fast', 'baseline'")
        pairs.setdefault(info["pair"], {})[role] = bench["stats"]["median"] * 1e3
    return pairs


def check(results: dict, floors: dict[str, float]) -> list[PairResult]:
    """Compare every gated pair's ratio with its floor (raises ``GateError`` on a missing pair)."""
    medians = pair_medians(results)
    checked = []
    for pair, floor in sorted(floors.items()):
        roles = medians.get(pair)
        if roles is None or "fast" not in roles or "baseline" not in roles:
            raise GateError(f"pair {pair!r} needs a 'fast' and a 'baseline' benchmark in the results, found {sorted(roles or {})}")
        checked.append(PairResult(pair, roles["fast"], roles["baseline"], floor))
    return checked


def format_table(checked: list[PairResult]) -> str:
    lines = [f"{'pair':<36} {'fast ms':>10} {'baseline ms':>12} {'ratio':>8} {'floor':>7}  verdict"]
    for r in checked:
        verdict = "ok" if r.passed else "REGRESSION"
        lines.append(f"{r.pair:<36} {r.fast_ms:>10.2f} {r.baseline_ms:>12.2f} {r.ratio:>7.2f}x {r.floor:>6.2f}x  {verdict}")
    return "\n".join(lines)


def run_gated_benchmarks(json_path: Path) -> None:
    """Run the benchmarks marked ``gate`` with timing enabled, saving pytest-benchmark JSON."""
    cmd = [
        sys.executable, "-m", "pytest", str(BENCH_DIR), "-m", "gate", "-q", "-p", "no:cacheprovider",
        "--benchmark-enable", "--benchmark-min-rounds=5", f"--benchmark-json={json_path}",
    ]
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="check this pytest-benchmark JSON instead of running the benchmarks")
    parser.add_argument("--machine", default="cpu", choices=("cpu", "cuda"), help="which thresholds to apply")
    parser.add_argument("--thresholds", type=Path, default=THRESHOLDS)
    args = parser.parse_args(argv)
    try:
        floors = load_thresholds(args.thresholds, args.machine)
        if args.json is None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "gate.json"
                run_gated_benchmarks(path)
                results = json.loads(path.read_text())
        else:
            results = json.loads(args.json.read_text())
        checked = check(results, floors)
    except (GateError, OSError, json.JSONDecodeError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"bench.gate: {exc}\n")
        return 2
    sys.stdout.write(format_table(checked) + "\n")
    failed = [r.pair for r in checked if not r.passed]
    if failed:
        sys.stderr.write(f"bench.gate: speed regression in {', '.join(failed)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
