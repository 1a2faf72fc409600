"""Prefill with shared prompt prefixes: rows that begin with the same tokens and the same image run
that prefix through the LLM once.

A dataset captioner asks about many regions of one image: every prompt is the system text, the
image's tokens (hundreds) and then a short part that differs (the region tokens, the question). With
the processor's image table (`image_index`: equal images share one set of projected tokens), rows
whose tokens up to their last `<image>` are equal, image rows included, have equal embeddings and
therefore equal keys and values there. `shared_prefixes` finds those groups on the host (in
`pack_inputs`, from the CPU `input_ids`); `shared_prefill` then:

1. embeds the whole batch once (`embed_multimodal`: each distinct image through the vision encoder once);
2. runs each group's prefix (tokens `[0, P)` of its prompt) through the LLM once, the groups of one
   length together;
3. lays every row's prefix keys and values at the row's own (left-padded) positions, up to the split
   `X` = the earliest prefix end of the batch, and runs the rest `[X, T)` of every row through the LLM
   on that cache, under a causal key mask built on the device (padding excluded).

The result is the prompt's cache `[B, H, T, D]` per layer and the last position's logits, as the
model's plain forward gives them (up to float rounding: the prefix attention runs over fewer keys).
Nothing is read back from the device. The split point is shared by the rows, so a row whose prefix
ends after `X` recomputes its tail from the cache.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache, Qwen2Model

from ..attention_mask import causal_padding_mask

# Qwen2's forward names its cache argument `cache` in transformers >= 5.2x, `past_key_values` before
CACHE_KEYWORD = "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"
# the keyword under which the model's place_inputs puts the checked PixelReferFastBatch (its forward
# takes it by that name; the decode loop reads the batch's shared prefixes from it)
PACKED_KEY = "multimodal_inputs"
MIN_SHARED_TOKENS = 32  # a prefix shorter than this is not worth the extra LLM calls


@dataclass(frozen=True)
class SharedPrefixes:
    """Host facts of a batch's shared prefixes (`pack_inputs`).

    Attributes:
        pads: per row, its left padding (tokens).
        lengths: per row, the length of its prefix: its tokens up to and including its last `<image>`
            (up to its first `<REGION>` when that comes earlier).
        groups: the rows of equal prefixes (tokens and image rows), in row order; each row in one group.
    """

    pads: tuple[int, ...]
    lengths: tuple[int, ...]
    groups: tuple[tuple[int, ...], ...]

    @property
    def split(self) -> int:
        """`X`: the first position that is not a prefix position of every row."""
        return min(pad + length for pad, length in zip(self.pads, self.lengths))


def shared_prefixes(host_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_slots: torch.Tensor,
                    image_rows: torch.Tensor, region_slots: torch.Tensor) -> SharedPrefixes | None:
    """The batch's `SharedPrefixes`, or None when no two rows share a prefix worth sharing.

    A row's prefix ends after its last `<image>`, or before its first `<REGION>` if that comes earlier
    (region features differ between rows whose tokens agree); two prefixes are equal when their tokens
    and the image rows of their `<image>` slots are.

    Args:
        host_ids: `[B, T]` CPU prompt tokens, left padded.
        attention_mask: `[B, T]` CPU (1 = token), or None (no padding).
        image_slots: `[B, T]` bool, True at the `<image>` placeholders.
        image_rows: the projected-token row of every `<image>` slot, in row-major slot order.
        region_slots: `[B, T]` bool, True at the `<REGION>` placeholders.
    """
    batch, length = host_ids.shape
    if batch < 2 or not bool(image_slots.any()):
        return None
    real = torch.ones_like(host_ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(torch.bool)
    pads = (length - real.sum(-1)).tolist()  # (B,)
    slot_counts = image_slots.sum(-1).tolist()  # (B,)
    slot_rows = torch.split(image_rows, slot_counts)
    keys, lengths = [], []
    for row in range(batch):
        images, regions = image_slots[row].nonzero().squeeze(1), region_slots[row].nonzero().squeeze(1)
        end = int(images[-1]) + 1 if images.numel() else pads[row]  # past the last <image>
        if regions.numel():
            end = min(end, int(regions[0]))  # before the first <REGION>
        end = max(end, pads[row])
        kept = int(image_slots[row, :end].sum())  # the <image> slots inside the prefix
        lengths.append(end - pads[row])
        keys.append((tuple(host_ids[row, pads[row]:end].tolist()), tuple(slot_rows[row][:kept].tolist())))
    groups: dict[tuple, list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    plan = SharedPrefixes(tuple(pads), tuple(lengths), tuple(tuple(rows) for rows in groups.values()))
    if len(plan.groups) == batch or plan.split - min(pads) < MIN_SHARED_TOKENS:
        return None
    return plan


def shared_prefill(model, batch: dict, plan: SharedPrefixes, model_kwargs: dict) -> tuple[torch.Tensor, DynamicCache]:
    """`(logits [B, V] float32 of the last position, the prompt's cache)` of a placed batch whose packed
    inputs carry `plan` (see the module docstring). SDPA or eager attention."""
    inner = model.model
    packed = batch[PACKED_KEY]
    if model_kwargs.get("kmeans_generator") is not None:  # as the model's forward takes it
        packed = dataclasses.replace(packed, kmeans_generator=model_kwargs["kmeans_generator"])
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    embeds = inner.embed_multimodal(input_ids, packed)  # (B, T, D)
    split = plan.split
    prefix_cache = _prefix_cache(inner, embeds, plan, split)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    mask = causal_padding_mask(attention_mask.bool(), split, inner.config._attn_implementation, embeds.dtype)
    out = inner.run_llm(inputs_embeds=embeds[:, split:], attention_mask=mask, position_ids=positions[:, split:],
                        use_cache=True, **{CACHE_KEYWORD: prefix_cache})
    logits = model.lm_head(out.last_hidden_state[:, -1]).float()  # (B, V)
    return logits, prompt_cache(out)


def prompt_cache(out):
    """The cache a forward returned (`cache` in transformers >= 5.2x, `past_key_values` before)."""
    return next(out[key] for key in ("cache", "past_key_values") if out.get(key) is not None)


def _prefix_cache(inner, embeds: torch.Tensor, plan: SharedPrefixes, split: int) -> DynamicCache:
    """The cache of positions `[0, split)`: each row's prefix keys and values (computed once per group) at
    its own positions, zeros at its padding."""
    by_length: dict[int, list[tuple[int, ...]]] = {}
    for rows in plan.groups:
        by_length.setdefault(plan.lengths[rows[0]], []).append(rows)
    layers: list[list[torch.Tensor]] | None = None
    for length, groups in by_length.items():
        first = [rows[0] for rows in groups]
        prefix = torch.stack([embeds[row, plan.pads[row]:plan.pads[row] + length] for row in first])  # (G, P, D)
        computed = prompt_cache(inner.run_llm(inputs_embeds=prefix, use_cache=True))
        # per row of these groups: its group, and the prefix position each of its positions [0, split) holds
        rows = [row for rows in groups for row in rows]
        owner = torch.tensor([group for group, rows in enumerate(groups) for _ in rows])  # (R,)
        source = torch.arange(split)[None, :] - torch.tensor([plan.pads[row] for row in rows])[:, None]  # (R, split)
        padding = (source < 0).to(embeds.device, non_blocking=True)[:, None, :, None]  # (R, 1, split, 1)
        source = source.clamp(min=0).to(embeds.device, non_blocking=True)
        rows, owner = (t.to(embeds.device, non_blocking=True) for t in (torch.tensor(rows), owner))
        if layers is None:
            layers = [[t.new_zeros(embeds.shape[0], t.shape[1], split, t.shape[3]) for t in (layer.keys, layer.values)]
                      for layer in computed.layers]
        for full, layer in zip(layers, computed.layers):
            for target, tensor in zip(full, (layer.keys, layer.values)):  # (G, H, P, D) -> rows (R, H, split, D)
                index = source[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[3])
                target[rows] = tensor[owner].gather(2, index).masked_fill(padding, 0)
    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache
