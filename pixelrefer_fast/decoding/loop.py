"""The fast decode loop: a static KV cache per (batch, length) bucket, one device-only step, captured on CUDA.

`StaticDecoder` owns one bucket: transformers' `StaticCache` (`B` rows x `L` positions) and
the fixed buffers of the step (the token fed, its position, the key mask, the new-token index,
finished flags, the generated-token set of the repetition penalty, the output `[B, L]`). One call:

1. prefill through the model's public `forward` (`input_ids` + the processor's multimodal
   inputs, `logits_to_keep=1`), its keys and values then copied into the static cache;
2. the first token chosen from the prefill logits (`processors.process_scores` + `choose_tokens`);
3. decode steps: Qwen2 (transformers' own `Qwen2Model.forward`, D5) on one token per row, `lm_head`,
   the processors, the choice, finished rows emitting `pad_token_id`: no host read anywhere in a step.
   On CUDA the step is replayed from a CUDA graph (`graph="cuda_graph"`, captured once per bucket
   and options structure) or compiled (`graph="compile"`: `torch.compile(mode="reduce-overhead",
   fullgraph=True)`). Neither was measured on a GPU yet; `cuda_graph` is the default because it
   needs no compilation on the first call and replays exactly the eager step;
4. every `check_every` steps the host reads the finished flags (one sync) and, when streaming, the
   tokens since the last check; the tokens are read once at the end.

Rows stop independently (a finished row emits `pad_token_id`; the output is cut after the longest
row, as `generate` does). Rows sample or not, each with its own temperature and top-p (device
tensors of `processors.ProcessorState`). Sampling noise (`exponential_` from the caller's
`torch.Generator`, or from each sampled row's own) is drawn outside the graph by
`processors.draw_noise`, one launch per step (per sampled row with per-row generators), so the step
itself holds no generator.

The attention mask of a step is built here from the bucket's `[B, L]` key mask and handed to
Qwen2 as its prepared mask mapping (`{"full_attention": mask}`): transformers' own mask builder
reads tensors on the host in eager mode. SDPA and eager attention are supported; under
flash-attention the fast loop runs the LLM with SDPA (flash-attn's padded path syncs on the host).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from transformers import Qwen2Model, StaticCache

from .options import SamplingOptions
from .processors import Generators, ProcessorState, check_generators, choose_tokens, draw_noise, process_scores

logger = logging.getLogger("pixelrefer_fast")

GRAPH_MODES = ("auto", "cuda_graph", "compile", "eager")
LENGTH_BUCKET = 256  # cache lengths are rounded up to a multiple of this, so nearby prompts share a bucket
DEFAULT_CHECK_EVERY = 8  # decode steps between two host reads of the finished flags
MAX_BUCKETS = 2  # buckets (caches + graphs) kept per model; the least recently used one is dropped
_MASKED_ATTENTION = ("sdpa", "eager")
COMPILE_OPTIONS = {"mode": "reduce-overhead", "fullgraph": True}
# Qwen2's forward names its cache argument `cache` in transformers >= 5.2x, `past_key_values` before
CACHE_KEYWORD = "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"


@dataclass
class StreamChunk:
    """What a streaming callback receives at each host check.

    Attributes:
        tokens: per row, the token ids generated since the previous chunk (its eos included; nothing
            after it).
        finished: per row, whether it has finished (eos or cancelled).
    """

    tokens: list[list[int]]
    finished: list[bool]


OnTokens = Callable[[StreamChunk], "Iterable[int] | None"]
"""A streaming callback: gets each ``StreamChunk``, returns the rows to cancel (or None)."""


def check_graph_mode(graph) -> str:
    if graph not in GRAPH_MODES:
        raise ValueError(f"graph must be one of {GRAPH_MODES}, got {graph!r}")
    return graph


def check_every_steps(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"check_every must be an integer >= 1, got {value!r}")
    return value


def fast_model_refusal(model) -> str | None:
    """Why the fast loop cannot run this model (None when it can)."""
    layer_types = getattr(model.config, "layer_types", None) or ()
    if any(kind != "full_attention" for kind in layer_types):
        return f"layer types {sorted(set(layer_types))} (sliding-window layers) are not implemented by the fast loop"
    if model.device.type == "meta":
        return "the model is on the meta device"
    return None


class StaticDecoder:
    """One (batch, cache length) bucket of a model: static KV cache, step buffers, captured steps.

    Args:
        model: a `PixelReferFastForCausalLM` (any `...ForCausalLM` with `.model` a `Qwen2Model`
            and `.lm_head`).
        batch_size: `B`.
        cache_len: `L` >= prompt length + new tokens of every call this bucket serves.
        graph: `"cuda_graph"`, `"compile"` or `"eager"` (`"auto"` resolved by the caller).
        compile_options: `torch.compile` arguments of `graph="compile"` (default
            `COMPILE_OPTIONS`: reduce-overhead, fullgraph).
    """

    def __init__(self, model, batch_size: int, cache_len: int, graph: str, compile_options: dict | None = None):
        self.model, self.graph = model, graph
        self.compile_options = dict(COMPILE_OPTIONS if compile_options is None else compile_options)
        self.device, self.dtype = model.device, model.dtype
        self.batch_size, self.cache_len = batch_size, cache_len
        vocab = model.lm_head.weight.shape[0]
        self.cache = StaticCache(config=model.config, max_cache_len=cache_len)

        def zeros(*shape, dtype=torch.long):
            return torch.zeros(shape, dtype=dtype, device=self.device)

        self.input_ids = zeros(batch_size, 1)  # the token fed to the next step
        self.positions = zeros(batch_size, 1)  # its position (tokens of the row before it)
        self.slot = zeros(1)  # its cache slot (the same for every row)
        self.step = zeros(1)  # the index of the next new token
        self.valid = zeros(batch_size, cache_len, dtype=torch.bool)  # keys a row attends to
        self.finished = zeros(batch_size, dtype=torch.bool)
        self.lengths = zeros(batch_size)  # new tokens per row up to its eos
        self.generated = zeros(batch_size, vocab, dtype=torch.bool)  # the repetition penalty's set
        self.noise = torch.ones(batch_size, vocab, dtype=torch.float32, device=self.device)  # Exp(1) draws
        self.out = zeros(batch_size, cache_len)
        self.processors = ProcessorState.allocate(batch_size, vocab, self.device)
        self.structure: tuple | None = None
        self._steps: dict[tuple, Callable[[], None]] = {}
        self._pool = None

    # ---- the device-only part ----------------------------------------------------------------------

    def _attention_mask(self) -> torch.Tensor:
        """`[B, 1, 1, L]`: bool for SDPA, additive float for eager attention."""
        mask = self.valid[:, None, None, :]
        if self.model.config._attn_implementation == "eager":
            additive = torch.full(mask.shape, torch.finfo(self.dtype).min, dtype=self.dtype, device=self.device)
            return additive.masked_fill(mask, 0.0)
        return mask

    def select(self, logits: torch.Tensor) -> None:
        """Choose the next token of every row from `logits` `[B, V]` float32 and record it."""
        scores = process_scores(logits, self.step, self.generated, self.processors, self.structure)
        tokens = choose_tokens(scores, self.processors, self.structure, self.noise)
        tokens = torch.where(self.finished, self.processors.pad_token_id, tokens)  # (B,)
        self.out.index_copy_(1, self.step, tokens[:, None])
        self.lengths.add_((~self.finished).long())
        if self.structure[1]:
            self.generated.scatter_(1, tokens[:, None], True)
        self.finished.logical_or_(self.processors.eos_mask[tokens])
        self.input_ids.copy_(tokens[:, None])
        self.step.add_(1)

    def decode_step(self) -> None:
        """One decode step on the buffers: Qwen2 on the fed token of each row, `lm_head`, `select`."""
        self.valid.index_fill_(1, self.slot, True)
        out = Qwen2Model.forward(  # the text LLM alone: the multimodal splice is the prefill's
            self.model.model,
            input_ids=self.input_ids,
            attention_mask={"full_attention": self._attention_mask()},
            position_ids=self.positions,
            use_cache=True,
            **{CACHE_KEYWORD: self.cache},
        )
        logits = self.model.lm_head(out.last_hidden_state[:, -1]).float()  # (B, V)
        self.select(logits)
        self.positions.add_(1)
        self.slot.add_(1)

    # ---- capture -----------------------------------------------------------------------------------

    def _step_function(self, structure: tuple) -> Callable[[], None]:
        """The step for `structure`: eager, compiled, or a CUDA graph replay (captured on first use)."""
        if structure in self._steps:
            return self._steps[structure]
        if self.graph == "eager":
            step = self.decode_step
        elif self.graph == "compile":
            for buffer in self._buffers():
                torch._dynamo.mark_static_address(buffer)
            step = torch.compile(self.decode_step, **self.compile_options)
        else:
            step = self._capture()
        self._steps[structure] = step
        return step

    def _buffers(self) -> list[torch.Tensor]:
        return [self.input_ids, self.positions, self.slot, self.step, self.valid, self.finished, self.lengths,
                self.generated, self.noise, self.out, *self.processors.tensors()]

    def _capture(self) -> Callable[[], None]:
        """Warm the step up on a side stream, then capture it; the state it leaves is reset by the prefill."""
        self.valid[:, 0] = True
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # allocates the cache (first update) and the library workspaces
                self.decode_step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self.decode_step()
        return graph.replay

    # ---- one call ----------------------------------------------------------------------------------

    def _prefill(self, batch: dict, model_kwargs: dict, options: SamplingOptions) -> torch.Tensor:
        """Reset the bucket, run the prompt through the model's forward, copy its keys and values into the
        static cache; `[B, V]` float32 logits of the last position.

        The prefill itself uses the forward's own (dynamic) cache: its attention then spans the prompt
        only, with SDPA's causal kernel, instead of the whole bucket under a mask (and its numbers are
        those of `generate`'s prefill)."""
        attention_mask = batch["attention_mask"]
        length = attention_mask.shape[1]
        out = self.model(**batch, **model_kwargs, use_cache=True, logits_to_keep=1, return_dict=True)
        prompt_cache = next(out[key] for key in ("cache", "past_key_values") if out.get(key) is not None)
        self.cache.reset()
        for index, layer in enumerate(prompt_cache.layers):
            self.cache.update(layer.keys, layer.values, index)
        self.valid.zero_()
        self.valid[:, :length] = attention_mask.bool()
        self.positions.copy_(attention_mask.long().sum(-1, keepdim=True))
        self.slot.fill_(length)
        self.step.zero_()
        self.finished.zero_()
        self.lengths.zero_()
        self.generated.zero_()
        self.out.fill_(options.pad_token_id)
        return out.logits[:, -1].float()

    def generate(
        self,
        batch: dict,
        options: SamplingOptions,
        *,
        generator: Generators | None = None,
        model_kwargs: dict | None = None,
        check_every: int = DEFAULT_CHECK_EVERY,
        on_tokens: OnTokens | None = None,
    ) -> torch.Tensor:
        """New tokens `[B, n]` (CPU, long; `pad_token_id` after a row's end) for a placed processor batch.

        Args:
            batch: `input_ids` / `attention_mask` `[B, T]` (left padded) and the multimodal inputs,
                on the model's devices (`model.place_inputs`); `T + options.max_new_tokens <= L`.
            options: the processors and limits.
            generator: the sampling generator (on the model's device), or one per row (None for
                greedy rows: `processors.sampling_generators`); required when sampling.
            model_kwargs: more inputs for the prefill forward (`kmeans_generator`).
            check_every: decode steps between host reads of the finished flags (and stream chunks).
            on_tokens: streaming callback (`StreamChunk` per host check; returns rows to cancel).
        """
        length = batch["input_ids"].shape[1]
        if batch["input_ids"].shape[0] != self.batch_size or length + options.max_new_tokens > self.cache_len:
            raise ValueError(
                f"batch {tuple(batch['input_ids'].shape)} + {options.max_new_tokens} new tokens does not fit the "
                f"bucket ({self.batch_size} rows x {self.cache_len} positions)"
            )
        check_generators(generator, options, self.batch_size)
        self.structure = options.structure
        self.processors.load(options, self.batch_size)
        step = self._step_function(self.structure)
        logits = self._prefill(batch, model_kwargs or {}, options)

        def draw():
            if options.do_sample:
                draw_noise(self.noise, generator)

        draw()
        self.select(logits)
        done = 1
        finished = on_tokens is not None and self._stream(on_tokens, 0, done)  # the first token at once
        while done < options.max_new_tokens and not finished:
            burst = min(check_every, options.max_new_tokens - done)
            for _ in range(burst):
                draw()
                step()
            start, done = done, done + burst
            # the host check: one sync per burst
            finished = self._stream(on_tokens, start, done) if on_tokens is not None else bool(self.finished.all())
        width = int(self.lengths.max())
        return self.out[:, :width].to("cpu", copy=True)  # a copy: the buffer serves the next call

    def _stream(self, on_tokens: OnTokens, start: int, stop: int) -> bool:
        """Hand the tokens `[start, stop)` of each row to `on_tokens`, cancel the rows it returns;
        True when every row has finished."""
        tokens, lengths, finished = self.out[:, start:stop].tolist(), self.lengths.tolist(), self.finished.tolist()
        chunk = StreamChunk([row[: max(0, n - start)] for row, n in zip(tokens, lengths)], finished)
        cancel = sorted({int(r) for r in (on_tokens(chunk) or ())})
        if any(not 0 <= r < self.batch_size for r in cancel):
            raise ValueError(f"on_tokens returned rows {cancel}; rows are 0..{self.batch_size - 1}")
        if cancel:
            self.finished[cancel] = True
            finished = [f or i in cancel for i, f in enumerate(finished)]
        return all(finished)


