"""The Ray engine (a local Ray on this machine's CPUs) gives the local engine's rows, and a job moves
between engines: Ray captions the first annotations, the local engine resumes the rest."""

from __future__ import annotations

import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("pycocotools")
pytest.importorskip("ray.data")

from pixelrefer_fast.caption.output import read_captions, read_manifest  # noqa: E402
from pixelrefer_fast.cli import main  # noqa: E402
from tests.caption.coco_fixture import ALL_IDS, ERROR_IDS, make_caption_checkpoint, make_coco_dataset  # noqa: E402
from tests.model.fixtures import DEMO_DIR  # noqa: E402

pytestmark = pytest.mark.skipif(not DEMO_DIR.is_dir(), reason="demo photos not found")


def _args(root, out, *extra):
    return ["caption", "--model", str(root / "model"), "--annotations", str(root / "data" / "instances.json"),
            "--images", str(root / "data" / "images"), "--out", str(out), "--max-new-tokens", "4", "--batch-size", "2",
            "--device", "cpu", "--no-progress", *extra]


def test_ray_engine_matches_local_and_resumes_across_engines(tmp_path, capsys):
    make_coco_dataset(tmp_path / "data")
    make_caption_checkpoint(tmp_path / "model")
    assert main(_args(tmp_path, tmp_path / "local", "--workers", "0")) == 0
    local = {row["annotation_id"]: row for row in read_captions(tmp_path / "local").to_pylist()}

    mixed = tmp_path / "mixed"
    code = main(_args(tmp_path, mixed, "--engine", "ray", "--limit", "6", "--actors", "1"))
    assert code == 0, capsys.readouterr().err
    by_ray = {row["annotation_id"]: row for row in read_captions(mixed).to_pylist()}
    assert sorted(by_ray, key=int) == ALL_IDS[:6]
    assert by_ray == {k: local[k] for k in by_ray}  # captions, token counts, errors, run columns
    assert by_ray["6"]["error"] is not None and by_ray["1"]["caption"] is not None

    capsys.readouterr()
    assert main(_args(tmp_path, mixed, "--workers", "0")) == 0
    assert "6 already done" in capsys.readouterr().out
    rows = read_captions(mixed).to_pylist()
    assert sorted(row["annotation_id"] for row in rows) == sorted(ALL_IDS)  # exactly once
    assert {row["annotation_id"]: row for row in rows} == local
    assert {r["annotation_id"] for r in rows if r["error"]} == ERROR_IDS
    assert read_manifest(mixed)["rows"] == 9
