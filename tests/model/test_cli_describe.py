"""The `pixelrefer-fast` command line: `describe` on a tiny checkpoint, `init-random`, `env`,
`--version`; every expected failure is one line with exit code 2, raised before the model loads."""

from __future__ import annotations

import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

import pixelrefer_fast
from pixelrefer_fast import modeling_pixelrefer_fast
from pixelrefer_fast.cli import build_parser, check_describe_inputs, main
from tests.model.fixtures import box_mask
from tests.model.tiny_checkpoint import make_tiny_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = make_tiny_checkpoint(root / "model", "full", tie_word_embeddings=False)
    image = root / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 70, 3), dtype=np.uint8)).save(image)
    mask = root / "mask.png"
    Image.fromarray(box_mask(56, 70, 10, 10, 25, 30) * 255).save(mask)
    np.save(root / "mask.npy", box_mask(56, 70, 30, 35, 20, 30))
    return root, model, image, mask


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the checkpoint is loaded: the input checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(modeling_pixelrefer_fast, "load_pretrained", refuse)


def _describe(model, image, *regions, question="What is <region>?", extra=()):
    return ["describe", "--model", str(model), "--image", str(image), *regions, "--question", question,
            "--max-new-tokens", "4", "--device", "cpu", "--kernels", "torch", *extra]


def test_describe_prints_one_answer(files, capsys):
    root, model, image, mask = files
    code = main(_describe(model, image, "--mask", str(mask), "--mask", str(root / "mask.npy"),
                          question="Compare <region> and <region>.", extra=["--no-stream"]))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert len(out.out.splitlines()) == 1 and out.err == ""


def test_describe_streams_tokens_as_they_come(files, capsys, monkeypatch):
    """`TextStreamer` gets every new token while generating; what it prints is the answer."""
    import transformers

    _, model, image, mask = files
    calls = []

    class CountingStreamer(transformers.TextStreamer):
        def put(self, value):
            calls.append(value.numel())
            super().put(value)

    monkeypatch.setattr(transformers, "TextStreamer", CountingStreamer)
    assert main(_describe(model, image, "--mask", str(mask), extra=["--max-new-tokens", "5"])) == 0
    streamed = capsys.readouterr().out
    assert len(calls) == 1 + 5 and calls[1:] == [1] * 5  # the prompt, then one put per new token
    assert main(_describe(model, image, "--mask", str(mask), extra=["--max-new-tokens", "5", "--no-stream"])) == 0
    assert streamed.strip() == capsys.readouterr().out.strip()


def test_box_mixes_with_mask_in_order(files):
    root, model, image, mask = files
    args = build_parser().parse_args(_describe(model, image, "--box", "5,6,40,30", "--mask", str(mask),
                                               "--box", "1,2,3,4", "--mask", str(root / "mask.npy"),
                                               question="<region> <region> <region> <region>"))
    masks = check_describe_inputs(args).masks
    assert masks[0] == (5.0, 6.0, 40.0, 30.0) and masks[2] == (1.0, 2.0, 3.0, 4.0)
    np.testing.assert_array_equal(masks[1], box_mask(56, 70, 10, 10, 25, 30))
    np.testing.assert_array_equal(masks[3], box_mask(56, 70, 30, 35, 20, 30))


