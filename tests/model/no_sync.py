"""`forbid_device_reads`: make every read of device data back to the host raise, on the CPU too.

On a GPU a host read of a device tensor (`item`, `int()`, `bool()`, `tolist`, `nonzero`,
`numpy`, a data-dependent output size) blocks the CPU until the device drains. On the CPU nothing
blocks, so the guard tracks which tensors *would* live on the device: the seeds (the model's parameters
and buffers, the checked batch's device tensors, `input_ids` and the attention mask) and everything
computed from them (a `TorchDispatchMode` propagates the mark through every op). Reading a marked
tensor raises `DeviceRead`; host facts (CPU metadata computed before the guard) stay readable.

The kernel ops (`pixelrefer_kernels`) are opaque here: their CPU references are not the GPU path
(the Triton launchers take every size from the host; the GPU test checks them with
`torch.cuda.set_sync_debug_mode("error")`), so reads inside them are allowed and their outputs marked.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

# ops whose result the host must read (a sync on a GPU)
_READ_OPS = {
    "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_dim",
    "aten::unique_consecutive", "aten::equal", "aten::is_nonzero", "aten::allclose", "aten::argwhere",
    "aten::nonzero_static",
}
# opaque kernel entry points, by the module that calls them
_KERNEL_CALLS = {
    "pixelrefer_fast.modeling_region": ("region_pool", "kmeans"),
    "pixelrefer_fast.modeling_infusion": ("object_infusion",),
    "pixelrefer_fast.modeling_vision": ("varlen_attention",),
}


class DeviceRead(RuntimeError):
    """A host read of device data inside `forbid_device_reads`."""


class _Tracker(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.marked = WeakIdKeyDictionary()
        self.opaque = 0

    def mark(self, tensor) -> None:
        if isinstance(tensor, torch.Tensor):
            self.marked[tensor] = True

    def is_marked(self, tensor) -> bool:
        return isinstance(tensor, torch.Tensor) and tensor in self.marked

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = torch.utils._pytree.tree_leaves((args, kwargs))
        tainted = any(self.is_marked(t) for t in flat)
        name = func._schema.name
        if tainted and not self.opaque:
            bool_index = name == "aten::index" and any(
                isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in torch.utils._pytree.tree_leaves(args[1:])
            )
            repeat = name == "aten::repeat_interleave" and "output_size" not in kwargs
            if name in _READ_OPS or bool_index or repeat:
                raise DeviceRead(f"{name} reads device data back to the host")
        out = func(*args, **kwargs)
        if tainted:
            for t in torch.utils._pytree.tree_leaves(out):
                self.mark(t)
        return out


@contextlib.contextmanager
def forbid_device_reads(*seeds, modules=()):
    """Inside the block, a host read of the seeds or of anything computed from them raises `DeviceRead`.

    Args:
        seeds: tensors (or lists of tensors) that would live on the device.
        modules: `nn.Module` s whose parameters and buffers are seeds.
    """
    import importlib

    tracker = _Tracker()
    for seed in seeds:
        for t in seed if isinstance(seed, (list, tuple)) else (seed,):
            tracker.mark(t)
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            tracker.mark(t)

    def python_read(name):
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, **kwargs):
            if tracker.is_marked(self) and not tracker.opaque:
                raise DeviceRead(f"Tensor.{name} reads device data back to the host")
            return original(self, *args, **kwargs)

        return original, guarded

    def opaque(fn):
        def call(*args, **kwargs):
            tracker.opaque += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                tracker.opaque -= 1
            for t in torch.utils._pytree.tree_leaves(out):
                tracker.mark(t)
            return out

        return call

    patched = []
    for name in ("tolist", "numpy", "__array__", "cpu", "item", "__bool__", "__int__", "__float__", "__index__"):
        original, guarded = python_read(name)
        patched.append((torch.Tensor, name, original))
        setattr(torch.Tensor, name, guarded)
    for module_name, names in _KERNEL_CALLS.items():
        module = importlib.import_module(module_name)
        for name in names:
            if hasattr(module, name):
                original = getattr(module, name)
                patched.append((module, name, original))
                setattr(module, name, opaque(original))
    try:
        with tracker:
            yield tracker
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
