"""What a profile does for its user: rows kept as points finish (Ctrl-C, a crash), file names that
carry the sweep and never overwrite, the estimate that asks for `--yes`, progress inside a point,
and a figure whose series and memory panel can be read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pixelrefer_fast.profiling import SweepSpec, estimate, get_preset, progress, report, runner, sweep
from tests.profiling.test_cli import FAST, TINY_CONFIG, run_cli
from tests.profiling.test_report import TINY


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    directory = tmp_path / "tiny-model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(TINY_CONFIG))
    return directory


def _json_path(err: str) -> Path:
    return Path(err.split("the finished points are in ", 1)[1].split(" and ", 1)[0])


def test_ctrl_c_inside_a_point_keeps_the_finished_points(capsys, monkeypatch, tiny_model, tmp_path):
    from pixelrefer_fast.modeling_vision import PixelReferFastVisionEncoder

    real_forward = PixelReferFastVisionEncoder.forward

    def forward(self, pixel_values, grid_thw, merge_sizes, **kwargs):
        if grid_thw.shape[0] > 2:  # the R=3 point, in the middle of its vision stage
            raise KeyboardInterrupt
        return real_forward(self, pixel_values, grid_thw, merge_sizes, **kwargs)

    monkeypatch.setattr(PixelReferFastVisionEncoder, "forward", forward)
    code, out, err = run_cli(capsys, "--model", str(tiny_model), "--regions", "1,3", "--mask-num", "4", *FAST,
                             "--out", str(tmp_path / "out"))
    assert code == 130 and out == ""
    assert len(err.strip().splitlines()) == 1 and "interrupted after 1 of 2 point(s)" in err, err
    document = json.loads(_json_path(err).read_text())
    assert document["status"] == "interrupted"
    assert {r["point"] for r in document["rows"]} == {0} and all(r["regions"] == 1 for r in document["rows"])
    stem = _json_path(err).name[: -len(".json")]
    folder = _json_path(err).parent
    assert report.read_rows(folder / f"{stem}.rows.jsonl") == document["rows"]
    assert (folder / f"{stem}.csv").read_text().count("\n") == 1 + len(document["rows"])
    assert (folder / f"{stem}.png").is_file()


def test_a_crash_keeps_the_finished_points(capsys, monkeypatch, tiny_model, tmp_path):
    real_summary = runner._summary_row
    calls = []

    def summary(rows, peaks):
        calls.append(1)
        if len(calls) == 2:
            raise TypeError("a bug in the report")
        return real_summary(rows, peaks)

    monkeypatch.setattr(runner, "_summary_row", summary)
    code, out, err = run_cli(capsys, "--model", str(tiny_model), "--regions", "1,2", "--mask-num", "4", *FAST,
                             "--no-plots", "--out", str(tmp_path))
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "failed (TypeError: a bug in the report) after 1 of 2" in err, err
    document = json.loads(_json_path(err).read_text())
    assert document["status"] == "failed" and {r["point"] for r in document["rows"]} == {0}


def test_rows_are_appended_as_each_point_finishes(monkeypatch, tmp_path):
    seen = []
    real_run_point = runner.run_point

    def run_point(built, arch, point, **kwargs):
        jsonl = list((tmp_path / "cpu").glob("*.rows.jsonl"))
        seen.append(len(report.read_rows(jsonl[0])) if jsonl else 0)
        return real_run_point(built, arch, point, **kwargs)

    monkeypatch.setattr(runner, "run_point", run_point)
    result = runner.run_profile(TINY, SweepSpec(variants=("full",), regions=(1, 2), mask_nums=(4,), image_sizes=((168, 112),),
                                                decode_tokens=2), device="cpu", repeats=1, warmup=0, out_dir=tmp_path, plots=False)
    per_point = len(report.STAGES) + 1
    assert seen == [0, per_point]  # point 1 starts with point 0's rows already on disk
    assert report.read_rows(result.paths.rows) == result.rows


def test_names_carry_the_sweep_and_never_overwrite(capsys, tiny_model, tmp_path):
    args = ["--model", str(tiny_model), "--regions", "1", "--mask-num", "4", *FAST, "--no-plots", "--out", str(tmp_path)]
    first = run_cli(capsys, *args)
    second = run_cli(capsys, *args)
    named = run_cli(capsys, *args, "--name", "my run")
    paths = [next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("JSON:"))
             for _, out, _ in (first, second, named)]
    assert paths[0].endswith("_profile-model-tiny-model_R1_K4_168x112_dec2.json"), paths[0]
    assert paths[1] == paths[0][: -len(".json")] + "-2.json"
    assert paths[2].endswith("_profile-my-run.json")
    assert len(set(paths)) == 3 and all(Path(p).is_file() for p in paths)
    assert json.loads(Path(paths[0]).read_text())["machine"]["timestamp"] != "" and Path(paths[0]).stat().st_size > 0


def test_sweep_name_of_the_default_is_the_preset():
    preset = get_preset("cpu-default")
    assert sweep.sweep_name("cpu-default", SweepSpec(), preset.default_variants) == "cpu-default"
    name = sweep.sweep_name("cpu-default", SweepSpec(variants=("lite",), batches=(1, 4)), preset.default_variants)
    assert name == "cpu-default_lite_B1-4"
    long = SweepSpec(regions=tuple(range(1, 40)))
    assert sweep.sweep_name("2b", long, ("full",)).startswith("2b_sweep-")


def test_estimate_asks_for_yes(capsys, monkeypatch, tiny_model, tmp_path):
    big = estimate.RunEstimate(seconds=3600, slowest_point_s=1800, memory_bytes=2**30, free_bytes=2**34, rate_gflops=10, points=2)
    monkeypatch.setattr(runner, "estimate_run", lambda *args, **kwargs: big)
    args = ["--model", str(tiny_model), "--regions", "1", "--mask-num", "4", *FAST, "--no-plots", "--out", str(tmp_path)]
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and "~60 min for 2 point(s)" in err and "over 5 min" in err and "pass --yes" in err
    assert not (tmp_path / "cpu").exists() or not list((tmp_path / "cpu").iterdir())
    code, out, _ = run_cli(capsys, *args, "--yes")
    assert code == 0 and "Estimated ~60 min" in out
    too_big = estimate.RunEstimate(seconds=1, slowest_point_s=1, memory_bytes=2**40, free_bytes=2**30, rate_gflops=10, points=1)
    monkeypatch.setattr(runner, "estimate_run", lambda *args, **kwargs: too_big)
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "over the free memory" in err


def test_estimates_order_the_presets():
    """At one CPU rate, the README's default profile stays under the limit and the 2B sweep does not."""
    cpu = torch.device("cpu")
    default = get_preset("cpu-default")
    small = estimate.estimate_run(default, SweepSpec().points(default), decode_tokens=8, repeats=3, warmup=1,
                                  device=cpu, dtype=torch.float32, rate_gflops=40.0)
    large = estimate.estimate_run(get_preset("2b"), SweepSpec().points(get_preset("2b")), decode_tokens=8, repeats=3,
                                  warmup=1, device=cpu, dtype=torch.float32, rate_gflops=40.0)
    assert small.seconds < runner.DEFAULT_MAX_ESTIMATE_S < large.seconds
    assert large.slowest_point_s > 60 and large.memory_bytes > 6 * 2**30  # 2B fp32 weights alone are ~8.8 GB


