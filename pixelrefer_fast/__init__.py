"""pixelrefer_fast: PixelRefer and PixelRefer-Lite as fast drop-in Hugging Face models.

Importing the package registers both model types with transformers' auto classes, so
`AutoConfig`, `AutoModelForCausalLM`, `AutoModelForImageTextToText` and `AutoProcessor` load
the released checkpoints without `trust_remote_code`:

    import pixelrefer_fast
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("path/to/PixelRefer-2B", dtype="auto")

Importing never touches CUDA and works without triton or flash-attn (kernels load on first use).
The model and processor classes are loaded on first access of their names.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "PixelReferFastConfig": "configuration_pixelrefer_fast",
    "PixelReferFastLiteConfig": "configuration_pixelrefer_fast",
    "PixelReferFastVisionConfig": "configuration_pixelrefer_fast",
    "PixelReferFastForCausalLM": "modeling_pixelrefer_fast",
    "PixelReferFastLiteForCausalLM": "modeling_pixelrefer_fast",
    "PixelReferFastModel": "modeling_pixelrefer_fast",
    "PixelReferFastLiteModel": "modeling_pixelrefer_fast",
    "PixelReferFastPreTrainedModel": "modeling_pixelrefer_fast",
    "PixelReferFastInputs": "modeling_pixelrefer_fast",
    "PixelReferFastVisionEncoder": "modeling_vision",
    "PixelReferFastProjector": "modeling_projector",
    "PixelReferFastProcessor": "processing_pixelrefer_fast",
    "PixelReferItem": "processing_pixelrefer_fast",
    "PixelReferFastImageProcessor": "image_processing_pixelrefer_fast",
    "load_pretrained": "modeling_pixelrefer_fast",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pixelrefer_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def _register_auto_classes() -> None:
    """Register both model types with AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText and AutoProcessor."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    from .configuration_pixelrefer_fast import LITE_MODEL_TYPE, MODEL_TYPE, PixelReferFastConfig, PixelReferFastLiteConfig
    from .modeling_pixelrefer_fast import PixelReferFastForCausalLM, PixelReferFastLiteForCausalLM
    from .processing_pixelrefer_fast import PixelReferFastProcessor

    AutoConfig.register(MODEL_TYPE, PixelReferFastConfig, exist_ok=True)
    AutoConfig.register(LITE_MODEL_TYPE, PixelReferFastLiteConfig, exist_ok=True)
    AutoModelForCausalLM.register(PixelReferFastConfig, PixelReferFastForCausalLM, exist_ok=True)
    AutoModelForCausalLM.register(PixelReferFastLiteConfig, PixelReferFastLiteForCausalLM, exist_ok=True)
    AutoModelForImageTextToText.register(PixelReferFastConfig, PixelReferFastForCausalLM, exist_ok=True)
    AutoModelForImageTextToText.register(PixelReferFastLiteConfig, PixelReferFastLiteForCausalLM, exist_ok=True)
    AutoProcessor.register(PixelReferFastConfig, PixelReferFastProcessor, exist_ok=True)
    AutoProcessor.register(PixelReferFastLiteConfig, PixelReferFastProcessor, exist_ok=True)


_register_auto_classes()
