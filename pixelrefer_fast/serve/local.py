"""Run the app on 127.0.0.1 in a background thread (tests, benchmarks, notebooks)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, *, port: int | None = None, timeout_s: float = 60.0) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a daemon thread; yields its base URL
    (`http://127.0.0.1:PORT`) and stops it (drained) on exit.

    Raises:
        RuntimeError: the server did not start within `timeout_s`.
    """
    import uvicorn

    port = free_port() if port is None else port
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="pixelrefer-serve-local", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on 127.0.0.1:{port} did not start within {timeout_s} s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
