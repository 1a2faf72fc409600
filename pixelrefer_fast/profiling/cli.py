"""`pixelrefer-fast profile`: latency, FLOPs and memory of every stage across token budgets.

Wiring: the package CLI calls `add_profile_parser(subparsers)` and dispatches the `profile`
subcommand to `run_profile_command(args)`; `python -m pixelrefer_fast.profiling.cli` runs the
same command standalone.

Exit codes: 0 the profile was written (points that ran out of memory are reported in it); 1 a stage
failed with an unexpected error (reported in the table and the JSON), or the sweep itself failed (the
finished points are written, one line on stderr); 2 bad input (unknown preset, empty sweep, a budget
over the model's limits, a missing checkpoint directory, an output directory that cannot be written,
an estimate over a few minutes or the free memory without `--yes`), with one line on stderr; 130
interrupted by Ctrl-C (the finished points are written, one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..defaults import DECODINGS, KERNEL_MODES
from .presets import PRESETS, VARIANTS, ProfileInputError

PROG = "pixelrefer-fast profile"
EXIT_INTERRUPTED = 130
DESCRIPTION = (
    "Profile every stage (preprocessing, vision encoder, projector, region tokenizer, Lite infusion, LLM "
    "prefill and decode) across token budgets with random weights: latency (median and spread), "
    "throughput, analytic FLOPs (2 per multiply-add), achieved rate and peak memory. Writes JSON, CSV "
    "and a PNG under --out."
)


def _int_list(text: str) -> tuple[int, ...]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        return tuple(int(item) for item in items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _size_list(text: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for item in (item.strip().lower() for item in text.split(",") if item.strip()):
        width, sep, height = item.partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT sizes such as 640x480, got {item!r}")
        sizes.append((int(width), int(height)))
    return tuple(sizes)


def _variant_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in text.split(",") if item.strip())


def add_profile_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `profile` subcommand to an `argparse` subparsers object; returns its parser.

    The caller dispatches with `run_profile_command(args)` (also set as `args.handler`).
    """
    parser = subparsers.add_parser("profile", help="profile speed and cost across token budgets (no weights needed)",
                                   description=DESCRIPTION)
    configure_parser(parser)
    parser.set_defaults(handler=run_profile_command)
    return parser


