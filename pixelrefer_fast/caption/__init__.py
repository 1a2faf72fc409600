"""Dataset captioning: one caption per annotation of a COCO-format or JSON Lines dataset, into Parquet
shards, resumable, on this machine (`local_engine`) or a Ray cluster (`ray_engine`).

Modules, in pipeline order: `records` (annotation files -> `CaptionTask`), `job` (resume filter,
batches grouped by image, summary), `prepare` (CPU: images, masks, processor -> `PreparedUnit`),
`captioner` (model: one batched `describe` per batch -> rows), `output` (schema, atomic shards,
manifest, resume keys), `local_engine` / `ray_engine`, `cli` (`pixelrefer-fast caption`).
pyarrow is needed for the output (`pip install "pixelrefer-fast[caption]"`), Ray Data for the Ray
engine (`[ray]`); both are imported only when used.
"""

from .captioner import Captioner, checkpoint_config_hash, make_run_info, task_seed
from .job import CaptionSummary, pending_tasks, plan_units
from .output import ShardWriter, read_captions
from .prepare import PreparedUnit, decode_region, prepare_unit
from .records import CaptionTask, read_tasks

__all__ = [
    "CaptionSummary",
    "CaptionTask",
    "Captioner",
    "PreparedUnit",
    "ShardWriter",
    "checkpoint_config_hash",
    "decode_region",
    "make_run_info",
    "pending_tasks",
    "plan_units",
    "prepare_unit",
    "read_captions",
    "read_tasks",
    "task_seed",
]
