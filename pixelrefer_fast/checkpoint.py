"""Loading the released PixelRefer / PixelRefer-Lite checkpoint directories, strictly.

Loading goes through transformers' own `from_pretrained` (`AutoModelForCausalLM.from_pretrained(DIR)`
works once `pixelrefer_fast` is imported, without `trust_remote_code`). transformers builds the model
on the `meta` device and assigns the (memory-mapped) tensors, so nothing is allocated twice; it reads
single or sharded safetensors (with `model.safetensors.index.json`) and `pytorch_model*.bin`
(`torch.load(weights_only=True)`), and ties `lm_head` to `model.embed_tokens` when
`tie_word_embeddings` is true (the 2B checkpoints store no `lm_head.weight`).

On top of that this module adds (called from `PixelReferFastPreTrainedModel.from_pretrained`):

- a model-type check before anything is built (`check_model_type`): an unknown type, or a Lite
  checkpoint given to the full class, is a `ValueError` naming the accepted types;
- a strict key check after loading (`check_loading_info`): every missing, unexpected or
  shape-mismatched key is a `ValueError` that lists them by name, except the allow-list below;
- the runtime token ids (`special_token_ids`): like the official `mm_infer`, the ids of `<image>`
  and `<REGION>` come from the checkpoint's tokenizer files, not from `config.json`.

Key names: our module tree is the official one (docs/spec.md §9.1), so the released keys load without renaming
and `save_pretrained` writes them back unchanged. The allow-list covers Lite's unused weights: the
projector (`model.mm_projector.*`, not built for Lite) and `model.region_encoder.mask_embedding.*`
(built, never used; a checkpoint without it still loads).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping

from .configuration_pixelrefer_fast import LITE_MODEL_TYPE, MODEL_TYPE, MODEL_TYPES
from .tokens import IMAGE_TOKEN, REGION_TOKEN

# Checkpoint keys a model may lack or ignore without error, per model type (regexes, `re.search`).
ALLOWED_UNEXPECTED_KEYS: dict[str, tuple[str, ...]] = {
    MODEL_TYPE: (),
    LITE_MODEL_TYPE: (r"^model\.mm_projector\.",),
}
ALLOWED_MISSING_KEYS: dict[str, tuple[str, ...]] = {
    MODEL_TYPE: (),
    LITE_MODEL_TYPE: (r"^model\.region_encoder\.mask_embedding\.",),
}

_TOKENIZER_FILES = ("tokenizer_config.json", "added_tokens.json", "tokenizer.json")
_MAX_LISTED = 40


def check_model_type(model_type: str | None, accepted: Iterable[str], source: str) -> None:
    """Refuse a checkpoint whose `model_type` this class cannot load.

    Args:
        model_type: the `model_type` of the checkpoint's `config.json`.
        accepted: the types the loading class takes.
        source: the directory or id, for the message.

    Raises:
        ValueError: naming the type found, the accepted ones and the class to use instead.
    """
    accepted = tuple(accepted)
    if model_type in accepted:
        return
    if model_type in MODEL_TYPES:
        hint = "PixelReferFastLiteForCausalLM" if model_type == LITE_MODEL_TYPE else "PixelReferFastForCausalLM"
        raise ValueError(
            f"{source}: checkpoint model_type {model_type!r} cannot be loaded by a class for {accepted}; "
            f"use {hint} or transformers.AutoModelForCausalLM (after `import pixelrefer_fast`)"
        )
    raise ValueError(
        f"{source}: model_type {model_type!r} is not a PixelRefer checkpoint; accepted model types: "
        f"{', '.join(MODEL_TYPES)}"
    )


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(re.search(p, key) for p in patterns)


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def check_loading_info(info: Mapping[str, object], model_type: str, source: str) -> None:
    """Raise if the load left keys missing, unexpected or mismatched (beyond the allow-list).

    Args:
        info: transformers' loading info (`from_pretrained(..., output_loading_info=True)`): sets
            `missing_keys`, `unexpected_keys`, `mismatched_keys` and the list `error_msgs`.
        model_type: selects the allow-list (`ALLOWED_MISSING_KEYS` / `ALLOWED_UNEXPECTED_KEYS`).
        source: the directory or id, for the message.

    Raises:
        ValueError: one line per problem kind, keys listed by name.
    """
    missing = {k for k in info.get("missing_keys", ()) if not _matches(k, ALLOWED_MISSING_KEYS.get(model_type, ()))}
    unexpected = {
        k for k in info.get("unexpected_keys", ()) if not _matches(k, ALLOWED_UNEXPECTED_KEYS.get(model_type, ()))
    }
    mismatched = [f"{k} (checkpoint {tuple(a)} vs model {tuple(b)})" for k, a, b in info.get("mismatched_keys", ())]
    problems = []
    if missing:
        problems.append(f"missing keys (in the model, not in the checkpoint): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys (in the checkpoint, not in the model): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if info.get("error_msgs"):
        problems.append("errors: " + "; ".join(str(m) for m in info["error_msgs"]))
    if problems:
        raise ValueError(f"{source}: the checkpoint does not match the {model_type} model:\n  " + "\n  ".join(problems))


def _read_json(source: str, filename: str, **hub_kwargs) -> dict | None:
    path = os.path.join(source, filename)
    if not os.path.isdir(source):
        from transformers.utils import cached_file

        path = cached_file(source, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if path is None or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_model_type(source: str, **hub_kwargs) -> str | None:
    """The `model_type` in `source`'s `config.json` (None when there is no such file or field)."""
    config = _read_json(source, "config.json", **hub_kwargs)
    return None if config is None else config.get("model_type")


