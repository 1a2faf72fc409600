"""The FastAPI app: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, `GET /metrics`.

`create_app(settings)` loads the checkpoint at startup (or takes a ready `Engine`), starts a
`BatchScheduler` and drains it at shutdown. With `settings.api_key` every `/v1/*` endpoint
needs `Authorization: Bearer <key>`; `/health` and `/metrics` stay open. Every error is
OpenAI's JSON (`errors.APIError`). Streaming answers are server-sent events in OpenAI's
`chat.completion.chunk` format, ending with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..defaults import DEFAULT_MAX_NEW_TOKENS
from .engine import Engine
from .errors import APIError
from .metrics import CONTENT_TYPE, ServerMetrics
from .parse import ParseOptions, parse_request
from .responses import Reply
from .scheduler import BatchScheduler
from .schema import parse_body

logger = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    """Everything `create_app` needs (the `serve` command's flags).

    Attributes:
        model: checkpoint directory.
        served_model_name: the id `/v1/models` lists and requests must name (default: the folder name).
        api_key: the Bearer key `/v1/*` requires, or None (open).
        max_batch, batch_window_ms, max_queue: the scheduler's (see `BatchScheduler`).
        max_body_bytes: larger request bodies get 413.
        allow_local_files: a folder whose files requests may name by path, or None (data: URLs only).
        default_max_tokens, max_tokens_limit: a request's budget when it gives none, and the most it may ask.
        device, dtype, kernels, static_cache: how the checkpoint is loaded and run (as `describe`'s CLI).
    """

    model: str
    served_model_name: str | None = None
    api_key: str | None = None
    max_batch: int = 16
    batch_window_ms: float = 5.0
    max_queue: int = 256
    max_body_bytes: int = 32 * 2**20
    allow_local_files: str | None = None
    default_max_tokens: int = 512
    max_tokens_limit: int = DEFAULT_MAX_NEW_TOKENS
    device: str | None = None
    dtype: str = "auto"
    kernels: str = "auto"
    static_cache: bool = False

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.model).resolve().name


def load_engine(settings: ServerSettings) -> Engine:
    """Load the checkpoint and its processor as `settings` says."""
    from ..loading import load_model_and_processor

    model, processor = load_model_and_processor(settings.model, device=settings.device, dtype=settings.dtype)
    return Engine(model, processor, static_cache=settings.static_cache, kernels=settings.kernels)


class _Server:
    """The state behind the routes."""

    def __init__(self, settings: ServerSettings, engine: Engine | None):
        self.settings = settings
        self.engine = engine
        self.metrics = ServerMetrics()
        self.scheduler: BatchScheduler | None = None
        allow = Path(settings.allow_local_files).resolve() if settings.allow_local_files else None
        self.options = ParseOptions(settings.model_name, settings.default_max_tokens, settings.max_tokens_limit, allow)
        self.created = int(time.time())

    def start(self) -> None:
        if self.engine is None:
            self.engine = load_engine(self.settings)
        self.scheduler = BatchScheduler(self.engine, max_batch=self.settings.max_batch,
                                        window_s=self.settings.batch_window_ms / 1000,
                                        max_queue=self.settings.max_queue, metrics=self.metrics)

    def authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           type="authentication_error", code="invalid_api_key")

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"the request body has {declared} bytes; this server accepts at most {limit} "
                           "(--max-body-mb)", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"the request body exceeds {limit} bytes (--max-body-mb)", code="body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)


def create_app(settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    """The server app for `settings`; `engine`: a ready engine (else the checkpoint loads at startup)."""
    server = _Server(settings, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(server.start)
        yield
        await asyncio.to_thread(server.scheduler.drain)

    app = FastAPI(title="pixelrefer-fast", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        if request.url.path == "/v1/chat/completions":
            server.metrics.requests.labels(str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        error = APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code="not_found"
                         if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        error = APIError(500, f"internal error: {type(exc).__name__}", type="server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/health")
    async def health():
        if server.scheduler is None or server.scheduler.closing:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request):
        server.authorize(request)
        card = {"id": settings.model_name, "object": "model", "created": server.created, "owned_by": "pixelrefer-fast"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrived = time.perf_counter()
        server.authorize(request)
        body = parse_body(await server.read_body(request))
        job = await asyncio.to_thread(parse_request, body, server.options)
        try:
            row = server.scheduler.submit(job)
        except APIError:
            job.close()
            raise
        reply = Reply(server.metrics, body, row, request, arrived)
        return await (reply.stream() if body.stream else reply.complete())

    return app


