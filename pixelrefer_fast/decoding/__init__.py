"""Decoding for `describe()`: the fast loop (static KV cache, device-only step, CUDA graph) and
transformers' `generate` as the reference, behind one entry point.

- `options`: validation, the checkpoint's generation config resolved
  into a `DecodePlan` (`SamplingOptions` for the fast loop, a `GenerationConfig` for `generate`);
- `processors`: the logits processors and the token choice on the device;
- `loop`: `StaticDecoder` (one bucket) and `fast_generate`;
- `reference`: `hf_generate` (penalty over the generated tokens only, as the official code).

`generate_new_tokens` picks the path: `"fast"` unless the options or the model need `generate`,
in which case it falls back to `"hf"` and logs the reason (a warning the first time per reason).
"""

from __future__ import annotations

import logging

import torch

from ..defaults import DEFAULT_MAX_NEW_TOKENS  # re-exported: describe()'s budget, defined once
from .loop import (
    DEFAULT_CHECK_EVERY,
    GRAPH_MODES,
    OnTokens,
    StaticDecoder,
    StreamChunk,
    check_every_steps,
    check_graph_mode,
    fast_generate,
    fast_model_refusal,
)
from .options import DECODINGS, DecodePlan, SamplingOptions, check_decoding, check_seed, resolve_options
from .reference import hf_generate

logger = logging.getLogger("pixelrefer_fast")
_reported: set[str] = set()


def _fallback(reason: str) -> None:
    message = f'decoding="fast" falls back to "hf": {reason}'
    if reason in _reported:
        logger.info(message)
    else:
        _reported.add(reason)
        logger.warning(message)


def check_loop_options(graph, check_every) -> None:
    """`ValueError` for a `graph` not in `GRAPH_MODES` or a `check_every` not None nor an int >= 1."""
    check_graph_mode(graph)
    if check_every is not None:
        check_every_steps(check_every)


def sampling_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """The fast loop's sampling generator on `device`: seeded with `seed`, else from the global RNG
    (so `torch.manual_seed` makes unseeded calls repeatable)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.long))
    return torch.Generator(device).manual_seed(seed)


def generate_new_tokens(
    model,
    batch: dict,
    plan: DecodePlan,
    *,
    decoding: str = "fast",
    seed: int | None = None,
    streamer=None,
    on_tokens: OnTokens | None = None,
    graph: str = "auto",
    check_every: int | None = None,
) -> torch.Tensor:
    """New tokens `[B, n]` (CPU long, `pad_token_id` after each row's end) for a placed batch.

    Args:
        model: the `...ForCausalLM`.
        batch: the processor's output placed by `model.place_inputs`.
        plan: `resolve_options`' result.
        decoding: `"fast"` (falls back to `"hf"` with a logged reason when it cannot honour the
            plan) or `"hf"`.
        seed: seeds the sampling draws (and the k-means init, unless `kmeans_generator` is given).
        streamer: a transformers streamer (`put`/`end`, e.g. `TextStreamer`) for a batch of one:
            gets the prompt ids, then the new tokens as they come.
        on_tokens: streaming callback for any batch (`StreamChunk` per host check; returns rows to
            cancel).
        graph: fast loop's step on CUDA: `"auto"` (= `"cuda_graph"`), `"cuda_graph"`, `"compile"`,
            `"eager"`.
        check_every: decode steps between host checks; default 1 when streaming, else `DEFAULT_CHECK_EVERY`.
    """
    decoding = check_decoding(decoding)
    seed = check_seed(seed)
    check_loop_options(graph, check_every)
    batch_size = batch["input_ids"].shape[0]
    if streamer is not None and batch_size != 1:
        raise ValueError(f"streamer= takes a batch of one item (as transformers' streamers), got {batch_size}; "
                         "use on_tokens= to stream a batch")
    if check_every is None:
        check_every = 1 if streamer is not None or on_tokens is not None else DEFAULT_CHECK_EVERY
    model_kwargs = dict(plan.model_kwargs)
    if seed is not None and "kmeans_generator" not in model_kwargs:
        model_kwargs["kmeans_generator"] = torch.Generator().manual_seed(seed)  # a fresh one per call
    if decoding == "fast":
        reason = plan.fast_refusal or fast_model_refusal(model)
        if reason is not None:
            _fallback(reason)
            decoding = "hf"
    if decoding == "hf":
        return hf_generate(model, batch, plan, seed=seed, streamer=streamer, on_tokens=on_tokens,
                           model_kwargs=model_kwargs)
    generator = sampling_generator(seed, model.device) if plan.sampling.do_sample else None
    callback = on_tokens
    if streamer is not None:
        streamer.put(batch["input_ids"].cpu())

        def callback(chunk: StreamChunk):
            if chunk.tokens[0]:
                streamer.put(torch.tensor(chunk.tokens[0]))
            return on_tokens(chunk) if on_tokens is not None else None

    tokens = fast_generate(model, batch, plan.sampling, generator=generator, model_kwargs=model_kwargs,
                           graph=graph, check_every=check_every, on_tokens=callback)
    if streamer is not None:
        streamer.end()
    return tokens


__all__ = [
    "DECODINGS",
    "DEFAULT_CHECK_EVERY",
    "DEFAULT_MAX_NEW_TOKENS",
    "GRAPH_MODES",
    "DecodePlan",
    "SamplingOptions",
    "StaticDecoder",
    "StreamChunk",
    "check_decoding",
    "check_loop_options",
    "check_seed",
    "fast_generate",
    "generate_new_tokens",
    "hf_generate",
    "resolve_options",
]
