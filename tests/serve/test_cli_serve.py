"""`pixelrefer-fast serve` as a process: SIGTERM stops accepting, drains the in-flight request and
exits 0; bad flags exit 2 with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from pixelrefer_fast.cli import main
from tests.serve.helpers import free_port, image_message, png_data_url, random_image

BUDGET = 300  # tokens: long enough that SIGTERM lands while the request is generating


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


def _batches(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("pixelrefer_batch_size_count"):
            return float(line.split()[-1])
    return 0.0


def test_sigterm_drains_and_exits_0(checkpoint):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pixelrefer_fast.cli", "serve", "--model", str(checkpoint), "--port", str(port),
               "--kernels", "torch", "--device", "cpu", "--log-level", "warning"]
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        _wait_ready(url, process)
        body = {"model": checkpoint.name, "messages": image_message(png_data_url(random_image(0)), "What is <region>?"),
                "regions": [{"box": [10, 8, 45, 40]}], "max_tokens": BUDGET}
        result = {}
        request = threading.Thread(target=lambda: result.update(r=httpx.post(url + "/v1/chat/completions", json=body,
                                                                            timeout=120)))
        request.start()
        deadline = time.monotonic() + 60
        while _batches(url) < 1:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        request.join(120)
        assert process.wait(60) == 0, process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    response = result["r"]
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == BUDGET, "the in-flight request was not drained"


def test_bad_flags_exit_2(checkpoint, tmp_path, capsys):
    cases = [
        (["--model", str(tmp_path / "missing")], "model directory not found"),
        (["--model", str(checkpoint), "--max-batch", "0"], "--max-batch must be >= 1"),
        (["--model", str(checkpoint), "--allow-local-files", str(tmp_path / "nope")], "not a directory"),
        (["--model", str(checkpoint), "--default-max-tokens", "9", "--max-tokens-limit", "8"], "exceeds"),
        (["--model", str(tmp_path)], "PixelRefer"),  # not a checkpoint: refused before binding the port
    ]
    for args, message in cases:
        assert main(["serve", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pixelrefer-fast serve: error:") and message in err and len(err.splitlines()) == 1
