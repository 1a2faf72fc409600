"""A bounded load generator for a running server, loopback only (tests and `bench/bench_serve.py`).

`run_load(url, bodies, concurrency)` posts every body of `bodies` once to
`/v1/chat/completions` from `concurrency` client threads and returns each answer with its
latency; `LoadClients` keeps the clients for repeated (timed) runs. It refuses any host but the
loopback interface, sends exactly `len(bodies)` requests and stops by itself at `deadline_s`
(requests not sent by then are reported as not sent).
"""

from __future__ import annotations

import ipaddress
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

LOOPBACK_NAMES = ("localhost",)


@dataclass
class Answer:
    """One request's outcome: `index` into the bodies, HTTP `status` (0: no response, the error in
    `body`), the response JSON and latency."""

    index: int
    status: int
    body: dict
    seconds: float


@dataclass
class LoadResult:
    answers: list[Answer] = field(default_factory=list)
    not_sent: int = 0
    seconds: float = 0.0

    def latency_quantile(self, q: float) -> float:
        """The `q` quantile (0..1, nearest rank) of the successful requests' latencies, in seconds."""
        times = sorted(a.seconds for a in self.answers if a.status == 200)
        if not times:
            raise ValueError("no successful request")
        return times[min(len(times) - 1, round(q * (len(times) - 1)))]

    @property
    def requests_per_s(self) -> float:
        return sum(a.status == 200 for a in self.answers) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        """`requests`, `ok`, `not_sent`, `seconds`, `requests_per_s`, `p50_ms`, `p99_ms`."""
        ok = sum(a.status == 200 for a in self.answers)
        return {"requests": len(self.answers), "ok": ok, "not_sent": self.not_sent, "seconds": round(self.seconds, 3),
                "requests_per_s": round(self.requests_per_s, 3),
                "p50_ms": round(self.latency_quantile(0.5) * 1e3, 1) if ok else None,
                "p99_ms": round(self.latency_quantile(0.99) * 1e3, 1) if ok else None}


def check_loopback(url: str) -> None:
    """Raise `ValueError` unless `url` points at this machine's loopback interface."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in LOOPBACK_NAMES
    if not loopback:
        raise ValueError(f"the load generator only targets loopback (127.0.0.1, ::1, localhost), got {host!r}")


class LoadClients:
    """`concurrency` HTTP clients of a loopback server, made once (making one costs ~30 ms of GIL-held
    work, its TLS context: a timed run must not count it); `run` posts a set of bodies with them."""

    def __init__(self, url: str, concurrency: int, *, api_key: str | None = None, request_timeout_s: float = 120.0):
        import httpx

        check_loopback(url)
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._clients = [httpx.Client(base_url=url, headers=headers, timeout=request_timeout_s)
                         for _ in range(concurrency)]

    def __enter__(self) -> LoadClients:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for http in self._clients:
            http.close()

    def run(self, bodies: list[dict], *, deadline_s: float = 300.0) -> LoadResult:
        """Post each of `bodies` once, one client a thread; see the module docstring."""
        lock = threading.Lock()
        next_index = iter(range(len(bodies)))
        result = LoadResult()
        start = time.perf_counter()
        stop_at = start + deadline_s

        def client(http) -> None:
            import httpx

            while True:
                with lock:
                    index = next(next_index, None)
                    if index is not None and time.perf_counter() > stop_at:
                        result.not_sent += 1
                        continue
                if index is None:
                    return
                sent = time.perf_counter()
                try:
                    response = http.post("/v1/chat/completions", json=bodies[index])
                    status, body = response.status_code, response.json()
                except (httpx.HTTPError, ValueError) as exc:  # recorded as status 0, never lost
                    status, body = 0, {"error": {"message": f"{type(exc).__name__}: {exc}"}}
                answer = Answer(index, status, body, time.perf_counter() - sent)
                with lock:
                    result.answers.append(answer)

        threads = [threading.Thread(target=client, args=(http,), name=f"load-client-{i}")
                   for i, http in enumerate(self._clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result.seconds = time.perf_counter() - start
        return result


def run_load(url: str, bodies: list[dict], concurrency: int, *, deadline_s: float = 300.0,
             api_key: str | None = None, request_timeout_s: float = 120.0) -> LoadResult:
    """Post each of `bodies` once from `concurrency` threads; see the module docstring."""
    with LoadClients(url, concurrency, api_key=api_key, request_timeout_s=request_timeout_s) as clients:
        return clients.run(bodies, deadline_s=deadline_s)
