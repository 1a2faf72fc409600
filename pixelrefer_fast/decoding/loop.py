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

Compaction (`compact=True`, the default): rows that finish leave the step. At a host check where
the live rows are at most half of the rows the step runs, `_compact` moves them to the front of
every per-row buffer (`_row_buffers`: `ROW_BUFFERS` and the processors' `row_tensors()`) and of
every layer's keys and values (a stable `argsort` of the finished flags, `index_select` /
`index_copy_`, on the device), and the step continues on the first `b` rows, `b` the next power of
two >= the live rows: a bucket runs at most `log2(B) + 1` step shapes, each its own CUDA graph (all
captured before the prefill of the first compacting call, since a capture's warm-up runs steps; one
graph pool), compiled step (`dynamic=False`) or eager step. The host keeps the original row of each
position: `StreamChunk`s and `on_tokens`' cancels use the original numbering, and the tokens come
back in the original row order. The prefill resets the bucket to all `B` rows.

The step on `b < B` rows runs Qwen2 on a `StaticCache` whose layers are shallow copies of the
bucket's (initialised) `StaticLayer`s with `keys`/`values` the views `[:b]` of the full tensors,
`batch_size = b`, and the full layer's own `cumulative_length` tensor (`_cache_rows`): the update
writes in place at the shared position, as for the full cache, and transformers sees an ordinary
initialised static cache (checked on 5.17 and 5.24, whose initialised `StaticLayer` reads only
`is_initialized`, `keys`, `values`, `cumulative_length`, `device` and `max_cache_len`). The
per-row step buffers are likewise the views `[:b]` of the full ones (`_use_rows`), so
`decode_step` itself is unchanged.
Sampling stays that of `generate`: the noise is still drawn for all `B` rows in their original
numbering (`[B, V]` from the one batch generator each step) and the step gathers its rows' noise by
`order` (`_active_noise`), so each row keeps its own draw.

