"""The logits processors and the token choice of one decode step, on the device, in fixed shapes.

Same semantics, order and float32 arithmetic as transformers' `generate` (so both decodings pick
the same tokens): repetition penalty -> min-new-tokens eos suppression -> `suppress_tokens`
(`process_scores`; the two `-inf` masks commute with the penalty) -> for the
sampled rows, temperature -> top-k -> top-p (`warp_scores`) and a draw from `softmax(scores)`; the
other rows take the argmax of the processed scores (`choose_tokens`).

Everything that varies between calls lives in device tensors (`ProcessorState`; the sampling values
per row, so one batch mixes greedy and sampled rows with their own temperature and top-p), so a
captured CUDA graph or a compiled step serves every value; what changes the graph is
`SamplingOptions.structure`. No function here reads a tensor on the host.

The draw: `torch.multinomial(probs, 1)` is computed by PyTorch as `argmax(probs / q)` with
`q ~ Exp(1)` drawn by `exponential_` (the Gumbel-max trick, `aten/native/Distributions.cpp`);
`choose_tokens` does the same with a `noise` tensor filled by `draw_noise`: `exponential_` from one
generator over the whole `[B, V]` (what `multinomial` draws for the batch), or row by row from each
sampled row's own generator (what `multinomial` draws for that row alone). So it draws the very
tokens transformers draws from a generator in the same state, and with per-row generators a row's
tokens do not depend on the other rows of its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .options import SamplingOptions

Generators = torch.Generator | Sequence[torch.Generator | None]
"""The sampling noise's source: one generator for the batch, or one per row (None for greedy rows)."""


@dataclass
class ProcessorState:
    """Per-call values of the processors as device tensors (written in place between calls).

    Attributes:
        penalty: `[]` float32 repetition penalty.
        sample_rows: `[B]` bool, True for the rows that sample (the others take the argmax).
        temperature: `[B, 1]` float32 (1.0 for greedy rows).
        top_p_cut: `[B, 1]` float32 `1 - top_p` (computed in float64, as transformers does).
        min_new_tokens: `[1]` long.
        eos_mask: `[V]` bool, True at the eos ids.
        suppress_mask: `[V]` bool, True at the `suppress_tokens`.
        pad_token_id: `[]` long.
    """

    penalty: torch.Tensor
    sample_rows: torch.Tensor
    temperature: torch.Tensor
    top_p_cut: torch.Tensor
    min_new_tokens: torch.Tensor
    eos_mask: torch.Tensor
    suppress_mask: torch.Tensor
    pad_token_id: torch.Tensor

    @classmethod
    def allocate(cls, batch_size: int, vocab_size: int, device: torch.device) -> ProcessorState:
        def zeros(dtype, *shape):
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(zeros(torch.float32), zeros(torch.bool, batch_size), zeros(torch.float32, batch_size, 1),
                   zeros(torch.float32, batch_size, 1), zeros(torch.long, 1), zeros(torch.bool, vocab_size),
                   zeros(torch.bool, vocab_size), zeros(torch.long))

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the state (the buffers a captured step reads)."""
        return [self.penalty, self.sample_rows, self.temperature, self.top_p_cut, self.min_new_tokens,
                self.eos_mask, self.suppress_mask, self.pad_token_id]

    def row_tensors(self) -> dict[str, torch.Tensor]:
        """The per-row fields (`[B, ...]`, row `r` at index `r` of dim 0) by name: the fast loop's
        compaction permutes them in place with its own per-row buffers and runs a compacted step on
        their first rows."""
        return {"sample_rows": self.sample_rows, "temperature": self.temperature, "top_p_cut": self.top_p_cut}

    def load(self, options: SamplingOptions, batch_size: int) -> None:
        """Write `options`' values (host -> device copies; no sync)."""
        device = self.temperature.device
        rows = options.row_values(batch_size)
        self.penalty.fill_(options.repetition_penalty)
        self.sample_rows.copy_(torch.tensor(rows.do_sample, dtype=torch.bool), non_blocking=True)
        self.temperature.copy_(torch.tensor(rows.temperature, dtype=torch.float32)[:, None], non_blocking=True)
        cut = [1.0 - p for p in rows.top_p]  # float64 on the host, as transformers' `1 - self.top_p`
        self.top_p_cut.copy_(torch.tensor(cut, dtype=torch.float32)[:, None], non_blocking=True)
        self.min_new_tokens.fill_(options.min_new_tokens)
        self.pad_token_id.fill_(options.pad_token_id)
        for mask, token_ids in ((self.eos_mask, options.eos_token_ids), (self.suppress_mask, options.suppress_tokens)):
            mask.zero_()
            ids = [i for i in token_ids if i < mask.shape[0]]
            mask[torch.tensor(ids, dtype=torch.long).to(device, non_blocking=True)] = True


