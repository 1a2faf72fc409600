"""PixelRefer's region encoder (Scale-Adaptive Object Tokenizer, full model), batched over regions.

`PixelReferFastRegionEncoder` turns R referred regions into object tokens for the LLM:

1. `region_pool`: crop features + box position embedding (`pos_linear`), resampled to the mask grid
   when the grids differ, cells with mask > 0 gathered (packed over all regions);
2. `kmeans`: regions with more than `mask_num` (K) cells are clustered to K tokens (`num_iters`
   Lloyd iterations, official early stop); smaller regions keep their cells (full model) or are
   zero-padded to K (`pad_to_mask_num=True`, the Lite convention);
3. `feat_linear` (Linear(C, D) → GELU → Linear(D, D)) maps the tokens to the LLM width.

Dtypes follow the official full model: features + position embedding in the features' (model) dtype,
pooling and k-means in float32, the tokens cast back to the features' dtype before `feat_linear`.

The module composes the ops with no Python loop over regions (`kmeans_init="parity"` draws one
`randperm` per clustered region on the CPU, as upstream). With `kmeans_init="deterministic"`,
`tokenize` does not synchronise with the host: every size it needs comes from the host-known grid
sizes (`feature_hw`, `mask_hw`), or from the masks themselves when they are on the CPU.

Parameter names match upstream `MaskExtractor` (`pos_linear`, `feat_linear.0`, `feat_linear.2`),
so the released state dicts load unchanged. The Lite encoder (`modeling_infusion`) subclasses this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# imported from the op modules: the package attributes `region_pool` / `kmeans` name the modules
# once those are imported
from pixelrefer_kernels._packing import MASK_DTYPES, host_grid_sizes, pack_region_lists
from pixelrefer_kernels._validate import check_finite_screened, check_positive_int
from pixelrefer_kernels.kmeans import INIT_MODES, kmeans, kmeans_init_indices
from pixelrefer_kernels.region_pool import box_pos_coefficients, region_pool

__all__ = ["PackedRegions", "RegionInputs", "PixelReferFastRegionEncoder"]


@dataclass
class RegionInputs:
    """The regions of one forward call, packed.

    Attributes:
        features: `[N_f, C]` crop features, raster order per region (the vision encoder's packed
            output for the crops), in the model dtype.
        feature_hw: `[R, 2]` (h, w) feature grid per region, CPU int64.
        masks: `[N_m]` packed raster mask grids (float/bool/uint8; value > 0 = inside). Keep them on
            the CPU (the processor's output) so region sizes are known without a device sync; the
            encoder copies them to the features' device.
        mask_hw: `[R, 2]` (mh, mw) mask grid per region, CPU int64.
        boxes: `[R, 4]` (top, left, bottom, right) inclusive pixel boxes of the crops.
        image_hw: `[R, 2]` (H, W) of each region's source image or frame.
    """

    features: torch.Tensor
    feature_hw: torch.Tensor
    masks: torch.Tensor
    mask_hw: torch.Tensor
    boxes: torch.Tensor
    image_hw: torch.Tensor

    @classmethod
    def from_lists(cls, features: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], boxes, image_hw) -> "RegionInputs":
        """Pack per-region lists: `features` R × `[h, w, C]`, `masks` R × `[mh, mw]` (2-D),
        `boxes` `[R, 4]` (or R 4-tuples), `image_hw` `[R, 2]` (or R (H, W) pairs)."""
        packed, _, feature_hw, packed_masks, _, mask_hw = pack_region_lists(features, masks)
        boxes = torch.as_tensor(boxes)
        image_hw = torch.as_tensor(image_hw)
        if boxes.dim() != 2 or boxes.shape[0] != feature_hw.shape[0]:
            raise ValueError(
                f"boxes must be [R, 4] with one row per region (R = {feature_hw.shape[0]}), "
                f"got shape {tuple(boxes.shape)}"
            )
        if image_hw.dim() != 2 or image_hw.shape[0] != feature_hw.shape[0]:
            raise ValueError(
                f"image_hw must be [R, 2] with one row per region (R = {feature_hw.shape[0]}), "
                f"got shape {tuple(image_hw.shape)}"
            )
        return cls(packed, feature_hw, packed_masks, mask_hw, boxes, image_hw)

    @property
    def num_regions(self) -> int:
        return int(self.feature_hw.shape[0])


@dataclass(frozen=True)
class PackedRegions:
    """Regions checked once on the host (`PixelReferFastRegionEncoder.pack`), with every size the
    encoder needs, so `tokenize_packed` reads nothing back from the device.

    Attributes:
        feature_hw, mask_hw: `[R, 2]` CPU int64 grid sizes.
        masks: `[N_m]` uint8 (1 = inside) on the features' device.
        cu_features, cu_masks: `[R+1]` int32 offsets on the features' device.
        pos_params: `[R, 6]` float32 box coefficients on the features' device.
        cells: `[R]` CPU int64 selected mask cells per region (None when the masks were on a GPU).
        counts: `[R]` CPU int64 tokens per region (`min(K, cells)`, or K with `pad_to_mask_num`;
            None with `cells`).
        select_rows: rows of the flattened `[R*K]` tokens that are kept, on the device (None when
            every row is kept).
        mask_num: K. max_tokens: `sum(cells)`. max_region_cells: `max(cells)`.
    """

    feature_hw: torch.Tensor
    mask_hw: torch.Tensor
    masks: torch.Tensor
    cu_features: torch.Tensor
    cu_masks: torch.Tensor
    pos_params: torch.Tensor
    cells: torch.Tensor | None
    counts: torch.Tensor | None
    select_rows: torch.Tensor | None
    mask_num: int
    max_tokens: int
    max_region_cells: int


def flatten_official_regions(masks, box_params, box_type=float):
    """The official per-image region arguments as per-region lists (images whose masks are None skipped).

    Args:
        masks: a list over images of `[M_i, mh, mw]` masks (or None entries).
        box_params: a list over images of per-mask `((top, left, bottom, right), H, W)`.
        box_type: `float` or `int`, applied to each box coordinate.

    Returns:
        `(region_masks, boxes [R][4], image_hw [R][2], images [R])`, `images` the image index of each
        region.
    """
    if len(masks) != len(box_params):
        raise ValueError(f"masks has {len(masks)} entries (images) but box_params has {len(box_params)}; give one entry per image")
    region_masks, boxes, image_hw, images = [], [], [], []
    for image, (image_masks, image_boxes) in enumerate(zip(masks, box_params)):
        if image_masks is None:
            continue
        if len(image_masks) != len(image_boxes):
            raise ValueError(
                f"image {image} has {len(image_masks)} masks but {len(image_boxes)} box_params; give one ((top, left, bottom, "
                "right), H, W) per mask"
            )
        for mask, (box, raw_h, raw_w) in zip(image_masks, image_boxes):
            region_masks.append(mask)
            boxes.append([box_type(v) for v in box])
            image_hw.append([int(raw_h), int(raw_w)])
            images.append(image)
    return region_masks, boxes, image_hw, images


def _offsets(sizes: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`[R+1]` int32 running sum of host-known sizes, on `device`."""
    return F.pad(sizes.cumsum(0), (1, 0)).to(torch.int32).to(device, non_blocking=True)


class PixelReferFastRegionEncoder(nn.Module):
    """Full-model region encoder (upstream `MaskExtractor`), batched over regions.

    Args:
        mm_hidden_size: C, the vision width (1152).
        hidden_size: D, the LLM width (1536 / 3584).
        mask_num: K, tokens per region (32).
        num_iters: k-means iterations (5 in the full model, 3 in Lite).
        kmeans_init: `"parity"` (default): the official random init, `torch.randperm` from the
            global CPU generator (or `generator`) once per clustered region, so after the same
            `torch.manual_seed` the tokens equal upstream's; `"deterministic"`: evenly spaced rows,
            the same tokens every run, no host sync.
        swap_box_axes: `True` (default, parity with the released weights): the official position
            embedding with the box axes swapped (docs/spec.md §5.3); `False`: the corrected layout.
        pad_to_mask_num: `False` (full model): a region with n <= K cells gives n tokens (0 for an
            all-zero mask); `True` (Lite): every region gives K tokens, zero-padded.
        check_finite: check features and masks for NaN/inf: `None` (default) only when they are on
            the CPU (free); `True` always (one sync on a GPU); `False` never.

    Example:
        >>> enc = PixelReferFastRegionEncoder(1152, 1536)
        >>> emb, counts = enc(RegionInputs.from_lists(crop_feats, masks, boxes, image_hw))
    """

    def __init__(
        self,
        mm_hidden_size: int,
        hidden_size: int,
        mask_num: int = 32,
        num_iters: int = 5,
        kmeans_init: str = "parity",
        swap_box_axes: bool = True,
        pad_to_mask_num: bool = False,
        *,
        check_finite: bool | None = None,
    ):
        super().__init__()
        if kmeans_init not in INIT_MODES:
            raise ValueError(f"kmeans_init must be one of {INIT_MODES}, got {kmeans_init!r}")
        if isinstance(mask_num, bool) or not isinstance(mask_num, int) or mask_num < 1:
            raise ValueError(f"mask_num must be an int >= 1, got {mask_num!r}")
        if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 0:
            raise ValueError(f"num_iters must be an int >= 0, got {num_iters!r}")
        self.mask_num = mask_num
        self.num_iters = num_iters
        self.kmeans_init = kmeans_init
        self.swap_box_axes = swap_box_axes
        self.pad_to_mask_num = pad_to_mask_num
        self.check_finite = check_finite
        self.pos_linear = nn.Linear(2, mm_hidden_size)
        self.feat_linear = nn.Sequential(nn.Linear(mm_hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))

    def token_dtype(self, feature_dtype: torch.dtype) -> torch.dtype:
        """Dtype of the pooled and clustered tokens: float32, as the official full model (float64 for
        float64 features). Subclasses that pool in the model dtype override this."""
        return torch.float64 if feature_dtype == torch.float64 else torch.float32

    # ------------------------------------------------------------------------------------------------

    def _check(self, inputs: RegionInputs) -> None:
        """Host-side checks of a `RegionInputs` (features too; no device sync unless `check_finite=True`)."""
        if not isinstance(inputs, RegionInputs):
            raise TypeError(f"inputs must be a RegionInputs, got {type(inputs).__name__}")
        features = inputs.features
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.is_floating_point():
            got = f"{getattr(features, 'dtype', type(features).__name__)} of shape {tuple(getattr(features, 'shape', ()))}"
            raise TypeError(f"inputs.features must be a float [N_f, C] tensor, got {got}")
        if features.shape[1] != self.pos_linear.out_features:
            raise ValueError(
                f"inputs.features has {features.shape[1]} channels but the encoder expects "
                f"mm_hidden_size={self.pos_linear.out_features}"
            )
        feature_hw = host_grid_sizes("inputs.feature_hw", inputs.feature_hw, None)
        feature_cells = int(feature_hw.prod(1).sum())
        if feature_cells != features.shape[0]:
            raise ValueError(
                f"inputs.features has {features.shape[0]} rows but feature_hw adds up to {feature_cells} cells; "
                "give one h*w block of rows per region"
            )
        masks = inputs.masks
        if isinstance(masks, torch.Tensor) and masks.device != features.device and masks.device.type != "cpu":
            raise ValueError(
                f"inputs.masks is on {masks.device} but inputs.features on {features.device}; "
                "put the masks on the CPU or on the features' device"
            )
        check = self.check_finite
        if check is None:
            check = features.device.type == "cpu"
        if check:
            check_finite_screened("inputs.features", features)

    def pack(
        self,
        feature_hw: torch.Tensor,
        masks: torch.Tensor,
        mask_hw: torch.Tensor,
        boxes: torch.Tensor,
        image_hw: torch.Tensor,
        device: torch.device,
        mask_num: int | None = None,
        *,
        region_cells: torch.Tensor | None = None,
    ) -> PackedRegions:
        """Check the regions once on the host and compute every size the encoder needs (`PackedRegions`).

        Args:
            feature_hw, masks, mask_hw, boxes, image_hw: as `RegionInputs` (without the features,
                which the vision encoder produces later).
            device: where the features will be (the masks, offsets and box coefficients go there).
            mask_num: K (default `self.mask_num`).
            region_cells: `[R]` selected cells per region (the processor's `region_mask_cells`),
                checked against the masks when these are on the CPU.

        The masks are thresholded here, once, to uint8 (only `> 0` is ever read). On the CPU their
        selected cells per region are counted here; masks already on a GPU are not read back: the
        sizes are then upper bounds and the counts stay on the device (`cells` is None).
        """
        mask_num = self.mask_num if mask_num is None else mask_num
        check_positive_int("mask_num", mask_num)
        if not isinstance(masks, torch.Tensor) or masks.dim() != 1 or masks.dtype not in MASK_DTYPES:
            got = f"{getattr(masks, 'dtype', type(masks).__name__)} of shape {tuple(getattr(masks, 'shape', ()))}"
            raise TypeError(f"inputs.masks must be a 1-D packed mask tensor (float/bool/uint8), got {got}")
        feature_hw = host_grid_sizes("inputs.feature_hw", feature_hw, None)
        regions = feature_hw.shape[0]
        for name, value in (("mask_hw", mask_hw), ("boxes", boxes), ("image_hw", image_hw)):
            if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[0] != regions:
                raise ValueError(
                    f"inputs.{name} must be a 2-D tensor with one row per region ({regions} regions from "
                    f"feature_hw), got {tuple(getattr(value, 'shape', ()))}"
                )
        mask_hw = host_grid_sizes("inputs.mask_hw", mask_hw, regions)
        mask_sizes = mask_hw.prod(1)
        if int(mask_sizes.sum()) != masks.shape[0]:
            raise ValueError(
                f"inputs.masks has {masks.shape[0]} cells but mask_hw adds up to {int(mask_sizes.sum())}; "
                "give one mh*mw block per region"
            )
        if masks.device.type == "cpu":
            if masks.is_floating_point() and bool(torch.isnan(masks).any()):
                raise ValueError("inputs.masks contains NaN; accepted: finite values (> 0 means inside)")
            selected = masks if masks.dtype == torch.uint8 else (masks > 0).to(torch.uint8)
            running = F.pad(torch.cumsum(selected, 0, dtype=torch.int64), (1, 0))
            cu_host = F.pad(mask_sizes.cumsum(0), (1, 0))
            cells = running[cu_host[1:]] - running[cu_host[:-1]]  # (R,) selected cells per region
            if region_cells is not None:
                given = torch.as_tensor(region_cells).to("cpu", torch.int64)
                if given.shape != cells.shape or not torch.equal(given, cells):
                    raise ValueError(
                        f"region_mask_cells {given.tolist()} disagree with the cells the masks select "
                        f"{cells.tolist()}; pass the processor's masks and counts together"
                    )
            counts = torch.full_like(cells, mask_num) if self.pad_to_mask_num else cells.clamp(max=mask_num)
            max_tokens, max_region = int(cells.sum()), int(cells.max()) if regions else 0
            select_rows = None
            if not self.pad_to_mask_num:
                keep = torch.arange(mask_num)[None, :] < counts[:, None]  # (R, K)
                select_rows = keep.flatten().nonzero().squeeze(1).to(device, non_blocking=True)
        else:
            selected = masks if masks.dtype == torch.uint8 else (masks > 0).to(torch.uint8)
            cells = counts = select_rows = None
            max_tokens, max_region = int(mask_sizes.sum()), int(mask_sizes.max()) if regions else 0
        pos_params = box_pos_coefficients(boxes.detach().to("cpu"), image_hw.detach().to("cpu"), swap_axes=self.swap_box_axes)
        return PackedRegions(
            feature_hw=feature_hw,
            mask_hw=mask_hw,
            masks=selected.to(device, non_blocking=True),
            cu_features=_offsets(feature_hw.prod(1), device),
            cu_masks=_offsets(mask_sizes, device),
            pos_params=pos_params.to(device, non_blocking=True),
            cells=cells,
            counts=counts,
            select_rows=select_rows,
            mask_num=mask_num,
            max_tokens=max_tokens,
            max_region_cells=max_region,
        )

    def pack_inputs(self, inputs: RegionInputs, mask_num: int | None = None) -> PackedRegions:
        """`pack` for a `RegionInputs` (features checked too)."""
        self._check(inputs)
        return self.pack(inputs.feature_hw, inputs.masks, inputs.mask_hw, inputs.boxes, inputs.image_hw, inputs.features.device, mask_num)

    def tokenize_packed(self, features: torch.Tensor, packed: PackedRegions, generator: torch.Generator | None = None):
        """Pool + k-means of checked regions (`pack`): `features [N_f, C]` -> `(tokens [R, K, C],
        counts [R] int32 on the device)`.

        No host sync: every size comes from `packed`. The parity k-means init draws its rows from the
        CPU generator (`generator` or the global one), as upstream, so it needs the region sizes on the
        host (known when `pack` saw the masks on the CPU); `kmeans_init="deterministic"` draws nothing.
        """
        tokens, cu_tokens = region_pool(
            features, packed.cu_features, packed.feature_hw, packed.masks, packed.cu_masks, packed.mask_hw, packed.pos_params,
            self.pos_linear.weight, self.pos_linear.bias,
            max_tokens=packed.max_tokens, out_dtype=self.token_dtype(features.dtype), validate=False,
        )
        if self.kmeans_init == "parity":
            sizes = packed.cells if packed.cells is not None else (cu_tokens[1:] - cu_tokens[:-1]).cpu()  # GPU masks: one sync
            init = kmeans_init_indices(sizes, packed.mask_num, "parity", generator=generator)
            init = init.to(features.device, non_blocking=True)
        else:
            init = "deterministic"
        centroids, counts = kmeans(
            tokens, cu_tokens, packed.mask_num, num_iters=self.num_iters, init=init,
            pad_to_clusters=self.pad_to_mask_num, max_region_tokens=packed.max_region_cells, validate=False,
        )
        return centroids, counts

    def _tokenize(self, inputs: RegionInputs, generator: torch.Generator | None, mask_num: int):
        """`pack_inputs` + `tokenize_packed`: `(tokens [R, K, C], counts [R] int32 on the features' device, packed)`."""
        packed = self.pack_inputs(inputs, mask_num)
        tokens, counts = self.tokenize_packed(inputs.features, packed, generator)
        return tokens, counts, packed

    def tokenize(self, inputs: RegionInputs, generator: torch.Generator | None = None, *, mask_num: int | None = None):
        """Pool and cluster the regions (everything before `feat_linear`).

        Args:
            inputs: the packed regions.
            generator: CPU generator for the parity init (default: the global CPU RNG, as upstream).
            mask_num: K for this call (default `self.mask_num`; the official forward takes it per call).

        Returns:
            `(tokens [R, K, C] float32, counts [R] int32)`: region r's tokens are rows
            `0..counts[r]-1`; rows past them are zero. An all-zero mask gives count 0 (full model)
            or K zero tokens (`pad_to_mask_num`).
        """
        tokens, counts, _ = self._tokenize(inputs, generator, self.mask_num if mask_num is None else mask_num)
        return tokens, counts

    def project(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`feat_linear` on tokens cast to `dtype` (the model dtype): `[..., C]` -> `[..., D]`."""
        return self.feat_linear(tokens.to(dtype))

    def select_tokens(self, tokens: torch.Tensor, counts: torch.Tensor, packed: PackedRegions) -> torch.Tensor:
        """Pack the valid rows of `tokens [R, K, C]` to `[sum(counts), C]` in region order (no sync:
        the rows were chosen on the host by `pack`)."""
        flat = tokens.reshape(-1, tokens.shape[-1])  # (R*K, C)
        if self.pad_to_mask_num:
            return flat
        rows = packed.select_rows
        if rows is None:  # masks were on the GPU: the counts are read back (one sync)
            counts = counts.to("cpu", torch.int64)
            rows = (torch.arange(tokens.shape[1])[None, :] < counts[:, None]).flatten().nonzero().squeeze(1)
            rows = rows.to(tokens.device, non_blocking=True)
        return flat.index_select(0, rows)

    def forward(self, inputs: RegionInputs, generator: torch.Generator | None = None, *, mask_num: int | None = None):
        """Object tokens of every region, projected to the LLM width.

        Returns:
            `(embeddings [sum(counts), D] in the features' dtype, counts [R] int32)`; the rows of
            region r follow those of region r-1. With `pad_to_mask_num` every region has K rows.
            The ragged output needs the selected cells on the host: free when the masks are on the
            CPU, else one sync (`pack`).
        """
        tokens, counts, packed = self._tokenize(inputs, generator, self.mask_num if mask_num is None else mask_num)
        return self.project(self.select_tokens(tokens, counts, packed), inputs.features.dtype), counts
