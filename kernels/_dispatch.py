"""Backend choice with stated reasons.

Every public op lists its candidate backends in priority order. Each candidate says *why not* for a
given call (an empty list means it can run). `choose` picks:

- mode `auto`: the first candidate with no reasons; falling back past a candidate is logged once
  at debug level;
- mode `triton` / `torch`: the first candidate of that family that can run;
- mode `<backend name>`: exactly that candidate.

A forced choice that cannot run raises `BackendUnavailableError` listing every candidate's reasons.
Modes that name neither a family nor one of the op's backends are an error too, so a typo in
`PIXELREFER_FAST_KERNELS` never silently means `auto`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._runtime import MODES, current_mode

logger = logging.getLogger("pixelrefer_kernels")

FAMILIES = ("triton", "torch", "external")


class BackendUnavailableError(RuntimeError):
    """A forced kernel path cannot run these inputs; the message lists every candidate's reasons."""


@dataclass(frozen=True)
class Backend:
    """One way to run an op.

    Attributes:
        name: short unique name within the op (`"triton"`, `"torch"`, `"sdpa"`, ...).
        family: `"triton"` (our kernels), `"torch"` (plain PyTorch, the reference family) or
            `"external"` (optional third-party libraries such as flash-attn or xformers).
        reasons: called with the op's inputs; returns why this backend cannot run them.
        run: the implementation, called with the same inputs.
    """

    name: str
    family: str
    reasons: Callable[..., list[str]]
    run: Callable[..., object]


def no_reasons(*args, **kwargs) -> list[str]:
    """The `reasons` of a backend that runs any input (the torch reference paths)."""
    return []


_local = threading.local()
_logged_fallbacks: set[tuple[str, str, str]] = set()


def _record(op: str, backend: str) -> None:
    history = getattr(_local, "last", None)
    if history is None:
        history = _local.last = {}
    history[op] = backend
    _local.last_any = backend


def last_backend(op: str | None = None) -> str | None:
    """Name of the backend that ran the last dispatched call in this thread (of `op` if given)."""
    if op is None:
        return getattr(_local, "last_any", None)
    return getattr(_local, "last", {}).get(op)


def _format_reasons(op: str, mode: str, table: list[tuple[str, list[str]]]) -> str:
    lines = [f"{op}: kernel path {mode!r} cannot run these inputs. Candidates:"]
    for name, reasons in table:
        lines.append(f"  - {name}: " + ("; ".join(reasons) if reasons else "available (not selected by this mode)"))
    return "\n".join(lines)


def choose(op: str, backends: Sequence[Backend], *args, **kwargs) -> Backend:
    """Pick the backend for one call of `op` (see the module docstring) and record it."""
    mode = current_mode()
    names = [b.name for b in backends]
    if mode not in MODES and mode not in names:
        raise BackendUnavailableError(
            f"{op}: unknown kernel mode {mode!r} (from force() or PIXELREFER_FAST_KERNELS); "
            f"accepted: {', '.join(MODES)} or one of this op's backends: {', '.join(names)}"
        )
    table: list[tuple[str, list[str]]] = []
    for backend in backends:
        if mode == "auto" or mode == backend.name or mode == backend.family:
            reasons = backend.reasons(*args, **kwargs)
            table.append((backend.name, reasons))
            if not reasons:
                if mode == "auto" and len(table) > 1:
                    _log_fallback(op, backend.name, table[:-1])
                _record(op, backend.name)
                return backend
        else:
            table.append((backend.name, [f"not selected in mode {mode!r}"]))
    if mode != "auto":
        # List the real reasons of every candidate, so the user sees what each one lacks.
        table = [(b.name, b.reasons(*args, **kwargs) or ["available (not selected by this mode)"]) for b in backends]
    raise BackendUnavailableError(_format_reasons(op, mode, table))


def _log_fallback(op: str, chosen: str, refused: list[tuple[str, list[str]]]) -> None:
    for name, reasons in refused:
        key = (op, name, chosen)
        if key not in _logged_fallbacks:
            _logged_fallbacks.add(key)
            logger.debug("%s: %s not used (%s); running %s", op, name, "; ".join(reasons), chosen)


def dispatch(op: str, backends: Sequence[Backend], *args, **kwargs):
    """Choose a backend for this call and run it."""
    return choose(op, backends, *args, **kwargs).run(*args, **kwargs)
