"""Shared helpers of the server tests: a tiny checkpoint that writes visible text, media as data URLs,
and an in-process server on 127.0.0.1 (`pixelrefer_fast.serve.local`)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from pixelrefer_fast.serve import local
from tests.model.tiny_checkpoint import make_tiny_checkpoint

HEIGHT, WIDTH = 56, 70


def make_serving_checkpoint(directory: Path, variant: str = "full") -> Path:
    """A tiny random checkpoint whose greedy answers are visible text: tokens that decode to nothing
    (special tokens, whitespace) are suppressed and a strong repetition penalty varies the words, so
    comparing answers compares something. Kept in `generation_config.json`, so `describe` and
    every server (thread or subprocess) decode alike."""
    from tests.model.fixtures import make_tiny_tokenizer

    directory = make_tiny_checkpoint(directory, variant, seed=1)
    tokenizer = make_tiny_tokenizer()
    blank = [i for i in range(len(tokenizer))
             if not tokenizer.decode([i], skip_special_tokens=True).strip() and i != tokenizer.eos_token_id]
    path = directory / "generation_config.json"
    config = json.loads(path.read_text())
    config.update(suppress_tokens=blank, repetition_penalty=3.0)
    path.write_text(json.dumps(config, indent=2))
    return directory


def random_image(seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_data_url(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_message(url: str, text: str, *, image_first: bool = True) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts if image_first else parts[::-1]}]


free_port = local.free_port
running_server = local.serve_in_thread
