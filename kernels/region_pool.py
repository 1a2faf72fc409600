"""Region pooling: box position embedding + bilinear resampling + masked gather, for many regions at once.

PixelRefer's region encoder turns each referred region into the feature vectors of the cells its mask
covers. For region `r` with an `h_r×w_r` crop feature grid `F_r` (C channels), an `mh_r×mw_r`
mask grid `M_r`, a box (top, left, bottom, right) and its image size (H, W):

1. box position embedding (the official `generate_position_tensor`): at feature cell (i, j)
   `p0 = (fl(j / w_r) * col_span + col_offset) / col_norm` (varies along columns),
   `p1 = (fl(i / h_r) * row_span + row_offset) / row_norm` (varies along rows),
   `E[i, j, :] = pos_weight @ (p0, p1) + pos_bias` (`pos_linear = Linear(2, C)`, rank 2).
   `box_pos_coefficients` turns boxes into the six numbers per region; with `swap_axes=True`
   (default, parity with the released weights) the column channel uses the *vertical* box extent
   and the row channel the horizontal one, as the official code does;
2. `X = F_r + E` in the features' dtype (the official code adds in the model dtype);
3. when the mask grid differs from the feature grid, `X` is resampled to the mask grid with
   `F.interpolate(mode="bilinear", align_corners=False)` semantics (4 taps per cell, fp32);
4. the cells with mask value > 0 are gathered in row-major order.

Regions are packed ("varlen"): features `[N_f, C]` with `cu_features [R+1]`, masks `[N_m]` with
`cu_masks [R+1]`; the output is packed too: `tokens [N_sel, C]` with `cu_tokens [R+1]`.

Fused: the position grid (built on the CPU and copied per region upstream), `pos_linear`, the
addition, the fp32 cast, the interpolation and the masked gather become one kernel that reads each
needed feature row once and writes only the selected rows: the `[h, w, C]` position embedding,
the fp32 copy and the resampled map are never materialised, and there is no per-region host sync.

Replaces `generate_position_tensor` + the per-mask part of `MaskExtractor.forward` + the gather of
`MaskPooling.forward` in `pixelrefer/model/region_encoder.py` (the k-means step is `kmeans.py`).
Credits: the fused-gather layout follows the varlen kernels of flash-attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._dispatch import Backend, dispatch, no_reasons
from ._launch import MAX_GRID_YZ, device_guard, grad_reasons, refuse_grad, tile_configs
from ._packing import MASK_DTYPES, check_offsets_match, host_grid_sizes, pack_region_lists
from ._runtime import triton_reasons
from ._triton import tl, triton
from ._validate import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    KERNEL_FLOAT_DTYPES,
    check_finite,
    check_finite_screened,
    check_optional_count,
    check_same_device,
    check_tensor,
    dtype_names,
)

__all__ = [
    "POS_PARAMS",
    "box_pos_coefficients",
    "pack_region_lists",
    "region_pool",
    "region_pool_from_lists",
    "region_pool_ref",
    "region_pool_triton",
    "backend_report",
]

# Columns of `pos_params`: p0 = (fl(j/w) * col_span + col_offset) / col_norm, p1 likewise with rows.
POS_PARAMS = ("col_span", "col_offset", "col_norm", "row_span", "row_offset", "row_norm")


# ----------------------------------------------------------------------------------------------------
# Reference (also the CPU path)
# ----------------------------------------------------------------------------------------------------


def region_pool_ref(
    features: torch.Tensor,
    cu_features: torch.Tensor,
    feature_hw,
    masks: torch.Tensor,
    cu_masks: torch.Tensor,
    mask_hw,
    pos_params: torch.Tensor,
    pos_weight: torch.Tensor,
    pos_bias: torch.Tensor,
    *,
    max_tokens: int | None = None,
    out_dtype: torch.dtype | None = None,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference of `region_pool` (same signature and result; vectorised over regions).

    Differentiable with respect to `features`, `pos_weight` and `pos_bias`. Computes in the
    features' dtype up to the addition, as the official code (position values rounded to that dtype
    before `pos_linear`, `pos_linear` and the addition rounded to it), then in float32 (float64
    for float64 features). On CUDA it synchronises once (boolean selection); the Triton path does not.
    """
    if validate:
        feature_hw, mask_hw = _validate_pool_args(
            features, cu_features, feature_hw, masks, cu_masks, mask_hw, pos_params, pos_weight, pos_bias, max_tokens, out_dtype
        )
    else:
        feature_hw, mask_hw = host_grid_sizes("feature_hw", feature_hw, None), host_grid_sizes("mask_hw", mask_hw, None)
    out_dtype = _resolve_out_dtype(features, out_dtype)
    device, dtype = features.device, features.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    num_channels = features.shape[1]
    dest, cu_tokens = _selection(masks, cu_masks)

    cells = (dest >= 0).nonzero().squeeze(1)  # (N_sel,) packed mask cells, row-major per region
    region_of_mask_cell = torch.repeat_interleave(torch.arange(mask_hw.shape[0]), mask_hw.prod(1)).to(device)
    region = region_of_mask_cell[cells]  # (N_sel,)
    hw = torch.cat([feature_hw, mask_hw], 1).to(device)  # (R, 4): h, w, mh, mw
    h, w, mh, mw = hw[region].unbind(1)
    local = cells - cu_masks.long()[region]
    out_y, out_x = local // mw, local % mw

    # F.interpolate(bilinear, align_corners=False): source = scale * (dst + 0.5) - 0.5, clamped at 0,
    # with scale = in / out in the compute dtype (PyTorch's opmath: float32 for float inputs).
    scale = (hw[:, :2].to(compute) / hw[:, 2:].to(compute))[region]  # (N_sel, 2)
    y0, y1, wy0, wy1 = _linear_taps(scale[:, 0], out_y, h, compute)
    x0, x1, wx0, wx1 = _linear_taps(scale[:, 1], out_x, w, compute)

    feat_start = cu_features.long()[region]
    coef = pos_params.to(compute)[region]  # (N_sel, 6)

    def tap(y, x):
        p0 = (x.to(compute) / w.to(compute) * coef[:, 0] + coef[:, 1]) / coef[:, 2]
        p1 = (y.to(compute) / h.to(compute) * coef[:, 3] + coef[:, 4]) / coef[:, 5]
        pos = torch.stack([p0, p1], dim=1).to(dtype)  # (N_sel, 2) like the official .to(feat)
        emb = F.linear(pos, pos_weight.to(dtype), pos_bias.to(dtype))
        return (features[feat_start + y * w + x] + emb).to(compute)  # (N_sel, C)

    resampled = (feature_hw != mask_hw).any(dim=1).any()
    if resampled:
        top = wx0[:, None] * tap(y0, x0) + wx1[:, None] * tap(y0, x1)
        bottom = wx0[:, None] * tap(y1, x0) + wx1[:, None] * tap(y1, x1)
        pooled = wy0[:, None] * top + wy1[:, None] * bottom
    else:
        pooled = tap(out_y, out_x)
    pooled = pooled.to(out_dtype)
    if max_tokens is not None and max_tokens > pooled.shape[0]:
        pooled = torch.cat([pooled, pooled.new_zeros(max_tokens - pooled.shape[0], num_channels)])
    return pooled, cu_tokens


