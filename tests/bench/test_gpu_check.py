"""`bench/gpu_check.sh` cannot rot: its step list parses, runs in the required order within the time
budget, writes only under OUTDIR, and a step selector gives a shorter rerun (`--list` / `--dry-run`,
no GPU needed). Also the offline-install prerequisites in `pyproject.toml` and the decode probes' options."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

from bench import decode_probe

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def _steps() -> list[dict]:
    done = _run("--list")
    assert done.returncode == 0, done.stderr
    rows = []
    for line in done.stdout.splitlines():
        match = re.match(r"(\S+)\s+(\d+)s\s+fatal=(\d)\s+->\s+(\S+)\s+(.*)", line)
        if match:
            name, limit, fatal, log, command = match.groups()
            rows.append(dict(name=name, limit=int(limit), fatal=fatal == "1", log=log, command=command))
    budget = int(re.search(r"budget (\d+) s", done.stdout).group(1))
    return rows, budget


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_steps_order_limits_and_outputs():
    steps, budget = _steps()
    names = [s["name"] for s in steps]
    assert names[:2] == ["sha", "install"]  # the commit first, then the offline install
    for before, after in [("bench-kernels", "bench-model"), ("profile-lite-2b", "profile-2b"), ("install", "gpu-tests")]:
        assert names.index(before) < names.index(after), (before, after)
    assert "decode-probes" in names
    assert budget <= 420  # 7 minutes in all, whatever the steps' own limits add up to
    assert all(0 < s["limit"] <= 90 for s in steps)
    install = next(s for s in steps if s["name"] == "install")["command"]
    assert all(flag in install for flag in ("--no-deps", "--no-build-isolation", "--no-index"))
    assert "PIXELREFER_FAST_SKIP_AUTOTUNE=1" in next(s for s in steps if s["name"] == "gpu-tests")["command"]
    for step in steps:  # every file a step names is under $OUT
        for path in re.findall(r"(?:--out|--benchmark-json=|--json)\s*\"?([^\s\"]+)", step["command"]):
            assert path.startswith("$OUT") or path.startswith("\\$OUT"), (step["name"], path)
        assert "/" not in step["log"]


def test_dry_run_selects_steps_in_the_order_given(tmp_path):
    done = _run("--dry-run", str(tmp_path / "out"), "profile-2b", "gate")
    assert done.returncode == 0, done.stderr
    assert [line.split(" ")[0] for line in done.stdout.splitlines()] == ["profile-2b", "gate"]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    bad = _run("--dry-run", str(tmp_path / "out"), "no-such-step")
    assert bad.returncode == 2 and "unknown step 'no-such-step'" in bad.stderr


def test_license_builds_with_setuptools_before_77():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # the SPDX string form needs setuptools >= 77; offline installs use the machine's own setuptools
    assert isinstance(project["project"]["license"], dict)
    required = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert required and int(re.search(r">=(\d+)", required[0]).group(1)) < 77


class _Describe:
    def __init__(self, with_decoding: bool):
        self.with_decoding = with_decoding

    @property
    def describe(self):
        if self.with_decoding:
            return lambda processor, *, max_new_tokens=1, static_cache=False, decoding="fast", **kw: None
        return lambda processor, *, max_new_tokens=1, static_cache=False, **kw: None


def test_decode_probes_skip_fast_until_describe_has_decoding():
    old = _Describe(with_decoding=False)
    assert decode_probe.probe_options(old, "hf-dynamic") == ({"static_cache": False}, None)
    options, reason = decode_probe.probe_options(old, "fast")
    assert reason == "describe() has no decoding argument in this checkout"
    new = _Describe(with_decoding=True)
    assert decode_probe.probe_options(new, "hf-static") == ({"static_cache": True, "decoding": "hf"}, None)
    assert decode_probe.probe_options(new, "fast") == ({"decoding": "fast"}, None)


def test_a_real_run_of_the_sha_step_writes_under_outdir(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), str(out), "sha"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "GPU_CHECK_SHA": "abc123def456", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "sha.txt").read_text().strip().endswith("abc123def456")
    assert re.search(r"^sha: rc=0, \d+ s", (out / "steps.txt").read_text(), re.M)
    assert sorted(p.name for p in out.iterdir()) == ["sha.txt", "steps.txt"]
