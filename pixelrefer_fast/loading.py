"""A checkpoint folder's model and processor, loaded for inference: what the commands and the
captioning and serving jobs share."""

from __future__ import annotations

from typing import Any


def load_model_and_processor(model_dir: str, *, device: str | None = None, dtype: str = "auto"):
    """`(model, processor)` of a checkpoint folder: the model in eval mode on `device` (default: cuda
    when present, else cpu) in `dtype` (`"auto"`: the checkpoint's), and its processor."""
    import torch

    from .modeling_pixelrefer_fast import load_pretrained
    from .processing_pixelrefer_fast import PixelReferFastProcessor

    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device != "cpu":
        kwargs["device_map"] = device
    model = load_pretrained(model_dir, **kwargs)
    model.eval()
    return model, PixelReferFastProcessor.from_pretrained(model_dir)
