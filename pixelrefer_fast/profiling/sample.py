"""The built-in profiling sample: a synthetic scene and its object masks, drawn in code.

Nothing is downloaded or shipped as a photo: `sample_scene` draws a deterministic scene with PIL
(a shaded background with a fine texture, so crops are not flat, and filled shapes) and one binary
mask per object. The objects cycle through three sizes chosen around the crop-scale thresholds of
docs/spec.md §3 (areas in pixels of the full-resolution mask):

- `medium`: a 90 x 110 rounded rectangle, about 9,700 px (between 32 and 100 patches): the crop
  keeps its native resolution (full model); Lite shrinks it slightly (its threshold is 50 patches);
- `small`: a 40 x 40 ellipse, about 1,250 px (< 6,272 px = 32 patches): the crop is enlarged
  (`s >= 2`), which exercises the upscaling rule;
- `large`: a 260 x 200 ellipse, about 40,800 px (> 19,600 px = 100 patches): the crop is shrunk.

`sample_video` moves the same objects a few pixels per frame over a static background, so the
video token pruner (docs/spec.md §8) finds both static and changing blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE_CYCLE = ("medium", "small", "large")
# (width, height) in pixels of each size class at any image size (the crop rule uses absolute pixels)
_OBJECT_BOX = {"small": (40, 40), "medium": (90, 110), "large": (260, 200)}
_OBJECT_SHAPE = {"small": "ellipse", "medium": "rectangle", "large": "ellipse"}
_MIN_SIDE = 56
FRAME_SHIFT_PX = 2  # objects move this far right per video frame


@dataclass(frozen=True)
class SampleScene:
    """A drawn image (or video) and its region masks.

    Attributes:
        frames: `[T, H, W, 3]` uint8 RGB (T = 1 for an image).
        masks: `[R, H, W]` uint8 in {0, 1}, one per region, all on `mask_frames[r]`.
        mask_frames: frame index of each mask.
        sizes: size class of each region (`"small"`, `"medium"`, `"large"`).
    """

    frames: np.ndarray
    masks: np.ndarray
    mask_frames: tuple[int, ...]
    sizes: tuple[str, ...]

    @property
    def image(self) -> np.ndarray:
        """The first frame, `[H, W, 3]` uint8."""
        return self.frames[0]

    def masks_at(self, frame: int) -> np.ndarray:
        """The object masks on `frame`: those of frame 0 moved `2 * frame` px right (`[R, H, W]`)."""
        shift = min(FRAME_SHIFT_PX * frame, self.masks.shape[-1])
        moved = np.zeros_like(self.masks)
        moved[..., shift:] = self.masks[..., : self.masks.shape[-1] - shift]
        return moved


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < _MIN_SIDE:
            raise ValueError(f"sample {name} must be an integer >= {_MIN_SIDE} pixels, got {value!r}")


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = np.stack([90 + 80 * xs + 0 * ys, 110 + 60 * ys + 0 * xs, 150 - 50 * xs * ys], axis=-1)  # (H, W, 3)
    texture = rng.normal(0.0, 6.0, size=(height, width, 1)).astype(np.float32)
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def _object_layout(num_regions: int, width: int, height: int, rng: np.random.Generator):
    """Size class, box (left, top, right, bottom), shape and colour of each object."""
    layout = []
    for index in range(num_regions):
        size = SIZE_CYCLE[index % len(SIZE_CYCLE)]
        box_w, box_h = _OBJECT_BOX[size]
        box_w, box_h = min(box_w, width - 8), min(box_h, height - 8)
        left = int(rng.integers(4, width - box_w - 3))
        top = int(rng.integers(4, height - box_h - 3))
        shape = _OBJECT_SHAPE[size]
        colour = tuple(int(c) for c in rng.integers(20, 236, size=3))
        layout.append((size, (left, top, left + box_w, top + box_h), shape, colour))
    return layout


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    left, _, right, _ = box
    if shape == "ellipse":
        draw.ellipse(box, fill=fill)
    else:
        draw.rounded_rectangle(box, radius=max(2, (right - left) // 8), fill=fill)


def _render(background: np.ndarray, layout, shift: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    dx, dy = shift
    for _, (left, top, right, bottom), shape, colour in layout:
        _draw(draw, shape, (left + dx, top + dy, right + dx, bottom + dy), colour)
    return np.asarray(image)


def _masks(layout, width: int, height: int) -> np.ndarray:
    masks = np.zeros((len(layout), height, width), dtype=np.uint8)
    for index, (_, box, shape, _) in enumerate(layout):
        canvas = Image.new("L", (width, height), 0)
        _draw(ImageDraw.Draw(canvas), shape, box, 1)
        masks[index] = np.asarray(canvas)
    return masks


def sample_scene(num_regions: int = 3, width: int = 640, height: int = 480, *, seed: int = 0) -> SampleScene:
    """Draw the sample image with `num_regions` objects and their masks.

    Args:
        num_regions: objects (and masks), cycling medium, small, large; >= 1.
        width, height: image size in pixels (>= 56 each; objects are clipped to fit small images).
        seed: layout seed; the same arguments always give the same pixels.

    Returns:
        `SampleScene` with `frames [1, H, W, 3]` uint8 and `masks [R, H, W]` uint8 {0, 1}.
        Later objects may overlap earlier ones; each mask is the object's full shape.
    """
    return sample_video(1, num_regions, width, height, seed=seed)


def sample_video(num_frames: int, num_regions: int = 3, width: int = 640, height: int = 480, *, seed: int = 0) -> SampleScene:
    """Draw `num_frames` frames of the sample scene, the objects moving 2 px right per frame.

    The masks are drawn on frame 0 (`mask_frames` all 0), as the official video evaluation
    refers to each object on one annotated frame. Arguments as in `sample_scene`; `num_frames`
    >= 1.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    if isinstance(num_regions, bool) or not isinstance(num_regions, int) or num_regions < 1:
        raise ValueError(f"num_regions must be a positive integer, got {num_regions!r}")
    _check_size(width, height)
    rng = np.random.default_rng(seed)
    background = _background(width, height, rng)
    layout = _object_layout(num_regions, width, height, rng)
    frames = np.stack([_render(background, layout, (FRAME_SHIFT_PX * t, 0)) for t in range(num_frames)])  # (T, H, W, 3)
    return SampleScene(
        frames=frames,
        masks=_masks(layout, width, height),
        mask_frames=(0,) * num_regions,
        sizes=tuple(size for size, *_ in layout),
    )
