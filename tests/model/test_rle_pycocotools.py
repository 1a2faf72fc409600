"""Cross-check our COCO RLE decoder against pycocotools (skipped where pycocotools is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from pixelrefer_fast.masks import decode_rle
from tests.model.test_masks import runs_of

mask_utils = pytest.importorskip("pycocotools.mask")


@pytest.mark.parametrize(
    "height, width, density",
    [pytest.param(1, 1, 0.5, id="1x1"), pytest.param(37, 53, 0.3, id="odd"), pytest.param(120, 90, 0.9, id="dense"),
     pytest.param(64, 64, 0.0, id="empty"), pytest.param(33, 17, 1.0, id="full")],
)
def test_compressed_and_uncompressed_counts_match_pycocotools(height, width, density):
    rng = np.random.default_rng(height * 1000 + width)
    # Blobs rather than salt-and-pepper noise, so runs of many lengths occur (long runs use more 6-bit chunks).
    mask = (rng.random((height, width)) < density).astype(np.uint8)
    if 0 < density < 1:
        mask[height // 4 : 3 * height // 4, width // 3 : width // 2 + 1] = 1
    encoded = mask_utils.encode(np.asfortranarray(mask))
    np.testing.assert_array_equal(decode_rle(encoded), mask_utils.decode(encoded))
    np.testing.assert_array_equal(decode_rle({**encoded, "counts": encoded["counts"].decode("ascii")}), mask)
    runs = mask_utils.frPyObjects({"size": [height, width], "counts": runs_of(mask)}, height, width)
    np.testing.assert_array_equal(mask_utils.decode(runs), mask)
    np.testing.assert_array_equal(decode_rle({"size": [height, width], "counts": runs_of(mask)}), mask)

