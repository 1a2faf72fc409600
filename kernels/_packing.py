"""Host-side helpers shared by the ops and the model: packing per-region lists into the varlen layout,
grid-size tensors, and the offset checks tied to them.

Packed ("varlen") layout: the rows of all regions one after another, with `cu_<x> [R+1]` offsets
(`cu[0] == 0`, `cu[-1] == N`); grid sizes are `[R, 2]` (rows, columns) integer tensors on the
CPU, so launchers size grids without a device sync.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._validate import FLOAT_DTYPES, INDEX_DTYPES, check_tensor

__all__ = ["MASK_DTYPES", "check_offsets_match", "host_grid_sizes", "pack_region_lists"]

# mask grids: any of these; a value > 0 is inside
MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64, *FLOAT_DTYPES)


def host_grid_sizes(name: str, value, count: int | None) -> torch.Tensor:
    """A `[R, 2]` grid-size tensor on the CPU as int64 (a CUDA tensor costs one sync)."""
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value)
    if value.dim() != 2 or value.shape[1] != 2:
        raise ValueError(f"{name} must be [R, 2] (rows, columns) per region, got shape {tuple(value.shape)}")
    if value.dtype not in INDEX_DTYPES + (torch.int16, torch.uint8):
        raise TypeError(f"{name} has dtype {value.dtype}; accepted: integer grid sizes (int32, int64)")
    if count is not None and value.shape[0] != count:
        raise ValueError(
            f"{name} has {value.shape[0]} rows but there are {count} regions "
            "(rows of pos_params / cu_* offsets minus one)"
        )
    value = value.to("cpu", torch.int64).contiguous()  # elementwise results keep a transposed layout
    if value.numel() and int(value.min()) < 1:
        i = int((value < 1).any(dim=1).nonzero()[0])
        raise ValueError(f"{name}[{i}] = {value[i].tolist()}: grid sizes must be >= 1")
    return value


def check_offsets_match(name: str, offsets: torch.Tensor, sizes: torch.Tensor, total: int) -> None:
    """`offsets` must be the running sum of the host-known `sizes` and end at `total`."""
    check_tensor(name, offsets, ndim=1, dtypes=INDEX_DTYPES)
    if offsets.numel() != sizes.numel() + 1:
        raise ValueError(f"{name} must have {sizes.numel() + 1} entries (regions + 1), got {offsets.numel()}")
    expected = F.pad(sizes.cumsum(0), (1, 0))
    got = offsets.detach().to("cpu", torch.int64)
    if not torch.equal(got, expected):
        i = int((got != expected).nonzero()[0])
        raise ValueError(
            f"{name}[{i}] = {int(got[i])} does not match the grid sizes (expected {int(expected[i])}); "
            f"{name} must be the running sum of rows*columns per region, starting at 0"
        )
    if int(expected[-1]) != total:
        raise ValueError(f"{name} ends at {int(expected[-1])} but the packed tensor has {total} rows")


def pack_region_lists(features: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]):
    """Pack per-region lists into the varlen layout of `region_pool`.

    Args:
        features: R tensors `[h_r, w_r, C]` (raster crop features), one per region.
        masks: R tensors `[mh_r, mw_r]` (mask grids, any float/bool/uint8 dtype).

    Returns:
        `(features [N_f, C], cu_features [R+1] int32, feature_hw [R, 2] int64 CPU, masks [N_m],
        cu_masks [R+1] int32, mask_hw [R, 2] int64 CPU)`; offsets and packed tensors on the features'
        device, the packed masks on the masks' device.
    """
    if isinstance(features, torch.Tensor) and features.dim() == 4:
        features = list(features.unbind(0))
    if isinstance(masks, torch.Tensor) and masks.dim() == 3:
        masks = list(masks.unbind(0))
    if not isinstance(features, Sequence) or not isinstance(masks, Sequence):
        raise TypeError("features and masks must be lists of tensors ([h, w, C] features and [mh, mw] masks, one per region)")
    if len(features) != len(masks):
        raise ValueError(
            f"got {len(features)} feature maps but {len(masks)} masks; "
            "give exactly one mask per feature map (one per region)"
        )
    if not features:
        raise ValueError("features is empty; give at least one region (use the packed API for R = 0)")
    for i, f in enumerate(features):
        check_tensor(f"features[{i}]", f, ndim=3)
        if f.shape[-1] != features[0].shape[-1]:
            raise ValueError(
                f"features[{i}] has {f.shape[-1]} channels but features[0] has {features[0].shape[-1]}; "
                "all regions share C"
            )
    for i, m in enumerate(masks):
        check_tensor(f"masks[{i}]", m, ndim=2, dtypes=MASK_DTYPES)
    device = features[0].device
    for name, items in (("features", features), ("masks", masks)):
        devices = {t.device for t in items}
        if len(devices) > 1:
            raise ValueError(
                f"{name} are on different devices ({', '.join(sorted(map(str, devices)))}); "
                f"put every region's {name} on one device"
            )
    feature_hw = torch.tensor([list(f.shape[:2]) for f in features], dtype=torch.int64)
    mask_hw = torch.tensor([list(m.shape) for m in masks], dtype=torch.int64)
    packed_features = torch.cat([f.reshape(f.shape[0] * f.shape[1], f.shape[2]) for f in features])  # (N_f, C); C may be 0
    mask_dtype = masks[0].dtype if len({m.dtype for m in masks}) == 1 else torch.float32
    packed_masks = torch.cat([m.reshape(-1).to(mask_dtype) for m in masks])  # (N_m,)
    cu_features = F.pad(feature_hw.prod(1).cumsum(0), (1, 0)).to(device=device, dtype=torch.int32)
    cu_masks = F.pad(mask_hw.prod(1).cumsum(0), (1, 0)).to(device=packed_masks.device, dtype=torch.int32)
    return packed_features, cu_features, feature_hw, packed_masks, cu_masks, mask_hw