def test_describe_with_a_box_runs(files, capsys):
    _, model, image, mask = files
    code = main(_describe(model, image, "--box", "5,6,40,30", "--mask", str(mask),
                          question="Compare <region> and <region>.", extra=["--no-stream"]))
    assert code == 0, capsys.readouterr().err


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (an image bomb's header; no pixel data)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def _bad_inputs(root, model, image, mask):
    """(args, expected message fragment) per failure; built lazily from the module fixture."""
    nan_mask = root / "nan.npy"
    mask_array = box_mask(56, 70, 10, 10, 25, 30).astype(np.float32)
    mask_array[0, 0] = np.nan
    np.save(nan_mask, mask_array)
    negative = root / "negative.npy"
    np.save(negative, box_mask(56, 70, 10, 10, 25, 30).astype(np.int16) - 1)
    truncated = root / "truncated.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])
    bomb = _png_header_only(root / "bomb.png", 60000, 60000)
    broken_model = make_tiny_checkpoint(root / "broken", "full")
    weights = broken_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    empty = root / "empty"
    empty.mkdir(exist_ok=True)
    m = ["--mask", str(mask)]
    return {
        "missing-mask": (_describe(model, image, "--mask", "/nonexistent/mask.png"), "mask file not found"),
        "frame-ids-on-image": (_describe(model, image, *m, extra=["--frame-ids", "0"]), "--frame-ids applies to --video only"),
        "budget": (_describe(model, image, *m, extra=["--max-new-tokens", "0"]), "--max-new-tokens must be >= 1"),
        "more-regions-than-masks": (_describe(model, image, *m, question="What is <region> and <region>?"), "region"),
        "negative-seed": (_describe(model, image, *m, extra=["--seed", "-1"]), "--seed must be in 0.."),
        "temperature-without-sampling": (_describe(model, image, *m, extra=["--temperature", "0.5"]), "add --do-sample"),
        "top-p-range": (_describe(model, image, *m, extra=["--do-sample", "--top-p", "2"]), "--top-p must be in (0, 1]"),
        "box-malformed": (_describe(model, image, "--box", "1,2,3"), "expected four numbers"),
        "box-outside": (_describe(model, image, "--box", "100,100,200,200"), "outside"),
        "npy-nan": (_describe(model, image, "--mask", str(nan_mask)), "NaN"),
        "npy-negative": (_describe(model, image, "--mask", str(negative)), "negative"),
        "truncated-image": (_describe(model, truncated, *m), "cannot decode"),
        "image-bomb": (_describe(model, bomb, *m), "pixel"),
        "truncated-weights": (_describe(broken_model, image, *m), "corrupt or truncated"),
        "no-config": (_describe(empty, image, *m), "no config.json"),
        "missing-model": (_describe(root / "nowhere", image, *m), "model directory not found"),
        "cuda-missing": (_describe(model, image, *m, extra=["--device", "cuda"]) if not _cuda() else None, "CUDA"),
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


CASES = ["missing-mask", "frame-ids-on-image", "budget", "more-regions-than-masks", "negative-seed",
         "temperature-without-sampling", "top-p-range", "box-malformed", "box-outside", "npy-nan", "npy-negative",
         "truncated-image", "image-bomb", "truncated-weights", "no-config", "missing-model", "cuda-missing"]


@pytest.fixture(scope="module")
def bad_inputs(files):
    return _bad_inputs(*files)


@pytest.mark.parametrize("case", CASES)
def test_errors_are_one_line_with_exit_code_2(bad_inputs, capsys, no_model_load, case):
    args, message = bad_inputs[case]
    if args is None:
        pytest.skip("CUDA is available here")
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err and err.startswith("pixelrefer-fast describe: error:"), err


def test_video_without_pyav_is_one_line_before_loading(files, capsys, monkeypatch, no_model_load):
    _, model, image, mask = files
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    code = main(["describe", "--model", str(model), "--video", str(image), "--mask", str(mask),
                 "--frame-ids", "0", "--question", "What is <region>?"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "PyAV" in err and "pip install" in err


def test_unknown_model_type_exits_2(tmp_path, files, capsys, no_model_load):
    _, _, image, mask = files
    model = make_tiny_checkpoint(tmp_path, "full", config_overrides={"model_type": "llava"})
    code = main(["describe", "--model", str(model), "--image", str(image), "--mask", str(mask),
                 "--question", "What is <region>?", "--device", "cpu"])
    assert code == 2 and "not a PixelRefer checkpoint" in capsys.readouterr().err


def test_load_pretrained_names_a_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json in this folder"):
        modeling_pixelrefer_fast.load_pretrained(tmp_path)


@pytest.mark.parametrize("variant", ["full", "lite"])
def test_init_random_then_describe(tmp_path, files, capsys, variant):
    _, _, image, _ = files
    directory = tmp_path / variant
    assert main(["init-random", str(directory), "--variant", variant, "--size", "tiny"]) == 0
    out = capsys.readouterr().out
    assert str(directory) in out and "describe" in out
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (directory / name).is_file(), name
    code = main(_describe(directory, image, "--box", "5,6,40,30", extra=["--no-stream"]))
    assert code == 0, capsys.readouterr().err
    assert main(["init-random", str(directory)]) == 2  # never overwrites without --force
    assert "--force" in capsys.readouterr().err


def test_auto_model_for_image_text_to_text(files):
    import torch
    from transformers import AutoModelForImageTextToText

    _, model_dir, _, _ = files
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir))
    assert isinstance(model, pixelrefer_fast.PixelReferFastForCausalLM)
    reference = modeling_pixelrefer_fast.load_pretrained(model_dir)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_version_and_env(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"pixelrefer-fast {pixelrefer_fast.__version__}"
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for needle in ("pixelrefer-fast", "torch", "transformers", "triton", "kernel mode", "region_pool: ->", "PIXELREFER_FAST_KERNELS"):
        assert needle in out, needle


def test_py_typed_ships():
    from pathlib import Path

    assert (Path(pixelrefer_fast.__file__).parent / "py.typed").is_file()


def test_parser_has_every_subcommand():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"describe", "profile", "init-random", "env"} <= set(commands)


def test_decoding_flag_gives_the_same_answer(files, capsys):
    _, model, image, mask = files
    answers = []
    for decoding in ("fast", "hf"):
        assert main(_describe(model, image, "--mask", str(mask), extra=["--no-stream", "--decoding", decoding])) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1]
    with pytest.raises(SystemExit) as exit_info:
        main(_describe(model, image, "--mask", str(mask), extra=["--decoding", "beam"]))
    assert exit_info.value.code == 2