def sampling_generators(seed: int | Sequence[int] | None, options: SamplingOptions, batch_size: int,
                        device: torch.device) -> Generators | None:
    """The generators of a call's sampling draws on `device` (None when no row samples).

    `seed` an int: one generator for the batch; None: the same, seeded from the global RNG (so
    `torch.manual_seed` makes unseeded calls repeatable); a sequence of `batch_size` ints: one per
    sampled row, seeded with the row's seed (None for greedy rows).
    """
    if not options.do_sample:
        return None
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.long))
    if isinstance(seed, int):
        return torch.Generator(device).manual_seed(seed)
    sample = options.row_values(batch_size).do_sample
    return [torch.Generator(device).manual_seed(s) if row_samples else None for s, row_samples in zip(seed, sample)]


def check_generators(generator: Generators | None, options: SamplingOptions, batch_size: int) -> None:
    """`ValueError` unless `generator` can draw the noise of every sampled row."""
    if not options.do_sample or isinstance(generator, torch.Generator):
        return
    if generator is None:
        raise ValueError("sampling needs a torch.Generator (generator=...), or one per row")
    sample = options.row_values(batch_size).do_sample
    if len(generator) != batch_size or any(s and not isinstance(g, torch.Generator) for g, s in zip(generator, sample)):
        raise ValueError(f"generator must be one torch.Generator or {batch_size} entries (one per row, a "
                         f"torch.Generator for every sampled row), got {list(generator)!r}")


def draw_noise(noise: torch.Tensor, generator: Generators) -> None:
    """Fill `noise` `[B, V]` with Exp(1) draws: all of it from one generator, or row `r` from
    `generator[r]` (rows whose entry is None, the greedy ones, are left as they are). One launch per
    generator, outside any captured step."""
    if isinstance(generator, torch.Generator):
        noise.exponential_(1, generator=generator)
        return
    for row, row_generator in enumerate(generator):
        if row_generator is not None:
            noise[row].exponential_(1, generator=row_generator)


def _divide(scores: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """`scores / divisor` as transformers computes it with a Python float divisor: on CUDA PyTorch
    multiplies by the divisor's float32 reciprocal (`div_true_kernel_cuda`'s CPU-scalar path), on
    the CPU it divides; a device tensor divisor would always divide (a last-bit difference)."""
    if scores.is_cuda:
        return scores * (1.0 / divisor)
    return scores / divisor


def process_scores(
    scores: torch.Tensor, step: torch.Tensor, generated: torch.Tensor | None, state: ProcessorState, structure: tuple
) -> torch.Tensor:
    """The processed scores `[B, V]` float32 of the logits `scores` at new-token index `step` (`[1]`):
    repetition penalty, min-new-tokens eos suppression, `suppress_tokens` (what greedy rows take the
    argmax of).

    `generated` (`[B, V]` bool): True where the row has already generated the token (the repetition
    penalty's set; None when the penalty is off). `structure`: `SamplingOptions.structure`.
    """
    _, penalise, min_new, _, _, _, suppress_tokens = structure
    if penalise:
        penalised = torch.where(scores < 0, scores * state.penalty, _divide(scores, state.penalty))
        scores = torch.where(generated, penalised, scores)
    if min_new:
        eos_now = state.eos_mask & (step < state.min_new_tokens)  # (V,)
        scores = scores.masked_fill(eos_now, float("-inf"))
    if suppress_tokens:
        scores = scores.masked_fill(state.suppress_mask, float("-inf"))
    return scores


def warp_scores(scores: torch.Tensor, state: ProcessorState, structure: tuple) -> torch.Tensor:
    """The sampling warpers on processed scores `[B, V]` float32: each row's temperature, the
    batch's top-k, each row's top-p (rows with temperature 1 / top-p 1 come out unchanged, up to
    `-inf` at tokens of probability 0, which the draw never picks either way)."""
    _, _, _, temperature, top_k, top_p, _ = structure
    if temperature:
        scores = _divide(scores, state.temperature)
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


def choose_tokens(scores: torch.Tensor, state: ProcessorState, structure: tuple,
                  noise: torch.Tensor | None) -> torch.Tensor:
    """`[B]` long: for processed scores `[B, V]`, the argmax (every row when the structure is greedy,
    else the rows `state.sample_rows` leaves out) or a draw from `softmax(warp_scores(scores))`
    given `noise` `[B, V]` ~ Exp(1) (the draw `torch.multinomial(probs, 1)` makes)."""
    greedy = scores.argmax(dim=-1)
    if not structure[0]:
        return greedy
    probs = warp_scores(scores, state, structure).softmax(dim=-1)
    drawn = (probs / noise).argmax(dim=-1)
    return torch.where(state.sample_rows, drawn, greedy)
