"""The `pixelrefer-fast` command line.

`main()` builds one `argparse` parser with a subcommand per entry of `SUBCOMMANDS`; each entry
names a module and the function there that adds the subcommand's parser (`add_<name>_parser(subparsers)`,
which sets `handler` to the function running it). `describe`, `init-random` and `env` live
here; `profile` in `pixelrefer_fast.profiling.cli`. A new subcommand is one more entry.
`pixelrefer-fast --version` prints the package version.

Exit codes: 0 success; 2 an expected failure (missing file, malformed argument, an image or video that
does not decode, a checkpoint folder that is not one or does not load, a missing optional package,
inputs the model refuses, out of memory), reported as one line on stderr; 130 interrupted (Ctrl-C).
`describe` checks every input (files, the image or video, masks and boxes against its size, the
question's `<region>` count, the checkpoint folder and its weight files) before the model loads.

Example:

    pixelrefer-fast describe --model PixelRefer-2B --image dog.jpg --mask dog.png --box 10,20,200,220 \\
        --question "What is <region> doing next to <region>?"
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .defaults import DECODINGS, DEFAULT_MAX_NEW_TOKENS, DTYPES, KERNEL_MODES

PROG = "pixelrefer-fast"
# (module, parser-adding function) per subcommand
SUBCOMMANDS = (
    ("pixelrefer_fast.cli", "add_describe_parser"),
    ("pixelrefer_fast.profiling.cli", "add_profile_parser"),
    ("pixelrefer_fast.cli", "add_init_random_parser"),
    ("pixelrefer_fast.cli", "add_env_parser"),
    ("pixelrefer_fast.caption.cli", "add_caption_parser"),
    ("pixelrefer_fast.serve.cli", "add_serve_parser"),
)
MAX_SEED = 2**32 - 1  # numpy's seed range, which transformers.set_seed also seeds
EXIT_INTERRUPTED = 130


class CommandError(ValueError):
    """Bad command-line input (reported as one line, exit code 2)."""


class _RegionAction(argparse.Action):
    """`--mask` and `--box` append `(kind, value)` to one list, so their order is kept."""

    def __call__(self, parser, namespace, values, option_string=None):
        regions = list(getattr(namespace, self.dest, None) or [])
        regions.append((self.const, values))
        setattr(namespace, self.dest, regions)


def add_describe_parser(subparsers) -> argparse.ArgumentParser:
    """Add `describe`: answer a question about regions of an image or a video."""
    parser = subparsers.add_parser(
        "describe",
        help="describe regions (masks or boxes) of an image or video with a PixelRefer checkpoint",
        description="Run a PixelRefer / PixelRefer-Lite checkpoint on one image (or video) with its regions "
        "and print the answer as it is generated. Each <region> in the question refers to the next "
        "--mask or --box, in the order given.",
    )
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json, weights, tokenizer)")
    media = parser.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="image file")
    media.add_argument("--video", help="video file (needs PyAV: pip install 'pixelrefer-fast[video]')")
    parser.add_argument("--mask", action=_RegionAction, const="mask", dest="regions", default=[], metavar="PATH",
                        help="mask image (nonzero = inside) or .npy array (values >= 0, > 0 = inside); one per <region>")
    parser.add_argument("--box", action=_RegionAction, const="box", dest="regions", metavar="X0,Y0,X1,Y1",
                        help="a box region in pixels (x1, y1 exclusive); mixes with --mask, order kept")
    parser.add_argument("--frame-ids", type=int, nargs="+", metavar="N",
                        help="video: the frame index of each region (one per region, or one for all)")
    parser.add_argument("--question", required=True, help='question with one "<region>" per region')
    generation = parser.add_argument_group("generation (greedy unless --do-sample)")
    generation.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                            help=f"generation budget (default {DEFAULT_MAX_NEW_TOKENS}, as describe())")
    generation.add_argument("--do-sample", action="store_true",
                            help="sample (with the checkpoint's temperature/top-p/top-k unless given)")
    generation.add_argument("--temperature", type=float, default=None, help="sampling temperature (> 0; needs --do-sample)")
    generation.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1] (needs --do-sample)")
    generation.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens, >= 1 (needs --do-sample)")
    generation.add_argument("--seed", type=int, default=None, help=f"random seed (0..{MAX_SEED}): sampling and k-means init")
    generation.add_argument("--no-stream", action="store_true", help="print the answer at the end instead of token by token")
    run = parser.add_argument_group("runtime")
    run.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    run.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (default: the checkpoint's)")
    run.add_argument("--kernels", choices=KERNEL_MODES, default="auto",
                     help="kernel path: auto (best available), triton (ours, forced) or torch (reference)")
    run.add_argument("--decoding", choices=DECODINGS, default="fast",
                     help="fast: the static-cache decode loop (CUDA graph on CUDA); hf: transformers' generate")
    run.add_argument("--static-cache", action="store_true",
                     help="--decoding hf: a static KV cache, the step compiled on CUDA (the fast loop always has one)")
    parser.set_defaults(handler=run_describe)
    return parser


def add_init_random_parser(subparsers) -> argparse.ArgumentParser:
    """Add `init-random`: write a random-weight checkpoint in the official layout."""
    from .random_checkpoint import FORMATS, SIZES, VARIANTS

    parser = subparsers.add_parser(
        "init-random",
        help="write a random-weight checkpoint in the official layout (try describe without downloads)",
        description="Write config.json, generation_config.json, the weights, the tokenizer files and "
        "preprocessor_config.json of a PixelRefer (full) or PixelRefer-Lite checkpoint with random weights. "
        "Its answers are noise; loading, describe and the CLI run exactly as on a released checkpoint.",
    )
    parser.add_argument("directory", metavar="DIR", help="output folder (created; must not hold a checkpoint unless --force)")
    parser.add_argument("--variant", choices=VARIANTS, default="full", help="full (PixelRefer) or lite (PixelRefer-Lite)")
    parser.add_argument("--size", choices=tuple(SIZES), default="tiny",
                        help="tiny (seconds, for tests), cpu-default (the profile's CPU preset) or 2b (real shapes, ~4.4 GB)")
    parser.add_argument("--format", choices=FORMATS, default="safetensors", help="weight files (default safetensors)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--force", action="store_true", help="overwrite a checkpoint already in DIR")
    parser.set_defaults(handler=run_init_random)
    return parser


def add_env_parser(subparsers) -> argparse.ArgumentParser:
    """Add `env`: versions, device and kernel backend choices, for a bug report."""
    parser = subparsers.add_parser(
        "env", help="print versions, the device and the kernel backends (paste it into a bug report)",
        description="Print pixelrefer-fast's version, Python, torch, triton, transformers and the optional "
        "packages, the visible devices, the kernel switches and which backend each op takes here.",
    )
    parser.set_defaults(handler=run_env)
    return parser


# ---------------------------------------------------------------------------- describe: input checks
@dataclass
class DescribeInputs:
    """What `describe` runs on, checked before the model loads.

    Attributes:
        masks: per region in order, a uint8 {0, 1} mask or a box tuple `(x0, y0, x1, y1)`.
        frame_ids: video: the frame of each region, else None.
        generate_kwargs: sampling options for `describe`.
    """

    masks: list
    frame_ids: list[int] | None
    generate_kwargs: dict


def _parse_box(text: str, height: int, width: int) -> tuple[float, ...]:
    from .masks import box_to_mask

    parts = [part.strip() for part in text.split(",")]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise CommandError(f"--box {text!r}: expected four numbers x0,y0,x1,y1 in pixels, e.g. --box 10,20,200,220")
    box_to_mask(values, height, width, name=f"--box {text}")  # raises for an empty box or one outside the image
    return values


def _read_mask(path: str, height: int, width: int):
    import numpy as np
    from PIL import Image

    from .masks import to_binary_mask

    file = Path(path)
    if not file.is_file():
        raise CommandError(f"mask file not found: {path}")
    name = f"--mask {path}"
    if file.suffix.lower() == ".npy":
        try:
            array = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CommandError(f"{name}: not a readable .npy array ({exc})") from None
    else:
        try:
            with Image.open(file) as image:
                image.load()
                array = image.copy()
        except (OSError, Image.DecompressionBombError) as exc:
            raise CommandError(f"{name}: cannot decode the mask image ({exc})") from None
    # the library's rule (values > 0 inside; NaN, inf and negatives refused) and the image size
    return to_binary_mask(array, height, width, name=name)


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) of a fully decodable image no larger than PIL's decompression-bomb limit."""
    from PIL import Image

    if not Path(path).is_file():
        raise CommandError(f"image file not found: {path}")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as image:
            width, height = image.size
            if limit and width * height > limit:
                raise CommandError(f"--image {path}: {width}x{height} pixels is over the {limit} pixel limit "
                                   "(a decompression bomb, or downscale it first)")
            image.load()
    except Image.DecompressionBombError as exc:
        raise CommandError(f"--image {path}: {exc}") from None
    except OSError as exc:  # unknown format, truncated data
        raise CommandError(f"--image {path}: cannot decode the image ({exc})") from None
    return height, width


