"""Property-based fuzzing of the server's request path (hypothesis), without a model: raw bodies
through `parse_body` -> `parse_request` -> the processor, as `POST /v1/chat/completions` runs them.

A body is a valid region request (images as data URLs, `<region>` placeholders, box / RLE / PNG-mask
regions) with one drawn mutation: a field removed, replaced by any JSON value (NaN, infinities and
64-bit-overflowing integers included, which Python's `json` reads), an unknown field added, a list
entry repeated, a data URL cut or re-typed, or the raw bytes cut. Every outcome must be one the
server answers properly:

- a 4xx `APIError` whose body is OpenAI's error JSON and whose `param` is a field path or null;
- or a job the processor accepts (placeholders = masks, masks at their image's size), or refuses
  with a ValueError / TypeError (the engine's 400);

never another exception, which the engine would answer with a 500 for a client's mistake.
Settings and seed: `tests/fuzz/conftest.py`.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("pydantic")

from pixelrefer_fast.image_processing_pixelrefer_fast import PixelReferFastImageProcessor  # noqa: E402
from pixelrefer_fast.masks import encode_rle  # noqa: E402
from pixelrefer_fast.processing_pixelrefer_fast import PixelReferFastProcessor  # noqa: E402
from pixelrefer_fast.serve.errors import APIError, param_path  # noqa: E402
from pixelrefer_fast.serve.parse import ParseOptions, parse_request  # noqa: E402
from pixelrefer_fast.serve.schema import ChatCompletionRequest, parse_body  # noqa: E402
from tests.fuzz.strategies import json_values  # noqa: E402
from tests.model.fixtures import make_tiny_tokenizer, textured  # noqa: E402

MODEL = "tiny"
OPTIONS = ParseOptions(model_name=MODEL, default_max_tokens=16, max_tokens_limit=64)
HEIGHT, WIDTH = 30, 40
PROCESSOR_ERRORS = (ValueError, TypeError)


def data_url(array: np.ndarray, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def valid_body() -> dict:
    """Two images (the second RGBA), three regions: a box, an RLE on image 1, a PNG mask."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[5:20, 8:30] = 255
    rgba = np.dstack([textured(HEIGHT, WIDTH, seed=2), mask])
    content = [
        {"type": "image_url", "image_url": {"url": data_url(textured(HEIGHT, WIDTH, seed=1))}},
        {"type": "image_url", "image_url": {"url": data_url(rgba)}},
        {"type": "text", "text": "Compare <region>, <region> and <region>."},
    ]
    regions = [{"box": [2, 3, 25, 28]}, {"rle": encode_rle(mask), "image": 1}, {"mask_png": data_url(mask)}]
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "regions": regions,
            "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["."]}


BODY = valid_body()


def _paths(node, prefix=()):
    """Every path to a value inside `node` (dict keys and list indices), the root excluded."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


# the RLE's run list holds most of the body's values: two of its entries stand for all
PATHS = [path for path in _paths(BODY) if not (len(path) > 4 and path[-2] == "counts" and path[-1] > 1)]


def _field_names(model) -> set[str]:
    names = set(model.model_fields)
    for info in model.model_fields.values():
        for inner in getattr(info.annotation, "__args__", ()) or (info.annotation,):
            for candidate in getattr(inner, "__args__", ()) or (inner,):
                if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
                    names |= _field_names(candidate)
    return names


KNOWN_FIELDS = _field_names(ChatCompletionRequest)  # every field of every part of the schema


def _parent(body, path):
    for key in path[:-1]:
        body = body[key]
    return body


@st.composite
def mutated_bodies(draw) -> tuple[bytes, tuple | None]:
    """`(raw body, location of the unknown field added or None)`."""
    body = copy.deepcopy(BODY)
    unknown = None
    kind = draw(st.sampled_from(["none", "delete", "replace", "unknown_field", "repeat", "cut_url", "retype_url",
                                 "cut_bytes"]))
    path = draw(st.sampled_from(PATHS))
    parent, key = _parent(body, path), path[-1]
    if kind == "delete":
        del parent[key]
    elif kind == "replace":
        parent[key] = draw(json_values)
    elif kind == "unknown_field":
        where = path if isinstance(parent[key], dict) else ()
        target = parent[key] if where else body
        name = draw(st.text(max_size=8).filter(lambda name: name not in target and name not in KNOWN_FIELDS))
        target[name] = draw(json_values)
        unknown = (*where, name)
    elif kind == "repeat" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif kind in ("cut_url", "retype_url"):
        urls = [p for p in PATHS if p[-1] in ("url", "mask_png")]
        url_path = draw(st.sampled_from(urls))
        holder, name = _parent(body, url_path), url_path[-1]
        url = holder[name]
        if kind == "cut_url":
            holder[name] = url[: draw(st.integers(0, len(url) - 1))]
        else:
            holder[name] = url.replace("image/png", draw(st.sampled_from(["image/jpeg", "text/plain", "video/mp4", ""])), 1)
    raw = json.dumps(body).encode()  # NaN and infinities as JSON's NaN / Infinity, which json.loads reads
    if kind == "cut_bytes":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    return raw, unknown


@pytest.fixture(scope="module")
def processor():
    return PixelReferFastProcessor(make_tiny_tokenizer(), PixelReferFastImageProcessor(max_pixels=64 * 14 * 14 * 4),
                                   variant="full", mask_num=4)


def check_error(error: APIError) -> None:
    assert 400 <= error.status < 500, f"a client's mistake answered {error.status}: {error.message}"
    body = json.loads(json.dumps(error.body()))
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    param = body["error"]["param"]
    assert param is None or (isinstance(param, str) and param.strip() == param and param)


def check_job(job, processor) -> None:
    """A parsed job is consistent, and the processor takes it or refuses it with the engine's 400 errors."""
    images = job.image if isinstance(job.image, list) else [job.image]
    ids = job.image_ids or [0] * len(job.masks)
    assert len(ids) == len(job.masks) == job.question.count("<region>")
    for mask, index in zip(job.masks, ids):
        assert mask.shape == images[index].shape[:2] and mask.dtype == np.uint8
    assert job.sampling.max_tokens <= OPTIONS.max_tokens_limit
    assert math.isfinite(job.sampling.temperature) and math.isfinite(job.sampling.top_p)
    try:
        processor(images=[job.image], masks=[job.masks], image_ids=[job.image_ids] if job.image_ids else None,
                  text=[job.question])
    except PROCESSOR_ERRORS:
        pass


def test_the_unmutated_body_parses_and_processes(processor):
    job = parse_request(parse_body(json.dumps(BODY).encode()), OPTIONS)
    assert len(job.masks) == 3 and job.image_ids == [0, 1, 0]
    batch = processor(images=[job.image], masks=[job.masks], image_ids=[job.image_ids], text=[job.question])
    assert int(batch["region_token_counts"].numel()) == 3


@given(mutated_bodies())
def test_a_mutated_request_gets_a_4xx_or_a_job(processor, mutation):
    raw, unknown = mutation
    try:
        job = parse_request(parse_body(raw), OPTIONS)
    except APIError as error:
        check_error(error)
        if unknown is not None:  # the one thing wrong with the body, named where it stands
            assert error.param == param_path(unknown) and "unknown field" in error.message, (unknown, error.message)
        return
    assert unknown is None, f"the unknown field {unknown} was accepted"
    try:
        check_job(job, processor)
    finally:
        job.close()
