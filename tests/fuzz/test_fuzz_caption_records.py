"""Property-based fuzzing of the captioning job's inputs (hypothesis), without a model: COCO files with
one drawn mutation (an annotation's `segmentation`, `bbox`, `id` or `image_id`, or an image entry's
`id` or `file_name`, replaced by any JSON value or removed), and JSON Lines files with one record's
`image`, `regions` (or one region), `question` or `id` mutated, through `read_tasks` and `prepare_unit`.

The job's rule (issue 11): a file whose structure is wrong stops the job with a `ValueError` naming
the file; inside a readable file, every annotation gets exactly one row. So `read_tasks` returns the
tasks or raises a `ValueError`, and `prepare_unit` accounts for each task once, prepared or failed
with a message, and never raises (a raise would end the worker and the job).
Settings and seed: `tests/fuzz/conftest.py`.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pixelrefer_fast.caption.prepare import prepare_unit
from pixelrefer_fast.caption.records import read_tasks
from pixelrefer_fast.image_processing_pixelrefer_fast import PixelReferFastImageProcessor
from pixelrefer_fast.masks import encode_rle
from pixelrefer_fast.processing_pixelrefer_fast import PixelReferFastProcessor
from tests.fuzz.strategies import json_values
from tests.model.fixtures import make_tiny_tokenizer, textured

HEIGHT, WIDTH = 30, 40


def coco_file() -> dict:
    """Two images, four annotations: a polygon, an uncompressed RLE, a bbox only, a crowd RLE."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[4:20, 6:30] = 1
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": HEIGHT, "width": WIDTH},
                   {"id": 2, "file_name": "b.png", "height": HEIGHT, "width": WIDTH}],
        "annotations": [
            {"id": 10, "image_id": 1, "segmentation": [[2, 2, 30, 4, 20, 25]], "bbox": [2, 2, 28, 23], "iscrowd": 0},
            {"id": 11, "image_id": 1, "segmentation": encode_rle(mask), "bbox": [6, 4, 24, 16], "iscrowd": 0},
            {"id": 12, "image_id": 2, "bbox": [1, 1, 10, 12], "iscrowd": 0},
            {"id": 13, "image_id": 2, "segmentation": encode_rle(1 - mask), "bbox": [0, 0, 40, 30], "iscrowd": 1},
        ],
    }


COCO = coco_file()
TARGETS = [("annotations", a, key) for a in range(4) for key in ("segmentation", "bbox", "id", "image_id")]
TARGETS += [("images", i, key) for i in range(2) for key in ("id", "file_name")]


JSONL = [
    {"image": "a.png", "regions": [[2, 3, 30, 20], {"polygon": [[1, 1, 20, 2, 10, 25]]}], "question": "Compare <region> and <region>.",
     "id": "r1"},
    {"image": "b.png", "regions": [COCO["annotations"][1]["segmentation"]], "id": "r2"},
    {"image": "b.png", "regions": [[[0, 1, 1], [1, 1, 0]]], "id": "r3"},
]
JSONL_TARGETS = [(r, key) for r in range(len(JSONL)) for key in ("image", "regions", "question", "id")]


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coco")
    for seed, name in enumerate(("a.png", "b.png")):
        Image.fromarray(textured(HEIGHT, WIDTH, seed=seed)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def processor():
    return PixelReferFastProcessor(make_tiny_tokenizer(), PixelReferFastImageProcessor(max_pixels=64 * 14 * 14 * 4),
                                   variant="full", mask_num=4)


@st.composite
def mutated_coco(draw) -> dict:
    data = copy.deepcopy(COCO)
    section, index, key = draw(st.sampled_from(TARGETS))
    entry = data[section][index]
    if draw(st.booleans()):
        entry.pop(key, None)
    else:
        entry[key] = draw(st.one_of(json_values, st.lists(st.lists(st.floats(-1e12, 1e12), max_size=8), max_size=3)))
    return data


@st.composite
def mutated_jsonl(draw) -> list[dict]:
    records = copy.deepcopy(JSONL)
    index, key = draw(st.sampled_from(JSONL_TARGETS))
    if draw(st.booleans()):
        records[index].pop(key, None)
    elif key == "regions" and draw(st.booleans()):  # one region replaced, the others kept
        records[index][key][0] = draw(json_values)
    else:
        records[index][key] = draw(json_values)
    return records


def check_one_row_each(tasks, processor) -> None:
    """`prepare_unit` accounts for every task once, prepared (in the batch) or failed with a message."""
    unit = prepare_unit(tasks, processor)
    prepared = [task.annotation_id for task in unit.tasks]
    failed = [task.annotation_id for task, _ in unit.failed]
    assert sorted(prepared + failed) == sorted(task.annotation_id for task in tasks)
    assert all(message.strip() for _, message in unit.failed)
    if unit.tasks:
        assert unit.inputs is not None and unit.inputs["input_ids"].shape[0] == len(unit.tasks)
        assert unit.inputs["region_token_counts"].numel() == sum(len(task.regions) for task in unit.tasks)


@given(mutated_coco())
def test_every_annotation_gets_one_row_or_the_file_is_refused(images_dir, processor, data):
    path = images_dir / "annotations.json"
    path.write_text(json.dumps(data))  # NaN and infinities as JSON's NaN / Infinity, which json reads
    try:
        tasks = read_tasks(path, images_dir)
    except ValueError as exc:
        assert str(path) in str(exc), exc
        return
    assert len(tasks) == len(data["annotations"])
    check_one_row_each(tasks, processor)


@given(mutated_jsonl())
def test_every_record_gets_one_row_or_the_file_is_refused(images_dir, processor, records):
    path = images_dir / "records.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records))
    try:
        tasks = read_tasks(path, images_dir)
    except ValueError as exc:
        assert str(path) in str(exc), exc
        return
    assert len(tasks) == len(records)
    check_one_row_each(tasks, processor)