class DecoderPool:
    """The buckets of one model (LRU, `MAX_BUCKETS`) and the lock that serialises their use."""

    def __init__(self):
        self.buckets: OrderedDict[tuple, StaticDecoder] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, model, batch_size: int, needed_len: int, graph: str) -> StaticDecoder:
        cache_len = -(-needed_len // LENGTH_BUCKET) * LENGTH_BUCKET
        # the weights' address too: a captured graph reads the parameters where they were at capture
        weights = model.lm_head.weight.data_ptr()
        key = (batch_size, cache_len, graph, str(model.device), model.dtype, model.config._attn_implementation, weights)
        if key in self.buckets:
            self.buckets.move_to_end(key)
            return self.buckets[key]
        while len(self.buckets) >= MAX_BUCKETS:
            self.buckets.popitem(last=False)
        decoder = StaticDecoder(model, batch_size, cache_len, graph)
        self.buckets[key] = decoder
        return decoder


def resolve_graph_mode(graph: str, device: torch.device) -> str:
    """`"auto"`: a CUDA graph on CUDA, eager elsewhere; CUDA-only modes run eager off CUDA."""
    if device.type != "cuda":
        return "eager"
    return "cuda_graph" if graph == "auto" else graph


@contextlib.contextmanager
def masked_attention(model):
    """The LLM on an attention that takes the fast loop's key mask (SDPA instead of flash-attention)."""
    current = model.config._attn_implementation
    if current in _MASKED_ATTENTION:
        yield
        return
    logger.debug("fast decoding runs the LLM with sdpa instead of %s", current)
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def fast_generate(
    model,
    batch: dict,
    options: SamplingOptions,
    *,
    generator: Generators | None = None,
    model_kwargs: dict | None = None,
    graph: str = "auto",
    check_every: int = DEFAULT_CHECK_EVERY,
    on_tokens: OnTokens | None = None,
) -> torch.Tensor:
    """New tokens `[B, n]` (CPU long) of `model` for a placed processor `batch`, with the fast loop.

    The bucket (`B` x the prompt length plus `max_new_tokens` rounded up to `LENGTH_BUCKET`) is
    taken from the model's pool or built (then kept, with its captured steps, for the next calls).
    See `StaticDecoder.generate` for the arguments.
    """
    graph = resolve_graph_mode(check_graph_mode(graph), model.device)
    check_every = check_every_steps(check_every)
    pool = model.__dict__.setdefault("_pixelrefer_decoders", DecoderPool())
    batch_size, length = batch["input_ids"].shape
    with pool.lock, masked_attention(model), torch.inference_mode():
        decoder = pool.get(model, batch_size, length + options.max_new_tokens, graph)
        return decoder.generate(batch, options, generator=generator, model_kwargs=model_kwargs,
                                check_every=check_every, on_tokens=on_tokens)
