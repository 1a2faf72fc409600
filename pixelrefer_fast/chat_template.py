"""The PixelRefer chat template as a Jinja template, for `processor.apply_chat_template`.

It renders what the processor builds for a question (`processing_pixelrefer_fast.render_prompt`):
Qwen2 turns `<|im_start|>{role}\\n{content}<|im_end|>\\n`, no system prompt unless given, then the
generation prompt `<|im_start|>assistant\\n`. Content is a string or a list of items:
`{"type": "image"}` renders `<image>\\n`; `{"type": "video", "timestamps": [...]}` renders
`Time {t}s:<image>` per frame joined by `,` and ending in `\\n` (times rounded to one decimal as
the official template, with NumPy rounding); `{"type": "text", "text": ...}` its text, stripped.
`<region>` placeholders stay in the text; the processor expands them with the masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>\n' }}"
    "{%- elif item['type'] == 'video' -%}"
    "{%- for label in item['time_labels'] -%}{{ 'Time ' + label + 's:<image>' + (',' if not loop.last else '\n') }}{%- endfor -%}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def time_label(t: Any) -> str:
    """A frame time as the official Jinja template prints it: `round(1)` on a NumPy float, then str."""
    return str(np.round(np.float64(t), 1))


def _prepared(conversation: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The conversation with each video item's `time_labels` (official one-decimal rounding)."""
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
        raise TypeError(f"conversation must be a list of {{'role', 'content'}} messages, got {type(conversation).__name__}")
    messages = []
    for index, message in enumerate(conversation):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"conversation[{index}] must be a dict with 'role' and 'content', got {message!r}")
        content = message["content"]
        if not isinstance(content, str):
            items = []
            for item in content:
                kind = item.get("type") if isinstance(item, Mapping) else None
                if kind not in ("image", "video", "text"):
                    raise ValueError(f"conversation[{index}] content item {item!r}: 'type' must be image, video or text")
                if kind == "video":
                    item = {**item, "time_labels": [time_label(t) for t in item.get("timestamps", ())]}
                items.append(item)
            content = items
        messages.append({"role": str(message["role"]), "content": content})
    return messages


def render_chat(conversation: Sequence[Mapping[str, Any]], *, template: str = CHAT_TEMPLATE,
                add_generation_prompt: bool = True) -> str:
    """Render `conversation` with the Jinja `template` (sandboxed, as transformers does)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(messages=_prepared(conversation),
                                                    add_generation_prompt=add_generation_prompt)


__all__ = ["CHAT_TEMPLATE", "render_chat", "time_label"]
