"""Ray Serve: the app deployed with one local replica answers a request like the plain server.

One test, ~50 s on the 2-core dev machine (a local Ray start ~25 s, the deployment ~20 s)."""

from __future__ import annotations

import httpx
import pytest

from pixelrefer_fast.serve.app import ServerSettings
from tests.serve.helpers import free_port, image_message, png_data_url, random_image

pytest.importorskip("ray.serve")


def test_one_local_replica_answers(checkpoint, monkeypatch):
    import ray
    from ray import serve

    from pixelrefer_fast.serve.ray_app import run_on_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local cluster, never a remote one
    port = free_port()
    settings = ServerSettings(model=str(checkpoint), kernels="torch", device="cpu")
    body = {"model": checkpoint.name, "messages": image_message(png_data_url(random_image(0)), "What is <region>?"),
            "regions": [{"box": [10, 8, 45, 40]}], "max_tokens": 5}
    try:
        run_on_ray(settings, host="127.0.0.1", port=port, num_replicas=1, blocking=False)
        url = f"http://127.0.0.1:{port}"
        response = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["choices"][0]["message"]["content"] and answer["usage"]["completion_tokens"] == 5
        assert httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": "5"}, timeout=60).status_code == 400
    finally:
        serve.shutdown()
        ray.shutdown()
