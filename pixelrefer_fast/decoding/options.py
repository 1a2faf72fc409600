"""Generation options of `describe()`: validated once, resolved against the checkpoint, split per path.

`resolve_options` merges the checkpoint's `generation_config` with the caller's keyword arguments
and returns a `DecodePlan`:

- `sampling`: the `SamplingOptions` the fast loop implements (`max_new_tokens`, `min_new_tokens`,
  eos ids, `pad_token_id`, `repetition_penalty`, `suppress_tokens`, `do_sample`, `temperature`, `top_k`,
  `top_p`, and `rows`: per-row `do_sample` / `temperature` / `top_p` when the caller gave lists);
- `generation_config`: the same options as a `GenerationConfig` for transformers' `generate` (the
  `"hf"` path), built so that `generate` emits no "flags are not valid" warning: in greedy mode the
  checkpoint's sampling defaults are set to their neutral values (they are inert there anyway);
- `fast_refusal`: why the fast loop cannot honour the options (`None` when it can); `describe`
  then falls back to `"hf"` and logs that reason once.

Options no decoding path of `describe` can honour raise `ValueError` here, before any model work:
beam search (`num_beams > 1`), several answers per item (`num_return_sequences > 1`), a
`max_new_tokens` that is not an integer >= 1, and out-of-range sampling values.

Per-item sampling: `do_sample`, `temperature` and `top_p` also take a list with one value per item
(`ROW_OPTIONS`; the batch size must be given), resolved into `RowSampling`: row `i` samples when its
`do_sample` is true and its `temperature` is at least `MIN_TEMPERATURE` (a 0 in a `temperature` list
means greedy), with its own temperature and top-p; `top_k` and the repetition penalty stay batch-wide. transformers'
`generate` has no per-row values, so the plan's `GenerationConfig` is then greedy and the `"hf"`
path samples with `reference.RowSamplingProcessor` (the fast loop's own processors, per row).
`check_seed` takes the matching per-item seeds.

Decoding is greedy unless `do_sample=True` is passed (as the official scripts; the checkpoint's
`do_sample` is not followed), and greedy too with a temperature below `MIN_TEMPERATURE` (1e-5). The
repetition penalty covers the generated tokens only (the official code generates from
`inputs_embeds`, so transformers' penalty never sees the prompt).
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, field

from transformers import GenerationConfig

from ..defaults import DECODINGS

EOS_TOKEN = "<|im_end|>"

# generate() arguments that are not GenerationConfig fields; the fast loop implements none of them
# (`streamer` is handled by describe itself)
GENERATE_ARGUMENTS = (
    "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
    "negative_prompt_ids", "negative_prompt_attention_mask", "use_model_defaults", "custom_generate",
    "assistant_tokenizer", "tokenizer",
)
# model inputs the fast prefill passes on (the processor's batch brings the rest)
FAST_MODEL_KWARGS = ("kmeans_generator",)
# GenerationConfig fields the fast loop does not implement, with the values that leave them inactive
_INACTIVE = {
    "min_length": (0,), "max_time": (), "stop_strings": (), "min_p": (), "top_h": (), "typical_p": (1.0,),
    "epsilon_cutoff": (0.0,), "eta_cutoff": (0.0,), "encoder_repetition_penalty": (1.0,),
    "no_repeat_ngram_size": (0,), "encoder_no_repeat_ngram_size": (0,), "bad_words_ids": (),
    "renormalize_logits": (False,), "forced_bos_token_id": (), "forced_eos_token_id": (),
    "remove_invalid_values": (False,), "exponential_decay_length_penalty": (),
    "begin_suppress_tokens": (), "sequence_bias": (), "token_healing": (False,), "guidance_scale": (1.0,),
    "watermarking_config": (), "output_attentions": (False,), "output_hidden_states": (False,),
    "output_scores": (False,), "output_logits": (False,), "return_dict_in_generate": (False,),
    "penalty_alpha": (), "dola_layers": (), "constraints": (), "force_words_ids": (),
    "prompt_lookup_num_tokens": (), "use_cache": (True,), "cache_implementation": ("static",),
    "cache_config": (), "use_mtp": (False,), "prefill_chunk_size": (), "low_memory": (False,),
}
# the neutral values of the sampling knobs (generate() refills None from the checkpoint's defaults)
_NEUTRAL_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
# the options that take one value per item (a list or tuple)
ROW_OPTIONS = ("do_sample", "temperature", "top_p")
# Below this a temperature decodes greedily: the argmax is the limit of sampling as the temperature
# goes to 0, and dividing float32 logits by a far smaller one overflows to inf (NaN probabilities,
# then garbage tokens); vLLM's OpenAI server draws the same line.
MIN_TEMPERATURE = 1e-5
# The float32 logits are divided by the temperature as a float32 number: one above this is inf there
# (0 logits, -inf / inf = NaN for suppressed tokens).
MAX_TEMPERATURE = 3.4e38


@dataclass(frozen=True)
class RowSampling:
    """Per-row sampling values (one entry per batch row).

    Attributes:
        do_sample: whether the row samples; a greedy row takes the argmax of its processed scores,
            untouched by the warpers.
        temperature, top_p: the row's warpers (1.0 = off); greedy rows hold 1.0.
    """

    do_sample: tuple[bool, ...]
    temperature: tuple[float, ...]
    top_p: tuple[float, ...]

    @property
    def batch_size(self) -> int:
        return len(self.do_sample)


@dataclass(frozen=True)
class SamplingOptions:
    """What one fast decode call does after the prefill (the semantics of transformers' processors).

    Attributes:
        max_new_tokens: generated tokens at most (>= 1).
        min_new_tokens: the eos ids are suppressed (-inf) before this many tokens.
        eos_token_ids: a row finishes after emitting one of these; later tokens are `pad_token_id`.
        pad_token_id: what finished rows emit.
        repetition_penalty: scores of already generated tokens are divided (positive) or multiplied
            (negative) by it; 1.0 = off. The prompt is not penalised.
        suppress_tokens: token ids whose scores are always `-inf`.
        do_sample: sample (softmax of the processed scores) instead of the argmax; with `rows`,
            whether any row samples.
        temperature, top_k, top_p: sampling warpers (1.0 / 0 / 1.0 = off), in transformers' order;
            `temperature` and `top_p` are every row's unless `rows` is given (then they are 1.0).
        rows: per-row `do_sample` / `temperature` / `top_p` (None: the batch-wide values above).
    """

    max_new_tokens: int
    min_new_tokens: int = 0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    repetition_penalty: float = 1.0
    suppress_tokens: tuple[int, ...] = ()
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    rows: RowSampling | None = None

    def row_values(self, batch_size: int) -> RowSampling:
        """The sampling values of each of `batch_size` rows (the batch-wide ones repeated when `rows` is None)."""
        if self.rows is None:
            greedy = not self.do_sample
            return RowSampling((self.do_sample,) * batch_size, (1.0 if greedy else self.temperature,) * batch_size,
                               (1.0 if greedy else self.top_p,) * batch_size)
        if self.rows.batch_size != batch_size:
            raise ValueError(f"the per-item sampling options are for {self.rows.batch_size} items, "
                             f"the batch has {batch_size}")
        return self.rows

    @property
    def structure(self) -> tuple:
        """The parts that change the decode step's graph (the values live in device tensors)."""
        if self.rows is None:
            sampled = [(self.temperature, self.top_p)] if self.do_sample else []
        else:
            sampled = [(t, p) for s, t, p in zip(self.rows.do_sample, self.rows.temperature, self.rows.top_p) if s]
        return (
            self.do_sample,
            self.repetition_penalty != 1.0,
            self.min_new_tokens > 0,
            any(t != 1.0 for t, _ in sampled),
            self.top_k if self.do_sample else 0,
            any(p < 1.0 for _, p in sampled),
            bool(self.suppress_tokens),
        )


@dataclass
class DecodePlan:
    """`resolve_options`'s result: one set of options, in the form each decoding path takes."""

    sampling: SamplingOptions
    generation_config: GenerationConfig
    model_kwargs: dict = field(default_factory=dict)
    generate_arguments: dict = field(default_factory=dict)
    fast_refusal: str | None = None


def check_decoding(decoding) -> str:
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    return decoding


def check_count(value, name: str, minimum: int) -> int:
    """`value` as an int >= `minimum`; `ValueError` naming `name` for floats, bools, strings, ..."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _is_seed(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and 0 <= value < 2**63


def check_seed(seed, batch_size: int | None = None) -> int | tuple[int, ...] | None:
    """`None`, an int in [0, 2**63), or a list / tuple of such ints, one per item (`batch_size`
    of them, when given): the seeds of each item's sampling and k-means init."""
    if seed is None:
        return None
    if isinstance(seed, (list, tuple)):
        bad = [i for i, value in enumerate(seed) if not _is_seed(value)]
        if bad:
            raise ValueError(f"seed[{bad[0]}] must be an integer in [0, 2**63), got {seed[bad[0]]!r}")
        if not seed or (batch_size is not None and len(seed) != batch_size):
            raise ValueError(f"seed has {len(seed)} values for {batch_size} items; give one per item "
                             "(or one int for the batch)")
        return tuple(int(value) for value in seed)
    if not _is_seed(seed):
        raise ValueError(f"seed must be None or an integer in [0, 2**63), or a list of them (one per item), got {seed!r}")
    return int(seed)


def _eos_ids(config: GenerationConfig, tokenizer) -> tuple[int, ...]:
    eos = config.eos_token_id
    if eos is None:
        eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    eos = [eos] if isinstance(eos, numbers.Integral) else list(eos)
    if not eos or any(isinstance(e, bool) or not isinstance(e, numbers.Integral) or e < 0 for e in eos):
        raise ValueError(f"eos_token_id must be a token id or a non-empty list of ids, got {config.eos_token_id!r}")
    return tuple(int(e) for e in eos)


def _check_search(config: GenerationConfig) -> None:
    """Options no path of describe() can honour: ValueError, whatever the decoding."""
    beams = config.num_beams if config.num_beams is not None else 1
    if beams != 1:
        raise ValueError(
            f"beam search is not supported by describe() (num_beams={beams!r}); it decodes greedily or samples "
            "(do_sample=True). Accepted: num_beams=1 or unset"
        )
    groups = getattr(config, "num_beam_groups", None)
    if groups not in (None, 1):
        raise ValueError(
            f"group beam search is not supported by describe() (num_beam_groups={groups!r}); accepted: 1 or unset"
        )
    sequences = config.num_return_sequences if config.num_return_sequences is not None else 1
    if sequences != 1:
        raise ValueError(
            f"describe() returns one answer per item: num_return_sequences={sequences!r} is not supported "
            "(repeat the item in the batch with do_sample=True instead). Accepted: 1 or unset"
        )


def _check_sampling(sampling: SamplingOptions) -> None:
    if not sampling.repetition_penalty > 0:
        raise ValueError(
            f"repetition_penalty must be a positive float (1.0 = off), got {sampling.repetition_penalty!r}"
        )
    if sampling.do_sample:
        _check_temperature(sampling.temperature, "temperature", greedy_zero=False)
        if not 0 < sampling.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {sampling.top_p!r}")
        if sampling.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {sampling.top_k!r}")


def _check_temperature(value: float, name: str, *, greedy_zero: bool) -> None:
    """A sampling temperature: > 0 (or 0 = greedy, per item), and finite in float32 (`MAX_TEMPERATURE`)."""
    above_lowest = value >= 0 if greedy_zero else value > 0  # False for NaN
    if not (above_lowest and value <= MAX_TEMPERATURE):
        accepted = "a finite number >= 0 (0 = greedy)" if greedy_zero else "> 0 when do_sample=True"
        raise ValueError(f"{name} must be {accepted} and at most {MAX_TEMPERATURE:g} (finite in float32), got {value!r}")


def _number(value, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _token_ids(value, name: str) -> tuple[int, ...]:
    """None or a list of token ids as a tuple; `ValueError` naming `name` otherwise."""
    if value is None:
        return ()
    ids = list(value) if isinstance(value, (list, tuple)) else None
    if ids is None or any(isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 0 for i in ids):
        raise ValueError(f"{name} must be a list of token ids (integers >= 0), got {value!r}")
    return tuple(int(i) for i in ids)


def _per_item(values, name: str, batch_size: int | None) -> list:
    if batch_size is None:
        raise ValueError(f"{name} was given per item (a list) but the batch size is unknown here; "
                         "pass one value, or call describe()")
    if len(values) != batch_size:
        raise ValueError(f"{name} has {len(values)} values for a batch of {batch_size} items; give one per item")
    return list(values)


def _row_sampling(per_item: dict, config: GenerationConfig, batch_size: int | None) -> RowSampling:
    """`RowSampling` from the per-item lists in `per_item` and the scalar values in `config`, validated."""
    rows = {name: _per_item(values, name, batch_size) for name, values in per_item.items()}
    do_sample = rows.get("do_sample", [bool(config.do_sample)] * batch_size)
    if any(not isinstance(value, bool) for value in do_sample):
        bad = next(i for i, value in enumerate(do_sample) if not isinstance(value, bool))
        raise ValueError(f"do_sample[{bad}] must be True or False, got {do_sample[bad]!r}")
    if "temperature" in rows:
        temperature = [_number(t, f"temperature[{i}]", 1.0) for i, t in enumerate(rows["temperature"])]
        for i, t in enumerate(temperature):
            _check_temperature(t, f"temperature[{i}]", greedy_zero=True)
    else:
        scalar = _number(config.temperature, "temperature", 1.0)
        if any(do_sample):
            _check_temperature(scalar, "temperature", greedy_zero=False)
        temperature = [scalar] * batch_size
    if "top_p" in rows:
        top_p = [_number(p, f"top_p[{i}]", 1.0) for i, p in enumerate(rows["top_p"])]
        for i, p in enumerate(top_p):
            if not 0 < p <= 1:
                raise ValueError(f"top_p[{i}] must be in (0, 1] (1.0 = off), got {p!r}")
    else:
        top_p = [_number(config.top_p, "top_p", 1.0)] * batch_size
        if any(do_sample) and not 0 < top_p[0] <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {top_p[0]!r}")
    sample = tuple(s and t >= MIN_TEMPERATURE for s, t in zip(do_sample, temperature))
    return RowSampling(
        do_sample=sample,
        temperature=tuple(t if s else 1.0 for s, t in zip(sample, temperature)),
        top_p=tuple(p if s else 1.0 for s, p in zip(sample, top_p)),
    )


def resolve_options(base: GenerationConfig, tokenizer, max_new_tokens, generate_kwargs: dict,
                    batch_size: int | None = None) -> DecodePlan:
    """The checkpoint's generation config made greedy, updated with `generate_kwargs`, validated, split.

    Args:
        base: the model's `generation_config` (not modified).
        tokenizer: gives the `<|im_end|>` id when the config has no eos.
        max_new_tokens: an integer >= 1.
        generate_kwargs: `GenerationConfig` fields (`do_sample=True`, `top_p`, ...), `generate()`
            arguments (`logits_processor`, ...) and model inputs (`kmeans_generator`);
            `do_sample`, `temperature` and `top_p` may be lists, one value per item (`ROW_OPTIONS`).
        batch_size: the number of items (needed for per-item lists, whose length it checks).

    Raises:
        ValueError: `max_new_tokens` / `min_new_tokens` not integers in range, beam search,
            `num_return_sequences > 1`, out-of-range sampling values, per-item lists of the wrong
            length or with a bad entry (the message names the argument and the item).
    """
    max_new_tokens = check_count(max_new_tokens, "max_new_tokens", 1)
    config = copy.deepcopy(base)
    config.do_sample = False
    config.max_new_tokens = max_new_tokens
    kwargs = dict(generate_kwargs)
    per_item = {name: kwargs.pop(name) for name in ROW_OPTIONS if isinstance(kwargs.get(name), (list, tuple))}
    generate_arguments = {name: kwargs.pop(name) for name in GENERATE_ARGUMENTS if name in kwargs}
    user_set = set()
    model_kwargs = {}
    for name, value in kwargs.items():
        if hasattr(config, name) and name != "transformers_version":
            setattr(config, name, value)
            user_set.add(name)
        else:
            model_kwargs[name] = value
    config.max_new_tokens = check_count(config.max_new_tokens, "max_new_tokens", 1)
    config.min_new_tokens = check_count(config.min_new_tokens or 0, "min_new_tokens", 0)
    _check_search(config)
    rows = _row_sampling(per_item, config, batch_size) if per_item else None
    if rows is None and config.do_sample and 0 < _number(config.temperature, "temperature", 1.0) < MIN_TEMPERATURE:
        config.do_sample = False  # the greedy limit (MIN_TEMPERATURE); generate() would divide by it
        user_set -= set(_NEUTRAL_SAMPLING)
    do_sample = any(rows.do_sample) if rows is not None else bool(config.do_sample)
    top_k = config.top_k if config.top_k is not None else 0
    if rows is not None:
        # generate() has no per-row values: it decodes greedily, reference.RowSamplingProcessor samples
        config.do_sample = False
        user_set -= set(_NEUTRAL_SAMPLING)
    if not config.do_sample:
        # the checkpoint's sampling defaults are inert when greedy: neutral values keep generate() quiet
        for name, neutral in _NEUTRAL_SAMPLING.items():
            if name not in user_set:
                setattr(config, name, neutral)
    eos = _eos_ids(config, tokenizer)
    config.eos_token_id = list(eos)
    if config.pad_token_id is None:
        config.pad_token_id = eos[0]
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    sampling = SamplingOptions(
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        eos_token_ids=eos,
        pad_token_id=check_count(config.pad_token_id, "pad_token_id", 0),
        repetition_penalty=_number(config.repetition_penalty, "repetition_penalty", 1.0),
        suppress_tokens=_token_ids(config.suppress_tokens, "suppress_tokens"),
        do_sample=do_sample,
        temperature=1.0 if rows is not None else _number(config.temperature, "temperature", 1.0),
        top_k=int(top_k),
        top_p=1.0 if rows is not None else _number(config.top_p, "top_p", 1.0),
        rows=rows,
    )
    _check_sampling(sampling)
    refusal = _fast_refusal(config, model_kwargs, generate_arguments)
    return DecodePlan(sampling, config, model_kwargs, generate_arguments, refusal)


def _fast_refusal(config: GenerationConfig, model_kwargs: dict, generate_arguments: dict) -> str | None:
    """Why the fast loop cannot run these options (None when it can)."""
    if generate_arguments:
        return f"generate() arguments {sorted(generate_arguments)} are not implemented by the fast loop"
    unknown = sorted(set(model_kwargs) - set(FAST_MODEL_KWARGS))
    if unknown:
        return f"options {unknown} are not implemented by the fast loop"
    active = sorted(
        name for name, inactive in _INACTIVE.items()
        if getattr(config, name, None) is not None and getattr(config, name) not in inactive
    )
    if active:
        return f"generation options {active} are not implemented by the fast loop"
    return None
