"""The server against `describe`, through the real `openai` client, on 127.0.0.1.

Greedy answers (streamed and not) equal `describe`'s for boxes, RLE and PNG masks and for a
DAM-style RGBA request; every client error is OpenAI's error JSON with the field in `param`;
401 without the key; 429 with `Retry-After` on a full queue; a client that disconnects has its
row cancelled; identical requests get identical answers whatever their batch-mates.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image

import pixelrefer_kernels
from pixelrefer_fast.masks import box_to_mask, encode_rle
from pixelrefer_fast.serve.app import ServerSettings, create_app
from pixelrefer_fast.serve.engine import Engine
from tests.serve.helpers import HEIGHT, WIDTH, image_message, png_data_url, random_image, running_server

MAX_TOKENS = 10
BOX = [10, 8, 45, 40]
BOX2 = [30, 20, 66, 52]


def reference(loaded, image, masks, question, max_tokens=MAX_TOKENS, seed=0) -> str:
    model, processor = loaded
    with pixelrefer_kernels.force("torch"):  # the server tests' engines run the torch path (fast on the CPU)
        return model.describe(processor, images=[image], masks=[masks], questions=[question],
                              max_new_tokens=max_tokens, kmeans_generator=torch.Generator().manual_seed(seed))[0]


@pytest.fixture(scope="module")
def server(loaded, checkpoint):
    model, processor = loaded
    settings = ServerSettings(model=str(checkpoint), max_batch=4, batch_window_ms=20, max_body_bytes=2**20)
    with running_server(create_app(settings, engine=Engine(model, processor, kernels="torch"))) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def ask(client, messages, **kwargs):
    regions = kwargs.pop("regions", None)
    extra = {"regions": regions} if regions is not None else None
    return client.chat.completions.create(model="tiny-pixelrefer", messages=messages, max_tokens=MAX_TOKENS,
                                          extra_body=extra, **kwargs)


def streamed(client, messages, **kwargs):
    chunks = list(ask(client, messages, stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, reasons, chunks[-1].usage


@pytest.mark.parametrize("form", ["box", "rle", "mask_png"])
def test_answers_equal_describe(loaded, client, form):
    image = random_image(0)
    masks = [box_to_mask(BOX, HEIGHT, WIDTH), box_to_mask(BOX2, HEIGHT, WIDTH)]
    if form == "box":
        regions = [{"box": BOX}, {"box": BOX2}]
    elif form == "rle":
        regions = [{"rle": encode_rle(m)} for m in masks]
    else:
        regions = [{"mask_png": png_data_url(m * 255)} for m in masks]
    question = "Compare <region> with <region>."
    expected = reference(loaded, image, masks, question)
    assert expected, "the tiny checkpoint must answer visible text, or the comparison is empty"
    messages = image_message(png_data_url(image), question)
    answer = ask(client, messages, regions=regions)
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason == "length"
    usage = answer.usage
    assert usage.completion_tokens == MAX_TOKENS and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.model_extra["region_tokens"] > 0
    text, reasons, stream_usage = streamed(client, messages, regions=regions)
    assert text == expected and reasons == ["length"]
    assert stream_usage.prompt_tokens == usage.prompt_tokens and stream_usage.completion_tokens == MAX_TOKENS


def test_lite_checkpoint_answers_equal_describe(tmp_path):
    from pixelrefer_fast import load_pretrained
    from pixelrefer_fast.processing_pixelrefer_fast import PixelReferFastProcessor
    from tests.serve.helpers import make_serving_checkpoint

    directory = make_serving_checkpoint(tmp_path / "tiny-lite", "lite")
    lite = load_pretrained(directory), PixelReferFastProcessor.from_pretrained(directory)
    image = random_image(3)
    masks = [box_to_mask(BOX, HEIGHT, WIDTH), box_to_mask(BOX2, HEIGHT, WIDTH)]
    expected = reference(lite, image, masks, "Compare <region> with <region>.")
    assert expected
    settings = ServerSettings(model=str(directory))
    with running_server(create_app(settings, engine=Engine(*lite, kernels="torch"))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model="tiny-lite", messages=image_message(png_data_url(image), "Compare <region> with <region>."),
            max_tokens=MAX_TOKENS, extra_body={"regions": [{"box": BOX}, {"rle": encode_rle(masks[1])}]})
    assert answer.choices[0].message.content == expected


def test_dam_style_rgba_request(loaded, client):
    """Describe Anything's convention: the alpha channel is the mask, no regions, `<image>` in the text."""
    image = random_image(1)
    alpha = box_to_mask(BOX, HEIGHT, WIDTH) * 255
    rgba = np.dstack([image, alpha]).astype(np.uint8)
    question = "<region>\nDescribe the masked region in detail."
    expected = reference(loaded, image, [(alpha > 0).astype(np.uint8)], question)
    messages = image_message(png_data_url(rgba), "<image>\nDescribe the masked region in detail.")
    assert ask(client, messages).choices[0].message.content == expected
    plain = image_message(png_data_url(rgba), "Describe the masked region in detail.")
    assert ask(client, plain).choices[0].message.content == expected


