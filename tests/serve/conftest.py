"""Fixtures of the server tests: one tiny checkpoint and its loaded model per session."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    from tests.serve.helpers import make_serving_checkpoint

    return make_serving_checkpoint(tmp_path_factory.mktemp("serve") / "tiny-pixelrefer")


@pytest.fixture(scope="session")
def loaded(checkpoint):
    """`(model, processor)` of the checkpoint (CPU, float32)."""
    from transformers.utils import logging as hf_logging

    from pixelrefer_fast import load_pretrained
    from pixelrefer_fast.processing_pixelrefer_fast import PixelReferFastProcessor

    hf_logging.disable_progress_bar()
    return load_pretrained(checkpoint), PixelReferFastProcessor.from_pretrained(checkpoint)