def _video_size(path: str) -> tuple[int, int, int]:
    """(height, width, frame count) of a video; exit 2 without PyAV."""
    if not Path(path).is_file():
        raise CommandError(f"video file not found: {path}")
    try:
        import av  # noqa: F401
    except ImportError:
        raise CommandError("--video needs PyAV, which is not installed: pip install 'pixelrefer-fast[video]' "
                           "(or pip install av)") from None
    from .video import decode_frames, probe_video

    frames = probe_video(path).num_frames
    height, width = decode_frames(path, [0])[0].shape[:2]
    return int(height), int(width), int(frames)


def _check_model_folder(path: str) -> None:
    from .checkpoint import MODEL_TYPES, check_checkpoint_folder, check_model_type, read_model_type

    folder = Path(path)
    if not folder.exists():
        raise CommandError(f"model directory not found: {path}")
    check_checkpoint_folder(path)
    check_model_type(read_model_type(path), MODEL_TYPES, path)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not (folder / "pytorch_model.bin").is_file():
        raise CommandError(f"{path}: no weights (*.safetensors or pytorch_model.bin) in the checkpoint folder")
    from safetensors import SafetensorError, safe_open

    for file in weights:  # reads only the header: a truncated or corrupt file fails here, before loading
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            raise CommandError(f"{file}: the weights file is corrupt or truncated ({exc})") from None


