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
"""

from __future__ import annotations

import contextlib
import copy

import torch
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StoppingCriteria, StoppingCriteriaList

from .loop import OnTokens, StreamChunk
from .options import DecodePlan


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


def hf_generate(model, batch: dict, plan: DecodePlan, *, seed: int | None = None, streamer=None,
                on_tokens: OnTokens | None = None, model_kwargs: dict | None = None) -> torch.Tensor:
    """New tokens `[B, n]` (CPU long) from transformers' `generate` with the official penalty semantics.

    `model_kwargs` (default `plan.model_kwargs`): more inputs for the model (`kmeans_generator`)."""
    config = copy.deepcopy(plan.generation_config)
    arguments = dict(plan.generate_arguments)
    prompt_length = batch["input_ids"].shape[1]
    processors = LogitsProcessorList()
    penalty = config.repetition_penalty
    if penalty is not None and penalty != 1.0:
        config.repetition_penalty = 1.0  # None would be refilled from the checkpoint's config by generate()
        processors.append(RepetitionPenaltyLogitsProcessor(float(penalty), prompt_ignore_length=prompt_length))
    processors.extend(arguments.pop("logits_processor", None) or [])
    if on_tokens is not None:
        criteria = StoppingCriteriaList(arguments.pop("stopping_criteria", None) or [])
        criteria.append(_StreamRows(on_tokens, batch["input_ids"].shape[0], plan.sampling.eos_token_ids))
        arguments["stopping_criteria"] = criteria
    with _seeded(seed, model.device), torch.inference_mode():
        model_kwargs = plan.model_kwargs if model_kwargs is None else model_kwargs
        sequences = model.generate(**batch, **model_kwargs, **arguments, generation_config=config,
                                   logits_processor=processors, streamer=streamer)
    return sequences[:, prompt_length:].cpu()
