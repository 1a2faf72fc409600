"""Decoding for `describe()`: the fast loop (static KV cache, device-only step, CUDA graph) and
transformers' `generate` as the reference, behind one entry point.

- `options`: validation, the checkpoint's generation config resolved
  into a `DecodePlan` (`SamplingOptions` for the fast loop, a `GenerationConfig` for `generate`);
- `processors`: the logits processors, the sampling noise and the token choice on the device (per-row
  sampling values and generators);
- `loop`: `StaticDecoder` (one bucket) and `fast_generate`;
- `reference`: `hf_generate` (penalty over the generated tokens only, as the official code; per-row
  sampling through `RowSamplingProcessor`).

`generate_new_tokens` picks the path: `"fast"` unless the options or the model need `generate`,
in which case it falls back to `"hf"` and logs the reason (a warning the first time per reason).

Seeds: one int seeds the batch's sampling generator (and, unless given, the k-means init); a list
(one int per item) seeds each item's own sampling generator, and `kmeans_generators_per_item` gives
each item's regions a k-means generator seeded the same way, so an item's answer does not depend on
the other items of its batch.
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
from .options import (
    DECODINGS,
    ROW_OPTIONS,
    DecodePlan,
    RowSampling,
    SamplingOptions,
    check_decoding,
    check_seed,
    resolve_options,
)
from .processors import sampling_generators
from .reference import RowSamplingProcessor, hf_generate

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


def check_context(model, batch: dict, max_new_tokens: int) -> None:
    """`ValueError` when the prompt and `max_new_tokens` outrun the model's context
    (`max_position_embeddings`): positions the LLM was never trained on, and on the fast loop a static
    cache of that many positions allocated up front (10**9 tokens asked for 128 GB)."""
    context = getattr(model.config, "max_position_embeddings", None)
    prompt = batch["input_ids"].shape[1]
    if context is not None and prompt + max_new_tokens > context:
        raise ValueError(f"max_new_tokens={max_new_tokens} after a prompt of {prompt} tokens exceeds the model's context "
                         f"of {context} positions (max_position_embeddings); accepted: at most {max(context - prompt, 0)}")


def kmeans_generators_per_item(seeds, batch) -> list[torch.Generator] | None:
    """One CPU generator per region for the parity k-means init: item `i`'s regions share one
    seeded with `seeds[i]` (so they draw in order, as that item alone with `seed=seeds[i]`).

    Args:
        seeds: one int per item (`check_seed`'s tuple).
        batch: the processor's output (its `region_item` `[R]`, the item of each region).

    Returns:
        The `R` generators, or None when the batch has no regions.

    Raises:
        ValueError: regions without `region_item`, or a region's item out of range.
    """
    region_item, crops = batch.get("region_item"), batch.get("crop_grid_thw")
    if region_item is None:
        if crops is not None and len(crops):
            raise ValueError("per-item seeds need the batch's region_item (the item of each region; the "
                             "processor's output has it)")
        return None
    items = torch.as_tensor(region_item).tolist()  # a processor output: a CPU tensor
    if any(not 0 <= i < len(seeds) for i in items):
        raise ValueError(f"region_item {items} names items outside the {len(seeds)} seeds")
    per_item = {i: torch.Generator().manual_seed(seeds[i]) for i in sorted(set(items))}
    return [per_item[i] for i in items] or None


def generate_new_tokens(
    model,
    batch: dict,
    plan: DecodePlan,
    *,
    decoding: str = "fast",
    seed: int | list[int] | tuple[int, ...] | None = None,
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
        seed: an int seeds the sampling draws (and the k-means init, unless `kmeans_generator` is
            given); a list, one int per item, seeds each item's own sampling generator (give the
            k-means init per-region generators in the batch: `kmeans_generators_per_item`, as
            `describe` does).
        streamer: a transformers streamer (`put`/`end`, e.g. `TextStreamer`) for a batch of one:
            gets the prompt ids, then the new tokens as they come.
        on_tokens: streaming callback for any batch (`StreamChunk` per host check; returns rows to
            cancel).
        graph: fast loop's step on CUDA: `"auto"` (= `"cuda_graph"`), `"cuda_graph"`, `"compile"`,
            `"eager"`.
        check_every: decode steps between host checks; default 1 when streaming, else `DEFAULT_CHECK_EVERY`.
    """
    decoding = check_decoding(decoding)
    check_loop_options(graph, check_every)
    batch_size = batch["input_ids"].shape[0]
    seed = check_seed(seed, batch_size)
    plan.sampling.row_values(batch_size)  # per-item options for another batch size: ValueError
    check_context(model, batch, plan.sampling.max_new_tokens)
    if streamer is not None and batch_size != 1:
        raise ValueError(f"streamer= takes a batch of one item (as transformers' streamers), got {batch_size}; "
                         "use on_tokens= to stream a batch")
    if check_every is None:
        check_every = 1 if streamer is not None or on_tokens is not None else DEFAULT_CHECK_EVERY
    model_kwargs = dict(plan.model_kwargs)
    if isinstance(seed, int) and "kmeans_generator" not in model_kwargs:
        model_kwargs["kmeans_generator"] = torch.Generator().manual_seed(seed)  # a fresh one per call
    if decoding == "fast":
        reason = plan.fast_refusal or fast_model_refusal(model)
        if reason is not None:
            _fallback(reason)
            decoding = "hf"
    if decoding == "hf":
        return hf_generate(model, batch, plan, seed=seed, streamer=streamer, on_tokens=on_tokens,
                           model_kwargs=model_kwargs)
    generator = sampling_generators(seed, plan.sampling, batch_size, model.device)
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
    "ROW_OPTIONS",
    "DecodePlan",
    "RowSampling",
    "RowSamplingProcessor",
    "SamplingOptions",
    "StaticDecoder",
    "StreamChunk",
    "check_decoding",
    "check_loop_options",
    "check_seed",
    "fast_generate",
    "generate_new_tokens",
    "hf_generate",
    "kmeans_generators_per_item",
    "resolve_options",
    "sampling_generators",
]