def test_progress_reports_stage_and_call(tmp_path):
    from pixelrefer_fast.profiling import stages

    point = SweepSpec(variants=("lite",), regions=(1,), mask_nums=(4,), image_sizes=((168, 112),)).points(TINY)[0]
    built = stages.build_model(TINY, "lite", torch.device("cpu"), torch.float32)
    events = []
    with progress.listening(lambda stage, done, total: events.append((stage, done, total))):
        stages.run_point(built, TINY, point, warmup=1, repeats=2, decode_tokens=2)
    ran = [stage for stage in report.STAGES if stage != "projector"]
    assert [e[0] for e in events if e[1] == 0] == ran  # each stage announced once, in order
    for stage in ran:
        assert [e[1:] for e in events if e[0] == stage and e[1]] == [(1, 3), (2, 3), (3, 3)]
    events.clear()
    stages.run_point(built, TINY, point, warmup=0, repeats=1, decode_tokens=2)
    assert events == []  # no listener outside the block


def _fabricated_rows(template: list[dict]) -> list[dict]:
    """Rows of a 2 variants x 2 K x 2 image sizes x 2 batches x 2 R sweep, copied from one real point."""
    rows, point = [], 0
    for variant in ("full", "lite"):
        for mask_num in (4, 8):
            for width, height in ((168, 112), (224, 168)):
                for batch in (1, 2):
                    for regions in (1, 2):
                        for row in template:
                            rows.append(dict(row, point=point, variant=variant, mask_num=mask_num, image_width=width,
                                             image_height=height, batch=batch, regions=regions,
                                             object_tokens=regions * mask_num,
                                             latency_ms=(row["latency_ms"] or 0) * regions * batch or row["latency_ms"]))
                        point += 1
    return rows


