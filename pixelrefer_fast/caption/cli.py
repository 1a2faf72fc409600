"""`pixelrefer-fast caption`: caption every annotation of a dataset into Parquet shards (resumable).

Exit codes: 0 when every record got a row (error rows included; the summary says how many failed);
2 when the job cannot run (missing files, bad options, a checkpoint that does not load, an `OUT` of
another model), reported as one line on stderr.

Example:

    pixelrefer-fast caption --model PixelRefer-2B --annotations instances_val2017.json \\
        --images val2017 --out captions/ --batch-size 16 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..defaults import DEFAULT_MAX_NEW_TOKENS, DTYPES, KERNEL_MODES
from .records import DEFAULT_QUESTION

ENGINES = ("local", "ray")


def add_caption_parser(subparsers) -> argparse.ArgumentParser:
    """Add `caption` to the `pixelrefer-fast` subcommands."""
    parser = subparsers.add_parser(
        "caption",
        help="caption every annotation of a COCO-format or JSON Lines dataset into Parquet shards",
        description="Caption every annotation (COCO) or record (JSON Lines) with a PixelRefer checkpoint. Rows go to "
        "Parquet shards in --out; a rerun with the same --out skips the annotations already written.",
    )
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--annotations", required=True,
                        help="COCO annotation file (.json) or JSON Lines records (.jsonl)")
    parser.add_argument("--images", required=True, help="folder the image paths are read under")
    parser.add_argument("--out", required=True, help="output folder (Parquet shards + manifest.json)")
    parser.add_argument("--question", default=DEFAULT_QUESTION,
                        help=f'question with one "<region>" (default: "{DEFAULT_QUESTION}")')
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: worker processes + the model on this machine (default); ray: Ray Data on the "
                        "cluster RAY_ADDRESS names, or a local one")
    parser.add_argument("--batch-size", type=int, default=16, help="regions per model call (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"generation budget per caption (default {DEFAULT_MAX_NEW_TOKENS}; captions stop at eos)")
    parser.add_argument("--shard-size", type=int, default=1000, help="rows per Parquet shard (default 1000)")
    parser.add_argument("--limit", type=int, help="caption only the first N annotations, in file order")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds each annotation's randomness (the parity k-means init) from this value and its "
                        "ids, so a caption does not depend on its batch, the engine or a resume (default 0)")
    parser.add_argument("--workers", type=int, help="local: preparing processes (default min(4, cores - 1); 0 = none)")
    parser.add_argument("--prefetch", type=int, default=2, help="local: batches each worker prepares ahead (default 2)")
    parser.add_argument("--actors", type=int,
                        help="ray: model actors (default: one per GPU of the cluster, or 1 without GPUs)")
    parser.add_argument("--device", help="local: torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (default: the checkpoint's)")
    parser.add_argument("--kernels", choices=KERNEL_MODES, default="auto", help="kernel path (default auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_caption)
    return parser


def run_caption(args: argparse.Namespace) -> int:
    """Read the tasks, skip those already in `--out`, run the engine, print the summary."""
    from transformers.utils import logging as hf_logging

    import pixelrefer_kernels

    from ..loading import load_model_and_processor
    from .captioner import Captioner, checkpoint_configs, config_hash, make_run_info
    from .job import pending_tasks, plan_units
    from .output import ShardWriter, check_compatible, require_pyarrow
    from .records import read_tasks

    require_pyarrow()
    if not Path(args.model).is_dir():
        raise ValueError(f"--model: checkpoint directory not found: {args.model}")
    for name in ("batch_size", "shard_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.actors is not None and args.actors < 1:
        raise ValueError(f"--actors must be >= 1, got {args.actors}")
    configs = checkpoint_configs(args.model)
    _check_budget(configs["config.json"], args.max_new_tokens)
    run_info = make_run_info(Path(args.model).resolve().name, config_hash(configs), args.max_new_tokens, seed=args.seed)
    out = Path(args.out)
    check_compatible(out, run_info)
    tasks = read_tasks(args.annotations, args.images, question=args.question, limit=args.limit)
    pending, skipped = pending_tasks(tasks, out)
    units = plan_units(pending, args.batch_size)
    writer = ShardWriter(out, args.shard_size, run_info)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    progress = not args.no_progress
    if args.engine == "ray":
        from .ray_engine import run_ray

        summary = run_ray(units, args.model, writer, actors=args.actors, dtype=args.dtype, kernels=args.kernels,
                          total=len(tasks), skipped=skipped, progress=progress)
    else:
        from .local_engine import run_local

        with pixelrefer_kernels.force(args.kernels):
            model, processor = load_model_and_processor(args.model, device=args.device, dtype=args.dtype)
            summary = run_local(units, Captioner(model, processor, run_info=run_info), writer, total=len(tasks),
                                skipped=skipped, workers=args.workers, prefetch=args.prefetch, progress=progress)
    sys.stdout.write(summary.line() + "\n")
    return 0


def _check_budget(config: dict, max_new_tokens: int) -> None:
    """Refuse, before anything is written, a budget that leaves no room for a prompt in the checkpoint's
    context (`config`: its `config.json`): every row would be an error row, and the resume rule would then
    keep them."""
    context = config.get("max_position_embeddings")
    if isinstance(context, int) and max_new_tokens >= context:
        raise ValueError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context of "
                         f"{context} positions (max_position_embeddings); accepted: below {context}")
