"""The batching scheduler: requests from the event loop, batches on one worker thread.

`submit` (event loop) appends a `Row` to a bounded queue; a full queue is a 429 with
`Retry-After`, a closing scheduler a 503. The worker thread waits for a first row, gathers more for
up to `window_s` after it or until `max_batch` rows wait, and runs them as one `Engine` batch;
rows arriving meanwhile wait for the next batch. Results travel back as events on each row's
`asyncio.Queue` (`loop.call_soon_threadsafe`). `Row.cancel` (a client that went away) drops a
queued row, or ends a running one at the next decoding step. `drain` refuses new rows, finishes
every queued and running one, and stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from .engine import Engine
from .errors import APIError
from .metrics import ServerMetrics
from .parse import DescribeJob

logger = logging.getLogger(__name__)


@dataclass
class RowEvent:
    """`kind`: `started` (prompt_tokens, region_tokens), `delta` (text), `finished` (delta, text,
    finish_reason, completion_tokens) or `failed` (an `APIError`)."""

    kind: str
    payload: tuple


class Row:
    """One request in the scheduler; the engine's sink for it (`engine.RowSink`)."""

    def __init__(self, job: DescribeJob, loop: asyncio.AbstractEventLoop, metrics: ServerMetrics):
        self.job = job
        self.events: asyncio.Queue[RowEvent] = asyncio.Queue()
        self.submitted = time.perf_counter()
        self._loop = loop
        self._metrics = metrics
        self._cancelled = threading.Event()
        self._first_token: float | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """The client went away: stop working on this row."""
        self._cancelled.set()

    def started(self, prompt_tokens: int, region_tokens: int) -> None:
        self._emit("started", prompt_tokens, region_tokens)

    def delta(self, text: str) -> None:
        if self._first_token is None:
            self._first_token = time.perf_counter()
            self._metrics.time_to_first_token.observe(self._first_token - self.submitted)
        self._emit("delta", text)

    def finished(self, delta: str, text: str, finish_reason: str, completion_tokens: int) -> None:
        self._metrics.completion_tokens.inc(completion_tokens)
        self._metrics.rows_finished.labels(finish_reason).inc()
        self._emit("finished", delta, text, finish_reason, completion_tokens)

    def failed(self, error: APIError) -> None:
        self._emit("failed", error)

    def _emit(self, kind: str, *payload) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.events.put_nowait, RowEvent(kind, payload))


class BatchScheduler:
    """Gathers rows into batches for `engine` (see the module docstring).

    Args:
        engine: runs one batch.
        max_batch: most rows per batch (>= 1).
        window_s: how long to wait for more rows after the first one of a batch (>= 0).
        max_queue: most rows waiting (not running) before `submit` answers 429 (>= 1).
        metrics: where queue depth, batch sizes and throughput go.
    """

    def __init__(self, engine: Engine, *, max_batch: int, window_s: float, max_queue: int, metrics: ServerMetrics):
        for name, value, low in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not window_s >= 0:
            raise ValueError(f"window_s must be >= 0 seconds, got {window_s!r}")
        self.engine = engine
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: deque[Row] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._last_batch_s = 1.0
        self._thread = threading.Thread(target=self._work, name="pixelrefer-serve-batches", daemon=True)
        self._thread.start()

    @property
    def closing(self) -> bool:
        return self._closing

    def submit(self, job: DescribeJob) -> Row:
        """Queue `job` (call on the event loop); raises `APIError` 429 (queue full) or 503 (closing)."""
        row = Row(job, asyncio.get_running_loop(), self.metrics)
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down; retry on another replica", type="server_error",
                               code="shutting_down")
            if len(self._queue) >= self.max_queue:
                batches = math.ceil(len(self._queue) / self.max_batch)
                retry = max(1, math.ceil(batches * self._last_batch_s))
                raise APIError(429, f"the request queue is full ({self.max_queue} waiting); retry after {retry} s",
                               type="rate_limit_error", code="queue_full", headers={"Retry-After": str(retry)})
            self._queue.append(row)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify()
        return row

    def drain(self, timeout: float | None = None) -> bool:
        """Refuse new rows, finish the queued and running ones, stop the worker; True if it stopped in time."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _next_batch(self) -> list[Row] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].submitted + self.window_s
            while len(self._queue) < self.max_batch and not self._closing:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self.metrics.queue_depth.set(len(self._queue))
        return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [row for row in batch if not row.cancelled]
            for row in batch:
                if row.cancelled:
                    row.job.close()
                    self.metrics.rows_finished.labels("cancelled").inc()
            if not live:
                continue
            self.metrics.batch_size.observe(len(live))
            stats = self.engine.run_batch([row.job for row in live], live)
            for row in live:
                row.job.close()
            self._last_batch_s = stats.seconds
            if stats.seconds > 0:
                self.metrics.tokens_per_second.set(stats.tokens / stats.seconds)
        logger.info("batch worker stopped")
