"""The ``pixelrefer-fast`` command line: ``describe`` on a tiny checkpoint, errors as one line with exit code 2."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.model.fixtures import box_mask
from pixelrefer_fast.cli import build_parser, main
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


def test_describe_prints_one_answer(files, capsys):
    root, model, image, mask = files
    code = main(["describe", "--model", str(model), "--image", str(image), "--mask", str(mask),
                 "--mask", str(root / "mask.npy"), "--question", "Compare <region> and <region>.",
                 "--max-new-tokens", "4", "--device", "cpu", "--kernels", "torch"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert len(out.out.splitlines()) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        pytest.param(["--mask", "/nonexistent/mask.png"], "mask file not found", id="missing-mask"),
        pytest.param(["--frame-ids", "0"], "--frame-ids applies to --video only", id="frame-ids-on-image"),
        pytest.param(["--max-new-tokens", "0"], "--max-new-tokens must be >= 1", id="budget"),
        pytest.param(["--question", "What is <region> and <region>?"], "region", id="more-regions-than-masks"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(files, capsys, extra, message):
    _, model, image, mask = files
    args = ["describe", "--model", str(model), "--image", str(image), "--mask", str(mask),
            "--question", "What is <region>?", "--device", "cpu", *extra]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and err.startswith("pixelrefer-fast describe: error:")


def test_unknown_model_type_exits_2(tmp_path, files, capsys):
    _, _, image, mask = files
    model = make_tiny_checkpoint(tmp_path, "full", config_overrides={"model_type": "llava"})
    code = main(["describe", "--model", str(model), "--image", str(image), "--mask", str(mask),
                 "--question", "What is <region>?", "--device", "cpu"])
    assert code == 2 and "not a PixelRefer checkpoint" in capsys.readouterr().err


def test_parser_has_describe_and_profile():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"describe", "profile"} <= set(commands)
