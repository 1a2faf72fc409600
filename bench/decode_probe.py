"""Decode probes: ms per generated token of `describe` for each decoding, one JSON file.

Probes: `hf-dynamic` (transformers' `generate`, dynamic KV cache), `hf-static`
(`static_cache=True`: a static cache, compiled decoding step on CUDA) and `fast` (the package's own
decode loop, `describe(decoding="fast")`). A probe this checkout cannot run (`describe` without
`decoding`) is recorded as skipped with the reason. Per token = (time of `1 + n` new tokens - time of
1 new token) / n, medians over `--repeats` calls after one warm-up, both with `min_new_tokens` so the
length is fixed; the model is a random-weight preset (greedy decoding of random weights runs to the end).

    python -m bench.decode_probe --preset lite-2b --device cuda --dtype bfloat16 --out OUT/decode_probes.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

import torch

PROBES = {
    "hf-dynamic": {"static_cache": False, "decoding": "hf"},
    "hf-static": {"static_cache": True, "decoding": "hf"},
    "fast": {"decoding": "fast"},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _describe(model, processor, item, device, new_tokens: int, options: dict) -> float:
    _sync(device)
    begin = time.perf_counter()
    model.describe(processor, images=[item.image], masks=[item.masks], questions=[item.question],
                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, **options)
    _sync(device)
    return (time.perf_counter() - begin) * 1e3


def probe_options(model, name: str) -> tuple[dict, str | None]:
    """`describe` options of probe `name` for this checkout, or why it cannot run. Before
    `describe` had `decoding`, it always decoded with transformers' `generate` ("hf")."""
    options = dict(PROBES[name])
    parameters = inspect.signature(model.describe).parameters
    if "decoding" not in parameters and options.get("decoding") == "hf":
        del options["decoding"]
    missing = [key for key in options if key not in parameters]
    if missing:
        return options, f"describe() has no {', '.join(missing)} argument in this checkout"
    return options, None


def probe(preset_name: str, device: torch.device, dtype: torch.dtype, *, tokens: int, repeats: int, probes=tuple(PROBES)) -> dict:
    from pixelrefer_fast.profiling.presets import get_preset
    from pixelrefer_fast.profiling.stages import build_model, make_items, make_processor
    from pixelrefer_fast.profiling.sweep import SweepPoint

    preset = get_preset(preset_name)
    variant = preset.default_variants[0]
    built = build_model(preset, variant, device, dtype)
    point = SweepPoint(variant=variant, regions=1, mask_num=preset.region.mask_num, image_size=(640, 480),
                       max_tokens=None, frames=1, batch=1)
    processor = make_processor(built, preset, point)
    item = make_items(point)[0]
    model = built.model
    results = {}
    for name in probes:
        options, reason = probe_options(model, name)
        if reason is not None:
            results[name] = {"status": "skipped", "reason": reason}
            continue
        try:
            with torch.inference_mode():
                _describe(model, processor, item, device, tokens + 1, options)  # warm-up (compilation, autotuning)
                short = [_describe(model, processor, item, device, 1, options) for _ in range(repeats)]
                long = [_describe(model, processor, item, device, tokens + 1, options) for _ in range(repeats)]
            per_token = (statistics.median(long) - statistics.median(short)) / tokens
            results[name] = {"status": "ok", "ms_per_token": round(per_token, 4), "first_token_ms": round(statistics.median(short), 3),
                             "calls_ms": {"1": short, str(tokens + 1): long}}
        except Exception as exc:  # a failing probe is recorded; the others still run
            results[name] = {"status": "error", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
    return {"preset": preset_name, "variant": variant, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "new_tokens": tokens, "repeats": repeats, "torch": torch.__version__, "probes": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lite-2b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per timed call (after the first)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated subset of {', '.join(PROBES)}")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args(argv)
    probes = [p for p in args.probes.split(",") if p]
    unknown = [p for p in probes if p not in PROBES]
    if unknown or args.tokens < 1 or args.repeats < 1:
        parser.error(f"unknown probes {unknown} (known: {', '.join(PROBES)})" if unknown else "--tokens and --repeats must be >= 1")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    result = probe(args.preset, device, dtype, tokens=args.tokens, repeats=args.repeats, probes=probes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for name, row in result["probes"].items():
        print(f"{name}: {row.get('ms_per_token', row.get('reason'))}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