The attention mask of a step is built here from the bucket's `[B, L]` key mask and handed to
Qwen2 as its prepared mask mapping (`{"full_attention": mask}`): transformers' own mask builder
reads tensors on the host in eager mode. SDPA and eager attention are supported; under
flash-attention the fast loop runs the LLM with SDPA (flash-attn's padded path syncs on the host).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from transformers import Qwen2Model, StaticCache

from .options import SamplingOptions
from .prefix import CACHE_KEYWORD, PACKED_KEY, prompt_cache, shared_prefill
from .processors import Generators, ProcessorState, check_generators, choose_tokens, draw_noise, process_scores

logger = logging.getLogger("pixelrefer_fast")

GRAPH_MODES = ("auto", "cuda_graph", "compile", "eager")
LENGTH_BUCKET = 256  # cache lengths are rounded up to a multiple of this, so nearby prompts share a bucket
DEFAULT_CHECK_EVERY = 8  # decode steps between two host reads of the finished flags
MAX_BUCKETS = 2  # buckets (caches + graphs) kept per model; the least recently used one is dropped
_MASKED_ATTENTION = ("sdpa", "eager")
# the decoder's per-row buffers (`[B, ...]`), moved by a compaction; `noise` is not one: it is drawn in the
# original row numbering and gathered by `order` in the step
ROW_BUFFERS = ("input_ids", "positions", "valid", "finished", "lengths", "generated", "out", "order")
COMPILE_OPTIONS = {"mode": "reduce-overhead", "fullgraph": True}
# dynamo's recompile limit while a compiled step compiles: `decode_step`'s code gets one entry per (bucket,
# options structure, row count), past dynamo's default of 8 (which `fullgraph=True` turns into an error)
COMPILED_STEPS_LIMIT = 64


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
        self.order = torch.arange(batch_size, device=self.device)  # the original row at each active position
        self.processors = ProcessorState.allocate(batch_size, vocab, self.device)
        self.structure: tuple | None = None
        self._steps: dict[tuple, Callable[[], None]] = {}
        self._pool = None
        # compaction: the full-size per-row buffers, cache and processor state; the attributes above are
        # views of their first `rows` rows (`_use_rows`), all `B` of them until a call compacts
        self.rows = batch_size
        self._full = {name: getattr(self, name) for name in ROW_BUFFERS}
        self._full_cache, self._full_processors = self.cache, self.processors
        self._views: dict[int, dict] = {batch_size: dict(self._full, cache=self.cache, processors=self.processors)}

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
        tokens = choose_tokens(scores, self.processors, self.structure, self._active_noise() if self.structure[0] else None)
        tokens = torch.where(self.finished, self.processors.pad_token_id, tokens)  # (B,)
        self.out.index_copy_(1, self.step, tokens[:, None])
        self.lengths.add_((~self.finished).long())
        if self.structure[1]:
            self.generated.scatter_(1, tokens[:, None], True)
        self.finished.logical_or_(self.processors.eos_mask[tokens])
        self.input_ids.copy_(tokens[:, None])
        self.step.add_(1)

    def _active_noise(self) -> torch.Tensor:
        """`[rows, V]`: the noise of the active rows (`noise` is drawn for all `B` rows, in their original
        numbering, so a row's draw does not depend on compaction)."""
        if self.order.shape[0] == self.noise.shape[0]:  # the full batch: `order` is the identity
            return self.noise
        return self.noise.index_select(0, self.order)

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

    def _step_function(self, structure: tuple, rows: int) -> Callable[[], None]:
        """The step for `structure` on the first `rows` rows: eager, compiled, or a CUDA graph replay
        (captured on first use, which must come before the call's prefill: the warm-up runs steps)."""
        key = (structure, rows)
        if key in self._steps:
            return self._steps[key]
        active = self.rows
        self._use_rows(rows)
        try:
            if self.graph == "eager":
                step = self.decode_step
            elif self.graph == "compile":
                for buffer in self._buffers():
                    torch._dynamo.mark_static_address(buffer)
                # one compiled step per row count, never a dynamic batch dimension
                compiled = torch.compile(self.decode_step, **{"dynamic": False, **self.compile_options})
                step = self._compiles_once(compiled, key)
            else:
                step = self._capture()
        finally:
            self._use_rows(active)
        self._steps[key] = step
        return step

    def _compiles_once(self, compiled: Callable[[], None], key: tuple) -> Callable[[], None]:
        """`compiled`, its first call (the compilation) under dynamo's recompile limit raised to
        `COMPILED_STEPS_LIMIT`; the later calls are `compiled` itself."""

        def first_call():
            limit = max(torch._dynamo.config.recompile_limit, COMPILED_STEPS_LIMIT)
            with torch._dynamo.config.patch(recompile_limit=limit):
                compiled()
            self._steps[key] = compiled

        return first_call

    def _buffers(self) -> list[torch.Tensor]:
        return [self.input_ids, self.positions, self.slot, self.step, self.valid, self.finished, self.lengths,
                self.generated, self.noise, self.out, self.order, *self.processors.tensors()]

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

    # ---- compaction ---------------------------------------------------------------------------------

    def _row_buffers(self) -> list[torch.Tensor]:
        """Every full-size per-row tensor of the step (`[B, ...]`): what a compaction permutes (the
        cache's keys and values apart: `_compact` moves their live rows only)."""
        return [self._full[name] for name in ROW_BUFFERS] + list(self._full_processors.row_tensors().values())

    def _use_rows(self, rows: int) -> None:
        """Point the step's per-row buffers, processor state and cache at the first `rows` rows (views,
        made once per row count, so a captured or compiled step always reads the same tensors)."""
        if rows not in self._views:
            self._views[rows] = {name: full[:rows] for name, full in self._full.items()}
            per_row = {name: t[:rows] for name, t in self._full_processors.row_tensors().items()}
            self._views[rows]["processors"] = dataclasses.replace(self._full_processors, **per_row)
            self._views[rows]["cache"] = self._cache_rows(rows)
        for name, value in self._views[rows].items():
            setattr(self, name, value)
        self.rows = rows

    def _cache_rows(self, rows: int) -> StaticCache:
        """A `StaticCache` over the first `rows` rows of the bucket's cache.

        A shallow copy of the full cache and of each of its (initialised) layers, whose `keys`/`values`
        are views `[:rows]` of the full layer's tensors and whose `cumulative_length` is the full layer's
        very tensor (so a step on either cache advances both); every other attribute (`is_initialized`,
        `max_cache_len`, device, heads) stays the full layer's. `StaticLayer.update` then writes the new
        keys of the `rows` rows in place, as it does for the full cache (transformers 5.17 and 5.24)."""
        if not all(layer.is_initialized for layer in self._full_cache.layers):
            raise RuntimeError("the bucket's cache is allocated by its first update (prefill or capture)")
        view = copy.copy(self._full_cache)
        view.layers = []
        for full in self._full_cache.layers:
            layer = copy.copy(full)
            layer.keys, layer.values, layer.batch_size = full.keys[:rows], full.values[:rows], rows
            torch._dynamo.mark_static_address(layer.keys)
            torch._dynamo.mark_static_address(layer.values)
            view.layers.append(layer)
        return view

    def _compact(self, finished: list[bool], order: list[int]) -> None:
        """Move the live rows of the active ones to the front and continue on the next power of two of
        them, when they are at most half of the active rows (`finished`: the host's flags of the active
        rows; `order`: the host's original row of each position, updated in place).

        Device-only: a stable `argsort` of the finished flags (live rows first, in order; the host makes
        the same permutation from `finished`), then `index_select`/`index_copy_` of every per-row buffer
        and of the live rows of each layer's keys and values."""
        live = finished.count(False)
        if live == 0 or live > self.rows // 2:
            return
        rows = 1 << (live - 1).bit_length()  # the next power of two >= live
        permutation = torch.argsort(self.finished.to(torch.uint8), stable=True)  # (rows,) live positions first
        front = torch.arange(self.rows, device=self.device)
        for buffer in self._row_buffers():
            buffer.index_copy_(0, front, buffer.index_select(0, permutation))
        kept, moved = front[:live], permutation[:live]
        for layer in self._full_cache.layers:
            for states in (layer.keys, layer.values):
                states.index_copy_(0, kept, states.index_select(0, moved))
        by_flag = sorted(range(self.rows), key=finished.__getitem__)  # stable: the device permutation
        order[: self.rows] = [order[position] for position in by_flag]
        self._use_rows(rows)

    # ---- one call ----------------------------------------------------------------------------------

    def _prefill(self, batch: dict, model_kwargs: dict, options: SamplingOptions, share_prefixes: bool) -> torch.Tensor:
        """Reset the bucket (its `B` rows, made active by the caller), run the prompt through the model's
        forward, copy its keys and values into the static cache; `[B, V]` float32 logits of the last position.

        The prefill itself uses the forward's own (dynamic) cache: its attention then spans the prompt
        only, with SDPA's causal kernel, instead of the whole bucket under a mask (and its numbers are
        those of `generate`'s prefill). Rows sharing a prompt prefix (`share_prefixes`) go through
        `prefix.shared_prefill` instead: each shared prefix once, then the rest of every row."""
        attention_mask = batch["attention_mask"]
        length = attention_mask.shape[1]
        plan = getattr(batch.get(PACKED_KEY), "shared_prefixes", None)
        if plan is not None and share_prefixes:
            logits, cache = shared_prefill(self.model, batch, plan, model_kwargs)
        else:
            out = self.model(**batch, **model_kwargs, use_cache=True, logits_to_keep=1, return_dict=True)
            logits, cache = out.logits[:, -1].float(), prompt_cache(out)
        self.cache.reset()
        for index, layer in enumerate(cache.layers):
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
        torch.arange(self.batch_size, out=self.order)
        return logits

    def generate(
        self,
        batch: dict,
        options: SamplingOptions,
        *,
        generator: Generators | None = None,
        model_kwargs: dict | None = None,
        check_every: int = DEFAULT_CHECK_EVERY,
        on_tokens: OnTokens | None = None,
        compact: bool = True,
        share_prefixes: bool = True,
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
            compact: at a host check where at most half of the rows the step runs are still live, move
                the live rows to the front and run the step on the next power of two of them (the
                tokens are the same; False keeps every row in the step until the last one ends).
            share_prefixes: when the packed inputs found rows with the same prompt prefix (the same
                image: `prefix.SharedPrefixes`), prefill each such prefix once (`prefix.shared_prefill`);
                False runs every row's whole prompt.
        """
        length = batch["input_ids"].shape[1]
        if batch["input_ids"].shape[0] != self.batch_size or length + options.max_new_tokens > self.cache_len:
            raise ValueError(
                f"batch {tuple(batch['input_ids'].shape)} + {options.max_new_tokens} new tokens does not fit the "
                f"bucket ({self.batch_size} rows x {self.cache_len} positions)"
            )
        check_generators(generator, options, self.batch_size)
        if not isinstance(compact, bool):
            raise TypeError(f"compact must be a bool, got {compact!r}")
        if not isinstance(share_prefixes, bool):
            raise TypeError(f"share_prefixes must be a bool, got {share_prefixes!r}")
        self._use_rows(self.batch_size)
        self.structure = options.structure
        self.processors.load(options, self.batch_size)
        step = self._step_function(self.structure, self.batch_size)
        if compact and self.graph == "cuda_graph":  # every row count is captured before the prefill
            for rows in compacted_row_counts(self.batch_size):
                self._step_function(self.structure, rows)
        logits = self._prefill(batch, model_kwargs or {}, options, share_prefixes)

        def draw():
            if options.do_sample:
                draw_noise(self.noise, generator)

        draw()
        self.select(logits)
        order = list(range(self.batch_size))  # the host's original row at each active position
        done = 1
        finished = self._check(on_tokens, 0, done, order) if on_tokens is not None else None  # the first token
        while done < options.max_new_tokens and not (finished is not None and all(finished)):
            if compact and finished is not None and self.rows > 1:
                self._compact(finished, order)
                step = self._step_function(self.structure, self.rows)
            burst = min(check_every, options.max_new_tokens - done)
            for _ in range(burst):
                draw()
                step()
            start, done = done, done + burst
            finished = self._check(on_tokens, start, done, order)  # the host check: one sync per burst
        return self._tokens(order)

    def _check(self, on_tokens: OnTokens | None, start: int, stop: int, order: list[int]) -> list[bool]:
        """The host check: the finished flags of the active rows (one read) and, when streaming, their
        tokens `[start, stop)` handed to `on_tokens` in the original row numbering, the rows it returns
        cancelled; the flags after the cancels."""
        finished = self.finished.tolist()
        if on_tokens is None:
            return finished
        tokens, lengths = self.out[:, start:stop].tolist(), self.lengths.tolist()
        chunk = StreamChunk([[] for _ in order], [True] * len(order))  # rows compacted away: finished, no tokens
        for position, (row, n, done) in enumerate(zip(tokens, lengths, finished)):
            chunk.tokens[order[position]], chunk.finished[order[position]] = row[: max(0, n - start)], done
        cancel = sorted({int(r) for r in (on_tokens(chunk) or ())})
        if any(not 0 <= r < self.batch_size for r in cancel):
            raise ValueError(f"on_tokens returned rows {cancel}; rows are 0..{self.batch_size - 1}")
        positions = [order.index(r) for r in cancel]
        live = [p for p in positions if p < self.rows and not finished[p]]
        if live:
            self.finished[live] = True
            for p in live:
                finished[p] = True
        return finished

    def _tokens(self, order: list[int]) -> torch.Tensor:
        """The new tokens `[B, n]` on the CPU in the original row order (one read)."""
        lengths, out = self._full["lengths"], self._full["out"]
        width = int(lengths.max())
        tokens = out[:, :width].to("cpu", copy=True)  # a copy: the buffer serves the next call
        if order == sorted(order):
            return tokens
        return tokens[sorted(range(len(order)), key=order.__getitem__)]  # position of each original row


def compacted_row_counts(batch_size: int) -> list[int]:
    """The row counts a compacted step of a `batch_size` bucket runs: the powers of two below it."""
    return [1 << k for k in range((batch_size - 1).bit_length()) if 1 << k < batch_size][::-1]


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
    compact: bool = True,
    share_prefixes: bool = True,
) -> torch.Tensor:
    """New tokens `[B, n]` (CPU long) of `model` for a placed processor `batch`, with the fast loop.

    The bucket (`B` x the prompt length plus `max_new_tokens` rounded up to `LENGTH_BUCKET`) is
    taken from the model's pool or built (then kept, with its captured steps, for the next calls).
    See `StaticDecoder.generate` for the arguments (`compact=False` keeps finished rows in the step,
    `share_prefixes=False` prefills every row's whole prompt).
    """
    graph = resolve_graph_mode(check_graph_mode(graph), model.device)
    check_every = check_every_steps(check_every)
    pool = model.__dict__.setdefault("_pixelrefer_decoders", DecoderPool())
    batch_size, length = batch["input_ids"].shape
    with pool.lock, masked_attention(model), torch.inference_mode():
        decoder = pool.get(model, batch_size, length + options.max_new_tokens, graph)
        return decoder.generate(batch, options, generator=generator, model_kwargs=model_kwargs,
                                check_every=check_every, on_tokens=on_tokens, compact=compact,
                                share_prefixes=share_prefixes)
