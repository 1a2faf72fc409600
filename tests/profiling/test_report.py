"""The profile's JSON and CSV schema, the validators, the table and the plot fallback.

A tiny profile (`run_profile` with a tiny preset) is written once; its files are read back and
checked column by column against `ROW_SCHEMA` and `DOCUMENT_KEYS`, independently of the writer's
own validation. The validators reject missing, unknown and mistyped columns.
"""

from __future__ import annotations

import csv
import json
import sys

import pytest

from pixelrefer_fast.profiling import ArchPreset, LLMShape, SweepSpec, VisionShape, report, run_profile

TINY = ArchPreset(
    name="tiny",
    description="test preset",
    vision=VisionShape(hidden_size=48, intermediate_size=64, num_layers=1, num_heads=2),
    llm=LLMShape(hidden_size=64, intermediate_size=96, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=32, vocab_size=512,
                 max_position_embeddings=4096),
    mm_max_length=1024,
    default_variants=("full", "lite"),
)
SWEEP = SweepSpec(regions=(1, 2), mask_nums=(4,), image_sizes=((168, 112),), decode_tokens=2)
NUMERIC = {"int": int, "float": float}


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("profiles")
    return run_profile(TINY, SWEEP, device="cpu", repeats=2, warmup=0, out_dir=out, plots=True)


def _accepts(types: tuple[type, ...], value) -> bool:
    return not isinstance(value, bool) and isinstance(value, types)


def test_json_document_keys_and_types(profile):
    document = json.loads(profile.paths.json.read_text())
    for key, kind in report.DOCUMENT_KEYS.items():
        assert key in document, key
        assert isinstance(document[key], (int, float) if kind is float else kind), key
    assert document["schema_version"] == report.SCHEMA_VERSION
    for key in ("git_sha", "torch", "transformers", "timestamp", "device", "gpu"):
        assert isinstance(document["machine"][key], str), key
    assert document["settings"]["repeats"] == 2 and document["settings"]["dtype"] == "float32"
    assert document["preset"]["vision"]["hidden_size"] == 48
    assert "2 FLOPs per multiply-add" in document["flop_convention"]
    rows = document["rows"]
    assert len(rows) == 4 * (len(report.STAGES) + 1)  # 2 variants x 2 region counts, each stage + ttft
    for row in rows:
        assert list(row) == list(report.ROW_COLUMNS)
        for column, types in report.ROW_SCHEMA.items():
            assert _accepts(types, row[column]), (column, row[column])
        assert row["status"] in report.STATUSES
    ok = [r for r in rows if r["status"] == "ok" and r["stage"] != "preprocess"]
    assert all(r["latency_ms"] > 0 and r["flops"] > 0 and r["achieved_gflops"] > 0 for r in ok)
    assert all(r["mfu"] is None for r in rows)  # CPU: achieved GFLOP/s only, no peak to compare with
    assert all(r["mem_peak_mb"] > 0 for r in rows if r["status"] == "ok")


def test_csv_columns_and_cell_types(profile):
    with profile.paths.csv.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        body = list(reader)
    assert header == list(report.ROW_COLUMNS)
    assert len(body) == len(profile.rows)
    for cells in body:
        row = dict(zip(header, cells))
        for column, types in report.ROW_SCHEMA.items():
            cell = row[column]
            if cell == "":
                assert type(None) in types or str in types, column
            elif dict in types:
                assert isinstance(json.loads(cell), dict)
            elif float in types:
                float(cell)
            elif int in types:
                int(cell)
        assert row["device"] == "cpu" and row["preset"] == "tiny" and row["git_sha"]


def test_png_is_written(profile):
    assert profile.png == profile.paths.png
    assert profile.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_has_one_line_per_point(profile):
    lines = profile.table.splitlines()
    assert len(lines) == 2 + 4
    assert "TTFT ms" in lines[0] and "GFLOP/s" in lines[0]
    summary = profile.summary()
    for path in (profile.paths.json, profile.paths.csv, profile.paths.png):
        assert str(path) in summary


def test_output_paths_follow_the_profiles_layout(tmp_path):
    paths = report.output_paths(tmp_path, "nvidia-h100-80gb-hbm3", "2026-01-02", "abc1234", "model:My Ckpt")
    assert paths.json == tmp_path / "nvidia-h100-80gb-hbm3" / "2026-01-02_abc1234_profile-model-My-Ckpt.json"
    assert paths.csv.suffix == ".csv" and paths.png.suffix == ".png"


def _good_row(profile) -> dict:
    return dict(next(r for r in profile.rows if r["status"] == "ok"))


@pytest.mark.parametrize(
    "change, message",
    [
        pytest.param(lambda r: r.pop("latency_ms"), "missing columns \\['latency_ms'\\]", id="missing-column"),
        pytest.param(lambda r: r.update(extra=1), "unknown columns \\['extra'\\]", id="unknown-column"),
        pytest.param(lambda r: r.update(regions="4"), "'regions' = '4' is not of type int", id="string-for-int"),
        pytest.param(lambda r: r.update(latency_ms="fast"), "'latency_ms'", id="string-for-float"),
        pytest.param(lambda r: r.update(batch=True), "'batch' = True", id="bool-for-int"),
        pytest.param(lambda r: r.update(status="maybe"), "status 'maybe'", id="unknown-status"),
        pytest.param(lambda r: r.update(stage="lm_head"), "stage 'lm_head'", id="unknown-stage"),
    ],
)
def test_validate_rows_rejects(profile, change, message):
    row = _good_row(profile)
    change(row)
    with pytest.raises(report.ReportSchemaError, match=message):
        report.validate_rows([row])
    with pytest.raises(report.ReportSchemaError):
        report.write_csv([row], profile.paths.csv.with_name("bad.csv"))


def test_validate_document_rejects_missing_key(profile):
    document = dict(profile.document)
    del document["device_peaks"]
    with pytest.raises(report.ReportSchemaError, match="device_peaks"):
        report.validate_document(document)


def test_plot_without_matplotlib_says_how_to_fix(profile, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib .*--no-plots"):
        report.plot(profile.rows, tmp_path / "x.png", title="t")
    result = run_profile(TINY, SweepSpec(regions=(1,), mask_nums=(4,), image_sizes=((112, 112),), variants=("lite",), decode_tokens=1),
                         device="cpu", repeats=1, warmup=0, out_dir=tmp_path, plots=True)
    assert result.png is None
    assert any(note.startswith("Plots skipped: plots need matplotlib") for note in result.notes)
    assert result.paths.json.is_file() and result.paths.csv.is_file()