def test_two_images_in_one_message(loaded, client):
    """Regions pick their image by index among the message's image parts; the answer equals `describe`
    on the list of images with the same `image_ids` (the images go first, in message order)."""
    model, processor = loaded
    first, second = random_image(4), random_image(5)[: HEIGHT // 2]
    masks = [box_to_mask(BOX, HEIGHT // 2, WIDTH), box_to_mask(BOX2, HEIGHT, WIDTH)]
    question = "Compare <region> with <region>."
    with pixelrefer_kernels.force("torch"):
        expected = model.describe(processor, images=[[first, second]], image_ids=[[1, 0]], masks=[masks],
                                  questions=[question], max_new_tokens=MAX_TOKENS,
                                  kmeans_generator=torch.Generator().manual_seed(0))[0]
    assert expected
    parts = [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": png_data_url(first)}},
             {"type": "image_url", "image_url": {"url": png_data_url(second)}}]
    regions = [{"box": BOX, "image": 1}, {"rle": encode_rle(masks[1])}]
    answer = ask(client, [{"role": "user", "content": parts}], regions=regions)
    assert answer.choices[0].message.content == expected
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, [{"role": "user", "content": parts}], regions=[{"box": BOX, "image": 2}, regions[1]])
    body = error.value.body
    assert body["param"] == "regions[0].image" and "out of range: the message has 2 image(s)" in body["message"]


def test_stop_strings_cut_the_answer(loaded, client):
    image = random_image(0)
    full = reference(loaded, image, [box_to_mask(BOX, HEIGHT, WIDTH)], "What is <region>?")
    stop = full[3:5]
    messages = image_message(png_data_url(image), "What is <region>?")
    answer = ask(client, messages, regions=[{"box": BOX}], stop=[stop])
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == full[: full.find(stop)].strip()
    text, reasons, _ = streamed(client, messages, regions=[{"box": BOX}], stop=stop)
    assert text == answer.choices[0].message.content and reasons == ["stop"]


def test_identical_requests_agree_whatever_their_batch_mates(client):
    """Sampled answers depend on the request's seed only: alone, or batched with other requests."""
    image_url = png_data_url(random_image(2))
    messages = image_message(image_url, "What is <region>?")
    kwargs = dict(regions=[{"box": BOX}], temperature=1.0, top_p=0.9, seed=7)
    alone = ask(client, messages, **kwargs).choices[0].message.content
    results = {}

    def run(name, **extra):
        results[name] = ask(client, messages, **{**kwargs, **extra}).choices[0].message.content

    threads = [threading.Thread(target=run, args=(f"same{i}",)) for i in range(2)]
    threads += [threading.Thread(target=run, args=(f"other{i}",), kwargs={"seed": 100 + i}) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["same0"] == results["same1"] == alone
    assert results["other0"] != alone or results["other1"] != alone, "the seed must matter when sampling"


def test_sampled_request_equals_describe_alone(loaded, client):
    """A sampled request gets `describe`'s answer for it alone with its seed, temperature and top_p
    (transformers' semantics; no top-k), here while batched with a greedy request."""
    model, processor = loaded
    image = random_image(3)
    masks = [box_to_mask(BOX, HEIGHT, WIDTH)]
    question = "What is <region>?"
    with pixelrefer_kernels.force("torch"):
        expected = model.describe(processor, images=[image], masks=[masks], questions=[question],
                                  max_new_tokens=MAX_TOKENS, do_sample=True, temperature=1.5, top_p=0.95, top_k=0,
                                  seed=12)[0]
    greedy = reference(loaded, image, masks, question)
    assert expected != greedy, "the test needs a sampled answer that differs from the greedy one"
    messages = image_message(png_data_url(image), question)
    options = {"sampled": dict(temperature=1.5, top_p=0.95, seed=12), "greedy": {}}
    results = {}

    def run(name):
        results[name] = ask(client, messages, regions=[{"box": BOX}], **options[name]).choices[0].message.content

    threads = [threading.Thread(target=run, args=(name,)) for name in options]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"sampled": expected, "greedy": greedy}


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny-pixelrefer"]
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    metrics = httpx.get(server + "/metrics").text
    for name in ("pixelrefer_requests_total", "pixelrefer_queue_depth", "pixelrefer_batch_size_bucket",
                 "pixelrefer_completion_tokens_total", "pixelrefer_decode_tokens_per_second",
                 "pixelrefer_request_latency_seconds_bucket", "pixelrefer_time_to_first_token_seconds_bucket"):
        assert name in metrics


def _data_url(payload: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(payload).decode()


def _png_claiming(height: int, width: int) -> bytes:
    """A small PNG whose header (IHDR) claims `height` x `width`: what a decompression bomb looks like
    before decoding."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(random_image(0)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]  # the chunk type and its 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


IMAGE = png_data_url(random_image(0))
GOOD = {"model": "tiny-pixelrefer", "messages": image_message(IMAGE, "What is <region>?"), "regions": [{"box": BOX}],
        "max_tokens": 2}


def with_(path: str, value):
    """GOOD with one field replaced (`a.0.b` paths); value None deletes it."""
    import copy

    body = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = body
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    key = int(last) if last.isdigit() else last
    if value is None:
        del node[key]
    else:
        node[key] = value
    return body


ERROR_CASES = [
    pytest.param(with_("max_tokens", "2"), 400, "max_tokens", "valid integer", id="wrong-type"),
    pytest.param(with_("temperature", 3.0), 400, "temperature", "less than or equal to 2", id="temperature-range"),
    pytest.param(with_("bogus", 1), 400, "bogus", "unknown field", id="unknown-field"),
    pytest.param(with_("regions.0.a b", 1), 400, 'regions[0]["a b"]', "unknown field", id="unknown-field-not-identifier"),
    pytest.param(with_("messages", None), 400, "messages", "Field required", id="no-messages"),
    pytest.param(with_("n", 2), 400, "n", "Input should be 1", id="n"),
    pytest.param(with_("model", "gpt-4o"), 404, "model", "does not exist", id="unknown-model"),
    pytest.param(with_("messages.0.content.0.type", "audio"), 400, "messages[0].content[0].type", "Input should be",
                 id="part-type"),
    pytest.param(with_("messages.0.content.1.text", "What is it?"), 400, "regions", "0 '<region>' placeholder",
                 id="placeholders-vs-regions"),
    pytest.param(with_("regions", [{"box": BOX}, {"box": BOX2}]), 400, "regions", "2 region(s)", id="more-regions"),
    pytest.param(with_("regions.0", {"box": BOX, "rle": {"size": [2, 2], "counts": [4]}}), 400, "regions[0]",
                 "exactly one of", id="two-shapes"),
    pytest.param(with_("regions.0", {"box": [40, 8, 10, 40]}), 400, "regions[0].box", "box", id="inverted-box"),
    pytest.param(with_("regions.0", {"box": BOX, "image": 1}), 400, "regions[0].image", "out of range",
                 id="image-index"),
    pytest.param(with_("messages.0.content.0.image_url.url", _data_url(b"hello")), 400, "messages[0].content[0]",
                 "could not be decoded", id="undecodable-image"),
    pytest.param(with_("messages.0.content.0.image_url.url", _data_url(_png_claiming(20_000, 20_000))), 400,
                 "messages[0].content[0]", "MAX_IMAGE_PIXELS", id="image-bomb"),
    pytest.param(with_("messages.0.content.0.image_url.url", _data_url(base64.b64decode(IMAGE.split(",")[1])[:-20])),
                 400, "messages[0].content[0]", "truncated", id="truncated-png"),
    pytest.param(with_("messages.0.content.0.image_url.url", "data:image/png;base64,@@@"), 400,
                 "messages[0].content[0]", "base64", id="bad-base64"),
    pytest.param(with_("messages.0.content.0.image_url.url", "https://example.com/a.png"), 400,
                 "messages[0].content[0]", "not fetched", id="remote-url"),
    pytest.param(with_("messages.0.content.0.image_url.url", "/etc/hostname"), 400, "messages[0].content[0]",
                 "local files are disabled", id="local-file"),
    pytest.param(with_("regions.0", {"mask_png": png_data_url(np.ones((10, 12), np.uint8) * 255)}), 400,
                 "regions[0].mask_png", "differs from the image size", id="mask-size"),
    pytest.param(with_("regions.0", {"rle": {"size": [HEIGHT, WIDTH], "counts": [5, 7]}}), 400, "regions[0].rle",
                 "add up", id="rle-sum"),
    pytest.param(with_("regions.0", {"rle": {"size": [HEIGHT, WIDTH], "counts": "!!!"}}), 400, "regions[0].rle",
                 "RLE", id="rle-string"),
    pytest.param(with_("messages", [{"role": "system", "content": "hi"}, *GOOD["messages"]]), 400, "messages",
                 "exactly one message", id="two-messages"),
    pytest.param(with_("max_tokens", 10**6), 400, "max_tokens", "limit", id="budget-limit"),
    pytest.param(with_("seed", 2**64), 400, "seed", "less than", id="seed-range"),
    pytest.param(with_("stop", ["a", ""]), 400, "stop", "non-empty", id="empty-stop"),
]


@pytest.mark.parametrize("body, status, param, message", ERROR_CASES)
def test_errors_name_the_field(server, body, status, param, message):
    response = httpx.post(server + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"], error
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("path, value, param", [
    ("temperature", float("nan"), "temperature"),
    ("regions.0.box", [2.0, 3.0, float("inf"), 20.0], "regions[0].box[2]"),
    ("top_p", float("-inf"), "top_p"),
])
def test_non_finite_numbers_name_the_field(server, path, value, param):
    """JSON's NaN and Infinity, which Python's json reads and writes, are refused where they stand (a NaN
    temperature was refused as "less than or equal to 2", a NaN box coordinate reached the mask code)."""
    body = json.dumps(with_(path, value)).encode()  # allow_nan: the literal NaN / Infinity tokens
    response = httpx.post(server + "/v1/chat/completions", content=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "finite number" in error["message"], error


def test_bad_json_and_oversized_body(server):
    response = httpx.post(server + "/v1/chat/completions", content=b"{not json", timeout=30)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = httpx.post(server + "/v1/chat/completions", content=b"[1, 2]", timeout=30)
    assert response.status_code == 400 and "JSON object" in response.json()["error"]["message"]
    big = with_("messages.0.content.1.text", "x" * (2**20 + 10))
    response = httpx.post(server + "/v1/chat/completions", json=big, timeout=30)
    assert response.status_code == 413 and "at most" in response.json()["error"]["message"]


def test_local_files_stay_inside_the_allowed_folder(loaded, checkpoint, tmp_path):
    model, processor = loaded
    inside = tmp_path / "allowed"
    inside.mkdir()
    image = random_image(0)
    Image.fromarray(image).save(inside / "a.png")
    Image.fromarray(image).save(tmp_path / "outside.png")
    settings = ServerSettings(model=str(checkpoint), allow_local_files=str(inside))
    with running_server(create_app(settings, engine=Engine(model, processor, kernels="torch"))) as url:
        def post(path):
            return httpx.post(url + "/v1/chat/completions", json=with_("messages.0.content.0.image_url.url", path),
                              timeout=60)
        assert post(str(inside / "a.png")).status_code == 200
        assert post("file://" + str(inside / "a.png")).status_code == 200
        for escape in (str(tmp_path / "outside.png"), str(inside / ".." / "outside.png")):
            response = post(escape)
            assert response.status_code == 400 and "outside the folder" in response.json()["error"]["message"]


def test_api_key(loaded, checkpoint):
    model, processor = loaded
    settings = ServerSettings(model=str(checkpoint), api_key="sesame")
    with running_server(create_app(settings, engine=Engine(model, processor, kernels="torch"))) as url:
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
                response = httpx.request(method, url + path, json=GOOD, headers=headers)
                assert response.status_code == 401, (key, path)
                assert response.json()["error"]["type"] == "authentication_error"
        assert httpx.get(url + "/health").status_code == 200
        good = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert good.models.list().data[0].id == "tiny-pixelrefer"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


class GatedEngine(Engine):
    """An engine whose batches wait for `gate` (to hold the queue full)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def run_batch(self, jobs, sinks):
        self.entered.set()
        self.gate.wait(60)
        return super().run_batch(jobs, sinks)


def test_full_queue_answers_429(loaded, checkpoint):
    model, processor = loaded
    engine = GatedEngine(model, processor, kernels="torch")
    settings = ServerSettings(model=str(checkpoint), max_batch=1, max_queue=1, batch_window_ms=0)
    with running_server(create_app(settings, engine=engine)) as url:
        results = []
        first = threading.Thread(target=lambda: results.append(httpx.post(url + "/v1/chat/completions", json=GOOD,
                                                                          timeout=60)))
        first.start()
        assert engine.entered.wait(30)
        second = threading.Thread(target=lambda: results.append(httpx.post(url + "/v1/chat/completions", json=GOOD,
                                                                           timeout=60)))
        second.start()
        deadline = time.monotonic() + 30
        while "pixelrefer_queue_depth 1.0" not in httpx.get(url + "/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        rejected = httpx.post(url + "/v1/chat/completions", json=GOOD, timeout=60)
        engine.gate.set()
        first.join()
        second.join()
    assert rejected.status_code == 429 and int(rejected.headers["Retry-After"]) >= 1
    assert rejected.json()["error"]["code"] == "queue_full"
    assert [r.status_code for r in results] == [200, 200]


def _cancelled(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith('pixelrefer_rows_finished_total{reason="cancelled"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_disconnect_cancels_the_row(loaded, checkpoint, stream):
    model, processor = loaded
    settings = ServerSettings(model=str(checkpoint), max_tokens_limit=30_000)
    body = {**GOOD, "max_tokens": 30_000, "stream": stream}  # within the 32768-position context, with the prompt
    with running_server(create_app(settings, engine=Engine(model, processor, kernels="torch"))) as url:
        if stream:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
                assert response.status_code == 200
                next(response.iter_lines())  # the role chunk: the row is generating
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + "/v1/chat/completions", json=body, timeout=2.0)
        deadline = time.monotonic() + 30
        while _cancelled(url) < 1:
            assert time.monotonic() < deadline, "the row was not cancelled"
            time.sleep(0.05)
        tokens = next(float(line.split()[-1]) for line in httpx.get(url + "/metrics").text.splitlines()
                      if line.startswith("pixelrefer_completion_tokens_total"))
        assert tokens < 30_000


def _write_video(path, frames: int = 6, fps: int = 2) -> list[np.ndarray]:
    av = pytest.importorskip("av")
    images = [random_image(10 + i) for i in range(frames)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return images


def test_video_request_equals_describe(loaded, client, tmp_path):
    model, processor = loaded
    video = tmp_path / "clip.mp4"
    _write_video(video)
    mask = box_to_mask(BOX, HEIGHT, WIDTH)
    question = "What does <region> do?"
    with pixelrefer_kernels.force("torch"):
        expected = model.describe(processor, videos=[str(video)], masks=[[mask]], frame_ids=[[2]], questions=[question],
                                  max_new_tokens=MAX_TOKENS, kmeans_generator=torch.Generator().manual_seed(0))[0]
    assert expected
    url = "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                             {"type": "text", "text": question}]}]
    answer = client.chat.completions.create(model="tiny-pixelrefer", messages=messages, max_tokens=MAX_TOKENS,
                                            extra_body={"regions": [{"rle": encode_rle(mask)}], "frame_ids": [2]})
    assert answer.choices[0].message.content == expected
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny-pixelrefer", messages=messages, max_tokens=2,
                                       extra_body={"regions": [{"rle": encode_rle(mask)}]})
    assert error.value.body["param"] == "frame_ids"


def test_describe_honours_its_kmeans_generator(loaded):
    """The server's per-request k-means draws rely on describe(kmeans_generator=...) reaching the
    region encoder: the same seeded generator gives the same answer whatever the global RNG did."""
    image = random_image(0)
    masks = [box_to_mask(BOX, HEIGHT, WIDTH), box_to_mask(BOX2, HEIGHT, WIDTH)]
    answers = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        answers.append(reference(loaded, image, masks, "Compare <region> with <region>."))
    assert answers[0] == answers[1]
