"""Fixtures shared by the model tests: the tiny processors of both variants."""

from __future__ import annotations

import pytest

from pixelrefer_fast.processing_pixelrefer_fast import PixelReferFastProcessor
from tests.model.fixtures import make_tiny_tokenizer


@pytest.fixture(scope="module")
def full():
    """The full-model processor on the tiny tokenizer."""
    return PixelReferFastProcessor(make_tiny_tokenizer())


@pytest.fixture(scope="module")
def lite():
    """The Lite processor on the tiny tokenizer."""
    return PixelReferFastProcessor(make_tiny_tokenizer(), variant="lite")
