"""One batch of `DescribeJob`s through `model.describe`, with per-row streaming, stops and cancel.

`Engine.run_batch` runs the processor once for the batch, reports each row's prompt and region
tokens, and calls `describe` once with hooks, so the model code is the library's own:

- A batch of greedy requests runs on the fast decode loop (`decoding="fast"`) with `RowStream` as
  its `on_tokens` callback: each row's new tokens go to its `RowText`, the text delta to the row's
  sink, and the rows that are done (eos, a stop string, their `max_tokens`, a disconnected client)
  are cancelled in the loop; it ends when every row is done.
- A batch with a sampled request (`temperature > 0`) needs a generator per request, which the fast
  loop (one generator per batch) does not have: it runs on transformers' `generate`
  (`decoding="hf"`) with `RowStopping` (a stopping criterion doing `RowStream`'s bookkeeping once
  per step) and `RowSampler` (a logits processor: sampled rows draw their token from their own
  generator, seeded by the request's `seed`, with their own `temperature` / `top_p`; the batch then
  decodes greedily, so the drawn token is the one taken; greedy rows are untouched).
- `kmeans_generator`: one CPU generator per region, the region's request's, seeded the same way.

So a request's answer does not depend on the other requests of its batch. A batch `describe`
refuses (`ValueError` / `TypeError`) is retried one request at a time, so one bad request fails
alone, with a 400.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

import pixelrefer_kernels

from ..processing_pixelrefer_fast import REGION_TOKEN
from .errors import APIError
from .parse import DescribeJob, SamplingParams
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


class RowStopping(StoppingCriteria):
    """`RowStream`'s bookkeeping as a stopping criterion of `generate`, called once per step."""

    def __init__(self, texts: list[RowText], sinks: Sequence[RowSink]):
        self.texts = texts
        self.sinks = sinks

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tokens = input_ids[:, -1].tolist()  # the step's tokens on the host: streaming needs them
        done = [text.done or advance_row(text, sink, [token]) for text, sink, token in zip(self.texts, self.sinks, tokens)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class RowSampler(LogitsProcessor):
    """Per-row sampling with per-row generators (see the module docstring)."""

    def __init__(self, params: list[SamplingParams]):
        self.params = params
        self.generators: list[torch.Generator | None] = [None] * len(params)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, params in enumerate(self.params):
            if params.temperature <= 0:
                continue
            if self.generators[row] is None:
                self.generators[row] = torch.Generator(device=scores.device).manual_seed(params.seed)
            probs = torch.softmax(scores[row].float() / params.temperature, dim=-1)
            if params.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(0) - sorted_probs >= params.top_p  # the nucleus keeps its first token
                probs = probs.scatter(0, order[outside], 0.0)
            token = torch.multinomial(probs, 1, generator=self.generators[row])
            scores[row] = float("-inf")
            scores[row, token] = 0.0
        return scores


class Engine:
    """`model` + `processor` running batches of jobs.

    Args:
        model: a loaded `PixelReferFastForCausalLM` / `...LiteForCausalLM` (eval mode).
        processor: its `PixelReferFastProcessor`.
        static_cache: passed to `describe`.
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
        kmeans_generators = [torch.Generator().manual_seed(job.sampling.seed) for job in jobs]
        per_region = [kmeans_generators[i] for i, job in enumerate(jobs) for _ in job.masks]
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
        common = {"inputs": batch, "max_new_tokens": max(job.sampling.max_tokens for job in jobs),
                  "kmeans_generator": per_region or None}
        if any(job.sampling.temperature > 0 for job in jobs):
            self.model.describe(
                self.processor, decoding="hf", static_cache=self.static_cache,
                stopping_criteria=StoppingCriteriaList([RowStopping(texts, sinks)]),
                logits_processor=LogitsProcessorList([RowSampler([job.sampling for job in jobs])]), **common,
            )
        else:
            self.model.describe(self.processor, decoding="fast", on_tokens=RowStream(texts, sinks), **common)
        for text, sink in zip(texts, sinks):
            if not text.done:  # a safety net: describe stopped before our criterion ended the row
                text.finish_reason = "length"
                sink.finished(text.final_delta(), text.final_text(), "length", len(text.tokens))
        return texts
