"""The regression gate (`bench/gate.py`) on saved results: no benchmark runs here.

The real numbers are the committed CPU results (`profiles/cpu/*_bench.json`): they pass; a fast
median planted 10x slower fails (exit 1); a missing pair or a bad role is an input error (exit 2);
a pair recorded as skipped is "not measured"; limits on the fast entry's `extra_info` hold.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench import gate
from bench.summarize import newest_bench

REPO = Path(__file__).resolve().parents[2]
CPU_FLOORS = gate.load_thresholds(gate.THRESHOLDS, "cpu")


@pytest.fixture(scope="module")
def committed() -> dict:
    """The newest committed CPU results."""
    newest = newest_bench(REPO / "profiles" / "cpu")  # the one SUMMARY.md shows
    assert newest is not None, "profiles/cpu/ holds no committed *_bench.json"
    return json.loads(newest.read_text())


def _write(tmp_path: Path, results: dict, name: str = "results.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(results))
    return path


def _entry(results: dict, pair: str, role: str) -> dict:
    return next(b for b in results["benchmarks"] if b["extra_info"].get("pair") == pair and b["extra_info"]["role"] == role)


def _bench(pair: str, role: str, median_s: float, **extra) -> dict:
    return {"fullname": f"bench_x.py::test[{pair}-{role}]", "stats": {"median": median_s},
            "extra_info": {"pair": pair, "role": role, **extra}}


def test_gate_passes_on_the_committed_results(committed, tmp_path, capsys):
    assert gate.main(["--json", str(_write(tmp_path, committed))]) == 0
    out = capsys.readouterr().out
    for pair in CPU_FLOORS:
        assert pair in out
    assert "REGRESSION" not in out


@pytest.mark.parametrize("pair", [pytest.param(p, id=p) for p in sorted(CPU_FLOORS)])
def test_gate_fails_on_a_planted_slowdown(committed, tmp_path, capsys, pair):
    results = copy.deepcopy(committed)
    _entry(results, pair, "fast")["stats"]["median"] *= 10
    assert gate.main(["--json", str(_write(tmp_path, results))]) == 1
    captured = capsys.readouterr()
    assert f"speed regression in {pair}" in captured.err
    line = next(line for line in captured.out.splitlines() if line.startswith(pair))
    assert "REGRESSION: ratio below" in line


def test_gate_errors_on_a_missing_pair(committed, tmp_path, capsys):
    results = copy.deepcopy(committed)
    pair = sorted(CPU_FLOORS)[0]
    results["benchmarks"].remove(_entry(results, pair, "fast"))
    assert gate.main(["--json", str(_write(tmp_path, results))]) == 2
    err = capsys.readouterr().err
    assert pair in err and "found ['baseline']" in err


def test_gate_errors_on_a_bad_role(committed, tmp_path, capsys):
    results = copy.deepcopy(committed)
    _entry(results, sorted(CPU_FLOORS)[0], "fast")["extra_info"]["role"] = "candidate"
    assert gate.main(["--json", str(_write(tmp_path, results))]) == 2
    assert "has role 'candidate'; accepted: 'fast', 'baseline'" in capsys.readouterr().err


def test_gate_errors_on_a_pair_measured_twice(committed, tmp_path, capsys):
    results = copy.deepcopy(committed)
    results["benchmarks"].append(copy.deepcopy(_entry(results, sorted(CPU_FLOORS)[0], "fast")))
    assert gate.main(["--json", str(_write(tmp_path, results))]) == 2
    assert "has two 'fast' benchmarks" in capsys.readouterr().err


def test_gate_errors_on_unreadable_input(tmp_path, capsys):
    assert gate.main(["--json", str(tmp_path / "absent.json")]) == 2
    (tmp_path / "broken.json").write_text("{not json")
    assert gate.main(["--json", str(tmp_path / "broken.json")]) == 2
    assert capsys.readouterr().err.count("bench.gate:") == 2


def test_skipped_pairs_are_not_measured(tmp_path, capsys):
    thresholds = _write(tmp_path, {"cuda": {"a_vs_b": {"min_ratio": 2}, "c_vs_flash": {"min_ratio": 1.5}}}, "floors.json")
    results = {"benchmarks": [_bench("a_vs_b", "fast", 0.01), _bench("a_vs_b", "baseline", 0.05)],
               "skipped_pairs": {"c_vs_flash": "flash-attn is not installed"}}
    code = gate.main(["--json", str(_write(tmp_path, results)), "--machine", "cuda", "--thresholds", str(thresholds)])
    out = capsys.readouterr().out
    assert code == 0
    assert "not measured (flash-attn is not installed)" in out
    results["skipped_pairs"] = {}
    assert gate.main(["--json", str(_write(tmp_path, results)), "--machine", "cuda", "--thresholds", str(thresholds)]) == 2


def test_limits_on_the_fast_entry(tmp_path, capsys):
    floors = {"cuda": {"m": {"min_ratio": 1.0, "limits": {"peak_gb": {"max": 4.5}, "regions_per_s": {"min": 100}}}}}
    thresholds = _write(tmp_path, floors, "floors.json")
    args = ["--machine", "cuda", "--thresholds", str(thresholds), "--json"]

    def run(**extra):
        results = {"benchmarks": [_bench("m", "fast", 0.05, **extra), _bench("m", "baseline", 0.5)]}
        return gate.main([*args, str(_write(tmp_path, results))])

    assert run(peak_gb=4.2, regions_per_s=120.0) == 0
    assert run(peak_gb=5.1, regions_per_s=80.0) == 1
    assert "peak_gb 5.1 > 4.5; regions_per_s 80 < 100" in capsys.readouterr().out
    assert run(peak_gb=4.2) == 2
    assert "recorded no 'regions_per_s'" in capsys.readouterr().err


def test_format_table():
    rows = [gate.PairResult("region_vs_official", 2.0, fast_ms=10.0, baseline_ms=50.0),
            gate.PairResult("infusion_vs_official", 4.0, fast_ms=20.0, baseline_ms=40.0),
            gate.PairResult("varlen_vs_flash", 1.5, skipped="flash-attn is not installed")]
    lines = gate.format_table(rows).splitlines()
    assert lines[0].split() == ["pair", "fast", "ms", "baseline", "ms", "ratio", "floor", "verdict"]
    assert lines[1].split()[1:6] == ["10.00", "50.00", "5.00x", "2.00x", "ok"]
    assert lines[2].endswith("REGRESSION: ratio below 4x")
    assert lines[3].split()[1:5] == ["-", "-", "-", "1.50x"] and lines[3].endswith("not measured (flash-attn is not installed)")
    assert [r.passed for r in rows] == [True, False, True]


def test_thresholds_file_parses():
    cpu, cuda = gate.load_thresholds(gate.THRESHOLDS, "cpu"), gate.load_thresholds(gate.THRESHOLDS, "cuda")
    assert cpu and cuda
    assert all(t.min_ratio >= 1.0 and t.note for t in [*cpu.values(), *cuda.values()])
    assert all("_cpu_" in pair for pair in cpu) and all("_cuda_" in pair for pair in cuda)
    recorded = {"ms_per_call", "peak_gb", "regions_per_s"}  # what bench/bench_model.py records
    assert {name for t in cuda.values() for name in t.limits} <= recorded


@pytest.mark.parametrize(
    "entry, message",
    [
        pytest.param({"note": "no floor"}, "needs a numeric 'min_ratio'", id="no-min-ratio"),
        pytest.param({"min_ratio": "fast"}, "needs a numeric 'min_ratio'", id="text-floor"),
        pytest.param({"min_ratio": 1, "limits": {"peak_gb": {"below": 4}}}, "limits accept 'min' and 'max'", id="bad-bound"),
        pytest.param({"min_ratio": 0.5, "note": "slower than its baseline"}, "every gate floor must be >= 1", id="floor-below-1"),
    ],
)
def test_bad_thresholds_are_input_errors(tmp_path, entry, message):
    path = _write(tmp_path, {"cpu": {"p": entry}}, "floors.json")
    with pytest.raises(gate.GateError, match=message):
        gate.load_thresholds(path, "cpu")
    with pytest.raises(gate.GateError, match="no thresholds for machine class 'cuda'"):
        gate.load_thresholds(path, "cuda")


def test_a_gated_run_keeps_the_json_it_reports(committed, tmp_path, monkeypatch, capsys):
    def run(path, threads):
        path.write_text(json.dumps(committed))

    monkeypatch.setattr(gate, "run_gated_benchmarks", run)
    monkeypatch.setattr(gate, "SAVE_DIR", tmp_path / "gate")
    assert gate.main([]) == 0
    printed = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("results: "))
    assert printed.parent == tmp_path / "gate" and json.loads(printed.read_text()) == committed
    assert gate.main(["--save", str(tmp_path / "mine.json")]) == 0
    assert capsys.readouterr().out.strip().endswith(f"results: {tmp_path / 'mine.json'}")
    assert (tmp_path / "mine.json").is_file()
