"""The processor's chat template renders exactly the prompt the processor builds (`render_prompt`)."""

from __future__ import annotations

import pytest

from pixelrefer_fast.processing_pixelrefer_fast import PixelReferFastProcessor, render_prompt
from tests.model.fixtures import make_tiny_tokenizer


@pytest.fixture(scope="module")
def processors():
    return {variant: PixelReferFastProcessor(make_tiny_tokenizer(), variant=variant, mask_num=4) for variant in ("full", "lite")}


QUESTION = "  What is <region> doing next to <region>? "


def test_image_prompt_matches(processors):
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    assert processors["full"].apply_chat_template(conversation) == render_prompt(QUESTION, variant="full", media="image")


def test_lite_prompt_matches(processors):
    for content in (QUESTION, [{"type": "text", "text": QUESTION}]):
        rendered = processors["lite"].apply_chat_template([{"role": "user", "content": content}])
        assert rendered == render_prompt(QUESTION, variant="lite")


def test_video_prompt_matches_with_official_rounding(processors):
    stamps = [0.0, 0.15, 1.25, 2.05]  # 0.15 * 10 rounds up in NumPy, down in printf-style formatting
    conversation = [{"role": "user", "content": [{"type": "video", "timestamps": stamps}, {"type": "text", "text": QUESTION}]}]
    expected = render_prompt(QUESTION, variant="full", media="video", timestamps=stamps)
    assert processors["full"].apply_chat_template(conversation) == expected
    assert "Time 0.2s:" in expected


def test_turns_generation_prompt_and_tokens(processors):
    processor = processors["full"]
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n")
    ids = processor.apply_chat_template(conversation[1:2], tokenize=True)
    assert processor.tokenizer.decode(ids) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert isinstance(processor.chat_template, str) and "im_start" in processor.chat_template


@pytest.mark.parametrize("conversation, error", [
    pytest.param("hello", TypeError, id="string"),
    pytest.param([{"content": "no role"}], ValueError, id="no-role"),
    pytest.param([{"role": "user", "content": [{"type": "audio"}]}], ValueError, id="bad-item"),
])
def test_bad_conversations(processors, conversation, error):
    with pytest.raises(error):
        processors["full"].apply_chat_template(conversation)
