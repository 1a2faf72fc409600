"""The request body of `POST /v1/chat/completions` (pydantic models, validated strictly).

OpenAI's chat schema, narrowed to what a region model answers, plus two PixelRefer fields:

- `messages`: one `user` message. Its `content` is a string or a list of parts:
  `{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": {"url": ...}}` or
  `{"type": "video_url", "video_url": {"url": ...}}`; the text holds one `<region>` per region.
- `regions` (`extra_body` in the `openai` client): one entry per `<region>`, in order, each
  exactly one of `{"box": [x0, y0, x1, y1]}` (pixels, end-exclusive), `{"rle": {"size": [h, w],
  "counts": ...}}` (COCO RLE) or `{"mask_png": "data:image/png;base64,..."}` (inside = value > 0),
  with an optional `"image"` index among the message's images (in message order; default 0).
- `frame_ids` (video): the frame of each region, or one for all.

Wrong types, unknown fields and non-finite numbers (`NaN`, `Infinity`, which JSON parsers accept) are
errors (never silently ignored); OpenAI fields with no meaning here are accepted only at their neutral
value (`n` = 1, `logprobs` false, penalties 0).
`parse_body` turns the raw body into a validated request, or a 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import APIError, bad_request, param_path

MAX_STOP_STRINGS = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class MediaURL(_Strict):
    """`{"url": ...}`: a `data:` URL, or a local path / `file://` URL under `--allow-local-files`."""

    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(_Strict):
    """One part of a message's content; the field named by `type` must be set, the others not."""

    type: Literal["text", "image_url", "video_url"]
    text: str | None = None
    image_url: MediaURL | None = None
    video_url: MediaURL | None = None

    @model_validator(mode="after")
    def _one_payload(self) -> ContentPart:
        given = [name for name in ("text", "image_url", "video_url") if getattr(self, name) is not None]
        if given != [self.type]:
            raise ValueError(f"a content part of type {self.type!r} needs the field {self.type!r} and no other "
                             f"payload (got {given})")
        return self


class Message(_Strict):
    """A chat message; only one `user` message is answered."""

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: list[ContentPart]
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_as_part(cls, value: Any) -> Any:
        return [{"type": "text", "text": value}] if isinstance(value, str) else value


class RLE(_Strict):
    """COCO run-length encoding; `counts` is the compressed string or the list of run lengths
    (checked when decoded)."""

    size: list[int] = Field(min_length=2, max_length=2)
    counts: Any


class Region(_Strict):
    """One region: exactly one of `box`, `rle`, `mask_png`; `image` picks the message's image."""

    box: list[float] | None = Field(default=None, min_length=4, max_length=4)
    rle: RLE | None = None
    mask_png: str | None = None
    image: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_shape(self) -> Region:
        given = [name for name in ("box", "rle", "mask_png") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"a region needs exactly one of 'box', 'rle', 'mask_png' (got {given or 'none'})")
        return self


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """The body of `POST /v1/chat/completions`."""

    model: str
    messages: list[Message] = Field(min_length=1)
    regions: list[Region] | None = None
    frame_ids: list[int] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: list[str] | None = Field(default=None, max_length=MAX_STOP_STRINGS)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    logprobs: Literal[False] = False
    frequency_penalty: Literal[0, 0.0] = 0
    presence_penalty: Literal[0, 0.0] = 0
    user: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not s for s in value):
            raise ValueError("stop strings must be non-empty")
        return value

    @model_validator(mode="after")
    def _one_budget(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        return self


def _validation_error(exc: ValidationError) -> APIError:
    first = exc.errors()[0]
    param = param_path(first["loc"])
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = f"unknown field {param!r}; see the request schema in the README"
    elif param:
        message = f"{param}: {message}"
    return bad_request(message, param)


def parse_body(body: bytes) -> ChatCompletionRequest:
    """JSON text to a validated request; 400 `APIError` naming the field otherwise."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got {type(data).__name__}")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from exc
