"""Model side of captioning: a prepared unit -> output rows, through `model.describe`.

`Captioner` holds the model, its processor and the run's settings; `rows(unit)` runs one batched
`describe(inputs=...)` on the unit's processor output and returns one row per task (`output.SCHEMA`),
error rows included. Both engines use it (the Ray engine inside its model actor).

Each task's randomness (the parity k-means init, sampling when asked for) comes from its own seed,
`task_seed(run seed, task)`, passed to `describe` as a per-item seed: an annotation's caption does not
depend on the other annotations of its batch, so batch size, engine and resume points do not change it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from .prepare import PreparedUnit
from .records import CaptionTask

logger = logging.getLogger(__name__)


def config_hash(config: dict) -> str:
    """sha256 (first 16 hex digits) of a config dict as canonical JSON: rows of different configs differ."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_configs(model_dir: str | Path) -> dict[str, dict]:
    """A checkpoint folder's `config.json` and `generation_config.json` (when present) by file name, as the
    files say, before any loading."""
    directory = Path(model_dir)
    if not (directory / "config.json").is_file():
        raise ValueError(f"--model: {model_dir} has no config.json")
    return {name: json.loads((directory / name).read_text())
            for name in ("config.json", "generation_config.json") if (directory / name).is_file()}


def checkpoint_config_hash(model_dir: str | Path) -> str:
    """`config_hash` of `checkpoint_configs`: a change of either file (e.g. `repetition_penalty`) changes
    the hash."""
    return config_hash(checkpoint_configs(model_dir))


def task_seed(seed: int, task: CaptionTask) -> int:
    """The seed of one task's randomness: a hash of the run's `seed`, the task's image and annotation ids
    (0 <= value < 2**63)."""
    key = f"{seed}/{task.image_id}/{task.annotation_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1


def make_run_info(model_name: str, config_digest: str, max_new_tokens: int, *, seed: int = 0,
                  **generate_kwargs: Any) -> dict[str, str]:
    """The run's constant columns: `model`, `config_hash` and `decoding` (JSON of the settings: the
    `describe` options and the run's `seed`)."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"--seed must be an integer in [0, 2**63), got {seed!r}")
    decoding = json.dumps({"max_new_tokens": max_new_tokens, "seed": seed, **generate_kwargs}, sort_keys=True)
    return {"model": model_name, "config_hash": config_digest, "decoding": decoding}


class Captioner:
    """Runs `describe` on prepared units.

    Args:
        model, processor: the checkpoint's model and processor.
        run_info: `make_run_info`'s columns (`decoding` holds `max_new_tokens` and the
            `describe` options, which are passed on, and the run's `seed`).
    """

    def __init__(self, model, processor, *, run_info: dict[str, str]):
        self.model = model
        self.processor = processor
        self.run_info = dict(run_info)
        self.decoding = json.loads(run_info["decoding"])
        self.seed = self.decoding.pop("seed", 0)

    def rows(self, unit: PreparedUnit) -> list[dict[str, Any]]:
        """One row per task of the unit: captions for the prepared tasks, error rows for the failed ones.

        A `ValueError`/`TypeError` of the model on the batch (an input the processor let through)
        becomes an error row for each of the batch's tasks and the run goes on; other exceptions (out of
        memory, a broken device) stop the run, which a rerun resumes.
        """
        rows = [self._row(task, error=message) for task, message in unit.failed]
        if unit.inputs is None:
            return rows
        try:
            seeds = [task_seed(self.seed, task) for task in unit.tasks]
            details = self.model.describe(self.processor, inputs=unit.inputs, return_details=True, seed=seeds,
                                          **self.decoding)
        except (ValueError, TypeError) as exc:
            logger.warning("a batch of %d failed in the model: %s", len(unit.tasks), exc)
            message = f"{type(exc).__name__}: " + " ".join(str(exc).split())
            return rows + [self._row(task, error=message) for task in unit.tasks]
        return rows + [self._row(task, caption=d["text"], prompt_tokens=d["prompt_tokens"],
                                 completion_tokens=d["completion_tokens"]) for task, d in zip(unit.tasks, details)]

    def _row(self, task: CaptionTask, *, caption: str | None = None, prompt_tokens: int | None = None,
             completion_tokens: int | None = None, error: str | None = None) -> dict[str, Any]:
        return {"image_id": task.image_id, "annotation_id": task.annotation_id, "question": task.question,
                "caption": caption, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                **self.run_info, "error": error}
