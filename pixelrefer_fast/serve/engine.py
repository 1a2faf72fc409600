"""One batch of `DescribeJob`s through `model.describe`, with per-row streaming, stops and cancel.

`Engine.run_batch` calls `describe` once for the batch and hands it three hooks (passed through
`describe`'s generation keywords), so the model code is the library's own:

- `RowStopping` (a stopping criterion, called once per step with the tokens so far): feeds each
  row's new token to its `RowText`, sends the text delta to the row's sink, and reports the row done
  on eos, a stop string, its `max_tokens` or a cancel (a disconnected client). Rows that are done
  produce padding only; the loop ends when every row is done.
- `RowSampler` (a logits processor): rows with `temperature > 0` draw their token from their own
  generator (seeded by the request's `seed`) with their own `temperature` / `top_p`; the batch
  then decodes greedily, so the drawn token is the one taken. Greedy rows are untouched.
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


class RowStopping(StoppingCriteria):
    """Per-row bookkeeping at every decoding step (see the module docstring)."""

    def __init__(self, texts: list[RowText], sinks: Sequence[RowSink], pad_id: int, region_id: int):
        self.texts = texts
        self.sinks = sinks
        self.pad_id = pad_id
        self.region_id = region_id
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tokens = input_ids[:, -1].tolist()  # the step's tokens on the host: streaming needs them
        if not self.started:
            self._start(input_ids[:, :-1].cpu())
        done = []
        for text, sink, token in zip(self.texts, self.sinks, tokens):
            if not text.done:
                if sink.cancelled:
                    text.cancel()
                    sink.finished("", "", "cancelled", len(text.tokens))
                else:
                    delta = text.push(token)
                    if delta:
                        sink.delta(delta)
                    if text.done:
                        sink.finished(text.final_delta(), text.final_text(), text.finish_reason, len(text.tokens))
            done.append(text.done)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _start(self, prompts: torch.Tensor) -> None:
        self.started = True
        for row, sink in enumerate(self.sinks):
            ids = prompts[row]
            leading_pad = int((ids != self.pad_id).int().argmax()) if bool((ids != self.pad_id).any()) else len(ids)
            sink.started(len(ids) - leading_pad, int((ids == self.region_id).sum()))


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
        pad = model.generation_config.pad_token_id
        self.pad_id = pad if pad is not None else eos[0]
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
        stopping = RowStopping(texts, sinks, self.pad_id, self.region_id)
        kmeans_generators = [torch.Generator().manual_seed(job.sampling.seed) for job in jobs]
        per_region = [kmeans_generators[i] for i, job in enumerate(jobs) for _ in job.masks]
        self.model.describe(
            self.processor,
            images=[job.image for job in jobs],
            videos=[str(job.video.path) if job.video is not None else None for job in jobs],
            masks=[job.masks for job in jobs],
            frame_ids=[job.frame_ids for job in jobs] if any(job.frame_ids for job in jobs) else None,
            questions=[job.question for job in jobs],
            max_new_tokens=max(job.sampling.max_tokens for job in jobs),
            static_cache=self.static_cache,
            stopping_criteria=StoppingCriteriaList([stopping]),
            logits_processor=LogitsProcessorList([RowSampler([job.sampling for job in jobs])]),
            kmeans_generator=per_region or None,
        )
        for text, sink in zip(texts, sinks):
            if not text.done:  # a safety net: describe stopped before our criterion ended the row
                text.finish_reason = "length"
                sink.finished(text.final_delta(), text.final_text(), "length", len(text.tokens))
        return texts
