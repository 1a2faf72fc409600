"""The logits processors and the token choice of one decode step, on the device, in fixed shapes.

Same semantics, order and float32 arithmetic as transformers' `generate` (so both decodings pick
the same tokens): repetition penalty -> min-new-tokens eos suppression -> (sampling only) temperature
-> top-k -> top-p -> argmax, or a draw from `softmax(scores)`.

Everything that varies between calls lives in device tensors (`ProcessorState`), so a captured
CUDA graph or a compiled step serves every value; what changes the graph is `SamplingOptions.structure`.
No function here reads a tensor on the host.

The draw: `torch.multinomial(probs, 1)` is computed by PyTorch as `argmax(probs / q)` with
`q ~ Exp(1)` drawn by `exponential_` (the Gumbel-max trick, `aten/native/Distributions.cpp`);
`choose_tokens` does the same with a `noise` tensor filled by `exponential_` from the caller's
generator, so it draws the very tokens transformers draws from a generator in the same state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .options import SamplingOptions


@dataclass
class ProcessorState:
    """Per-call values of the processors as device tensors (written in place between calls).

    Attributes:
        penalty: `[]` float32 repetition penalty.
        temperature: `[]` float32.
        top_p_cut: `[]` float32 `1 - top_p` (computed in float64, as transformers does).
        min_new_tokens: `[1]` long.
        eos_mask: `[V]` bool, True at the eos ids.
        pad_token_id: `[]` long.
    """

    penalty: torch.Tensor
    temperature: torch.Tensor
    top_p_cut: torch.Tensor
    min_new_tokens: torch.Tensor
    eos_mask: torch.Tensor
    pad_token_id: torch.Tensor

    @classmethod
    def allocate(cls, vocab_size: int, device: torch.device) -> ProcessorState:
        def scalar(dtype, shape=()):
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(scalar(torch.float32), scalar(torch.float32), scalar(torch.float32), scalar(torch.long, (1,)),
                   scalar(torch.bool, (vocab_size,)), scalar(torch.long))

    def row_tensors(self) -> dict[str, torch.Tensor]:
        """The per-row fields (`[B, ...]`) by name: the fast loop's compaction permutes them with its own
        per-row buffers and runs a compacted step on their first rows. None yet: every field is per call."""
        return {}

    def load(self, options: SamplingOptions) -> None:
        """Write `options`' values (host -> device copies; no sync)."""
        self.penalty.fill_(options.repetition_penalty)
        self.temperature.fill_(options.temperature)
        self.top_p_cut.fill_(1.0 - options.top_p)
        self.min_new_tokens.fill_(options.min_new_tokens)
        self.pad_token_id.fill_(options.pad_token_id)
        self.eos_mask.zero_()
        ids = [i for i in options.eos_token_ids if i < self.eos_mask.shape[0]]
        self.eos_mask[ids] = True


def process_scores(
    scores: torch.Tensor, step: torch.Tensor, generated: torch.Tensor | None, state: ProcessorState, structure: tuple
) -> torch.Tensor:
    """The processed scores `[B, V]` float32 of the logits `scores` at new-token index `step` (`[1]`).

    `generated` (`[B, V]` bool): True where the row has already generated the token (the repetition
    penalty's set; None when the penalty is off). `structure`: `SamplingOptions.structure`.
    """
    do_sample, penalise, min_new, temperature, top_k, top_p = structure
    if penalise:
        penalised = torch.where(scores < 0, scores * state.penalty, scores / state.penalty)
        scores = torch.where(generated, penalised, scores)
    if min_new:
        suppress = state.eos_mask & (step < state.min_new_tokens)  # (V,)
        scores = scores.masked_fill(suppress, float("-inf"))
    if not do_sample:
        return scores
    if temperature:
        scores = scores / state.temperature
    if top_k:
        k = min(top_k, scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p:
        ascending, order = torch.sort(scores, descending=False)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= state.top_p_cut
        drop_sorted[..., -1:] = False  # the most likely token always stays
        scores = scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    return scores


def choose_tokens(scores: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """`[B]` long: the argmax of `scores` (greedy, `noise` None) or a draw from `softmax(scores)`
    given `noise` `[B, V]` ~ Exp(1) (the draw `torch.multinomial(probs, 1)` makes)."""
    if noise is None:
        return scores.argmax(dim=-1)
    probs = scores.softmax(dim=-1)
    return (probs / noise).argmax(dim=-1)