def _generate_kwargs(args: argparse.Namespace) -> dict:
    knobs = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    given = [f"--{name.replace('_', '-')}" for name, value in knobs.items() if value is not None]
    if given and not args.do_sample:
        verb = "applies" if len(given) == 1 else "apply"
        raise CommandError(f"{', '.join(given)} {verb} only when sampling: add --do-sample (decoding is greedy by default)")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise CommandError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if args.top_p is not None and not (0 < args.top_p <= 1):
        raise CommandError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 1:
        raise CommandError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.do_sample:
        return {}
    return {"do_sample": True, **{name: value for name, value in knobs.items() if value is not None}}


def check_describe_inputs(args: argparse.Namespace) -> DescribeInputs:
    """Check every `describe` input without loading the model; `CommandError` (exit 2) on the first problem."""
    if args.max_new_tokens < 1:
        raise CommandError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise CommandError(f"--seed must be in 0..{MAX_SEED}, got {args.seed}")
    generate_kwargs = _generate_kwargs(args)
    regions = args.regions or []
    placeholders = args.question.count("<region>")
    if placeholders != len(regions):
        raise CommandError(f"the question has {placeholders} <region> placeholder(s) but {len(regions)} region(s) "
                           "were given (--mask / --box); give one per <region>, in order")
    if args.image:
        height, width = _image_size(args.image)
        if args.frame_ids:
            raise CommandError("--frame-ids applies to --video only")
        frame_ids = None
    else:
        height, width, frames = _video_size(args.video)
        frame_ids = None
        if regions and not args.frame_ids:
            raise CommandError("--video with regions needs --frame-ids (the frame of each region)")
        if args.frame_ids:
            if len(args.frame_ids) not in (1, len(regions)):
                raise CommandError(
                    f"--frame-ids has {len(args.frame_ids)} entries for {len(regions)} regions (give one, or one per region)"
                )
            frame_ids = args.frame_ids * len(regions) if len(args.frame_ids) == 1 else list(args.frame_ids)
            bad = [i for i in frame_ids if not 0 <= i < frames]
            if bad:
                raise CommandError(f"--frame-ids {bad} out of range: the video has {frames} frames (0..{frames - 1})")
    masks = [_read_mask(value, height, width) if kind == "mask" else _parse_box(value, height, width)
             for kind, value in regions]
    _check_model_folder(args.model)
    return DescribeInputs(masks=masks, frame_ids=frame_ids, generate_kwargs=generate_kwargs)


