"""The ``pixelrefer-fast`` command line.

``main()`` builds one ``argparse`` parser with a subcommand per entry of ``SUBCOMMANDS``; each entry
names a module and the function there that adds the subcommand's parser (``add_<name>_parser(subparsers)``,
which sets ``handler`` to the function running it). ``describe`` lives here; ``profile`` in
``pixelrefer_fast.profiling.cli``. A new subcommand is one more entry.

Exit codes: 0 success; 2 bad input (missing file, malformed argument, a checkpoint that does not load,
inputs the model refuses), reported as one line on stderr.

Example::

    pixelrefer-fast describe --model PixelRefer-2B --image dog.jpg --mask dog.png \\
        --question "What is <region> doing?"
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "pixelrefer-fast"
# (module, parser-adding function) per subcommand
SUBCOMMANDS = (
    ("pixelrefer_fast.cli", "add_describe_parser"),
    ("pixelrefer_fast.profiling.cli", "add_profile_parser"),
)
DTYPES = ("auto", "bfloat16", "float16", "float32")
KERNEL_MODES = ("auto", "triton", "torch")


class CommandError(ValueError):
    """Bad command-line input (reported as one line, exit code 2)."""


def add_describe_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``describe``: answer a question about masked regions of an image or a video."""
    parser = subparsers.add_parser(
        "describe",
        help="describe masked regions of an image or video with a PixelRefer checkpoint",
        description="Run a PixelRefer / PixelRefer-Lite checkpoint on one image (or video) with its masks "
        "and print the answer. Each <region> in the question refers to the next --mask.",
    )
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json, weights, tokenizer)")
    media = parser.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="image file")
    media.add_argument("--video", help="video file")
    parser.add_argument("--mask", action="append", default=[], metavar="PATH",
                        help="mask image (nonzero = inside) or .npy array; repeat once per <region>, in order")
    parser.add_argument("--frame-ids", type=int, nargs="+", metavar="N",
                        help="video: the frame index of each mask (one per --mask, or one for all)")
    parser.add_argument("--question", required=True, help='question with one "<region>" per mask')
    parser.add_argument("--max-new-tokens", type=int, default=512, help="generation budget (default 512)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (default: the checkpoint's)")
    parser.add_argument("--kernels", choices=KERNEL_MODES, default="auto",
                        help="kernel path: auto (best available), triton (ours, forced) or torch (reference)")
    parser.add_argument("--static-cache", action="store_true",
                        help="static KV cache; on CUDA the decoding step is compiled (faster after the first call)")
    parser.set_defaults(handler=run_describe)
    return parser


def _read_mask(path: str):
    import numpy as np
    from PIL import Image

    file = Path(path)
    if not file.is_file():
        raise CommandError(f"mask file not found: {path}")
    array = np.load(file) if file.suffix == ".npy" else np.asarray(Image.open(file).convert("L"))
    if array.ndim != 2:
        raise CommandError(f"mask {path} must be a 2-D array, got shape {array.shape}")
    return (array > 0).astype(np.uint8)


def run_describe(args: argparse.Namespace) -> int:
    """Load the checkpoint and processor, run ``describe`` and print the answer."""
    import pixelrefer_kernels
    import torch
    from transformers.utils import logging as hf_logging

    from .checkpoint import load_pretrained
    from .processing_pixelrefer_fast import PixelReferFastProcessor

    media = args.image or args.video
    if not Path(media).is_file():
        raise CommandError(f"{'image' if args.image else 'video'} file not found: {media}")
    if not Path(args.model).is_dir():
        raise CommandError(f"model directory not found: {args.model}")
    if args.max_new_tokens < 1:
        raise CommandError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    masks = [_read_mask(path) for path in args.mask]
    frame_ids = None
    if args.video:
        if masks and not args.frame_ids:
            raise CommandError("--video with masks needs --frame-ids (the frame of each mask)")
        if args.frame_ids:
            if len(args.frame_ids) not in (1, len(masks)):
                raise CommandError(f"--frame-ids has {len(args.frame_ids)} entries for {len(masks)} masks")
            frame_ids = args.frame_ids * len(masks) if len(args.frame_ids) == 1 else args.frame_ids
    elif args.frame_ids:
        raise CommandError("--frame-ids applies to --video only")
    hf_logging.disable_progress_bar()  # stdout: the answer; stderr: errors only
    hf_logging.set_verbosity_error()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    load_kwargs = {"dtype": args.dtype}
    if device != "cpu":
        load_kwargs["device_map"] = device
    with pixelrefer_kernels.force(args.kernels) if args.kernels != "auto" else contextlib.nullcontext():
        model = load_pretrained(args.model, **load_kwargs)
        processor = PixelReferFastProcessor.from_pretrained(args.model)
        answer = model.describe(
            processor,
            images=[args.image] if args.image else None,
            videos=[args.video] if args.video else None,
            masks=[masks],
            frame_ids=[frame_ids] if frame_ids is not None else None,
            questions=[args.question],
            max_new_tokens=args.max_new_tokens,
            static_cache=args.static_cache,
        )[0]
    sys.stdout.write(answer + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand of ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(prog=PROG, description="Fast PixelRefer / PixelRefer-Lite inference.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, function in SUBCOMMANDS:
        getattr(importlib.import_module(module), function)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pixelrefer-fast`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    from pixelrefer_kernels import BackendUnavailableError

    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError, BackendUnavailableError) as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"{PROG} {args.command}: error: {message}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
