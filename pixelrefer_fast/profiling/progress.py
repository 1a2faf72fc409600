"""Progress inside a sweep point: which stage runs, and which of its calls.

The measuring code reports through two calls, `stage_started(name)` (`stages`) and
`call_done(index, total, warmup)` (`measure.time_stage`); they do nothing unless a listener is
installed with `listening(callback)` (the runner's progress bar). The listener is a context
variable, so concurrent profiles in other threads do not see each other's progress.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

# callback(stage, done_calls, total_calls): total counts warm-up and timed calls
Listener = Callable[[str, int, int], None]

_listener: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("pixelrefer_profile_progress", default=None)
_stage: contextvars.ContextVar[str] = contextvars.ContextVar("pixelrefer_profile_stage", default="")


@contextlib.contextmanager
def listening(callback: Listener) -> Iterator[None]:
    """Send the progress of the block's stages to `callback(stage, done, total)`."""
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)


def stage_started(name: str) -> None:
    """The stage `name` begins (no call done yet)."""
    _stage.set(name)
    callback = _listener.get()
    if callback is not None:
        callback(name, 0, 0)


def call_done(done: int, total: int, stage: str | None = None) -> None:
    """`done` of the stage's `total` calls (warm-up included) have finished; `stage` names it when
    several stages run in one call (the forward's stages), else the last started."""
    callback = _listener.get()
    if callback is not None:
        callback(_stage.get() if stage is None else stage, done, total)


__all__ = ["Listener", "call_done", "listening", "stage_started"]