def _linear_taps(scale: torch.Tensor, dst: torch.Tensor, size: torch.Tensor, compute: torch.dtype):
    """The two source indices and weights of 1-D linear resampling (PyTorch's CPU rules)."""
    src = (scale * (dst.to(compute) + 0.5) - 0.5).clamp(min=0)
    i0 = src.to(torch.int64)
    i1 = i0 + (i0 < size - 1).to(torch.int64)
    w1 = (src - i0.to(compute)).clamp(0, 1)
    return i0, i1, 1 - w1, w1


# ----------------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _pos_tap(
    feat_ptr, feat_start, w0, w1, bias, coef_ptr, y, x, h, w, rows_ok, offs_c, c_ok, stride_feat_row,
):
    """(feature + position embedding) at feature cells (y, x): `[BLOCK_M, BLOCK_C]` fp32, rounded
    through the features' dtype like the official code."""
    dt = feat_ptr.dtype.element_ty
    col_span = tl.load(coef_ptr + 0)
    col_offset = tl.load(coef_ptr + 1)
    col_norm = tl.load(coef_ptr + 2)
    row_span = tl.load(coef_ptr + 3)
    row_offset = tl.load(coef_ptr + 4)
    row_norm = tl.load(coef_ptr + 5)
    # IEEE divisions: Triton's default fp32 '/' is approximate on GPUs; the official grid uses torch's.
    p0 = tl.math.div_rn(tl.math.div_rn(x.to(tl.float32), w.to(tl.float32)) * col_span + col_offset, col_norm)
    p1 = tl.math.div_rn(tl.math.div_rn(y.to(tl.float32), h.to(tl.float32)) * row_span + row_offset, row_norm)
    p0 = p0.to(dt).to(tl.float32)
    p1 = p1.to(dt).to(tl.float32)
    emb = (p0[:, None] * w0[None, :] + p1[:, None] * w1[None, :] + bias[None, :]).to(dt).to(tl.float32)
    rows = (feat_start + y * w + x).to(tl.int64)
    f = tl.load(feat_ptr + rows[:, None] * stride_feat_row + offs_c[None, :], mask=rows_ok[:, None] & c_ok[None, :], other=0.0)
    return (f.to(tl.float32) + emb).to(dt).to(tl.float32)


