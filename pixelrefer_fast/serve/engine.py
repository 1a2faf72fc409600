"""One batch of `DescribeJob`s through `model.describe`, with per-row streaming, stops and cancel.

`Engine.run_batch` runs the processor once for the batch, reports each row's prompt and region
tokens, and calls `describe` once, so the model code is the library's own. Every batch (greedy,
sampled or mixed) runs on the fast decode loop (`decoding="fast"`) with per-item options:

- `temperature` and `top_p` per request (`temperature` 0 = greedy: the argmax, untouched by the
  warpers), OpenAI's knobs only: no top-k (`top_k=0`), the checkpoint's repetition penalty;
- `seed` per request (its `seed`, or `parse.DEFAULT_SEED`): the request's own sampling generator
  and the k-means generator of its regions, so a request gets the answer `describe` gives it alone
  with the same seed and options, whatever the other requests of its batch;
- `RowStream` as the `on_tokens` callback: each row's new tokens go to its `RowText`, the text delta
  to the row's sink, and the rows that are done (eos, a stop string, their `max_tokens`, a
  disconnected client) are cancelled in the loop; it ends when every row is done.

A model the fast loop refuses (`decoding.loop.fast_model_refusal`) makes `describe` fall back to
transformers' `generate`, with the same per-row sampling and streaming. A batch `describe` refuses
(`ValueError` / `TypeError`) is retried one request at a time, so one bad request fails alone,
with a 400.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pixelrefer_kernels

from ..processing_pixelrefer_fast import REGION_TOKEN
from .errors import APIError
from .parse import DescribeJob
from .streaming import RowText

logger = logging.getLogger(__name__)


class RowSink(Protocol):
    """Where one row's results go (the scheduler's `Row`); called from the engine's thread."""

    @property
    def cancelled(self) -> bool: ...

    def started(self, prompt_tokens: int, region_tokens: int) -> None: ...

    def delta(self, text: str) -> None: ...

    def finished(self, delta: str, text: str, finish_reason: str, completion_tokens: int) -> None:
        """The row ended: `delta` is the text not sent yet, `text` the whole answer; `finish_reason`
        is `stop`, `length` or `cancelled`."""

    def failed(self, error: APIError) -> None: ...


@dataclass
class BatchStats:
    """What one batch did: rows, generated tokens, seconds."""

    rows: int
    tokens: int
    seconds: float


def advance_row(text: RowText, sink: RowSink, tokens: Sequence[int]) -> bool:
    """Feed a row's new tokens to its `RowText` and its sink (deltas, then `finished` once); a
    cancelled sink (the client left) ends the row first. Returns whether the row is done."""
    if not text.done and sink.cancelled:
        text.cancel()
        sink.finished("", "", "cancelled", len(text.tokens))
    for token in tokens:
        if text.done:
            break
        delta = text.push(token)
        if delta:
            sink.delta(delta)
        if text.done:
            sink.finished(text.final_delta(), text.final_text(), text.finish_reason, len(text.tokens))
    return text.done


class RowStream:
    """The fast loop's `on_tokens` callback: per-row bookkeeping at every host check; returns the
    rows that are done, which the loop then stops."""

    def __init__(self, texts: list[RowText], sinks: Sequence[RowSink]):
        self.texts = texts
        self.sinks = sinks

    def __call__(self, chunk) -> list[int]:
        rows = zip(self.texts, self.sinks, chunk.tokens)
        return [row for row, (text, sink, tokens) in enumerate(rows) if text.done or advance_row(text, sink, tokens)]


def describe_seed(seed: int) -> int:
    """A request's `seed` (any 64-bit integer, signed or not) as `describe`'s (in [0, 2**63)): the
    same for the seeds `describe` takes, the others folded into that range."""
    return seed % 2**63


