"""The special token strings of PixelRefer's prompts, shared by the processor, the loader and the model.

Their ids are not fixed here: like the official `mm_infer`, they come from the checkpoint's tokenizer
(`checkpoint.special_token_ids`, `PixelReferFastForCausalLM.set_special_token_ids`).
"""

from __future__ import annotations

IMAGE_TOKEN = "<image>"  # one per image token of the vision encoder's output
REGION_TOKEN = "<REGION>"  # one per region token of the region encoder's output
VIDEO_TOKEN = "<video>"  # where a question places its video (expanded into per-frame image tokens)
REGION_PLACEHOLDER = "<region>"  # what users write in a question, once per mask
STREAM_START_TOKEN = "<|stream_start|>"
STREAM_END_TOKEN = "<|stream_end|>"
# Added in this order by the official code (the first three at inference, <REGION> at training).
SPECIAL_TOKENS = (IMAGE_TOKEN, STREAM_START_TOKEN, STREAM_END_TOKEN, REGION_TOKEN)

__all__ = [
    "IMAGE_TOKEN",
    "REGION_PLACEHOLDER",
    "REGION_TOKEN",
    "SPECIAL_TOKENS",
    "STREAM_END_TOKEN",
    "STREAM_START_TOKEN",
    "VIDEO_TOKEN",
]