@triton.jit
def _region_pool_fwd_kernel(
    # pointers
    feat_ptr,  # [N_f, C] features, any float dtype
    cu_feat_ptr,  # [R+1] int32/int64 feature row offsets
    cu_mask_ptr,  # [R+1] int32/int64 mask cell offsets
    dest_ptr,  # [N_m] int32 output row per mask cell, -1 when not selected
    grid_ptr,  # [R, 4] int32: h, w, mh, mw
    scale_ptr,  # [R, 2] fp32: h/mh, w/mw (PyTorch's resampling scale)
    coef_ptr,  # [R, 6] fp32 box position coefficients (POS_PARAMS)
    pos_w_ptr,  # [C, 2] pos_linear.weight
    pos_b_ptr,  # [C] pos_linear.bias
    out_ptr,  # [rows, C] pooled tokens
    # sizes
    c,  # channels
    out_rows,  # rows of out (a selected cell past it is dropped, never written out of bounds)
    # strides (elements)
    stride_feat_row,
    stride_out_row,
    stride_pos_w_row,
    # constexprs
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program: region `pid0` × `BLOCK_M` cells of its mask grid × `BLOCK_C` channels.

    Each selected cell reads up to 4 feature rows (the bilinear taps; taps with weight 0, which is
    every tap but one when the grids agree, are not loaded) and writes one output row.
    """
    r = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < c

    h = tl.load(grid_ptr + r * 4 + 0)
    w = tl.load(grid_ptr + r * 4 + 1)
    mh = tl.load(grid_ptr + r * 4 + 2)
    mw = tl.load(grid_ptr + r * 4 + 3)
    cell_ok = offs_m < mh * mw
    mask_start = tl.load(cu_mask_ptr + r).to(tl.int64)
    dest = tl.load(dest_ptr + mask_start + offs_m, mask=cell_ok, other=-1)
    selected = (dest >= 0) & (dest < out_rows)
    if tl.max(selected.to(tl.int32), axis=0) == 0:
        return

    feat_start = tl.load(cu_feat_ptr + r).to(tl.int64)
    scale_h = tl.load(scale_ptr + r * 2 + 0)
    scale_w = tl.load(scale_ptr + r * 2 + 1)
    w0 = tl.load(pos_w_ptr + offs_c * stride_pos_w_row + 0, mask=c_ok, other=0.0).to(tl.float32)
    w1 = tl.load(pos_w_ptr + offs_c * stride_pos_w_row + 1, mask=c_ok, other=0.0).to(tl.float32)
    bias = tl.load(pos_b_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    coef = coef_ptr + r * 6

    # bilinear taps, align_corners=False: src = scale * (dst + 0.5) - 0.5 clamped at 0
    out_y = offs_m // mw
    out_x = offs_m % mw
    src_y = tl.maximum(scale_h * (out_y.to(tl.float32) + 0.5) - 0.5, 0.0)
    src_x = tl.maximum(scale_w * (out_x.to(tl.float32) + 0.5) - 0.5, 0.0)
    y0 = src_y.to(tl.int32)
    x0 = src_x.to(tl.int32)
    y1 = y0 + (y0 < h - 1).to(tl.int32)
    x1 = x0 + (x0 < w - 1).to(tl.int32)
    wy1 = tl.minimum(tl.maximum(src_y - y0.to(tl.float32), 0.0), 1.0)
    wx1 = tl.minimum(tl.maximum(src_x - x0.to(tl.float32), 0.0), 1.0)
    wy0 = 1.0 - wy1
    wx0 = 1.0 - wx1

    v00 = _pos_tap(feat_ptr, feat_start, w0, w1, bias, coef, y0, x0, h, w, selected, offs_c, c_ok, stride_feat_row)
    v01 = _pos_tap(feat_ptr, feat_start, w0, w1, bias, coef, y0, x1, h, w, selected & (wx1 != 0), offs_c, c_ok, stride_feat_row)
    v10 = _pos_tap(feat_ptr, feat_start, w0, w1, bias, coef, y1, x0, h, w, selected & (wy1 != 0), offs_c, c_ok, stride_feat_row)
    both = selected & (wy1 != 0) & (wx1 != 0)
    v11 = _pos_tap(feat_ptr, feat_start, w0, w1, bias, coef, y1, x1, h, w, both, offs_c, c_ok, stride_feat_row)
    top = wx0[:, None] * v00 + wx1[:, None] * v01
    bottom = wx0[:, None] * v10 + wx1[:, None] * v11
    pooled = wy0[:, None] * top + wy1[:, None] * bottom

    rows = tl.where(selected, dest, 0).to(tl.int64)
    tl.store(
        out_ptr + rows[:, None] * stride_out_row + offs_c[None, :],
        pooled.to(out_ptr.dtype.element_ty),
        mask=selected[:, None] & c_ok[None, :],
    )


# ----------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------


def _pool_tile() -> dict[str, int]:
    """`{"BLOCK_M": cells, "BLOCK_C": channels}` of one program (a fixed tile, not autotuned)."""
    return tile_configs([{"BLOCK_M": 16, "BLOCK_C": 128}], interpreter={"BLOCK_M": 128, "BLOCK_C": 128})[0]


def region_pool_triton(
    features: torch.Tensor,
    cu_features: torch.Tensor,
    feature_hw,
    masks: torch.Tensor,
    cu_masks: torch.Tensor,
    mask_hw,
    pos_params: torch.Tensor,
    pos_weight: torch.Tensor,
    pos_bias: torch.Tensor,
    *,
    max_tokens: int | None = None,
    out_dtype: torch.dtype | None = None,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher of `region_pool` (same signature and result). Inference only: refuses inputs
    that require grad while autograd is on. Without `max_tokens` it syncs once to size the output."""
    refuse_grad("region_pool", features=features, pos_weight=pos_weight, pos_bias=pos_bias)
    if validate:
        feature_hw, mask_hw = _validate_pool_args(
            features, cu_features, feature_hw, masks, cu_masks, mask_hw, pos_params, pos_weight, pos_bias, max_tokens, out_dtype
        )
    else:
        feature_hw, mask_hw = host_grid_sizes("feature_hw", feature_hw, None), host_grid_sizes("mask_hw", mask_hw, None)
    if features.dtype not in KERNEL_FLOAT_DTYPES:
        raise TypeError(
            f"region_pool_triton: features dtype {features.dtype} not supported; "
            f"accepted: {dtype_names(KERNEL_FLOAT_DTYPES)}"
        )
    out_dtype = _resolve_out_dtype(features, out_dtype)
    device = features.device
    num_regions, num_channels = feature_hw.shape[0], features.shape[1]
    # The kernel takes a row stride for features, out and pos_weight and reads everything else as
    # dense vectors: make every other argument contiguous (a no-op when it already is).
    if features.stride(1) != 1:
        features = features.contiguous()
    if masks.dtype == torch.bool:
        masks = masks.view(torch.uint8)
    cu_features = cu_features.contiguous()
    cu_masks = cu_masks.contiguous()
    pos_weight = pos_weight.contiguous()
    pos_bias = pos_bias.contiguous()
    coef = pos_params.to(torch.float32).contiguous()

    dest, cu_tokens = _selection(masks, cu_masks)
    rows = int(cu_tokens[-1]) if max_tokens is None else max_tokens
    if max_tokens is None:
        out = torch.empty(rows, num_channels, device=device, dtype=out_dtype)
    else:
        out = torch.zeros(rows, num_channels, device=device, dtype=out_dtype)  # rows past cu_tokens[-1] stay 0
    cells = mask_hw.prod(1)
    if num_regions == 0 or rows == 0 or num_channels == 0 or int(cells.max()) == 0:
        return out, cu_tokens
    grid_sizes = torch.cat([feature_hw, mask_hw], 1).to(torch.int32).contiguous().to(device, non_blocking=True)  # (R, 4)
    scale = (feature_hw.to(torch.float32) / mask_hw.to(torch.float32)).contiguous().to(device, non_blocking=True)  # (R, 2)
    tile = _pool_tile()
    block_m, block_c = tile["BLOCK_M"], tile["BLOCK_C"]
    too_large = _grid_limit_reasons(mask_hw)
    if too_large:
        raise ValueError(f"region_pool_triton: {too_large[0]}; use the torch path (auto mode falls back to it)")
    cell_blocks = triton.cdiv(int(cells.max()), block_m)
    grid = (num_regions, cell_blocks, triton.cdiv(num_channels, block_c))
    with device_guard(features):
        _region_pool_fwd_kernel[grid](
            features, cu_features, cu_masks, dest, grid_sizes, scale, coef, pos_weight, pos_bias, out,
            num_channels, rows,
            features.stride(0), out.stride(0), pos_weight.stride(0),
            BLOCK_M=block_m, BLOCK_C=block_c,
            # keep the position arithmetic's separate roundings (no FMA contraction), as torch does
            enable_fp_fusion=False,
        )
    return out, cu_tokens


# ----------------------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------------------


def _grid_limit_reasons(mask_hw) -> list[str]:
    """The kernel puts a mask grid's cell blocks on grid axis 1 (at most `MAX_GRID_YZ` blocks)."""
    mask_hw = host_grid_sizes("mask_hw", mask_hw, None)
    largest = int(mask_hw.prod(1).max()) if mask_hw.numel() else 0
    limit = MAX_GRID_YZ * _pool_tile()["BLOCK_M"]
    if largest > limit:
        return [f"a mask grid of {largest} cells exceeds the kernel's {limit}-cell limit"]
    return []


def _triton_pool_reasons(features, cu_features, feature_hw, masks, cu_masks, mask_hw, pos_params, pos_weight, pos_bias, **_):
    reasons = triton_reasons(features.device, features.dtype, name="features dtype")
    reasons += grad_reasons(features=features, pos_weight=pos_weight, pos_bias=pos_bias)
    return reasons + _grid_limit_reasons(mask_hw)


_BACKENDS = (
    Backend("triton", "triton", _triton_pool_reasons, lambda *a, **k: region_pool_triton(*a, **k, validate=False)),
    Backend("torch", "torch", no_reasons, lambda *a, **k: region_pool_ref(*a, **k, validate=False)),
)


def region_pool(
    features: torch.Tensor,
    cu_features: torch.Tensor,
    feature_hw,
    masks: torch.Tensor,
    cu_masks: torch.Tensor,
    mask_hw,
    pos_params: torch.Tensor,
    pos_weight: torch.Tensor,
    pos_bias: torch.Tensor,
    *,
    max_tokens: int | None = None,
    out_dtype: torch.dtype | None = None,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the masked cells of many regions, with the box position embedding added (module docstring).

    Args:
        features: `[N_f, C]` packed crop features, raster order per region (fp16, bf16, fp32; fp64
            runs the torch path).
        cu_features: `[R+1]` int32/int64 offsets of each region's `h_r*w_r` feature rows.
        feature_hw: `[R, 2]` (h, w) per region, a CPU integer tensor (host-known grid sizes).
        masks: `[N_m]` packed raster mask grids, any float/bool/uint8 dtype; value > 0 = inside.
        cu_masks: `[R+1]` offsets of each region's `mh_r*mw_r` mask cells.
        mask_hw: `[R, 2]` (mh, mw) per region, CPU integers. A mask grid that differs from its
            feature grid resamples the features (bilinear, align_corners=False).
        pos_params: `[R, 6]` float32 from `box_pos_coefficients`.
        pos_weight: `[C, 2]` `pos_linear.weight`; pos_bias: `[C]` `pos_linear.bias`.
        max_tokens: optional host bound on the number of selected cells (e.g. `sum(mh*mw)`). With it
            the output has exactly `max_tokens` rows (rows past `cu_tokens[-1]` are zero) and
            nothing syncs with the host; without it the Triton path syncs once to size the output.
        out_dtype: dtype of the tokens; default float32 (float64 for float64 features), as the
            official full model pools in float32.
        validate: check shapes, offsets and values (NaN/inf features, NaN masks); reading values
            syncs once on a GPU. `False` skips the value and offset checks on a hot path.

    Returns:
        `(tokens [N_sel or max_tokens, C], cu_tokens [R+1] int32)`; region r's tokens are rows
        `cu_tokens[r]:cu_tokens[r+1]`. An all-zero mask gives the region no tokens.

    CPU: runs the vectorised PyTorch reference (or Triton's interpreter under `TRITON_INTERPRET=1`).
    Inputs that require grad (with grad enabled) take the differentiable reference in auto mode.

    Example:
        >>> tokens, cu = region_pool(feats, cu_f, hw, masks, cu_m, hw, box_pos_coefficients(boxes, image_hw),
        ...                          pos_linear.weight, pos_linear.bias)
    """
    if validate:
        feature_hw, mask_hw = _validate_pool_args(
            features, cu_features, feature_hw, masks, cu_masks, mask_hw, pos_params, pos_weight, pos_bias, max_tokens, out_dtype
        )
    return dispatch(
        "region_pool", _BACKENDS, features, cu_features, feature_hw, masks, cu_masks, mask_hw, pos_params, pos_weight, pos_bias,
        max_tokens=max_tokens, out_dtype=out_dtype,
    )


# ----------------------------------------------------------------------------------------------------
# List convenience
# ----------------------------------------------------------------------------------------------------


def region_pool_from_lists(
    features: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    boxes,
    image_hw,
    pos_weight: torch.Tensor,
    pos_bias: torch.Tensor,
    *,
    swap_axes: bool = True,
    out_dtype: torch.dtype | None = None,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`region_pool` on per-region lists: `features` R × `[h, w, C]`, `masks` R × `[mh, mw]`
    (2-D), `boxes [R, 4]` (top, left, bottom, right), `image_hw [R, 2]` (H, W).

    Masks move to the features' device. Returns `(tokens [N_sel, C], cu_tokens [R+1] int32)`.
    """
    packed, cu_f, feature_hw, packed_masks, cu_m, mask_hw = pack_region_lists(features, masks)
    boxes = torch.as_tensor(boxes)
    if boxes.dim() != 2 or boxes.shape[0] != len(feature_hw):
        raise ValueError(f"boxes must be [R, 4] with R = {len(feature_hw)} regions, got shape {tuple(boxes.shape)}")
    pos_params = box_pos_coefficients(boxes, image_hw, swap_axes=swap_axes, validate=validate).to(packed.device)
    packed_masks = packed_masks.to(packed.device)
    cu_m = cu_m.to(packed.device)
    selected = int((packed_masks > 0).sum()) if packed_masks.device.type == "cpu" else None
    return region_pool(
        packed, cu_f, feature_hw, packed_masks, cu_m, mask_hw, pos_params, pos_weight, pos_bias,
        max_tokens=selected, out_dtype=out_dtype, validate=validate,
    )


def backend_report(device: torch.device, dtype: torch.dtype) -> list[tuple[str, list[str]]]:
    """`(backend, reasons)` in priority order for a small representative call on `device`/`dtype`."""
    hw = torch.tensor([[3, 4]])
    features = torch.zeros(12, 8, device=device, dtype=dtype)
    cu = torch.tensor([0, 12], device=device, dtype=torch.int32)
    masks = torch.ones(12, device=device)
    pos_params = torch.ones(1, 6, device=device)
    weight = torch.zeros(8, 2, device=device, dtype=dtype)
    bias = torch.zeros(8, device=device, dtype=dtype)
    args = (features, cu, hw, masks, cu, hw, pos_params, weight, bias)
    return [(b.name, b.reasons(*args)) for b in _BACKENDS]


# ----------------------------------------------------------------------------------------------------
# Box position coefficients
# ----------------------------------------------------------------------------------------------------


def box_pos_coefficients(boxes, image_hw, *, swap_axes: bool = True, validate: bool = True) -> torch.Tensor:
    """Per-region coefficients of the box position embedding (module docstring, step 1).

    Args:
        boxes: `[R, 4]` (top, left, bottom, right) inclusive pixel coordinates, any real dtype (the
            processor's `region_boxes`); `0 <= top <= bottom <= H-1` and `0 <= left <= right <= W-1`.
        image_hw: `[R, 2]` (H, W) of each region's source image, both >= 2 (the formula divides by
            `H-1` and `W-1`).
        swap_axes: `True` (default, parity): the official layout, where the column channel uses the
            vertical extent `(bottom-top, top)` and the row channel `(right-left, left)`; `False`:
            the corrected layout (columns use left/right). Both normalise columns by `W-1` and rows
            by `H-1`.
        validate: check shapes and values (one sync when the tensors are on a GPU).

    Returns:
        `pos_params [R, 6]` float32 on `boxes`' device, columns `POS_PARAMS`: the embedding
        input at feature cell (i, j) of an h×w grid is `p0 = (fl(j/w)*col_span + col_offset)/col_norm`,
        `p1 = (fl(i/h)*row_span + row_offset)/row_norm` in float32, exactly the official arithmetic.

    Example:
        >>> box_pos_coefficients(torch.tensor([[10, 20, 110, 220]]), torch.tensor([[480, 640]]))
        tensor([[100.,  10., 639., 200.,  20., 479.]])
    """
    boxes = torch.as_tensor(boxes)
    image_hw = torch.as_tensor(image_hw)
    if validate:
        check_tensor("boxes", boxes, ndim=2)
        check_tensor("image_hw", image_hw, ndim=2)
        if boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [R, 4] (top, left, bottom, right), got shape {tuple(boxes.shape)}")
        if image_hw.shape != (boxes.shape[0], 2):
            raise ValueError(
                f"image_hw must be [R, 2] (H, W) with R={boxes.shape[0]} rows like boxes, "
                f"got shape {tuple(image_hw.shape)}"
            )
        if boxes.is_complex() or boxes.dtype == torch.bool or image_hw.is_complex() or image_hw.dtype == torch.bool:
            raise TypeError("boxes and image_hw must be real numbers (integer or float tensors)")
        check_finite("boxes", boxes)
        check_finite("image_hw", image_hw)
        _check_boxes(boxes, image_hw)
    boxes = boxes.to(torch.float32)
    hw = image_hw.to(device=boxes.device, dtype=torch.float32)
    top, left, bottom, right = boxes.unbind(1)
    height, width = hw.unbind(1)
    if swap_axes:
        col = (bottom - top, top)
        row = (right - left, left)
    else:
        col = (right - left, left)
        row = (bottom - top, top)
    return torch.stack([col[0], col[1], width - 1, row[0], row[1], height - 1], dim=1)  # (R, 6)


def _check_boxes(boxes: torch.Tensor, image_hw: torch.Tensor) -> None:
    b = boxes.detach().to("cpu", torch.float64)
    hw = image_hw.detach().to("cpu", torch.float64)
    small = (hw < 2).any(dim=1)
    if small.any():
        i = int(small.nonzero()[0])
        raise ValueError(
            f"image_hw[{i}] = {hw[i].tolist()}: image height and width must be >= 2 "
            "(the position embedding divides by H-1 and W-1)"
        )
    top, left, bottom, right = b.unbind(1)
    height, width = hw.unbind(1)
    bad = (top < 0) | (left < 0) | (bottom > height - 1) | (right > width - 1) | (top > bottom) | (left > right)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"boxes[{i}] = {b[i].tolist()} (top, left, bottom, right) is outside its image of (H, W) = "
            f"{hw[i].tolist()} or inverted; accepted: 0 <= top <= bottom <= H-1 and 0 <= left <= right <= W-1"
        )


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------


def _validate_pool_args(
    features, cu_features, feature_hw, masks, cu_masks, mask_hw, pos_params, pos_weight, pos_bias, max_tokens, out_dtype
):
    """Shape, dtype, device, offset and value checks shared by every backend (syncs once on a GPU);
    returns the grid sizes as CPU int64."""
    check_tensor("features", features, ndim=2)
    if not features.is_floating_point():
        raise TypeError(f"features has dtype {features.dtype}; accepted: {dtype_names(FLOAT_DTYPES)}")
    check_tensor("masks", masks, ndim=1, dtypes=MASK_DTYPES)
    check_tensor("cu_features", cu_features, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("cu_masks", cu_masks, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("pos_params", pos_params, ndim=2)
    if pos_params.shape[1] != len(POS_PARAMS):
        raise ValueError(
            f"pos_params must be [R, {len(POS_PARAMS)}] (from box_pos_coefficients), "
            f"got shape {tuple(pos_params.shape)}"
        )
    if not pos_params.is_floating_point():
        raise TypeError(f"pos_params has dtype {pos_params.dtype}; accepted: float32 (from box_pos_coefficients)")
    num_channels = features.shape[1]
    check_tensor("pos_weight", pos_weight, ndim=2, dtypes=FLOAT_DTYPES)
    if pos_weight.shape != (num_channels, 2):
        raise ValueError(
            f"pos_weight must be [C, 2] = [{num_channels}, 2] (pos_linear.weight), "
            f"got shape {tuple(pos_weight.shape)}"
        )
    check_tensor("pos_bias", pos_bias, ndim=1, dtypes=FLOAT_DTYPES)
    if pos_bias.shape != (num_channels,):
        raise ValueError(f"pos_bias must be [C] = [{num_channels}] (pos_linear.bias), got shape {tuple(pos_bias.shape)}")
    check_same_device(
        features=features, cu_features=cu_features, masks=masks, cu_masks=cu_masks,
        pos_params=pos_params, pos_weight=pos_weight, pos_bias=pos_bias,
    )
    num_regions = pos_params.shape[0]
    feature_hw = host_grid_sizes("feature_hw", feature_hw, num_regions)
    mask_hw = host_grid_sizes("mask_hw", mask_hw, num_regions)
    check_offsets_match("cu_features", cu_features, feature_hw.prod(1), features.shape[0])
    check_offsets_match("cu_masks", cu_masks, mask_hw.prod(1), masks.shape[0])
    check_optional_count("max_tokens", max_tokens, meaning="a host bound on the selected cells")
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be None or one of {dtype_names(FLOAT_DTYPES)}, got {out_dtype}")
    check_finite_screened("features", features)
    check_finite("pos_params", pos_params)
    _check_pos_norms(pos_params)
    check_finite("pos_weight", pos_weight)
    check_finite("pos_bias", pos_bias)
    if masks.is_floating_point() and masks.numel() and bool(torch.isnan(masks).any()):
        i = int(torch.isnan(masks).nonzero()[0])
        raise ValueError(f"masks contains NaN (first at packed index {i}); accepted: finite values (> 0 means inside)")
    if max_tokens is not None:
        selected = int((masks > 0).sum())
        if selected > max_tokens:
            raise ValueError(
                f"max_tokens={max_tokens} is smaller than the {selected} selected mask cells; "
                "pass a bound >= the number of cells with mask > 0"
            )
    return feature_hw, mask_hw


def _check_pos_norms(pos_params: torch.Tensor) -> None:
    """`col_norm` and `row_norm` divide the position grid: values below 1 (0 above all) would blow
    the embedding up to inf. `box_pos_coefficients` gives W-1 and H-1, both >= 1."""
    norms = pos_params[:, [2, 5]]  # (R, 2) col_norm, row_norm
    if norms.numel() and not bool((norms >= 1).all()):
        r, j = (norms < 1).nonzero()[0].tolist()
        name = POS_PARAMS[2 + 3 * j]
        raise ValueError(
            f"pos_params[{r}] has {name} = {float(norms[r, j])}; accepted: {name} >= 1 "
            "(box_pos_coefficients gives W-1 and H-1 of images at least 2 pixels wide and high)"
        )


def _resolve_out_dtype(features: torch.Tensor, out_dtype: torch.dtype | None) -> torch.dtype:
    if out_dtype is not None:
        return out_dtype
    return torch.float64 if features.dtype == torch.float64 else torch.float32


def _selection(masks: torch.Tensor, cu_masks: torch.Tensor):
    """Output row of every mask cell (-1 when not selected) and `cu_tokens`; no host sync."""
    selected = masks > 0
    running = torch.cumsum(selected, 0, dtype=torch.int32)  # (N_m,) selected cells up to here
    dest = torch.where(selected, running - 1, torch.full_like(running, -1))
    cu_tokens = F.pad(running, (1, 0))[cu_masks.long()].to(torch.int32)  # (R+1,)
    return dest, cu_tokens