def special_token_ids(source: str, tokens: Iterable[str] = (IMAGE_TOKEN, REGION_TOKEN), **hub_kwargs) -> dict[str, int]:
    """Ids of added tokens read from the tokenizer files of a checkpoint (without loading the tokenizer).

    Looks in `tokenizer_config.json` (`added_tokens_decoder`), `added_tokens.json` and
    `tokenizer.json` (`added_tokens`), in that order; tokens found nowhere are left out.

    Returns:
        `{token: id}`, e.g. `{"<image>": 151665, "<REGION>": 151668}`.
    """
    wanted = set(tokens)
    found: dict[str, int] = {}
    for filename in _TOKENIZER_FILES:
        if wanted <= found.keys():
            break
        data = _read_json(source, filename, **hub_kwargs)
        if not data:
            continue
        if filename == "tokenizer_config.json":
            pairs = ((entry.get("content"), int(i)) for i, entry in data.get("added_tokens_decoder", {}).items())
        elif filename == "added_tokens.json":
            pairs = ((content, int(i)) for content, i in data.items())
        else:
            pairs = ((entry.get("content"), int(entry["id"])) for entry in data.get("added_tokens", ()))
        for content, token_id in pairs:
            if content in wanted and content not in found:
                found[content] = token_id
    return found


def check_checkpoint_folder(source: str | os.PathLike) -> None:
    """Refuse a local folder that is not a checkpoint: missing, or without `config.json`.

    Hub ids (anything that is not an existing local path) are left to transformers.

    Raises:
        ValueError: naming the folder and what a checkpoint folder holds.
    """
    source = os.fspath(source)
    if os.path.isfile(source):
        raise ValueError(f"{source}: is a file; a checkpoint is a folder with config.json, the weights "
                         "(*.safetensors) and the tokenizer files")
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise ValueError(f"{source}: no config.json in this folder, so it is not a checkpoint folder (expected "
                         "config.json, the weights and the tokenizer files of a PixelRefer or PixelRefer-Lite "
                         "release; `pixelrefer-fast init-random DIR` writes a random one)")


__all__ = [
    "ALLOWED_MISSING_KEYS",
    "ALLOWED_UNEXPECTED_KEYS",
    "check_checkpoint_folder",
    "check_loading_info",
    "check_model_type",
    "read_model_type",
    "special_token_ids",
]
