"""Caption tasks from annotation files: COCO-format JSON or JSON Lines records.

A `CaptionTask` is one output row to be: one annotation (COCO) or one record (JSON Lines), with the
image it refers to, its region specs (undecoded; workers decode them) and its question.

COCO (`{"images": [...], "annotations": [...]}`): one task per annotation, in file order. The region
is the annotation's `segmentation` (polygons, compressed RLE or uncompressed RLE; crowd annotations
carry RLE and are captioned like the others); an annotation whose `segmentation` is missing, null or
empty, or decodes to an empty mask, uses its `bbox` `[x, y, w, h]` instead. The image is `images_dir / file_name`.

JSON Lines: one task per line, `{"image": path, "regions": [...], "question": ..., "id": ...,
"image_id": ...}`; `regions` holds the region forms the processor accepts that survive JSON (COCO
RLE dicts, boxes `[x0, y0, x1, y1]`, nested lists of 0/1 rows) or `{"polygon": [[x, y, ...], ...]}`;
`question` defaults to the command's question, `id` to the line number (1-based), `image_id` to
the image path. A relative `image` is read under `images_dir`. Several regions in one record are
one prompt about all of them (one `<region>` each).

Validation here is about the file's structure (a clear `ValueError` naming the file and entry);
problems of one record's content (missing image, undecodable mask) become that record's error row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_QUESTION = "Please describe <region> in detail."


@dataclass(frozen=True)
class CaptionTask:
    """One row to produce.

    Attributes:
        annotation_id: the row's key (COCO annotation id, or the record's id), as a string.
        image_id: COCO image id or the record's image id, as a string.
        image: the image file path.
        regions: the region specs, undecoded (`region_spec` forms), one per `<region>`.
        question: the question, one `<region>` per region.
        problem: a structural problem found while reading (the row becomes an error row), else None.
    """

    annotation_id: str
    image_id: str
    image: str
    regions: tuple = field(default=())
    question: str = DEFAULT_QUESTION
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"annotation_id": self.annotation_id, "image_id": self.image_id, "image": self.image,
                "regions": list(self.regions), "question": self.question, "problem": self.problem}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionTask:
        return cls(annotation_id=data["annotation_id"], image_id=data["image_id"], image=data["image"],
                   regions=tuple(data["regions"]), question=data["question"], problem=data["problem"])


def read_tasks(annotations: str | Path, images_dir: str | Path, *, question: str = DEFAULT_QUESTION,
               limit: int | None = None) -> list[CaptionTask]:
    """The tasks of an annotation file, in file order (the first `limit` when given).

    Args:
        annotations: a COCO JSON file (`.json`) or a JSON Lines file (`.jsonl`/`.ndjson`, or any
            file whose first non-blank character is not `{"` of a COCO object).
        images_dir: the folder the images' relative paths are read under.
        question: the question of COCO annotations and of records without their own.
        limit: keep the first `limit` tasks.

    Raises:
        ValueError: unreadable JSON, a COCO file without `annotations`/`images` lists, duplicate
            annotation ids, a question without exactly one `<region>` (COCO), `limit < 1`.
        FileNotFoundError: the annotation file or the images folder does not exist.
    """
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"--annotations: file not found: {path}")
    images_root = Path(images_dir)
    if not images_root.is_dir():
        raise FileNotFoundError(f"--images: folder not found: {images_root}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        tasks = _read_jsonl(path, images_root, question)
    else:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"--annotations: {path} is not valid JSON ({exc}); JSON Lines files need a .jsonl "
                             "suffix") from None
        tasks = _read_coco(data, path, images_root, question)
    seen: set[str] = set()
    for task in tasks:
        if task.annotation_id in seen:
            raise ValueError(f"--annotations: {path}: annotation id {task.annotation_id!r} appears twice; ids "
                             "must be unique (they are the resume keys)")
        seen.add(task.annotation_id)
    return tasks[:limit] if limit is not None else tasks


def _read_coco(data: Any, path: Path, images_root: Path, question: str) -> list[CaptionTask]:
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list) \
            or not isinstance(data.get("images"), list):
        raise ValueError(f"--annotations: {path} is not a COCO file: expected an object with 'images' and "
                         "'annotations' lists")
    if question.count("<region>") != 1:
        raise ValueError(f"--question must contain exactly one '<region>' for a COCO file (one annotation per "
                         f"prompt), got {question!r}")
    files: dict[str, str] = {}
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not _is_key(image.get("id")) \
                or not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise ValueError(f"--annotations: {path}: images[{index}] needs an 'id' (an integer or a string) and a "
                             "'file_name' (a non-empty string)")
        files[str(image["id"])] = str(images_root / image["file_name"])
    tasks = []
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not _is_key(ann.get("id")) or not _is_key(ann.get("image_id")):
            raise ValueError(f"--annotations: {path}: annotations[{index}] needs an 'id' and an 'image_id' (each an "
                             "integer or a string)")
        image_id = str(ann["image_id"])
        image = files.get(image_id)
        region, problem = _coco_region(ann)
        if image is None:
            image, problem = "", f"image_id {image_id} is not listed in 'images'"
        tasks.append(CaptionTask(annotation_id=str(ann["id"]), image_id=image_id, image=image,
                                 regions=(region,) if region is not None else (), question=question,
                                 problem=problem))
    return tasks


def _is_key(value: Any) -> bool:
    """COCO ids are integers (strings accepted): the resume keys and the image links are their text."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _coco_region(ann: dict) -> tuple[Any, str | None]:
    """The annotation's region spec: its segmentation when usable, else `{"bbox": ...}`."""
    segmentation, bbox = ann.get("segmentation"), ann.get("bbox")
    fallback = {"bbox": bbox} if bbox is not None else {}
    if segmentation:  # polygons (list of lists) or an RLE dict
        if isinstance(segmentation, dict):
            return {"rle": segmentation, **fallback}, None
        if isinstance(segmentation, list):
            return {"polygon": segmentation, **fallback}, None
        return None, f"segmentation must be a list of polygons or an RLE dict, got {type(segmentation).__name__}"
    if bbox is None:
        return None, "the annotation has neither a segmentation nor a bbox"
    return fallback, None


def _read_jsonl(path: Path, images_root: Path, question: str) -> list[CaptionTask]:
    tasks = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--annotations: {path}, line {line_number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ValueError(f"--annotations: {path}, line {line_number}: a record must be a JSON object")
        image = record.get("image")
        regions = record.get("regions", [])
        problem = None
        if not isinstance(image, str) or not image:
            problem, image = "the record has no 'image' path", ""
        elif not isinstance(regions, list) or not regions:
            problem = "'regions' must be a non-empty list"
        key = str(record.get("id", line_number))
        tasks.append(CaptionTask(
            annotation_id=key,
            image_id=str(record.get("image_id", image)),
            image=str(images_root / image) if image else "",
            regions=tuple(regions) if isinstance(regions, list) else (),
            question=str(record.get("question") or question),
            problem=problem,
        ))
    return tasks
