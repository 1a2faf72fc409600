"""A bounded load test on 127.0.0.1: 200 requests from 16 concurrent clients, none lost or duplicated,
each answer equal to the same request's answer served alone (batch size 1).

Bounded: exactly 200 requests, a 240 s deadline after which the generator stops sending. Latency and
throughput are reported, not asserted (speed is the benchmark's job: `bench/bench_serve.py`).
"""

from __future__ import annotations

import pytest

from pixelrefer_fast.serve.app import ServerSettings, create_app
from pixelrefer_fast.serve.engine import Engine
from pixelrefer_fast.serve.loadgen import check_loopback, run_load
from tests.serve.helpers import image_message, png_data_url, random_image, running_server

REQUESTS, CLIENTS, VARIANTS = 200, 16, 20


def variant_bodies(count: int) -> list[dict]:
    """`count` different requests: images, boxes, questions, budgets, seeds and sampling vary."""
    bodies = []
    for v in range(count):
        x0, y0 = 4 + 3 * (v % 7), 3 + 2 * (v % 5)
        question = ["What is <region>?", "Describe <region> in detail.", "Compare <region> and <region>."][v % 3]
        regions = [{"box": [x0, y0, x0 + 30, y0 + 25]}]
        if question.count("<region>") == 2:
            regions.append({"box": [30, 20, 66, 52]})
        body = {"model": "tiny-pixelrefer", "messages": image_message(png_data_url(random_image(v % 4)), question),
                "regions": regions, "max_tokens": 4 + v % 5, "seed": v}
        if v % 4 == 3:
            body.update(temperature=0.8, top_p=0.9)
        bodies.append(body)
    return bodies


def test_load_generator_refuses_remote_hosts():
    for url in ("http://10.0.0.1:8000", "http://example.com", "http://0.0.0.0:80"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(url)
    check_loopback("http://127.0.0.1:8000")
    check_loopback("http://[::1]:8000")


def test_200_requests_from_16_clients(loaded, checkpoint, record_property):
    model, processor = loaded
    variants = variant_bodies(VARIANTS)
    alone_settings = ServerSettings(model=str(checkpoint), max_batch=1, batch_window_ms=0)
    with running_server(create_app(alone_settings, engine=Engine(model, processor, kernels="torch"))) as url:
        sequential = run_load(url, variants, concurrency=1, deadline_s=120)
    assert all(a.status == 200 for a in sequential.answers) and len(sequential.answers) == VARIANTS
    expected = {a.index: a.body["choices"][0]["message"]["content"] for a in sequential.answers}

    bodies = [variants[i % VARIANTS] for i in range(REQUESTS)]
    settings = ServerSettings(model=str(checkpoint), max_batch=16, batch_window_ms=10)
    with running_server(create_app(settings, engine=Engine(model, processor, kernels="torch"))) as url:
        result = run_load(url, bodies, concurrency=CLIENTS, deadline_s=240)
    assert result.not_sent == 0
    assert sorted(a.index for a in result.answers) == list(range(REQUESTS)), "a request was lost or duplicated"
    assert [a.status for a in result.answers] == [200] * REQUESTS
    assert len({a.body["id"] for a in result.answers}) == REQUESTS
    wrong = [a.index for a in result.answers
             if a.body["choices"][0]["message"]["content"] != expected[a.index % VARIANTS]]
    assert not wrong, f"answers differ from the sequential ones for requests {wrong}"
    for key, value in result.summary().items():
        record_property(key, value)
