"""`bench/summarize.py`: SUMMARY.md text from a profiles folder, and importing a GPU check's output
folder (`bench/gpu_check.sh`) into `profiles/<gpu-slug>/`. Temporary folders only."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from bench import summarize

H100 = {"gpu": "NVIDIA H100 80GB HBM3", "timestamp": "2025-03-04T05:06:07+00:00", "git_sha": "abc1234",
        "torch": "2.11.0", "triton": "3.6.0", "cpu_threads": 16}


def _bench(pair: str, role: str, median_s: float, **extra) -> dict:
    return {"fullname": f"bench/bench_x.py::test[{role}]", "stats": {"median": median_s},
            "extra_info": {"pair": pair, "role": role, **extra}}


def _results(machine: dict, *benchmarks, skipped=None) -> dict:
    return {"benchmarks": list(benchmarks), "pixelrefer_fast_machine": machine, "skipped_pairs": skipped or {}}


def test_render_summary_tables(tmp_path):
    folder = tmp_path / "nvidia-h100-80gb-hbm3"
    folder.mkdir()
    old = _results(H100, _bench("region_vs_official", "fast", 1.0), _bench("region_vs_official", "baseline", 2.0))
    (folder / "2025-01-01_0000000_bench.json").write_text(json.dumps(old))
    new = _results(
        H100,
        _bench("region_vs_official", "baseline", 0.2), _bench("region_vs_official", "fast", 0.001),
        _bench("model_vs_eager", "fast", 0.08, ms_per_call=80.0, peak_gb=4.1, regions_per_s=12.5),
        _bench("model_vs_eager", "baseline", 0.4, ms_per_call=400.0, peak_gb=4.3, regions_per_s=2.5),
        _bench("lonely", "fast", 0.5),
        skipped={"varlen_vs_flash_attn": "flash-attn is not installed"},
    )
    (folder / "2025-03-04_abc1234_bench.json").write_text(json.dumps(new))
    (folder / "2025-03-04_abc1234_profile-2b.json").write_text("{}")  # not a benchmark file
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    cpu_machine = {"gpu": "none", "cpu_threads": 1, "timestamp": "2025-03-05T00:00:00+00:00", "git_sha": "def5678"}
    cpu_results = _results(cpu_machine, _bench("p", "fast", 0.1), _bench("p", "baseline", 0.3))
    (cpu / "2025-03-05_def5678_bench.json").write_text(json.dumps(cpu_results))

    text = summarize.render_summary(tmp_path)
    assert "## CPU (1 torch thread)" in text and "## NVIDIA H100 80GB HBM3" in text
    assert text.index("## CPU") < text.index("## NVIDIA")  # folders in name order
    assert "`nvidia-h100-80gb-hbm3/2025-03-04_abc1234_bench.json`: torch 2.11.0, triton 3.6.0, git abc1234" in text
    assert "| region_vs_official | 1.000 | 200.000 | 200.00x |" in text  # the newest file only
    assert "| model_vs_eager | 80.000 | 400.000 | 5.00x |" in text
    assert "| varlen_vs_flash_attn | - | - | not measured: flash-attn is not installed |" in text
    assert "lonely" not in text  # a pair without its baseline is not a speedup
    assert "| model_vs_eager | fast | 80.0 | 4.1 | 12.5 |" in text
    assert "| model_vs_eager | baseline | 400.0 | 4.3 | 2.5 |" in text
    assert "| p | 100.000 | 300.000 | 3.00x |" in text


def test_render_summary_without_results(tmp_path):
    assert "No measured results yet." in summarize.render_summary(tmp_path / "absent")


def _fake_gpu_check_outdir(outdir: Path) -> None:
    """What bench/gpu_check.sh leaves: bench.json, text logs and profile.tar.gz."""
    outdir.mkdir()
    bench = _results(H100, _bench("p", "fast", 0.1), _bench("p", "baseline", 0.4))
    (outdir / "bench.json").write_text(json.dumps(bench))
    for name in ("steps.txt", "info.txt", "gate.txt"):
        (outdir / name).write_text(f"{name} text\n")
    with tarfile.open(outdir / "profile.tar.gz", "w:gz") as tar:
        members = {
            "profile/nvidia-h100-80gb-hbm3/2025-03-04_abc1234_profile-2b.json": b"{}",
            "profile/nvidia-h100-80gb-hbm3/2025-03-04_abc1234_profile-2b.png": b"png",
            "profile/extra.csv": b"a,b\n",
            "profile/notes.md": b"ignored",
        }
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_import_outdir(tmp_path):
    outdir = tmp_path / "out"
    _fake_gpu_check_outdir(outdir)
    profiles = tmp_path / "profiles"
    written = summarize.import_outdir(outdir, profiles)
    dest = profiles / "nvidia-h100-80gb-hbm3"
    assert sorted(p.name for p in written) == sorted([
        "2025-03-04_abc1234_bench.json", "2025-03-04_abc1234_steps.txt", "2025-03-04_abc1234_info.txt",
        "2025-03-04_abc1234_gate.txt", "2025-03-04_abc1234_profile-2b.json", "2025-03-04_abc1234_profile-2b.png",
        "2025-03-04_abc1234_extra.csv",
    ])
    assert all(p.parent == dest and p.is_file() for p in written)
    assert json.loads((dest / "2025-03-04_abc1234_bench.json").read_text()) == json.loads((outdir / "bench.json").read_text())
    assert (dest / "2025-03-04_abc1234_steps.txt").read_text() == "steps.txt text\n"
    assert "| p | 100.000 | 400.000 | 4.00x |" in summarize.render_summary(profiles)


def test_import_outdir_without_results(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileNotFoundError, match="run bench/gpu_check.sh OUTDIR first"):
        summarize.import_outdir(tmp_path / "out", tmp_path / "profiles")
    assert summarize.main(["--import", str(tmp_path / "out")]) == 2
    assert "bench.summarize:" in capsys.readouterr().err


def test_embed_in_readme_replaces_only_the_marked_block():
    from bench.summarize import README_END, README_START, embed_in_readme

    readme = f"intro\n{README_START}\nold table\n{README_END}\noutro\n"
    summary = "# Measured speedups\n\nheader text\n\n## CPU (2 torch threads)\n\n| pair |\n\n## NVIDIA H100\n\n| pair |\n"
    out = embed_in_readme(summary, readme)
    assert out.startswith("intro\n") and out.endswith(f"{README_END}\noutro\n")
    assert "old table" not in out and "### CPU (2 torch threads)" in out and "### NVIDIA H100" in out
    assert embed_in_readme(summary, out) == out  # idempotent
    with pytest.raises(ValueError, match="needs the markers"):
        embed_in_readme(summary, "no markers here")
