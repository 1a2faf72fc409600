"""`pixelrefer-fast serve`: the OpenAI-compatible region chat server (see `pixelrefer_fast.serve`).

Registered in `pixelrefer_fast.cli.SUBCOMMANDS`; importing this module imports no server library
(they load when the command runs, so the other subcommands work without the `serve` extra).

SIGTERM (and Ctrl-C) stop accepting connections, let in-flight requests finish, drain the scheduler,
and exit 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from ..defaults import DEFAULT_MAX_NEW_TOKENS, DTYPES, KERNEL_MODES


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add `serve`: an OpenAI-compatible HTTP server for region questions."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over HTTP (OpenAI-compatible /v1/chat/completions with regions)",
        description="Serve a PixelRefer / PixelRefer-Lite checkpoint: POST /v1/chat/completions (OpenAI schema "
        "plus a 'regions' list), GET /v1/models, /health, /metrics. Requests arriving together are batched.",
    )
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    parser.add_argument("--served-model-name", default=None, help="model id clients send (default: folder name)")
    parser.add_argument("--max-batch", type=int, default=16, help="most requests per batch (default 16)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0,
                        help="wait this long after a request for more to batch with it (default 5)")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="waiting requests before answering 429 (default 256)")
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (default 32 MiB)")
    parser.add_argument("--allow-local-files", metavar="DIR", default=None,
                        help="let requests name files under DIR by path (default: data: URLs only)")
    parser.add_argument("--default-max-tokens", type=int, default=512,
                        help="budget of a request that gives no max_tokens (default 512)")
    parser.add_argument("--max-tokens-limit", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"largest max_tokens accepted (default {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (default: the checkpoint's)")
    parser.add_argument("--kernels", choices=KERNEL_MODES, default="auto", help="kernel path (default auto)")
    parser.add_argument("--static-cache", action="store_true", help="static KV cache (see describe)")
    parser.add_argument("--ray", action="store_true", help="deploy on Ray Serve (RAY_ADDRESS, or a local cluster)")
    parser.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray; default 1)")
    parser.add_argument("--autoscaling", metavar="JSON", default=None,
                        help='Ray Serve autoscaling config, e.g. \'{"min_replicas": 1, "max_replicas": 4}\'')
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(handler=run_serve)
    return parser


def settings_from_args(args: argparse.Namespace):
    """Check the flags and build `ServerSettings`; `ValueError` names a bad flag."""
    from .app import ServerSettings

    if not Path(args.model).is_dir():
        raise ValueError(f"model directory not found: {args.model}")
    for flag, value, low in (("--max-batch", args.max_batch, 1), ("--max-queue", args.max_queue, 1),
                             ("--default-max-tokens", args.default_max_tokens, 1),
                             ("--max-tokens-limit", args.max_tokens_limit, 1), ("--replicas", args.replicas, 1),
                             ("--port", args.port, 0)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.batch_window_ms < 0 or args.max_body_mb <= 0:
        raise ValueError("--batch-window-ms must be >= 0 and --max-body-mb > 0")
    if args.default_max_tokens > args.max_tokens_limit:
        raise ValueError(f"--default-max-tokens {args.default_max_tokens} exceeds --max-tokens-limit "
                         f"{args.max_tokens_limit}")
    if args.allow_local_files is not None and not Path(args.allow_local_files).is_dir():
        raise ValueError(f"--allow-local-files: not a directory: {args.allow_local_files}")
    return ServerSettings(
        model=args.model, served_model_name=args.served_model_name, api_key=args.api_key,
        max_batch=args.max_batch, batch_window_ms=args.batch_window_ms, max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 2**20), allow_local_files=args.allow_local_files,
        default_max_tokens=args.default_max_tokens, max_tokens_limit=args.max_tokens_limit,
        device=args.device, dtype=args.dtype, kernels=args.kernels, static_cache=args.static_cache,
    )


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM / Ctrl-C; 0 after a clean drain."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ValueError(f"serve needs the server extra: pip install 'pixelrefer-fast[serve]' ({exc})") from exc
    settings = settings_from_args(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.ray:
        return _run_ray(args, settings)
    from .app import create_app, load_engine

    engine = load_engine(settings)  # before binding the port: a checkpoint that does not load exits 2
    config = uvicorn.Config(create_app(settings, engine=engine), host=args.host, port=args.port,
                            log_level=args.log_level, timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught once it has shut down; with this handler in place that
    # re-raise is harmless and the process exits 0 after the drain
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, server.handle_exit)
    server.run()
    return 0 if server.started else 1


def _run_ray(args: argparse.Namespace, settings) -> int:
    import time

    from .ray_app import run_on_ray

    autoscaling = json.loads(args.autoscaling) if args.autoscaling else None
    if autoscaling is not None and not isinstance(autoscaling, dict):
        raise ValueError(f"--autoscaling must be a JSON object, got {args.autoscaling!r}")
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: stop.append(s))
    run_on_ray(settings, host=args.host, port=args.port, num_replicas=args.replicas,
               autoscaling_config=autoscaling, blocking=False)
    sys.stderr.write(f"pixelrefer-fast serve: Ray Serve deployment up at http://{args.host}:{args.port}\n")
    while not stop:
        time.sleep(0.5)
    from ray import serve

    serve.shutdown()  # Ray Serve drains each replica's in-flight requests before stopping it
    return 0
