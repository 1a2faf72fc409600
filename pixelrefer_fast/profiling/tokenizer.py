"""A self-contained byte-level tokenizer for profiling without a checkpoint.

`byte_tokenizer()` builds a `PreTrainedTokenizerFast` in memory: the 256 byte symbols of GPT-2's
byte-level alphabet (no merges, so every UTF-8 byte of the text is one token) plus the Qwen2 chat and
PixelRefer special tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<image>`,
`<|stream_start|>`, `<|stream_end|>`, `<REGION>`). Text is a few dozen tokens per prompt either
way; the visual placeholders, which decide the cost, are single special tokens as in the real
tokenizer. Its ids (< 300) fit any preset's vocabulary.
"""

from __future__ import annotations

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<|stream_start|>", "<|stream_end|>", "<REGION>")


def byte_tokenizer():
    """The in-memory byte-level tokenizer (see the module docstring); pad `<|endoftext|>`, eos `<|im_end|>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={symbol: index for index, symbol in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS),
    )
