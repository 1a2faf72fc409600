"""`pixelrefer-fast profile` (`pixelrefer_fast.profiling.cli.main`): bad input, OOM points, a tiny run.

Bad input gives one `error:` line on stderr and exit code 2. A sweep point that runs out of memory
is reported as `oom` (later stages `skipped`) while the other points run. The end-to-end runs use
a tiny checkpoint config written to a temporary `--model` directory (no weights are read).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pixelrefer_fast.profiling import cli

TINY_CONFIG = {
    "model_type": "pixelrefer_qwen2",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
    "mm_hidden_size": 48,
    "mm_max_length": 1024,
    "mask_num": 4,
    "max_frames": 8,
    "vision_encoder_config": {"hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
}
FAST = ["--image-size", "168x112", "--repeats", "1", "--warmup", "0", "--decode-tokens", "2", "--no-progress"]


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    directory = tmp_path / "tiny-model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(TINY_CONFIG))
    return directory


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # argparse's own errors (bad types, bad choices) exit from parse_args
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pixelrefer-fast profile: error:")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        pytest.param(["--preset", "13b"], ["unknown preset '13b'", "cpu-default"], id="unknown-preset"),
        pytest.param(["--regions", ""], ["empty sweep: regions"], id="empty-regions"),
        pytest.param(["--mask-num", ","], ["empty sweep: mask_nums"], id="empty-mask-num"),
        pytest.param(["--regions", "0"], ["positive integers"], id="zero-regions"),
        pytest.param(["--regions", "a,b"], ["comma-separated integers"], id="not-integers"),
        pytest.param(["--image-size", "640by480"], ["WIDTHxHEIGHT"], id="bad-size"),
        pytest.param(["--variants", "full,mini"], ["unknown variant", "mini"], id="unknown-variant"),
        pytest.param(["--max-tokens", "9000"], ["exceeds the model's vision-token budget mm_max_length=8192"], id="over-mm-max-length"),
        pytest.param(
            ["--regions", "64", "--mask-num", "256"],
            ["mask_num 256 exceeds the cells a crop can hold", "at most 128"],
            id="mask-num-over-cells",
        ),
        pytest.param(["--frames", "200"], ["max_frames=180"], id="too-many-frames"),
        pytest.param(
            ["--regions", "200", "--mask-num", "64", "--max-tokens", "8192"],
            ["mask_num 64 exceeds", "200 crops share 8192 patches, at most 40"],
            id="regions-over-budget",
        ),
        pytest.param(["--repeats", "0"], ["--repeats must be an integer >= 1"], id="zero-repeats"),
        pytest.param(["--dtype", "int8"], ["invalid choice"], id="bad-dtype"),
        pytest.param(["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], ["--device"], id="bad-device"),
        pytest.param(["--kernels", "triton", "--device", "cpu"], ["needs a CUDA device"], id="triton-on-cpu"),
        pytest.param(["--threads", "100000"], ["--threads must be an integer in 1.."], id="threads-over-cpus"),
        pytest.param(["--threads", "0"], ["--threads must be an integer in 1.."], id="zero-threads"),
        pytest.param(["--seed", "-1"], ["--seed must be an integer in 0..4294967295"], id="negative-seed"),
        pytest.param(["--seed", str(2**32)], ["--seed must be an integer in 0..4294967295"], id="seed-too-large"),
        pytest.param(["--batch", "1000000000"], ["batch 1000000000 is over the limit of 1024"], id="huge-batch"),
        pytest.param(["--image-size", "56x20000"], ["both in 56..16384"], id="issue-9-56x20000"),
        pytest.param(["--image-size", "56x14000"], ["aspect ratio of 250", "at most 200"], id="extreme-aspect"),
        pytest.param(["--image-size", "20000x20000"], ["both in 56..16384"], id="huge-image"),
        pytest.param(["--preset", "2b", "--device", "cpu"], ["estimated at", "pass --yes"], id="long-run-needs-yes"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, fragments):
    code, out, err = run_cli(capsys, *args, "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, *fragments)
    assert out == ""
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.json"))


def test_sequence_over_the_llm_limit(capsys, tiny_model, tmp_path):
    config = dict(TINY_CONFIG, max_position_embeddings=128)
    (tiny_model / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "--model", str(tiny_model), "--regions", "8", "--mask-num", "16", "--out", str(tmp_path))
    assert_one_line_error(code, err, "over max_position_embeddings=128")


def test_missing_model_directory(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path))
    assert_one_line_error(code, err, "no such directory")


def test_model_directory_without_config(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--model", str(tmp_path), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "no config.json")


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = run_cli(capsys, "--regions", "1", "--mask-num", "4", "--out", str(blocker / "profiles"))
    assert_one_line_error(code, err, "--out: cannot write to")


def _rows(out: str) -> list[dict]:
    path = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("JSON:"))
    return json.loads(Path(path).read_text())["rows"]


def test_tiny_end_to_end_both_variants(capsys, tiny_model, tmp_path):
    out_dir = tmp_path / "profiles"
    code, out, err = run_cli(capsys, "--model", str(tiny_model), "--variants", "full,lite", "--regions", "1,2",
                             "--mask-num", "4", *FAST, "--out", str(out_dir))
    assert code == 0, err
    for label in ("JSON:", "CSV:", "PNG:"):
        line = next(line for line in out.splitlines() if line.startswith(label))
        assert Path(line.split(":", 1)[1].strip()).is_file(), line
    assert "2 FLOPs per multiply-add" in out
    rows = _rows(out)
    assert {r["point"] for r in rows} == {0, 1, 2, 3}
    by_stage = {(r["variant"], r["regions"], r["stage"]): r for r in rows}
    for variant in ("full", "lite"):
        for stage in ("preprocess", "vision", "region", "prefill", "decode", "ttft"):
            row = by_stage[(variant, 2, stage)]
            assert row["status"] == "ok", row
            assert row["latency_ms"] > 0
    assert by_stage[("full", 2, "projector")]["status"] == "ok"
    assert by_stage[("lite", 2, "infusion")]["status"] == "ok"
    assert by_stage[("lite", 2, "projector")]["status"] == "skipped"
    assert by_stage[("full", 2, "infusion")]["status"] == "skipped"
    # Lite sends exactly K tokens per region and no image tokens to the LLM
    assert by_stage[("lite", 2, "infusion")]["tokens"] == 2 * 4
    assert by_stage[("lite", 2, "ttft")]["image_tokens"] == 0
    assert by_stage[("full", 2, "ttft")]["image_tokens"] == (168 // 14) * (112 // 14)


def test_out_of_memory_point_is_reported_and_the_sweep_goes_on(capsys, monkeypatch, tiny_model, tmp_path):
    from pixelrefer_fast.modeling_vision import PixelReferFastVisionEncoder

    real_forward = PixelReferFastVisionEncoder.forward
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

    def forward(self, pixel_values, grid_thw, merge_sizes, **kwargs):
        if grid_thw.shape[0] > 2:  # the global image plus more than one crop: the R=3 point
            raise oom("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return real_forward(self, pixel_values, grid_thw, merge_sizes, **kwargs)

    monkeypatch.setattr(PixelReferFastVisionEncoder, "forward", forward)
    code, out, err = run_cli(capsys, "--model", str(tiny_model), "--regions", "3,1", "--mask-num", "4", *FAST,
                             "--no-plots", "--out", str(tmp_path))
    assert code == 0, err
    rows = _rows(out)
    failed = {r["stage"]: r for r in rows if r["regions"] == 3}
    assert failed["preprocess"]["status"] == "ok"
    assert failed["vision"]["status"] == "oom"
    assert "simulated" in failed["vision"]["message"]
    assert all(failed[s]["status"] == "skipped" for s in ("projector", "region", "prefill", "decode"))
    assert failed["ttft"]["status"] == "oom" and failed["ttft"]["latency_ms"] is None
    assert all(r["status"] in ("ok", "skipped") for r in rows if r["regions"] == 1)
    assert any("vision: oom" in line for line in out.splitlines())
    assert "OOM" in out  # the table marks the point
    assert "PNG:  not written" in out


def test_add_profile_parser_wires_a_subcommand():
    import argparse

    parser = argparse.ArgumentParser(prog="pixelrefer-fast")
    sub = parser.add_subparsers(dest="command")
    cli.add_profile_parser(sub)
    args = parser.parse_args(["profile", "--regions", "1,4", "--mask-num", "8", "--image-size", "640x480"])
    assert args.handler is cli.run_profile_command
    assert args.regions == (1, 4) and args.mask_num == (8,) and args.image_size == ((640, 480),)


def test_failing_stage_is_reported_and_exit_code_1(capsys, monkeypatch, tiny_model, tmp_path):
    from pixelrefer_fast.modeling_region import PixelReferFastRegionEncoder

    def broken(self, *args, **kwargs):
        raise RuntimeError("pooling kernel exploded\nsecond line")

    monkeypatch.setattr(PixelReferFastRegionEncoder, "tokenize_packed", broken)  # what the model's forward calls
    code, out, _ = run_cli(capsys, "--model", str(tiny_model), "--regions", "1,2", "--mask-num", "4", *FAST,
                           "--no-plots", "--out", str(tmp_path))
    assert code == 1
    rows = _rows(out)
    region = [r for r in rows if r["stage"] == "region"]
    assert len(region) == 2 and all(r["status"] == "error" for r in region)
    assert all(r["message"] == "RuntimeError: pooling kernel exploded" for r in region)
    assert all(r["status"] == "skipped" for r in rows if r["stage"] in ("prefill", "decode"))
    assert "ERR" in out and "region: error: RuntimeError: pooling kernel exploded" in out


def test_model_that_does_not_fit_marks_its_points(capsys, monkeypatch, tiny_model, tmp_path):
    from pixelrefer_fast.profiling import runner

    real_build = runner.build_model

    def build(preset, variant, *args, **kwargs):
        if variant == "lite":
            raise getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)("CUDA out of memory (simulated)")
        return real_build(preset, variant, *args, **kwargs)

    monkeypatch.setattr(runner, "build_model", build)
    code, out, err = run_cli(capsys, "--model", str(tiny_model), "--variants", "full,lite", "--regions", "1", "--mask-num", "4",
                             *FAST, "--no-plots", "--out", str(tmp_path))
    assert code == 0, err
    rows = _rows(out)
    lite = {r["stage"]: r for r in rows if r["variant"] == "lite"}
    assert lite["preprocess"]["status"] == "oom" and "building the lite model ran out of memory" in lite["preprocess"]["message"]
    assert all(lite[s]["status"] == "skipped" for s in ("vision", "region", "infusion", "prefill", "decode"))
    assert all(r["status"] in ("ok", "skipped") for r in rows if r["variant"] == "full")


@pytest.mark.parametrize("decoding", ["fast", "hf"])
def test_decode_stage_times_the_chosen_decoding(capsys, tiny_model, tmp_path, decoding):
    """`--decoding` picks the loop `describe(decoding=...)` runs; its decode row says which, and the
    document records it (the default is the fast loop, as in `describe`)."""
    extra = [] if decoding == "fast" else ["--decoding", decoding]
    code, out, err = run_cli(capsys, "--model", str(tiny_model), "--variants", "lite", "--regions", "1",
                             "--mask-num", "4", *FAST, *extra, "--out", str(tmp_path / "profiles"))
    assert code == 0, err
    decode = next(r for r in _rows(out) if r["stage"] == "decode")
    assert decode["status"] == "ok", decode
    assert decode["shapes"]["decoding"] == decoding and decode["latency_ms"] > 0
    document = next(line for line in out.splitlines() if line.startswith("JSON:")).split(":", 1)[1].strip()
    assert json.loads(Path(document).read_text())["settings"]["decoding"] == decoding
