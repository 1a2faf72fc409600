"""Answering one submitted request: a `chat.completion` JSON, or server-sent events.

Both wait on the row's events and on the client: a client that disconnects has its row cancelled
(`Row.cancel`) and gets no answer. Streams send OpenAI `chat.completion.chunk` events (the role
first, then text deltas, then the finish reason, then usage when `stream_options.include_usage`)
and end with `data: [DONE]`; a request that fails before its first token gets a plain JSON error.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .metrics import ServerMetrics
from .scheduler import Row, RowEvent
from .schema import ChatCompletionRequest

CLIENT_GONE = 499  # nginx's status for a client that closed the connection (metrics only)


async def _wait_disconnect(request: Request) -> None:
    """Return when the client has gone (the body is read by then, so `receive` only reports that)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # a server whose receive returns at once must not make this spin


async def _next_event(row: Row, disconnect: asyncio.Task) -> RowEvent | None:
    """The row's next event, or None when the client disconnected first (the row is then cancelled)."""
    getter = asyncio.ensure_future(row.events.get())
    try:
        done, _ = await asyncio.wait({getter, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():  # the client went away, or this task was cancelled: leave no waiter behind
            getter.cancel()
    if getter in done:
        return getter.result()
    row.cancel()
    return None


def _usage(prompt_tokens: int, region_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "region_tokens": region_tokens}


class Reply:
    """Answers one submitted row, as one JSON or as server-sent events."""

    def __init__(self, metrics: ServerMetrics, body: ChatCompletionRequest, row: Row, request: Request,
                 arrived: float):
        self.metrics = metrics
        self.body = body
        self.row = row
        self.request = request
        self.arrived = arrived
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.usage = (0, 0)

    def _done(self, status: int) -> None:
        self.metrics.requests.labels(str(status)).inc()
        self.metrics.latency.observe(time.perf_counter() - self.arrived)

    async def complete(self) -> Response:
        disconnect = asyncio.ensure_future(_wait_disconnect(self.request))
        try:
            while (event := await _next_event(self.row, disconnect)) is not None:
                if event.kind == "started":
                    self.usage = event.payload
                elif event.kind == "failed":
                    raise event.payload[0]
                elif event.kind == "finished":
                    _, text, reason, completion = event.payload
                    self._done(200)
                    return JSONResponse({
                        "id": self.id, "object": "chat.completion", "created": self.created,
                        "model": self.body.model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": reason, "logprobs": None}],
                        "usage": _usage(*self.usage, completion),
                    })
            self._done(CLIENT_GONE)
            return Response(status_code=CLIENT_GONE)  # nobody reads it: the client is gone
        finally:
            disconnect.cancel()

    async def stream(self) -> Response:
        disconnect = asyncio.ensure_future(_wait_disconnect(self.request))
        event = await _next_event(self.row, disconnect)
        if event is None:
            disconnect.cancel()
            self._done(CLIENT_GONE)
            return Response(status_code=CLIENT_GONE)
        if event.kind == "failed":
            disconnect.cancel()
            raise event.payload[0]
        return StreamingResponse(self._events(event, disconnect), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _chunk(self, delta: dict, finish_reason: str | None = None, usage: dict | None = None) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.body.model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
        if usage is not None:
            chunk["choices"], chunk["usage"] = [], usage
        return f"data: {json.dumps(chunk)}\n\n"

    async def _events(self, first: RowEvent, disconnect: asyncio.Task) -> AsyncIterator[str]:
        finished = False
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            event: RowEvent | None = first
            while event is not None:
                if event.kind == "started":
                    self.usage = event.payload
                elif event.kind == "delta":
                    yield self._chunk({"content": event.payload[0]})
                elif event.kind == "failed":
                    yield f"data: {json.dumps(event.payload[0].body())}\n\n"
                    break
                else:
                    delta, _, reason, completion = event.payload
                    if delta:
                        yield self._chunk({"content": delta})
                    yield self._chunk({}, reason)
                    if self.body.stream_options is not None and self.body.stream_options.include_usage:
                        yield self._chunk({}, usage=_usage(*self.usage, completion))
                    break
                event = await _next_event(self.row, disconnect)
            finished = event is not None
            yield "data: [DONE]\n\n"
        finally:
            disconnect.cancel()
            if not finished:
                self.row.cancel()
            self._done(200 if finished else CLIENT_GONE)
