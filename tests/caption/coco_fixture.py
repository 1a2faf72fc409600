"""A COCO-format caption dataset made from the demo photos, and the tiny checkpoint it is captioned with.

`make_coco_dataset(root)` writes shrunk copies of the demo photos (160 px wide, JPEG) under
`root/images` and `root/instances.json` with, in file order:

| id | image | region |
|---|---|---|
| 1 | 1.jpg | polygon (two parts) |
| 2 | 1.jpg | compressed RLE (pycocotools) |
| 3 | 1.jpg | bbox only (`segmentation: []`) |
| 4 | 1.jpg | crowd, uncompressed RLE |
| 5 | 8.jpg | polygon |
| 6 | 8.jpg | broken: an RLE whose runs do not add up to the image |
| 7 | 8.jpg | bbox only, no `segmentation` key |
| 8 | 2.jpg | polygon outside the image (an empty mask), with a bbox (falls back to the bbox) |
| 9 | missing.jpg | polygon on an image file that does not exist |

so ids 6 and 9 are error rows and the others captions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.model.fixtures import DEMO_DIR
from tests.model.tiny_checkpoint import make_tiny_checkpoint

ERROR_IDS = {"6", "9"}
ALL_IDS = [str(i) for i in range(1, 10)]
WIDTH = 160


def _shrunk(name: str, out: Path) -> tuple[int, int]:
    with Image.open(DEMO_DIR / name) as image:
        height = round(image.height * WIDTH / image.width)
        image.convert("RGB").resize((WIDTH, height), Image.BILINEAR).save(out, quality=90)
    return height, WIDTH


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.T.reshape(-1)  # column-major, as COCO
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0, *runs]
    return {"size": list(mask.shape), "counts": runs}


def make_coco_dataset(root: str | Path) -> tuple[Path, Path]:
    """Write the dataset (module docstring) under `root`; returns (annotation file, images folder)."""
    from pycocotools import mask as mask_utils

    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    sizes = {name: _shrunk(name, images / name) for name in ("1.jpg", "8.jpg", "2.jpg")}
    h1, w1 = sizes["1.jpg"]
    blob = np.zeros((h1, w1), dtype=np.uint8)
    blob[20:60, 30:100] = 1
    crowd = np.zeros((h1, w1), dtype=np.uint8)
    crowd[50:90, 75:150] = 1
    compressed = mask_utils.encode(np.asfortranarray(blob))
    compressed["counts"] = compressed["counts"].decode("ascii")
    data = {
        "images": [
            {"id": 10, "file_name": "1.jpg", "height": h1, "width": w1},
            {"id": 20, "file_name": "8.jpg", "height": sizes["8.jpg"][0], "width": WIDTH},
            {"id": 30, "file_name": "2.jpg", "height": sizes["2.jpg"][0], "width": WIDTH},
            {"id": 40, "file_name": "missing.jpg", "height": 100, "width": 100},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "iscrowd": 0, "bbox": [5, 5, 50, 40],
             "segmentation": [[5, 5, 55, 6, 50, 45, 8, 40], [100, 50, 130, 50, 120, 75]]},
            {"id": 2, "image_id": 10, "iscrowd": 0, "bbox": [30, 20, 70, 40], "segmentation": compressed},
            {"id": 3, "image_id": 10, "iscrowd": 0, "bbox": [75, 10, 60, 45], "segmentation": []},
            {"id": 4, "image_id": 10, "iscrowd": 1, "bbox": [75, 50, 75, 40], "segmentation": _uncompressed_rle(crowd)},
            {"id": 5, "image_id": 20, "iscrowd": 0, "bbox": [15, 15, 75, 50],
             "segmentation": [[15, 15, 90, 20, 85, 65, 20, 60]]},
            {"id": 6, "image_id": 20, "iscrowd": 1, "bbox": [0, 0, 10, 10],
             "segmentation": {"size": [sizes["8.jpg"][0], WIDTH], "counts": [5, 7, 3]}},
            {"id": 7, "image_id": 20, "iscrowd": 0, "bbox": [50, 25, 60, 50]},
            {"id": 8, "image_id": 30, "iscrowd": 0, "bbox": [20, 20, 45, 30],
             "segmentation": [[-50, -50, -40, -50, -40, -40]]},
            {"id": 9, "image_id": 40, "iscrowd": 0, "bbox": [1, 1, 20, 20], "segmentation": [[1, 1, 20, 1, 20, 20]]},
        ],
    }
    annotations = root / "instances.json"
    annotations.write_text(json.dumps(data))
    return annotations, images


def make_caption_checkpoint(directory: str | Path, variant: str = "full") -> Path:
    """The tiny random checkpoint with deterministic k-means init (same tokens on every call). Untied
    embeddings and seed 2: the tied tiny model only ever answers newlines (empty captions)."""
    return make_tiny_checkpoint(directory, variant, seed=2, tie_word_embeddings=False,
                                config_overrides={"kmeans_init": "deterministic"})
