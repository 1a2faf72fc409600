"""`triton` and `triton.language` for kernel modules, or stand-ins when Triton is absent.

Kernel files do `from ._triton import tl, triton` and define their `@triton.jit` kernels at module
level. Without Triton (a CPU install without the `triton` extra) the stand-ins let those modules
import; the dispatcher never picks a Triton backend then (`triton_reasons` says why), and calling a
stand-in kernel raises `ImportError`.
"""

from __future__ import annotations

from ._runtime import has_triton, interpret_mode

__all__ = ["tl", "triton", "TRITON_AVAILABLE", "loop_bound"]

TRITON_AVAILABLE = has_triton()


class _Missing:
    """Attribute chains resolve (`tl.constexpr`, `triton.Config`); decorators keep the function."""

    def __init__(self, path: str):
        self._path = path

    def __getattr__(self, name: str) -> "_Missing":
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(f"{self._path}.{name}")

    def __call__(self, *args, **kwargs):
        if self._path in ("triton.jit",) and len(args) == 1 and callable(args[0]) and not kwargs:
            return _unavailable_kernel(args[0].__name__)
        if self._path in ("triton.jit", "triton.autotune", "triton.heuristics"):
            return lambda fn: fn if isinstance(fn, _UnavailableKernel) else _unavailable_kernel(fn.__name__)
        return None


class _UnavailableKernel:
    def __init__(self, name: str):
        self.__name__ = name

    def __getitem__(self, grid):
        raise ImportError(f"Triton kernel {self.__name__} cannot run: triton is not installed (pip install 'pixelrefer-fast[triton]')")


def _unavailable_kernel(name: str) -> _UnavailableKernel:
    return _UnavailableKernel(name)


if TRITON_AVAILABLE:
    import triton
    import triton.language as tl
else:
    triton = _Missing("triton")
    tl = _Missing("tl")



# Decided at import, as Triton decides at decoration whether `@triton.jit` compiles or interprets.
_INTERPRETED = tl.constexpr(interpret_mode()) if TRITON_AVAILABLE else False


@triton.jit
def loop_bound(x):
    """`x` (a kernel int argument, a loaded offset, a program id) as a `range()` bound.

    Compiled: `x` itself. Interpreted: a Python int, because Triton 3.6's interpreter holds scalars
    as one-element arrays and takes `int()` of them at `range()` bounds, which numpy >= 2.4
    refuses (Triton >= 3.7 squeezes them first).
    """
    if _INTERPRETED:
        return x.handle.data.item() if hasattr(x, "handle") else x
    return x
