"""pixelrefer_kernels: tensors in, tensors out.

Custom Triton kernels for PixelRefer's hot spots, each beside a plain PyTorch reference (also the CPU
path) and a dispatcher that says why it picked a backend. See ``README.md`` in this folder for the
shape vocabulary and the op table, and ``python -m pixelrefer_kernels.info`` for what runs here.

Public ops are loaded on first access, so ``import pixelrefer_kernels`` is cheap and never touches
CUDA.
"""

from __future__ import annotations

import importlib

from ._dispatch import Backend, BackendUnavailableError, last_backend
from ._runtime import clear_probe_cache, current_mode, force, has_flash_attn, has_triton, has_xformers, interpret_mode

__version__ = "0.1.0"

# public name -> submodule that defines it
_OPS = {
    "box_pos_coefficients": "region_pool",
    "region_pool": "region_pool",
    "region_pool_ref": "region_pool",
    "kmeans": "kmeans",
    "kmeans_ref": "kmeans",
    "kmeans_init_indices": "kmeans",
    "varlen_attention": "attention",
    "varlen_attention_ref": "varlen_attention",
    "object_infusion": "infusion",
    "object_infusion_ref": "infusion",
    "InfusionWeights": "infusion",
    "layer_norm": "layer_norm",
}

# submodules whose dispatchers ``python -m pixelrefer_kernels.info`` reports
OP_MODULES = ("region_pool", "kmeans", "attention", "infusion", "layer_norm")

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "clear_probe_cache",
    "current_mode",
    "force",
    "has_flash_attn",
    "has_triton",
    "has_xformers",
    "interpret_mode",
    "last_backend",
    *_OPS,
]


def __getattr__(name: str):
    module = _OPS.get(name)
    if module is None:
        raise AttributeError(f"module 'pixelrefer_kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_OPS))
