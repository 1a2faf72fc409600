"""Shared fixtures: a fixed seed per test and NaN poisoning of library allocations.

Poisoning: while a test runs, `torch.empty`/`torch.empty_like`/`Tensor.new_empty` called from
`pixelrefer_kernels` or `pixelrefer_fast` code return tensors filled with NaN (floating dtypes) or
a large sentinel (integer dtypes), so an output element a kernel forgot to write shows up as NaN or
garbage instead of a lucky zero.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

_LIBRARY_PREFIXES = ("pixelrefer_kernels", "pixelrefer_fast")
_INT_SENTINEL = -(2**30) + 7


def _called_from_library() -> bool:
    frame = sys._getframe(2)
    name = frame.f_globals.get("__name__", "")
    return name.startswith(_LIBRARY_PREFIXES)


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() or t.is_complex():
        t.fill_(float("nan"))
    elif t.dtype == torch.bool:
        t.fill_(True)
    elif t.dtype in (torch.uint8,):
        t.fill_(0xA5)
    else:
        t.fill_(_INT_SENTINEL if t.element_size() >= 4 else -7)
    return t


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


@pytest.fixture(autouse=True)
def nan_poison(monkeypatch):
    """Poison uninitialised library allocations (see the module docstring)."""
    real_empty, real_empty_like, real_new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return _poison(t) if _called_from_library() else t

    def empty_like(*args, **kwargs):
        t = real_empty_like(*args, **kwargs)
        return _poison(t) if _called_from_library() else t

    def new_empty(self, *args, **kwargs):
        t = real_new_empty(self, *args, **kwargs)
        return _poison(t) if _called_from_library() else t

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)
    monkeypatch.setattr(torch.Tensor, "new_empty", new_empty)
    yield


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


def pytest_report_header(config):
    return f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')} torch={torch.__version__} cuda={torch.cuda.is_available()}"