def test_figure_has_memory_panel_and_a_series_per_swept_combination(tmp_path):
    result = runner.run_profile(TINY, SweepSpec(variants=("full",), regions=(1,), mask_nums=(4,), image_sizes=((168, 112),),
                                                decode_tokens=2), device="cpu", repeats=2, warmup=0, out_dir=tmp_path, plots=False)
    rows = _fabricated_rows(result.rows)
    title = report.plot_title(result.document)
    for needle in ("tiny", "CPU", "float32", "1 threads", result.document["machine"]["timestamp"][:10],
                   result.document["machine"]["git_sha"]):
        assert needle in title, needle
    fig = report.build_figure(rows, title=title)
    try:
        ax_lat, ax_flops, ax_mem, ax_stage = fig.axes
        assert fig._suptitle.get_text() == title
        series = ax_lat.get_lines()
        assert len(series) == 2 * 2 * 2 * 2  # variant x K x image x batch; R is the x axis
        labels = [line.get_label() for line in series]
        assert len(set(labels)) == len(labels)
        assert "lite K=8 224x168 B=2" in labels
        styles = {(line.get_color(), line.get_marker(), line.get_linestyle()) for line in series}
        assert len(styles) == len(series)
        assert {line.get_linestyle() for line in series if line.get_label().startswith("lite")} == {"--"}
        assert len(ax_lat.collections) == len(series)  # one p20-p80 band per series
        assert "memory" in ax_mem.get_title() and "RSS" in ax_mem.get_ylabel()
        mem_lines = {line.get_label(): line.get_color() for line in ax_mem.get_lines()}
        assert mem_lines and all(report.STAGE_COLOURS[stage] == colour for stage, colour in mem_lines.items())
        bars = {patch.get_facecolor() for patch in ax_stage.patches}
        from matplotlib.colors import to_rgba

        assert bars <= {to_rgba(colour) for colour in report.STAGE_COLOURS.values()}
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_rows_carry_memory_fields(tmp_path):
    result = runner.run_profile(TINY, SweepSpec(variants=("full",), regions=(1,), mask_nums=(4,), image_sizes=((168, 112),),
                                                decode_tokens=2), device="cpu", repeats=1, warmup=0, out_dir=tmp_path, plots=False)
    ok = [r for r in result.rows if r["status"] == "ok" and r["stage"] != report.SUMMARY_STAGE]
    assert ok and all(r["weights_mb"] > 0 for r in ok)
    measured = [r for r in ok if r["mem_kind"] == "process_rss_peak"]
    for row in measured:
        assert row["mem_start_mb"] > 0 and row["mem_delta_mb"] == pytest.approx(row["mem_peak_mb"] - row["mem_start_mb"])
    assert set(report.COLUMN_DOCS) == set(report.ROW_COLUMNS)


def test_readme_explains_every_column():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [column for column in report.ROW_COLUMNS if f"| `{column}` |" not in readme]
    assert not missing, f"README's profile columns table lacks {missing}"