class Engine:
    """`model` + `processor` running batches of jobs.

    Args:
        model: a loaded `PixelReferFastForCausalLM` / `...LiteForCausalLM` (eval mode).
        processor: its `PixelReferFastProcessor`.
        static_cache: passed to `describe` (used only by its `"hf"` fallback).
        kernels: `auto` (best available), `triton` or `torch` (`pixelrefer_kernels.force`).
    """

    def __init__(self, model, processor, *, static_cache: bool = False, kernels: str = "auto"):
        self.model = model
        self.processor = processor
        self.static_cache = static_cache
        self.kernels = kernels
        tokenizer = processor.tokenizer
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [tokenizer.convert_tokens_to_ids("<|im_end|>")])
        self.eos_ids = set(eos)
        self.region_id = tokenizer.convert_tokens_to_ids(REGION_TOKEN)

    def run_batch(self, jobs: Sequence[DescribeJob], sinks: Sequence[RowSink]) -> BatchStats:
        """Answer `jobs` in one `describe` call, reporting to `sinks` (one per job). Never raises:
        a failure goes to the sinks of the rows it concerns."""
        start = time.perf_counter()
        with contextlib.nullcontext() if self.kernels == "auto" else pixelrefer_kernels.force(self.kernels):
            texts = self._generate_isolating(list(jobs), list(sinks))
        tokens = sum(len(t.tokens) for t in texts)
        return BatchStats(rows=len(jobs), tokens=tokens, seconds=time.perf_counter() - start)

    def _generate_isolating(self, jobs: list[DescribeJob], sinks: list[RowSink]) -> list[RowText]:
        try:
            return self._generate(jobs, sinks)
        except (ValueError, TypeError) as exc:
            if len(jobs) > 1:
                logger.info("a batch of %d was refused (%s); retrying its requests one by one", len(jobs), exc)
                return [t for job, sink in zip(jobs, sinks) for t in self._generate_isolating([job], [sink])]
            sinks[0].failed(APIError(400, " ".join(str(exc).split()), param="messages"))
        except Exception as exc:  # the worker must survive anything the model raises
            logger.exception("generation failed for a batch of %d", len(jobs))
            for sink in sinks:
                sink.failed(APIError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error"))
        return []

    def _generate(self, jobs: list[DescribeJob], sinks: list[RowSink]) -> list[RowText]:
        tokenizer = self.processor.tokenizer
        texts = [RowText(tokenizer, self.eos_ids, job.sampling.max_tokens, job.sampling.stop) for job in jobs]
        batch = self.processor(
            images=[job.image for job in jobs],
            videos=[str(job.video.path) if job.video is not None else None for job in jobs],
            masks=[job.masks for job in jobs],
            frame_ids=[job.frame_ids for job in jobs] if any(job.frame_ids for job in jobs) else None,
            image_ids=[job.image_ids for job in jobs] if any(job.image_ids for job in jobs) else None,
            text=[job.question for job in jobs],
        )
        prompt_tokens = batch["attention_mask"].sum(1).tolist()  # (B,) host tensors from the processor
        region_tokens = (batch["input_ids"] == self.region_id).sum(1).tolist()
        for sink, prompt, regions in zip(sinks, prompt_tokens, region_tokens):
            sink.started(int(prompt), int(regions))
        self.model.describe(
            self.processor, inputs=batch, max_new_tokens=max(job.sampling.max_tokens for job in jobs),
            decoding="fast", static_cache=self.static_cache, on_tokens=RowStream(texts, sinks),
            seed=[describe_seed(job.sampling.seed) for job in jobs], do_sample=True, top_k=0,
            temperature=[job.sampling.temperature for job in jobs], top_p=[job.sampling.top_p for job in jobs],
        )
        for text, sink in zip(texts, sinks):
            if not text.done:  # a safety net: describe stopped before our criterion ended the row
                text.finish_reason = "length"
                sink.finished(text.final_delta(), text.final_text(), "length", len(text.tokens))
        return texts
