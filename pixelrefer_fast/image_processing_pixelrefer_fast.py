"""Image processor of PixelRefer / PixelRefer-Lite (CPU only): resize, normalise, patchify.

Contract (docs/spec.md §2.1, §14.5, §14.8); every number matches the official `DAMOVLImageProcessor`:

- **Size.** `smart_resize` is the Qwen2-VL rule with factor `patch_size * ds` (ds = the image's
  downsampling: 1 for still images, crops and Lite views, `merge_size` = 2 for video frames). The
  per-call pixel budget is `int(max_pixels / (merge_size / ds)**2) // num_images`, where
  `num_images` is the number of images handed to one official processor call (1 for a still image,
  the number of crops for crops, the number of frames for a video).
- **Resize.** PIL bicubic on the uint8 RGB image, exactly what `transformers.image_transforms.resize`
  does for uint8 input (PIL antialiases when shrinking; a same-size resize is a copy).
- **Normalise.** `x / 255` computed in float64 then cast to float32 (transformers' `rescale`), then
  `(x - mean) / std` in float32 (transformers' `normalize`). Only 256 byte values exist per channel,
  so this is a per-channel lookup table: bit-exact and cheap.
- **Patchify.** `pixel_values [gh*gw, 3*p*p]`, each row a patch in (C, p, p) order; rows are raster
  for ds=1 and window-major for ds=2 (ds x ds windows in raster order, raster inside a window).
  `grid_thw = (1, gh, gw)`.

Images enter as HWC uint8 RGB numpy arrays (`to_rgb_array` converts PIL images, tensors, CHW
arrays and grey images; `load_image` reads files with OpenCV as the official `load_images` does).
Files and PIL images larger than `MAX_IMAGE_PIXELS` are refused before anything is decoded, and a
truncated JPEG or PNG is refused with the file named (decoders would pad it silently).
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"

# Official defaults (docs/spec.md §2.1): min_pixels is the class default 56*56; max_pixels comes from
# config.mm_max_length * spatial_merge_size**2 * patch_size**2 (8192 in the training scripts).
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_PATCH_SIZE = 14
DEFAULT_MERGE_SIZE = 2
DEFAULT_MM_MAX_LENGTH = 8192
MAX_ASPECT_RATIO = 200
# Largest image (height * width) decoded or converted: 2**27 pixels (about 11585 x 11585, a 384 MiB RGB
# array) is far above what the model sees (every image is resized to at most `max_pixels`) and below
# PIL's own decompression-bomb limit.
MAX_IMAGE_PIXELS = 2**27
# 16-bit PIL modes: OpenCV's imread keeps the high byte (v >> 8); PIL's convert("RGB") would saturate.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MM_MAX_LENGTH * DEFAULT_MERGE_SIZE**2 * DEFAULT_PATCH_SIZE**2,
) -> tuple[int, int]:
    """Target (height, width) of the Qwen2-VL resize rule, exactly as the official processor.

    Both sides become multiples of `factor`, the area lands in [min_pixels, max_pixels] (floor
    when shrinking, ceil when growing) and the aspect ratio is kept as well as the rounding allows.
    A side below `factor` is first scaled up so the short side equals `factor` (Python `round`);
    in that case the aspect-ratio check is skipped (the official check sits in an `elif`), so
    (7, 2000) gives (14, 4004) without an error (docs/spec.md §14.5).

    Args:
        height, width: source size in pixels (positive ints).
        factor: the size quantum, `patch_size * downsampling`.
        min_pixels, max_pixels: area bounds.

    Returns:
        (resized_height, resized_width), multiples of `factor`.

    Raises:
        ValueError: non-positive sizes, or an aspect ratio above 200 (when both sides >= factor).
    """
    if int(height) != height or int(width) != width or height <= 0 or width <= 0:
        raise ValueError(f"smart_resize: height and width must be positive integers, got ({height}, {width})")
    if height < factor or width < factor:
        scale = factor / min(height, width)
        width = round(scale * width)
        height = round(scale * height)
    elif max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"smart_resize: the aspect ratio must be at most {MAX_ASPECT_RATIO}, got "
            f"{max(height, width) / min(height, width):.1f} for a {height}x{width} image"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        if max_pixels < factor * factor:
            raise ValueError(f"smart_resize: the pixel budget max_pixels={max_pixels} is below one {factor}x{factor} "
                             f"patch ({factor * factor} pixels); raise max_pixels or process fewer images per call")
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
        if h_bar == 0 or w_bar == 0:
            raise ValueError(f"smart_resize: a {height}x{width} image fits the pixel budget max_pixels={max_pixels} "
                             f"only with a side below {factor} px; raise max_pixels")
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def check_image_size(height: int, width: int, *, name: str = "image") -> None:
    """Refuse an image above `MAX_IMAGE_PIXELS` (called before decoding or converting it).

    Raises:
        ValueError: height * width > MAX_IMAGE_PIXELS (the message gives both).
    """
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(f"{name}: the image is {height}x{width} = {height * width} pixels, above the limit of "
                         f"MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} (pixelrefer_fast.image_processing_pixelrefer_fast); "
                         "downscale it first")


def _pil_to_rgb_array(image: Image.Image, name: str) -> np.ndarray:
    width, height = image.size
    check_image_size(height, width, name=name)
    source = getattr(image, "filename", "") or ""
    where = f" (file {source!r})" if source else ""
    try:
        if image.mode in _SIXTEEN_BIT_MODES:
            grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)  # as OpenCV reads the file
            return np.repeat(grey[:, :, None], 3, axis=2)
        return np.asarray(image.convert("RGB"))
    except OSError as exc:  # a lazily opened file that is truncated or corrupt
        raise ValueError(f"{name}: could not decode the image{where} ({exc})") from exc


def to_rgb_array(image: Any, *, name: str = "image") -> np.ndarray:
    """Convert an image to a contiguous HWC uint8 RGB numpy array.

    Accepts a PIL image (converted with `Image.convert("RGB")`, as transformers 4.46's
    `convert_to_rgb`; transparency is dropped, not composited; 16-bit grey modes keep the high
    byte, as OpenCV reads such a file), or a numpy array / torch tensor of dtype uint8 shaped
    HxWx3, 3xHxW (channels-first is recognised when the first dim is 1, 3 or 4 and the last is
    not), HxWx1, HxWx4 (alpha dropped) or HxW (grey, replicated to 3 channels).

    Raises:
        TypeError: another type, or a non-uint8 array (convert floats yourself: the official
            pipeline only ever sees uint8 pixels).
        ValueError: an unsupported shape, an empty image, a PIL image above `MAX_IMAGE_PIXELS`, or
            a lazily opened PIL file that cannot be decoded (truncated).
    """
    if isinstance(image, Image.Image):
        array = _pil_to_rgb_array(image, name)
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
        if array.dtype != np.uint8:
            raise TypeError(
                f"{name}: pixel arrays must be uint8 RGB (0..255), got dtype {array.dtype}; "
                "convert it, e.g. (x * 255).round().astype(np.uint8)"
            )
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)  # CHW -> HWC
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        elif array.ndim == 3 and array.shape[2] == 1:
            array = np.repeat(array, 3, axis=2)
        elif array.ndim == 3 and array.shape[2] == 4:
            array = array[:, :, :3]
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(
                f"{name}: expected an HxWx3 (or 3xHxW, HxW) uint8 image, got shape {tuple(array.shape)}"
            )
    else:
        raise TypeError(
            f"{name}: expected a PIL image, a numpy array or a torch tensor, got {type(image).__name__}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: the image is empty (shape {tuple(array.shape)})")
    return np.ascontiguousarray(array)


def _jpeg_is_complete(data: bytes) -> bool:
    """True when a JPEG stream has its end-of-image marker after the first scan.

    Walks the marker segments up to the first start-of-scan (FFDA) and looks for the end-of-image
    marker (FFD9) after it; inside entropy-coded data a 0xFF byte is always followed by 0x00 or a
    restart marker, so FFD9 there is the real end. (An EXIF thumbnail's FFD9 sits before the scan.)
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            return data.find(b"\xff\xd9", pos + 2 + length) != -1
        pos += 2 + length
    return False


def _check_complete(data: bytes, name: str, what: str) -> None:
    """Refuse a truncated JPEG or PNG (`what`: how the message names it), which OpenCV would decode with the
    missing part filled in grey."""
    if data[:2] == b"\xff\xd8" and not _jpeg_is_complete(data):
        raise ValueError(f"{name}: the JPEG {what} is truncated or corrupt (no end-of-image marker after its image data)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-12:]:
        raise ValueError(f"{name}: the PNG {what} is truncated or corrupt (no IEND chunk at its end)")


def _header_size(data: bytes, name: str, what: str) -> tuple[int, int] | None:
    """(height, width) from the header of an encoded image's `data` (nothing decoded), or None when PIL
    cannot identify the format."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as pil:
                width, height = pil.size
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{name}: the {what} is too large to decode ({exc}); the limit here "
                         f"is MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} pixels") from exc
    except (OSError, ValueError):
        return None
    return height, width


def _decode_checked(data: bytes, name: str, what: str) -> np.ndarray:
    """The RGB pixels of an encoded image's `data`: header size and completeness checked first, then
    OpenCV's `imdecode` (the decoder and EXIF orientation of the official `cv2.imread`), PIL for the
    formats OpenCV cannot read."""
    import cv2

    if not data:
        raise ValueError(f"{name}: the {what} is empty")
    size = _header_size(data, name, what)
    if size is not None:
        check_image_size(*size, name=f"{name} ({what})")
    _check_complete(data, name, what)
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ValueError(f"{name}: OpenCV could not decode the {what} ({exc})") from exc
    if bgr is not None:
        return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    try:
        with Image.open(io.BytesIO(data)) as pil:
            return to_rgb_array(pil, name=name)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{name}: could not decode the {what} ({exc})") from exc


def decode_image_bytes(data: bytes, *, name: str = "image") -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, WebP, ...) held in memory to HWC uint8 RGB, with the checks and
    the decoder `load_image` uses for a file (so an upload gives the pixels of the same file on disk).

    Raises:
        ValueError: an image above `MAX_IMAGE_PIXELS` (refused from its header, before decoding), a
            truncated JPEG or PNG, or bytes no decoder reads (the message names `name`).
    """
    return _decode_checked(data, name, "image data")


def load_image(image: Any, *, name: str = "image") -> np.ndarray:
    """Load an image (a path, PIL image, array or tensor) as HWC uint8 RGB.

    A path's file is read once and decoded with OpenCV (`cv2.imdecode` + BGR->RGB: the pixels and EXIF
    orientation of the official `load_images`' `cv2.imread`); files OpenCV cannot read (e.g. GIF) fall back to PIL.
    The header's size is checked against `MAX_IMAGE_PIXELS` before decoding, and a truncated JPEG
    or PNG is refused.

    Raises:
        ValueError: a path that does not exist, is truncated, too large or cannot be decoded (the
            message names it).
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{name}: image file {str(path)!r} does not exist")
        return _decode_checked(path.read_bytes(), name, f"image file {str(path)!r}")
    return to_rgb_array(image, name=name)


@dataclass
class ProcessedImages:
    """Output of `PixelReferFastImageProcessor.preprocess`.

    Attributes:
        pixel_values: [sum(gh*gw), 3*p*p] float32, images packed in order.
        grid_thw: [I, 3] int64, (1, gh, gw) per image.
    """

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor


class PixelReferFastImageProcessor:
    """The official DAMO-VL image processor, vectorised (no per-patch Python loops).

    Args:
        min_pixels: lower area bound of `smart_resize` (official default 3136).
        max_pixels: upper area bound before the per-call division; the official value is
            `mm_max_length * merge_size**2 * patch_size**2` = 6,422,528 for mm_max_length 8192.
        patch_size: ViT patch side (14).
        merge_size: `spatial_merge_size` (2); sets the budget divisor `(merge_size/ds)**2`.
        image_mean, image_std: per-channel normalisation (0.5, 0.5, 0.5 each).
        rescale_factor: 1/255.
        resample: the PIL filter (3 = bicubic, the official value).

    Example:
        >>> proc = PixelReferFastImageProcessor()
        >>> out = proc.preprocess([np.zeros((480, 640, 3), np.uint8)], downsampling=1)
        >>> out.pixel_values.shape, out.grid_thw.tolist()
        (torch.Size([1564, 588]), [[1, 34, 46]])
    """

    image_processor_type = "PixelReferFastImageProcessor"

    def __init__(
        self,
        *,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MM_MAX_LENGTH * DEFAULT_MERGE_SIZE**2 * DEFAULT_PATCH_SIZE**2,
        patch_size: int = DEFAULT_PATCH_SIZE,
        merge_size: int = DEFAULT_MERGE_SIZE,
        image_mean: tuple[float, ...] | list[float] = (0.5, 0.5, 0.5),
        image_std: tuple[float, ...] | list[float] = (0.5, 0.5, 0.5),
        rescale_factor: float = 1 / 255,
        resample: int = int(Image.Resampling.BICUBIC),
    ) -> None:
        for arg, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels),
                           ("patch_size", patch_size), ("merge_size", merge_size)):
            if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
                    or not math.isfinite(value) or int(value) != value or value <= 0):
                raise ValueError(f"PixelReferFastImageProcessor: {arg} must be a positive integer, got {value!r}")
        if max_pixels < max(min_pixels, patch_size * patch_size):
            raise ValueError(f"PixelReferFastImageProcessor: max_pixels={max_pixels} must be at least min_pixels="
                             f"{min_pixels} and one {patch_size}x{patch_size} patch")
        if len(image_mean) != 3 or len(image_std) != 3 or any(s == 0 for s in image_std):
            raise ValueError(
                f"PixelReferFastImageProcessor: image_mean and image_std need 3 values (std non-zero), "
                f"got {list(image_mean)} and {list(image_std)}"
            )
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.patch_size = int(patch_size)
        self.merge_size = int(merge_size)
        self.image_mean = [float(m) for m in image_mean]
        self.image_std = [float(s) for s in image_std]
        self.rescale_factor = float(rescale_factor)
        try:
            self.resample = Image.Resampling(int(resample))
        except ValueError as exc:
            raise ValueError(
                f"PixelReferFastImageProcessor: resample must be a PIL filter id (0-5), got {resample!r}"
            ) from exc
        self._lut = self._normalisation_table()

    # ----------------------------------------------------------------------------- configuration
    @staticmethod
    def max_pixels_for(mm_max_length: int | None, merge_size: int = DEFAULT_MERGE_SIZE,
                       patch_size: int = DEFAULT_PATCH_SIZE) -> int:
        """The official `max_pixels` for a model config: `mm_max_length * merge**2 * patch**2`.

        A missing `mm_max_length` becomes `9477 // merge**2`, as in the official encoder loader.
        """
        length = mm_max_length if mm_max_length is not None else 9477 // merge_size**2
        return int(length) * merge_size**2 * patch_size**2

    def to_dict(self) -> dict[str, Any]:
        """The settings as saved in `preprocessor_config.json`."""
        return {
            "image_processor_type": self.image_processor_type,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "patch_size": self.patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor,
            "resample": int(self.resample),
        }

    @classmethod
    def from_dict(cls, config: dict[str, Any],
                  model_config: dict[str, Any] | None = None) -> PixelReferFastImageProcessor:
        """Build from a `preprocessor_config.json` dict and (optionally) the model's `config.json`.

        A dict we saved ourselves (`image_processor_type` == this class) is taken as is. Otherwise
        (the official vision encoder's file, or none) the official loader's overrides apply:
        `merge_size = config.spatial_merge_size`, `max_pixels` from `config.mm_max_length`;
        unknown keys (`min_tokens`, `max_tokens`, `do_resize`, ...) are ignored as the official
        class ignores them.
        """
        model_config = model_config or {}
        kwargs: dict[str, Any] = {}
        for key in ("min_pixels", "patch_size", "image_mean", "image_std", "rescale_factor", "resample"):
            if config.get(key) is not None:
                kwargs[key] = config[key]
        if config.get("image_processor_type") == cls.image_processor_type:
            for key in ("max_pixels", "merge_size"):
                if config.get(key) is not None:
                    kwargs[key] = config[key]
        else:
            merge = int(model_config.get("spatial_merge_size", DEFAULT_MERGE_SIZE))
            patch = int(kwargs.get("patch_size", DEFAULT_PATCH_SIZE))
            mm_max_length = model_config["mm_max_length"] if "mm_max_length" in model_config else (
                DEFAULT_MM_MAX_LENGTH if not model_config else None)
            kwargs["merge_size"] = merge
            kwargs["max_pixels"] = cls.max_pixels_for(mm_max_length, merge, patch)
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> PixelReferFastImageProcessor:
        """Read `preprocessor_config.json` and `config.json` from a checkpoint directory (both optional)."""
        directory = Path(directory)
        config = _read_json(directory / PREPROCESSOR_CONFIG_NAME)
        model_config = _read_json(directory / "config.json")
        return cls.from_dict(config, model_config)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write `preprocessor_config.json` into `directory` (created if needed); returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PREPROCESSOR_CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    # ----------------------------------------------------------------------------- sizing
    def pixel_budget(self, downsampling: int = 1, num_images: int = 1) -> int:
        """Per-image `max_pixels` of one official call: `int(max_pixels / (merge/ds)**2) // num_images`."""
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        return int(self.max_pixels / (self.merge_size / downsampling) ** 2) // int(num_images)

    def target_size(self, height: int, width: int, downsampling: int = 1, num_images: int = 1) -> tuple[int, int]:
        """Resized (height, width) of an image processed in a call of `num_images` images."""
        return smart_resize(height, width, factor=self.patch_size * downsampling,
                            min_pixels=self.min_pixels, max_pixels=self.pixel_budget(downsampling, num_images))

    # ----------------------------------------------------------------------------- pixels
    def _normalisation_table(self) -> np.ndarray:
        """(3, 256) float32: the normalised value of every byte, per channel."""
        # transformers' rescale multiplies in float64 then casts to float32; normalize then works in
        # float32. u8 * (2/255) - 1 would differ in the last bit for 111 of 256 values (docs/spec.md §14.8).
        scaled = (np.arange(256, dtype=np.float64) * self.rescale_factor).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        return np.ascontiguousarray(((scaled[None, :] - mean[:, None]) / std[:, None]).astype(np.float32))  # (3, 256)

    def resize(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        """PIL resize (bicubic) of an HWC uint8 image; the image itself when the size does not change."""
        if image.shape[0] == height and image.shape[1] == width:
            return image
        resized = Image.fromarray(image).resize((width, height), resample=self.resample)
        return np.asarray(resized)

    def patchify(self, image: np.ndarray, downsampling: int = 1) -> np.ndarray:
        """HWC (any dtype) with sides multiple of `patch*ds` -> [gh*gw, 3*p*p] rows (see module doc)."""
        p, ds = self.patch_size, downsampling
        height, width, channels = image.shape
        gh, gw = height // p, width // p
        if gh * p != height or gw * p != width or gh % ds or gw % ds:
            raise ValueError(f"patchify: size {height}x{width} is not a multiple of {p * ds}")
        grid = image.reshape(gh // ds, ds, p, gw // ds, ds, p, channels)
        grid = grid.transpose(0, 3, 1, 4, 6, 2, 5)  # (gh/ds, gw/ds, ds, ds, C, p, p)
        return np.ascontiguousarray(grid).reshape(gh * gw, channels * p * p)

    def process_image(self, image: np.ndarray, *, downsampling: int = 1, num_images: int = 1, name: str = "image"
                      ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One HWC uint8 RGB image -> (pixel_values [gh*gw, 3*p*p] float32, (1, gh, gw)).

        `name` describes the image in errors (e.g. the crop of a region, whose size the user never gave).
        """
        try:
            height, width = self.target_size(image.shape[0], image.shape[1], downsampling, num_images)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
        resized = self.resize(image, height, width)
        patches = self.patchify(resized, downsampling)  # (N, 3*p*p) uint8
        pp = self.patch_size * self.patch_size
        out = np.empty(patches.shape, dtype=np.float32)
        for channel in range(3):
            cols = slice(channel * pp, (channel + 1) * pp)
            out[:, cols] = self._lut[channel][patches[:, cols]]
        return out, (1, height // self.patch_size, width // self.patch_size)

    def preprocess(self, images: Any, *, downsampling: int = 1, num_images: int | None = None,
                   names: Sequence[str] | None = None) -> ProcessedImages:
        """Process the images of one official call.

        Args:
            images: one image or a list of them; an image is a PIL image, or a uint8 numpy array /
                torch tensor shaped HxWx3, 3xHxW, HxWx1, HxWx4 or HxW (see `to_rgb_array`); a 4-D
                uint8 array or tensor is a batch (N, H, W, 3) or (N, 3, H, W).
            downsampling: 1 (images, crops, Lite views) or `merge_size` (video frames, window-major).
            num_images: the budget divisor; defaults to the number of images (the official call size).
            names: one description per image for error messages (default `images[i]`).

        Returns:
            `ProcessedImages(pixel_values [sum(gh*gw), 3*p*p] float32, grid_thw [I, 3] int64)`.

        Raises:
            TypeError / ValueError: an image of another type, dtype or shape (named `images[i]`); a
                size the resize rule refuses (aspect ratio above 200, a budget below one patch).
        """
        if isinstance(downsampling, bool) or downsampling not in (1, self.merge_size):
            raise ValueError(f"downsampling must be 1 or merge_size={self.merge_size}, got {downsampling!r}")
        batch = _image_list(images)
        if names is None:
            names = [f"images[{i}]" for i in range(len(batch))]
        elif len(names) != len(batch):
            raise ValueError(f"names has {len(names)} entries for {len(batch)} images")
        if num_images is not None and (isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer))
                                       or num_images < 1):
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        count = len(batch) if num_images is None else int(num_images)
        rows, grids = [], []
        for image, name in zip(batch, names):
            array = to_rgb_array(image, name=name)
            values, grid = self.process_image(array, downsampling=downsampling, num_images=max(count, 1), name=name)
            rows.append(values)
            grids.append(grid)
        width = 3 * self.patch_size**2
        pixel_values = torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros(0, width)
        grid_thw = torch.tensor(grids, dtype=torch.long).reshape(-1, 3)
        return ProcessedImages(pixel_values=pixel_values, grid_thw=grid_thw)

    __call__ = preprocess

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict())})"


def _image_list(images: Any) -> list[Any]:
    """`preprocess`'s `images` as a list: a single image becomes [image], a 4-D batch its N images."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            return list(images)
        if images.ndim in (2, 3):
            return [images]
        raise ValueError(f"images: expected an image (2-D or 3-D array), a batch (4-D) or a list, got an array of "
                         f"shape {tuple(images.shape)}")
    if isinstance(images, (list, tuple)):
        return list(images)
    raise TypeError(f"images: expected a PIL image, a uint8 numpy array or torch tensor, or a list of them, got "
                    f"{type(images).__name__}")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"could not parse {str(path)!r} as JSON ({exc})") from exc