def _resolve_device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CommandError(f"--device {name!r} is not a torch device; accepted: cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def run_describe(args: argparse.Namespace) -> int:
    """Check the inputs, load the checkpoint and processor, run `describe` and print the answer."""
    inputs = check_describe_inputs(args)
    device = _resolve_device(args.device)

    from transformers import TextStreamer
    from transformers.utils import logging as hf_logging

    import pixelrefer_kernels

    from .loading import load_model_and_processor

    hf_logging.disable_progress_bar()  # stdout: the answer; stderr: errors only
    hf_logging.set_verbosity_error()
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    with pixelrefer_kernels.force(args.kernels) if args.kernels != "auto" else contextlib.nullcontext():
        model, processor = load_model_and_processor(args.model, device=str(device), dtype=args.dtype)
        kwargs = dict(inputs.generate_kwargs)
        if not args.no_stream:
            kwargs["streamer"] = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        answer = model.describe(
            processor,
            images=[args.image] if args.image else None,
            videos=[args.video] if args.video else None,
            masks=[inputs.masks],
            frame_ids=[inputs.frame_ids] if inputs.frame_ids is not None else None,
            questions=[args.question],
            max_new_tokens=args.max_new_tokens,
            decoding=args.decoding,
            static_cache=args.static_cache,
            **kwargs,
        )[0]
    if args.no_stream:
        sys.stdout.write(answer + "\n")
    sys.stdout.flush()
    return 0


# ---------------------------------------------------------------------------- init-random, env
def run_init_random(args: argparse.Namespace) -> int:
    """Write the random checkpoint and say how to try it."""
    from .random_checkpoint import write_random_checkpoint

    directory = Path(args.directory)
    if directory.exists() and not directory.is_dir():
        raise CommandError(f"{directory} exists and is not a folder")
    if directory.is_dir() and (directory / "config.json").exists() and not args.force:
        raise CommandError(f"{directory} already holds a checkpoint (config.json); pass --force to overwrite it")
    write_random_checkpoint(directory, args.variant, args.size, args.format, seed=args.seed)
    sys.stdout.write(
        f"wrote a random-weight {args.variant} checkpoint ({args.size}) to {directory}\n"
        f"try: {PROG} describe --model {directory} --image IMAGE --box 10,10,120,90 "
        '--question "What is <region>?" --max-new-tokens 16\n'
    )
    return 0


def env_report() -> str:
    """The `pixelrefer-fast env` text: versions, optional packages, devices, kernel choices."""
    from pixelrefer_kernels.info import report as kernel_report

    from .profiling.measure import git_sha

    def version(module: str) -> str:
        try:
            return str(importlib.import_module(module).__version__)
        except Exception:  # not installed, or broken: either way worth reporting, never fatal
            return "not installed"

    lines = [
        f"pixelrefer-fast {__version__} (git {git_sha()})",
        f"platform {platform.platform()}, {os.cpu_count()} CPUs",
        "packages: " + ", ".join(f"{name} {version(module)}" for name, module in (
            ("transformers", "transformers"), ("tokenizers", "tokenizers"), ("safetensors", "safetensors"),
            ("numpy", "numpy"), ("pillow", "PIL"), ("opencv", "cv2"), ("av", "av"), ("pycocotools", "pycocotools"),
            ("matplotlib", "matplotlib"), ("psutil", "psutil"), ("nvidia-ml-py", "pynvml"),
        )),
        "environment: " + ", ".join(f"{key}={os.environ.get(key, '')!r}" for key in (
            "PIXELREFER_FAST_KERNELS", "TRITON_INTERPRET", "PIXELREFER_FAST_SKIP_AUTOTUNE", "CUDA_VISIBLE_DEVICES")),
    ]
    return "\n".join(lines) + "\n" + kernel_report()


def run_env(args: argparse.Namespace) -> int:
    sys.stdout.write(env_report() + "\n")
    return 0


# ---------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand of `SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(prog=PROG, description="Fast PixelRefer / PixelRefer-Lite inference.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, function in SUBCOMMANDS:
        getattr(importlib.import_module(module), function)(subparsers)
    return parser


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a missing package, not a bug: reported as one line, exit 2.

    Evaluated only when an exception reaches `main` (cv2 and safetensors are imported then).
    """
    import torch
    from PIL import Image

    from pixelrefer_kernels import BackendUnavailableError

    out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    errors: list[type[BaseException]] = [ValueError, TypeError, OSError, ImportError, MemoryError, out_of_memory,
                                         BackendUnavailableError, Image.DecompressionBombError]
    for module, name in (("cv2", "error"), ("safetensors", "SafetensorError")):
        with contextlib.suppress(ImportError):
            errors.append(getattr(importlib.import_module(module), name))
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return f"out of memory: {message}"
    if type(exc).__module__.startswith(("cv2", "safetensors")):
        return f"{type(exc).__module__.split('.')[0]}: {message}"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pixelrefer-fast` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG} {args.command}: interrupted\n")
        return EXIT_INTERRUPTED
    except expected_errors() as exc:
        sys.stderr.write(f"{PROG} {args.command}: error: {_one_line(exc)}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
