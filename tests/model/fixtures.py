"""Shared test fixtures for the model tests: a tiny Qwen2-like tokenizer, demo media, masks.

`make_tiny_tokenizer()` builds a byte-level BPE tokenizer in-process (no download) with the
Qwen2 pre-tokenizer pattern and PixelRefer's special tokens in the official order:
`<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos) after the BPE vocabulary, then the
added `<image>`, `<|stream_start|>`, `<|stream_end|>`, `<REGION>`. Import it from any test in
`tests/model/` with `from fixtures import make_tiny_tokenizer`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

DEMO_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pixelrefer-demo"

QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PIXELREFER_ADDED_TOKENS = ["<image>", "<|stream_start|>", "<|stream_end|>", "<REGION>"]
_CORPUS = [
    "What is the category of the object? Please describe in detail the marked object in the video.",
    "There is one object in the image: a dog on a bed beside a laptop. Time 0.0s: 1.5 2.0 3.5",
    "user assistant system The bridge crosses the river; the skyline stands behind it.",
    "Colourful wooden stools in a shop front. A herd of horses runs on the grass, one white horse in front.",
    "[ ] ( ) , . : ; ! ? 0 1 2 3 4 5 6 7 8 9 \n\n What is the relationship between and ?",
]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.add_special_tokens(CHAT_SPECIAL_TOKENS + PIXELREFER_ADDED_TOKENS)
    return tok.to_str()


def make_tiny_tokenizer(save_dir: str | Path | None = None):
    """A small Qwen2-style fast tokenizer (deterministic, ~430 ids); saved to `save_dir` if given.

    Returns:
        `transformers.PreTrainedTokenizerFast` with eos `<|im_end|>`, pad `<|endoftext|>`, no BOS,
        and the PixelRefer tokens `<image>`, `<|stream_start|>`, `<|stream_end|>`, `<REGION>`
        as special tokens with consecutive ids, in that order, at the end of the vocabulary.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None,
        additional_special_tokens=PIXELREFER_ADDED_TOKENS, padding_side="left",
    )
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer


# ---------------------------------------------------------------------------- media and masks
def demo_path(name: str) -> Path:
    """Path of a file in the shared demo folder (tests should skip when `DEMO_DIR` is missing)."""
    return DEMO_DIR / name


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
