"""Shared test fixtures for the model tests: a tiny Qwen2-like tokenizer, demo media, masks.

`make_tiny_tokenizer()` is the package's `pixelrefer_fast.random_checkpoint.tiny_tokenizer`: a
byte-level BPE tokenizer built in-process (no download) with the Qwen2 pre-tokenizer pattern and
PixelRefer's special tokens in the official order: `<|endoftext|>` (pad), `<|im_start|>`,
`<|im_end|>` (eos) after the BPE vocabulary, then the added `<image>`, `<|stream_start|>`,
`<|stream_end|>`, `<REGION>`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEMO_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pixelrefer-demo"


def make_tiny_tokenizer(save_dir: str | Path | None = None):
    """`pixelrefer_fast.random_checkpoint.tiny_tokenizer`: a small Qwen2-style fast tokenizer built
    offline (deterministic, ~430 ids), saved to `save_dir` if given."""
    from pixelrefer_fast.random_checkpoint import tiny_tokenizer

    return tiny_tokenizer(save_dir)


# ---------------------------------------------------------------------------- media and masks
def demo_path(name: str) -> Path:
    """Path of a file in the shared demo folder (tests should skip when `DEMO_DIR` is missing)."""
    return DEMO_DIR / name


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random HWC uint8 image (texture, so crops and resizes are not trivially constant)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def set_kmeans_init(model, mode: str) -> None:
    """Switch a loaded model's k-means init (`"deterministic"` / `"parity"`): its config and its region
    encoder, which copied the config's value when it was built."""
    model.config.kmeans_init = model.model.region_encoder.kmeans_init = mode


def tiny_model_and_processor(directory: str | Path, variant: str):
    """A tiny random checkpoint of `variant` written under `directory`, loaded with SDPA attention and the
    deterministic k-means init, and its processor."""
    from transformers import AutoModelForCausalLM

    from pixelrefer_fast import PixelReferFastProcessor
    from tests.model.tiny_checkpoint import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(directory, variant, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="sdpa")
    set_kmeans_init(model, "deterministic")
    return model, PixelReferFastProcessor.from_pretrained(checkpoint)


def box_mask(height: int, width: int, top: int, left: int, box_h: int, box_w: int) -> np.ndarray:
    """uint8 {0, 1} mask with a box_h x box_w rectangle at (top, left)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top:top + box_h, left:left + box_w] = 1
    return mask


def disc_mask(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """uint8 {0, 1} mask of a disc (a small, round object when the radius is a few pixels)."""
    yy, xx = np.mgrid[:height, :width]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2).astype(np.uint8)


def thin_band_mask(height: int, width: int, row: int, thickness: int = 5, left: int = 0, length: int | None = None
                   ) -> np.ndarray:
    """A horizontal band `thickness` px high: thin enough to vanish on a coarse patch grid."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[row:row + thickness, left:left + (length if length is not None else width - left)] = 1
    return mask


def ring_mask(height: int, width: int, border: int = 20) -> np.ndarray:
    """A frame-shaped ring along the image border, `border` px wide (vanishes on the patch grid)."""
    mask = np.ones((height, width), dtype=np.uint8)
    mask[border:height - border, border:width - border] = 0
    return mask


def threshold_mask(image: np.ndarray, channel: int = 0, level: int = 200) -> np.ndarray:
    """An irregular real-image mask: pixels whose `channel` value exceeds `level`."""
    return (image[:, :, channel] > level).astype(np.uint8)
