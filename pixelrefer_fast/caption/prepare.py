"""CPU side of captioning: a unit of tasks -> decoded images and masks -> one processor batch.

Runs in worker processes (local engine) or Ray CPU tasks (Ray engine); everything it returns is
picklable CPU data. A task that fails here (missing image, undecodable mask, a mask the processor
refuses) is returned as an error instead of failing the unit.

Region specs (`records.py`): `{"polygon": [[x0, y0, x1, y1, ...], ...]}` (COCO polygons, filled
with OpenCV), `{"rle": {...}}` (compressed or uncompressed COCO RLE), `{"bbox": [x, y, w, h]}`
(COCO box); a COCO spec carries its `bbox` beside the segmentation, used when the segmentation
decodes to an empty mask. Any other value is a processor region form (an RLE dict with `counts`, a
box `[x0, y0, x1, y1]`, a nested 0/1 list), passed through `to_binary_mask`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..image_processing_pixelrefer_fast import load_image
from ..masks import to_binary_mask
from .records import CaptionTask


@dataclass
class PreparedUnit:
    """A unit after CPU preprocessing.

    Attributes:
        tasks: the tasks whose inputs are in `inputs`, in batch order.
        inputs: the processor's output (a dict of CPU tensors) for `tasks`; None when none survived.
        failed: `(task, error message)` for the tasks that could not be prepared.
    """

    tasks: list[CaptionTask]
    inputs: dict | None
    failed: list[tuple[CaptionTask, str]] = field(default_factory=list)


def decode_region(spec: Any, height: int, width: int) -> np.ndarray:
    """One region spec (module docstring) -> an HxW uint8 {0, 1} mask.

    Raises:
        ValueError / TypeError: a spec that cannot be decoded for this image size.
    """
    if isinstance(spec, Mapping) and ({"polygon", "rle", "bbox"} & set(spec)):
        mask = None
        if "polygon" in spec:
            mask = polygons_to_mask(spec["polygon"], height, width)
        elif "rle" in spec:
            mask = to_binary_mask(spec["rle"], height, width, name="segmentation RLE")
        if (mask is None or not mask.any()) and spec.get("bbox") is not None:
            mask = coco_bbox_to_mask(spec["bbox"], height, width)
        return mask
    if isinstance(spec, list) and spec and isinstance(spec[0], list):
        spec = np.asarray(spec)
    return to_binary_mask(spec, height, width, name="region")


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Fill COCO polygons (each a flat `[x0, y0, x1, y1, ...]` list of >= 3 points) into an HxW mask.

    Raises:
        ValueError: a polygon with fewer than 3 points, an odd number of coordinates, non-finite ones, or
            points farther than one image size outside the image (garbage, and slow to fill).
    """
    import cv2

    mask = np.zeros((height, width), dtype=np.uint8)
    shapes = []
    for index, polygon in enumerate(polygons):
        try:
            points = np.asarray(polygon, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"segmentation polygon {index} must be a flat list of numbers") from None
        if points.size < 6 or points.size % 2 or not np.isfinite(points).all():
            raise ValueError(f"segmentation polygon {index} must hold >= 3 finite (x, y) points, got {points.size} "
                             "values")
        xy = points.reshape(-1, 2)  # (P, 2) x, y
        low, high = xy.min(0), xy.max(0)
        if low[0] < -width or low[1] < -height or high[0] > 2 * width or high[1] > 2 * height:
            raise ValueError(f"segmentation polygon {index} reaches far outside the {width}x{height} (WxH) image "
                             f"(x {low[0]:g}..{high[0]:g}, y {low[1]:g}..{high[1]:g}); accepted: points within one "
                             "image size of it")
        shapes.append(np.round(xy).astype(np.int32))
    cv2.fillPoly(mask, shapes, 1)
    return mask


def coco_bbox_to_mask(bbox: Sequence[float], height: int, width: int) -> np.ndarray:
    """A COCO box `[x, y, w, h]` as a mask (`masks.box_to_mask` of its corners)."""
    values = np.asarray(bbox, dtype=np.float64).reshape(-1)
    if values.size != 4:
        raise ValueError(f"bbox must be [x, y, w, h], got {list(bbox)!r}")
    x, y, w, h = values.tolist()
    return to_binary_mask((x, y, x + w, y + h), height, width, name="bbox")


def prepare_unit(tasks: Sequence[CaptionTask], processor) -> PreparedUnit:
    """Decode the unit's images (each once) and masks, and run the processor on the good tasks as one batch.

    A task the processor refuses is found by retrying the tasks one by one and is reported in
    `failed`; the others are batched again.
    """
    images: dict[str, np.ndarray | str] = {}
    items, good, failed = [], [], []
    for task in tasks:
        if task.problem is not None:
            failed.append((task, task.problem))
            continue
        try:
            if task.image not in images:
                try:
                    images[task.image] = load_image(task.image, name="image")
                except ValueError as exc:
                    images[task.image] = str(exc)
            image = images[task.image]
            if isinstance(image, str):
                raise ValueError(image)
            height, width = image.shape[:2]
            masks = [decode_region(spec, height, width) for spec in task.regions]
        except (ValueError, TypeError) as exc:
            failed.append((task, _message(exc)))
            continue
        items.append({"image": image, "masks": masks, "question": task.question})
        good.append(task)
    if not items:
        return PreparedUnit(tasks=[], inputs=None, failed=failed)
    try:
        inputs = processor(items)
    except (ValueError, TypeError):
        kept_items, kept_tasks = [], []
        for item, task in zip(items, good):
            try:
                processor([item])
            except (ValueError, TypeError) as exc:
                failed.append((task, _message(exc)))
                continue
            kept_items.append(item)
            kept_tasks.append(task)
        good = kept_tasks
        inputs = processor(kept_items) if kept_items else None
    return PreparedUnit(tasks=good, inputs=dict(inputs) if inputs is not None else None, failed=failed)


def _message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())
