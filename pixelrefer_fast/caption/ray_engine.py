"""The Ray engine: Ray Data over a cluster (`RAY_ADDRESS`) or a local Ray.

Pipeline (one dataset row per batch of `job.plan_units`, so batches are the local engine's):

    from_items(units) -> map_batches(_Preparer, CPU actors: images, masks, processor)
                      -> map_batches(_CaptionActor, one per GPU or --actors: describe on the batch)
                      -> iter_batches on the driver -> ShardWriter (Parquet shards, temp name + rename)

The shards are written by the driver with the local engine's writer, so both engines share the schema,
the atomic shard rule and resume: a killed job (driver or workers) loses only rows not yet in a complete
shard. Every node needs this package installed and the images and checkpoint at the same paths; only
the driver needs `OUT`.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .job import CaptionSummary
from .output import ShardWriter, require_pyarrow, schema
from .prepare import prepare_unit
from .records import CaptionTask

logger = logging.getLogger(__name__)


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError('--engine ray needs Ray Data: pip install "pixelrefer-fast[ray]"') from None
    return ray


class _Preparer:
    """CPU stage: holds the checkpoint's processor; each row's unit (JSON tasks) -> its `PreparedUnit`, pickled."""

    def __init__(self, model_dir: str):
        from ..processing_pixelrefer_fast import PixelReferFastProcessor

        self.processor = PixelReferFastProcessor.from_pretrained(model_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[bytes]]:
        out = []
        for text in batch["unit"]:
            tasks = [CaptionTask.from_dict(task) for task in json.loads(text)]
            out.append(pickle.dumps(prepare_unit(tasks, self.processor)))
        return {"prepared": out}


class _CaptionActor:
    """Model stage: loads the checkpoint once (on the actor's GPU when it has one) and captions batches."""

    def __init__(self, model_dir: str, run_info: dict[str, Any], dtype: str, kernels: str):
        from transformers.utils import logging as hf_logging

        from ..loading import load_model_and_processor
        from .captioner import Captioner

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        model, processor = load_model_and_processor(model_dir, dtype=dtype)
        self.captioner = Captioner(model, processor, run_info=run_info)
        self.kernels = kernels

    def __call__(self, batch: dict[str, np.ndarray]):
        import pixelrefer_kernels

        pa = require_pyarrow()
        rows = []
        with pixelrefer_kernels.force(self.kernels):
            for blob in batch["prepared"]:
                rows.extend(self.captioner.rows(pickle.loads(blob)))
        return pa.Table.from_pylist(rows, schema=schema())


def run_ray(units: Sequence[Sequence[CaptionTask]], model_dir: str, writer: ShardWriter, *, actors: int | None = None,
            dtype: str = "auto", kernels: str = "auto", total: int, skipped: int, progress: bool = True) -> CaptionSummary:
    """Caption `units` on Ray and write their rows with `writer`; returns the summary.

    Connects to the cluster `RAY_ADDRESS` names when set (`ray.init()`), else starts a local Ray on
    this machine's cores, and shuts down only a Ray it started.

    Args:
        actors: model actors (default: one per GPU of the cluster, or 1 without GPUs); with GPUs each
            takes one (a share of one when there are more actors than GPUs), without them one CPU.
    """
    from tqdm import tqdm

    pending = sum(len(unit) for unit in units)
    start = time.perf_counter()
    written = failed = 0
    if pending:
        ray = require_ray()
        started = not ray.is_initialized()
        if started:
            ray.init(logging_level=logging.WARNING, include_dashboard=False)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            dataset = _pipeline(ray, units, model_dir, writer.run_info, actors=actors, dtype=dtype, kernels=kernels)
            with tqdm(total=pending, unit="region", disable=not progress, dynamic_ncols=True) as bar:
                for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    rows = batch.to_pylist()
                    writer.add(rows)
                    written += len(rows)
                    failed += sum(row["error"] is not None for row in rows)
                    bar.update(len(rows))
                    bar.set_postfix(failed=failed, refresh=False)
        finally:
            if started:
                ray.shutdown()
    writer.flush()
    return CaptionSummary(total=total, skipped=skipped, written=written, failed=failed, seconds=time.perf_counter() - start)


def _pipeline(ray, units: Sequence[Sequence[CaptionTask]], model_dir: str, run_info: dict[str, str], *,
              actors: int | None, dtype: str, kernels: str):
    """The Ray Data dataset of output rows (module docstring)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    count = actors or max(1, gpus)
    # preparing actors use the CPUs the model actors leave (those take one each without GPUs)
    preparers = max(1, cpus - (0 if gpus else count))
    dataset = ray.data.from_items([{"unit": json.dumps([t.to_dict() for t in unit])} for unit in units])
    dataset = dataset.map_batches(
        _Preparer, batch_size=1, num_cpus=1, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=preparers),
        fn_constructor_kwargs={"model_dir": str(model_dir)},
    )
    return dataset.map_batches(
        _CaptionActor, batch_size=1, num_cpus=0 if gpus else 1, num_gpus=min(1.0, gpus / count) if gpus else 0,
        compute=ray.data.ActorPoolStrategy(size=count),
        fn_constructor_kwargs={"model_dir": str(model_dir), "run_info": run_info, "dtype": dtype, "kernels": kernels},
    )
