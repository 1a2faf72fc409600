"""The local engine: CPU worker processes prepare batches while the model captions on the main device.

`torch.utils.data.DataLoader` runs `prepare_unit` (image decoding, mask decoding, the processor)
on `workers` processes, each keeping `prefetch` prepared batches ahead (a bounded queue: at most
`workers * prefetch` batches wait in memory); `workers=0` prepares in the main process. Batches
arrive in plan order; each goes through one batched `describe` and its rows into the shard writer.
A progress bar on stderr shows regions/s and the ETA.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from torch.utils.data import DataLoader, Dataset

from .captioner import Captioner
from .job import CaptionSummary
from .output import ShardWriter
from .prepare import PreparedUnit, prepare_unit
from .records import CaptionTask


class _Units(Dataset):
    """Map-style dataset: item i is unit i, prepared."""

    def __init__(self, units: Sequence[Sequence[CaptionTask]], processor):
        self.units = units
        self.processor = processor

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> PreparedUnit:
        return prepare_unit(self.units[index], self.processor)


def _unchanged(unit: PreparedUnit) -> PreparedUnit:
    return unit


def default_workers() -> int:
    """One CPU core stays with the main process: `min(4, cores - 1)`, at least 1."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def run_local(units: Sequence[Sequence[CaptionTask]], captioner: Captioner, writer: ShardWriter, *,
              total: int, skipped: int, workers: int | None = None, prefetch: int = 2,
              progress: bool = True) -> CaptionSummary:
    """Caption `units` (`job.plan_units`) and write their rows; returns the summary.

    Args:
        total, skipped: the input's task count and the tasks resumed (for the summary).
        workers: preparing processes (default `default_workers()`; 0 = in the main process).
        prefetch: prepared batches each worker keeps ready.
        progress: show the progress bar (stderr).
    """
    from tqdm import tqdm

    workers = default_workers() if workers is None else workers
    if workers < 0 or prefetch < 1:
        raise ValueError(f"--workers must be >= 0 and prefetch >= 1, got {workers} and {prefetch}")
    # the processor's fast tokenizer was used before the workers fork: its thread pool must stay off
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loader = DataLoader(_Units(units, captioner.processor), batch_size=None, shuffle=False, num_workers=workers,
                        collate_fn=_unchanged, prefetch_factor=prefetch if workers else None, persistent_workers=False)
    pending = sum(len(unit) for unit in units)
    written = failed = 0
    start = time.perf_counter()
    with tqdm(total=pending, unit="region", disable=not progress, dynamic_ncols=True) as bar:
        for prepared in loader:
            rows = captioner.rows(prepared)
            writer.add(rows)
            written += len(rows)
            failed += sum(row["error"] is not None for row in rows)
            bar.update(len(rows))
            bar.set_postfix(failed=failed, refresh=False)
    writer.flush()
    return CaptionSummary(total=total, skipped=skipped, written=written, failed=failed,
                          seconds=time.perf_counter() - start)
