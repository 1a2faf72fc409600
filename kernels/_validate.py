"""Argument checks shared by the ops' public entry points.

Every check raises `TypeError` (wrong kind of object or dtype) or `ValueError` (wrong shape or
value) with a message that names the argument, says what was wrong and what is accepted. The checks
that read tensor values (finiteness, offsets) synchronise with the device once; public ops take
`validate=False` to skip them on a hot, already-validated path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNEL_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    value,
    *,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Check that `value` is a tensor with the given rank, dtype family and device."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.device.type == "meta":
        raise ValueError(
            f"{name} is on the meta device (shapes without data); the kernels read values: "
            "pass tensors on the CPU or a GPU"
        )
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {value.dtype}; accepted: {dtype_names(dtypes)}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} is on {value.device} but the other inputs are on {device}; move all inputs to one device")
    return value


def check_finite(name: str, value: torch.Tensor) -> None:
    """Raise if `value` holds NaN or inf (one device sync)."""
    if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
        bad = (~torch.isfinite(value)).nonzero()[0].tolist()
        raise ValueError(f"{name} contains NaN or inf (first at index {tuple(bad)}); accepted: finite values only")


def check_finite_screened(name: str, value: torch.Tensor) -> None:
    """`check_finite` behind a cheap screen: NaN and inf survive a sum, so one reduction (about a
    sixth of `isfinite(...).all()`'s cost) clears the usual finite case; a non-finite sum (NaN, inf,
    or a finite overflow) runs the full check, which names the first bad element."""
    if not value.is_floating_point() or value.numel() == 0:
        return
    total = value.sum(dtype=torch.float64 if value.dtype == torch.float64 else torch.float32)
    if not bool(torch.isfinite(total)):
        check_finite(name, value)


def check_offsets(name: str, offsets: torch.Tensor, total: int, *, count: int | None = None, exact: bool = True) -> list[int]:
    """Check a CSR offsets vector: 1-D integer, starts at 0, non-decreasing, ends at `total`
    (`exact=False`: at most `total`, for packed buffers with spare rows). Returns the host copy."""
    check_tensor(name, offsets, ndim=1, dtypes=INDEX_DTYPES)
    if count is not None and offsets.numel() != count + 1:
        raise ValueError(f"{name} must have {count + 1} entries (one more than the number of segments), got {offsets.numel()}")
    if offsets.numel() == 0:
        raise ValueError(f"{name} must have at least one entry (it starts at 0)")
    values = offsets.tolist()
    if values[0] != 0:
        raise ValueError(f"{name} must start at 0, got {values[0]}")
    steps = [b - a for a, b in zip(values, values[1:])]
    if any(s < 0 for s in steps):
        i = next(i for i, s in enumerate(steps) if s < 0)
        raise ValueError(f"{name} must be non-decreasing, but {name}[{i + 1}]={values[i + 1]} < {name}[{i}]={values[i]}")
    if exact and values[-1] != total:
        raise ValueError(f"{name} must end at the packed length {total}, got {values[-1]}")
    if not exact and values[-1] > total:
        raise ValueError(f"{name} ends at {values[-1]} but the packed tensor has only {total} rows")
    return values


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """All given tensors share one device; returns it."""
    present = {n: t for n, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{n} on {t.device}" for n, t in present.items())
        raise ValueError(f"inputs are on different devices ({listing}); move them to one device")
    return next(iter(devices))


def check_positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_optional_count(name: str, value, *, meaning: str = "") -> int | None:
    """`value` is None or an int >= 0 (a host bound such as `max_tokens`); `meaning` explains it."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        hint = f" ({meaning})" if meaning else ""
        raise TypeError(f"{name} must be None or an int >= 0{hint}, got {value!r}")
    return value
