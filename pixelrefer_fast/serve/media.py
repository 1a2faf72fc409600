"""Media of a request: `data:` URLs and confined local files to images, masks and videos.

Every failure raises `APIError` (400) naming the request field, so a bad upload never reaches the
model. Images are decoded with the processor's own checks and decoder (`decode_image_bytes`: the header's
size is checked before decoding; OpenCV, as the official `load_images` reads files, so the pixels are
those `describe` gets from the same file); PNG alpha is read with PIL.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..image_processing_pixelrefer_fast import decode_image_bytes
from ..masks import to_binary_mask
from .errors import APIError, bad_request

ALPHA_MODES = ("RGBA", "LA", "PA")
VIDEO_SUFFIXES = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
                  "video/x-msvideo": ".avi"}


@dataclass
class DecodedImage:
    """`rgb`: `[H, W, 3]` uint8; `alpha`: `[H, W]` uint8 when the file has an alpha channel."""

    rgb: np.ndarray
    alpha: np.ndarray | None


def read_url(url: str, param: str, allow_dir: Path | None) -> tuple[bytes, str | None, Path | None]:
    """The bytes behind `url`: `(data, mime type or None, local path or None)`.

    `data:` URLs (base64 or percent-encoded) always; a `file://` URL or plain path only when the
    server allows a folder, and only inside it (symlinks resolved). Remote URLs are refused: the
    server never fetches.
    """
    if url.startswith("data:"):
        header, sep, payload = url[5:].partition(",")
        if not sep:
            raise bad_request("malformed data URL: no ',' between the header and the data", param)
        mime = header.split(";")[0] or None
        if header.endswith(";base64"):
            try:
                return base64.b64decode(payload, validate=True), mime, None
            except (binascii.Error, ValueError) as exc:
                raise bad_request(f"the data URL's base64 payload does not decode ({exc})", param) from exc
        return urllib.parse.unquote_to_bytes(payload), mime, None
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("http", "https", "ftp", "s3", "gs"):
        raise bad_request(f"{scheme} URLs are not fetched by this server; send the file as a data: URL", param)
    if allow_dir is None:
        raise bad_request("local files are disabled on this server (start it with --allow-local-files DIR); "
                          "send the file as a data: URL", param)
    raw = urllib.parse.unquote(urllib.parse.urlsplit(url).path) if scheme == "file" else url
    path = Path(raw)
    resolved = (allow_dir / path if not path.is_absolute() else path).resolve()
    if not resolved.is_relative_to(allow_dir):
        raise bad_request(f"local path {raw!r} is outside the folder this server allows", param)
    if not resolved.is_file():
        raise bad_request(f"local file {raw!r} does not exist", param)
    return resolved.read_bytes(), None, resolved


def decode_image(data: bytes, param: str) -> DecodedImage:
    """Decode an encoded image (PNG, JPEG, WebP, ...) to RGB, keeping the alpha channel if any.

    The RGB pixels come from `decode_image_bytes` (the size is checked from the header before anything is
    decoded; OpenCV decodes them as `describe` decodes the same file); the alpha channel, only when the
    header says there is one, from PIL.
    """
    try:
        rgb = decode_image_bytes(data, name=param)
        alpha = _alpha_channel(data)
    except (OSError, ValueError) as exc:
        raise bad_request(f"the image could not be decoded ({exc}); send PNG, JPEG or WebP", param) from exc
    return DecodedImage(rgb, alpha)


def _alpha_channel(data: bytes) -> np.ndarray | None:
    """`[H, W]` uint8 alpha of an encoded image whose mode carries one (a palette with transparency
    included), else None (then nothing is decoded)."""
    with Image.open(io.BytesIO(data)) as pil:
        if pil.mode in ALPHA_MODES:
            return np.asarray(pil.getchannel("A"))
        if pil.mode == "P" and "transparency" in pil.info:
            return np.asarray(pil.convert("RGBA").getchannel("A"))
    return None


def mask_from_png(url: str, height: int, width: int, param: str, allow_dir: Path | None) -> np.ndarray:
    """A `mask_png` region: any image the mask rules accept (inside = value > 0), sized like the image."""
    data, _, _ = read_url(url, param, allow_dir)
    try:
        with Image.open(io.BytesIO(data)) as pil:
            pil.load()
            return to_binary_mask(pil, height, width, name="mask_png")
    except (OSError, Image.DecompressionBombError) as exc:
        raise bad_request(f"the mask image could not be decoded ({exc})", param) from exc
    except (ValueError, TypeError) as exc:
        raise bad_request(str(exc), param) from exc


def mask_from_value(value, height: int, width: int, param: str) -> np.ndarray:
    """A `box` or `rle` region as an `[H, W]` uint8 {0, 1} mask."""
    try:
        return to_binary_mask(value, height, width, name=param)
    except (ValueError, TypeError) as exc:
        raise bad_request(str(exc), param) from exc


class VideoFile:
    """A video upload written to a temporary file (PyAV reads files); `close()` removes it."""

    def __init__(self, data: bytes, mime: str | None, local: Path | None, param: str):
        try:
            import av  # noqa: F401  (the video reader)
        except ImportError as exc:
            raise APIError(400, "video input needs PyAV on the server (pip install 'pixelrefer-fast[video]')",
                           param=param, code="video_unsupported") from exc
        self._owned = local is None
        if local is not None:
            self.path = local
            return
        fd, name = tempfile.mkstemp(prefix="pixelrefer-serve-", suffix=VIDEO_SUFFIXES.get(mime or "", ".mp4"))
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        self.path = Path(name)

    def close(self) -> None:
        if self._owned:
            self.path.unlink(missing_ok=True)
