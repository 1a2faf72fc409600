"""Tiny random-weight checkpoints in the official layout, for the tests.

The writer lives in the package (`pixelrefer_fast.random_checkpoint`, also `pixelrefer-fast
init-random`); this module keeps the names the tests import. Sizes: LLM hidden 64 (4 heads of 16,
2 KV heads, 2 layers, MLP 96), vision hidden 48 (2 heads of 24, 2 layers, MLP 80), `mask_num` 4.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pixelrefer_fast.random_checkpoint import (
    FORMATS,
    SIZES,
    VARIANTS,
    official_key_shapes,
    random_state_dict,
    write_random_checkpoint,
)
from pixelrefer_fast.random_checkpoint import official_config as _official_config

LLM = SIZES["tiny"].llm
VISION = SIZES["tiny"].vision
MASK_NUM = SIZES["tiny"].mask_num


def official_config(variant: str, vocab_size: int, token_ids: dict[str, int], *, tie_word_embeddings: bool = True,
                    dtype: str = "float32") -> dict:
    """The tiny `config.json` dict with the released field names."""
    return _official_config(variant, vocab_size, token_ids, size="tiny", tie_word_embeddings=tie_word_embeddings, dtype=dtype)


def make_tiny_checkpoint(
    directory: str | Path,
    variant: str = "full",
    fmt: str = "safetensors",
    *,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    drop_keys: tuple[str, ...] = (),
    extra_keys: dict[str, torch.Tensor] | None = None,
    config_overrides: dict | None = None,
) -> Path:
    """`write_random_checkpoint(directory, variant, "tiny", fmt, ...)`."""
    return write_random_checkpoint(directory, variant, "tiny", fmt, tie_word_embeddings=tie_word_embeddings, seed=seed,
                                   drop_keys=drop_keys, extra_keys=extra_keys, config_overrides=config_overrides)


__all__ = ["FORMATS", "LLM", "MASK_NUM", "VARIANTS", "VISION", "make_tiny_checkpoint", "official_config",
           "official_key_shapes", "random_state_dict"]
