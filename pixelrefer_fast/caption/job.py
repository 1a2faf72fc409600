"""What both engines share: the resume filter, batching by image, and the run summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .output import clean_partial, done_keys
from .records import CaptionTask


@dataclass
class CaptionSummary:
    """The outcome of a run.

    Attributes:
        total: tasks in the input (after `--limit`).
        skipped: tasks already in `OUT` (resumed).
        written: rows this run wrote; `failed` of them are error rows.
        seconds: wall time of the captioning (model loading excluded).
    """

    total: int
    skipped: int
    written: int
    failed: int
    seconds: float

    @property
    def regions_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.written} regions in {self.seconds:.1f} s ({self.regions_per_s:.2f} regions/s), "
                f"{self.failed} failed, {self.skipped} already done, {self.total} in the input")


def pending_tasks(tasks: Sequence[CaptionTask], out: str | Path) -> tuple[list[CaptionTask], int]:
    """The tasks not yet in `out`'s complete shards (temporary shards of a killed run are deleted first),
    and how many were skipped."""
    out = Path(out)
    if not out.is_dir():
        return list(tasks), 0
    clean_partial(out)
    done = done_keys(out)
    pending = [task for task in tasks if task.annotation_id not in done]
    return pending, len(tasks) - len(pending)


def plan_units(tasks: Sequence[CaptionTask], batch_size: int) -> list[list[CaptionTask]]:
    """Batches of at most `batch_size` tasks, grouped by image.

    Images come in the order of their first task, each image's tasks in file order and contiguous, so a
    batch holds as few images as possible and each image is decoded once per batch.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    by_image: dict[str, list[CaptionTask]] = {}
    for task in tasks:
        by_image.setdefault(task.image, []).append(task)
    ordered = [task for group in by_image.values() for task in group]
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
