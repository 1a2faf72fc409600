"""The `"hf"` decoding: transformers' `generate`, kept as the reference, with the official penalty.

The official code calls `generate(inputs_embeds=...)`, so transformers' repetition penalty only sees
the generated tokens. `describe` passes `input_ids` (the placeholders locate the image and region
features), so the checkpoint's penalty is taken out of the `GenerationConfig` and applied by a
`RepetitionPenaltyLogitsProcessor` that skips the prompt (`prompt_ignore_length` = the padded prompt
length). `generate` appends caller processors after its own non-sampling processors and before the
sampling warpers, which is where the penalty would have been but behind the min-new-tokens eos
suppression; the two commute (a suppressed eos stays `-inf`).

Streaming a batch (`on_tokens`) goes through a stopping criterion, which sees every new token and
stops the rows the callback cancels at once (a row cancelled at a step emits pad from the next one).

Per-row sampling (per-item `do_sample` / `temperature` / `top_p`, or per-item seeds), which
`generate` has no notion of, is `RowSamplingProcessor`: the plan's `GenerationConfig` is greedy,
and this last logits processor makes each sampled row's scores `-inf` but at the token it draws
with the fast loop's own functions (`processors.choose_tokens`, `draw_noise`) from the row's
generator; `generate`'s argmax then takes that token. Greedy rows are left untouched.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
)

from .loop import OnTokens, StreamChunk
from .options import DecodePlan, SamplingOptions
from .processors import Generators, ProcessorState, choose_tokens, draw_noise, sampling_generators


class _StreamRows(StoppingCriteria):
    """`on_tokens` for `generate`: a stopping criterion sees each new token of every row (the last
    column of `input_ids`), hands them on as a `StreamChunk` and stops the rows the callback cancels."""

    def __init__(self, on_tokens: OnTokens, batch_size: int, eos_ids):
        self.on_tokens, self.eos = on_tokens, set(eos_ids)
        self.finished = [False] * batch_size

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        ids = input_ids[:, -1].tolist()
        tokens = [[] if done else [token] for token, done in zip(ids, self.finished)]
        self.finished = [done or token in self.eos for token, done in zip(ids, self.finished)]
        cancel = {int(r) for r in (self.on_tokens(StreamChunk(tokens, list(self.finished))) or ())}
        if any(not 0 <= r < len(self.finished) for r in cancel):
            raise ValueError(f"on_tokens returned rows {sorted(cancel)}; rows are 0..{len(self.finished) - 1}")
        self.finished = [done or row in cancel for row, done in enumerate(self.finished)]
        return torch.tensor(self.finished, dtype=torch.bool, device=input_ids.device)


class RowSamplingProcessor(LogitsProcessor):
    """Per-row sampling for a greedy `generate` (see the module docstring); goes after every other
    processor (the penalty and the eos suppression are `generate`'s own, before it).

    Args:
        options: the plan's `SamplingOptions` (per-row values in `rows`, or batch-wide).
        generator: `processors.sampling_generators`' result: one for the batch or one per row.
        batch_size: `B`.
    """

    def __init__(self, options: SamplingOptions, generator: Generators, batch_size: int):
        self.options, self.generator, self.batch_size = options, generator, batch_size
        # the warpers and the draw only: generate's own processors did the rest
        self.structure = (True, False, False, *options.structure[3:6], False)
        self.state: ProcessorState | None = None
        self.noise: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.state is None:
            batch_size, vocab = scores.shape
            self.state = ProcessorState.allocate(batch_size, vocab, scores.device)
            self.state.load(self.options, self.batch_size)
            self.noise = torch.ones(batch_size, vocab, dtype=torch.float32, device=scores.device)
        draw_noise(self.noise, self.generator)
        tokens = choose_tokens(scores.float(), self.state, self.structure, self.noise)  # (B,)
        chosen = torch.full_like(scores, float("-inf")).scatter_(1, tokens[:, None], 0.0)
        return torch.where(self.state.sample_rows[:, None], chosen, scores)


def _seeded(seed: int | None, device: torch.device):
    """The global RNGs seeded for `generate` (restored afterwards); nothing when no seed."""
    if seed is None:
        return contextlib.nullcontext()
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=devices))
    torch.manual_seed(seed)
    return stack


def hf_generate(model, batch: dict, plan: DecodePlan, *, seed: int | Sequence[int] | None = None, streamer=None,
                on_tokens: OnTokens | None = None, model_kwargs: dict | None = None) -> torch.Tensor:
    """New tokens `[B, n]` (CPU long) from transformers' `generate` with the official penalty semantics.

    `seed`: an int seeds the global RNG for `generate` (restored after); a sequence (one per row)
    seeds each sampled row's generator of `RowSamplingProcessor`. `model_kwargs` (default
    `plan.model_kwargs`): more inputs for the model (`kmeans_generator`)."""
    config = copy.deepcopy(plan.generation_config)
    arguments = dict(plan.generate_arguments)
    batch_size, prompt_length = batch["input_ids"].shape
    processors = LogitsProcessorList()
    penalty = config.repetition_penalty
    if penalty is not None and penalty != 1.0:
        config.repetition_penalty = 1.0  # None would be refilled from the checkpoint's config by generate()
        processors.append(RepetitionPenaltyLogitsProcessor(float(penalty), prompt_ignore_length=prompt_length))
    processors.extend(arguments.pop("logits_processor", None) or [])
    per_row_seeds = seed is not None and not isinstance(seed, int)
    if plan.sampling.do_sample and (plan.sampling.rows is not None or per_row_seeds):
        generator = sampling_generators(seed, plan.sampling, batch_size, model.device)
        processors.append(RowSamplingProcessor(plan.sampling, generator, batch_size))
        config.do_sample, config.temperature, config.top_p, config.top_k = False, 1.0, 1.0, 50  # neutral: greedy
    if per_row_seeds:
        seed = None  # the rows' generators carry them; the global RNG is left alone
    if on_tokens is not None:
        criteria = StoppingCriteriaList(arguments.pop("stopping_criteria", None) or [])
        criteria.append(_StreamRows(on_tokens, batch["input_ids"].shape[0], plan.sampling.eos_token_ids))
        arguments["stopping_criteria"] = criteria
    with _seeded(seed, model.device), torch.inference_mode():
        model_kwargs = plan.model_kwargs if model_kwargs is None else model_kwargs
        sequences = model.generate(**batch, **model_kwargs, **arguments, generation_config=config,
                                   logits_processor=processors, streamer=streamer)
    return sequences[:, prompt_length:].cpu()