def _one_line_error(message: str):
    """argparse's error hook: one `error:` line on stderr and exit code 2 (no usage dump)."""
    sys.stderr.write(f"{PROG}: error: {message} (see --help)\n")
    sys.exit(2)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the profile options to `parser`; its parse errors print one line and exit with 2."""
    parser.error = _one_line_error
    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="cpu-default",
                       help=f"architecture preset: {', '.join(PRESETS)} (default: cpu-default)")
    model.add_argument("--model", metavar="DIR", default=None,
                       help="a local checkpoint directory: its config.json gives the shapes (weights are not read); overrides --preset")
    model.add_argument("--variants", type=_variant_list, default=None,
                       help=f"comma list of {', '.join(VARIANTS)} (default: the preset's, cpu-default runs both)")
    sweep = parser.add_argument_group("sweep (comma lists; the points are their cartesian product)")
    sweep.add_argument("--regions", type=_int_list, default=None, help="regions per item R (default 1,4,16)")
    sweep.add_argument("--mask-num", type=_int_list, default=None, help="tokens per region K (default 8,16,32,64)")
    sweep.add_argument("--image-size", type=_size_list, default=None,
                       help="sample image sizes WIDTHxHEIGHT (default 448x336 on CPU, 640x480 on CUDA)")
    sweep.add_argument("--max-tokens", type=_int_list, default=None,
                       help="processor vision-token budgets (mm_max_length), at most the model's (default: the model's)")
    sweep.add_argument("--frames", type=_int_list, default=None, help="1 = image, n > 1 = video of n frames (default 1)")
    sweep.add_argument("--batch", type=_int_list, default=None, help="items per call (default 1)")
    sweep.add_argument("--decode-tokens", type=int, default=8, help="tokens generated per point for decode timing (default 8)")
    sweep.add_argument("--decoding", choices=DECODINGS, default=DECODINGS[0],
                       help=f"decode loop timed, as describe(decoding=...) (default {DECODINGS[0]})")
    run = parser.add_argument_group("measurement")
    run.add_argument("--repeats", type=int, default=3, help="timed calls per stage (default 3)")
    run.add_argument("--warmup", type=int, default=1, help="untimed calls per stage first (default 1)")
    run.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    run.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                     help="model dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    run.add_argument("--kernels", default="auto", choices=KERNEL_MODES,
                     help="kernel path (PIXELREFER_FAST_KERNELS); on CPU the interpreter is never timed")
    run.add_argument("--threads", type=int, default=None,
                     help="CPU threads for torch, at most the CPUs here "
                          "(default: 1 on CPU, steady even on a busy machine; torch's default on CUDA)")
    run.add_argument("--seed", type=int, default=0, help="seed of the sample layout and the random weights (0..2**32-1)")
    run.add_argument("--yes", action="store_true",
                     help="run even when the estimate is over a few minutes or over the free memory")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default="profiles", metavar="DIR", help="output folder (default ./profiles)")
    output.add_argument("--name", default=None,
                        help="file name part after 'profile-' (default: the preset and the non-default sweep axes); "
                        "existing files are never replaced (-2, -3, ... is added)")
    output.add_argument("--no-plots", action="store_true", help="skip the PNG (matplotlib not needed then)")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def sweep_from_args(args: argparse.Namespace, *, cuda: bool):
    """The `SweepSpec` the arguments describe (defaults filled in)."""
    from .sweep import SweepSpec

    defaults = SweepSpec()
    default_size = ((640, 480),) if cuda else defaults.image_sizes
    return SweepSpec(
        variants=args.variants if args.variants is not None else None,
        regions=args.regions if args.regions is not None else defaults.regions,
        mask_nums=args.mask_num if args.mask_num is not None else defaults.mask_nums,
        image_sizes=args.image_size if args.image_size is not None else default_size,
        max_tokens=args.max_tokens if args.max_tokens is not None else defaults.max_tokens,
        frames=args.frames if args.frames is not None else defaults.frames,
        batches=args.batch if args.batch is not None else defaults.batches,
        decode_tokens=args.decode_tokens,
        decoding=args.decoding,
    )


def run_profile_command(args: argparse.Namespace) -> int:
    """Run the profile the parsed arguments describe; print the table and the file paths.

    Returns the exit code (see the module docstring); bad input prints one `error:` line on stderr.
    """
    from . import run_profile
    from .runner import ProfileStopped, resolve_device

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        device = resolve_device(args.device)
        sweep = sweep_from_args(args, cuda=device.type == "cuda")
        result = run_profile(
            preset=args.preset,
            model_dir=args.model,
            sweep=sweep,
            device=device,
            dtype=args.dtype,
            repeats=args.repeats,
            warmup=args.warmup,
            kernels=args.kernels,
            out_dir=args.out,
            name=args.name,
            plots=not args.no_plots,
            progress=not args.no_progress,
            seed=args.seed,
            threads=args.threads,
            yes=args.yes,
        )
    except (ProfileInputError, ImportError) as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except ProfileStopped as stopped:
        sys.stderr.write(f"{PROG}: {stopped.one_line()}\n")
        return EXIT_INTERRUPTED if stopped.result.status == "interrupted" else 1
    except KeyboardInterrupt:  # before the first point or while writing the files
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    sys.stdout.write(result.summary() + "\n")
    return 1 if result.has_errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pixelrefer_fast.profiling.cli [options]` (the `profile` options)."""
    parser = configure_parser(argparse.ArgumentParser(prog=PROG, description=DESCRIPTION))
    return run_profile_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
