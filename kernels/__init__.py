"""pixelrefer_kernels: tensors in, tensors out.

Custom Triton kernels for PixelRefer's hot spots, each beside a plain PyTorch reference (also the CPU
path) and a dispatcher that says why it picked a backend. See `README.md` in this folder for the
shape vocabulary and the op table, and `python -m pixelrefer_kernels.info` for what runs here.

Importing never touches CUDA: Triton (when installed) is imported, backends are probed on first use.
Importing also registers the ops with `torch.library` (`torch.ops.pixelrefer.<op>`, see `library.py`).
The public names are bound here eagerly: an op's module shares the op's name (`region_pool`,
`kmeans`), and binding the function after the submodule import keeps `pixelrefer_kernels.kmeans`
the function whichever import runs first.
"""

from __future__ import annotations

from . import library  # noqa: F401  (registers torch.ops.pixelrefer.*; cheap, touches no device)
from ._dispatch import Backend, BackendUnavailableError, last_backend
from ._runtime import MODES, clear_probe_cache, current_mode, force, has_flash_attn, has_triton, has_xformers, interpret_mode
from .attention import varlen_attention
from .infusion import InfusionWeights, object_infusion, object_infusion_ref
from .kmeans import kmeans, kmeans_init_indices, kmeans_ref
from .region_pool import box_pos_coefficients, region_pool, region_pool_from_lists, region_pool_ref
from .varlen import varlen_attention_ref

__version__ = "0.1.0"

# submodules whose dispatchers `python -m pixelrefer_kernels.info` reports
OP_MODULES = ("region_pool", "kmeans", "attention", "infusion")

__all__ = [
    "MODES",
    "Backend",
    "BackendUnavailableError",
    "InfusionWeights",
    "box_pos_coefficients",
    "clear_probe_cache",
    "current_mode",
    "force",
    "has_flash_attn",
    "has_triton",
    "has_xformers",
    "interpret_mode",
    "kmeans",
    "kmeans_init_indices",
    "kmeans_ref",
    "last_backend",
    "object_infusion",
    "object_infusion_ref",
    "region_pool",
    "region_pool_from_lists",
    "region_pool_ref",
    "varlen_attention",
    "varlen_attention_ref",
]
