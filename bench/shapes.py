"""The shapes every benchmark suite measures, named once (style doc section 8).

Constants are the released PixelRefer-2B sizes: K = 32 object tokens per region, C = 1152 vision
channels, D = 1536 LLM hidden size, 16 x 16 region crops and local maps, 24 x 24 Lite global maps.
Each suite has a CPU case (small enough for a 2-core CI machine; the gated ones) and a CUDA case
(bf16, the size of a real batch). `describe()` of a case is the text saved in `extra_info`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pixelrefer_fast.profiling.presets import ArchPreset, LLMShape, RegionShape, VisionShape

K = 32  # object tokens per region (mask_num)
C = 1152  # vision channels (SigLIP-NaViT hidden size)
D = 1536  # LLM hidden size of the 2B models
CROP_GRID = 16  # patches per side of a region crop at the crop-scale thresholds
LOCAL_GRID = 16  # Lite's 224 px local view, in patches per side
GLOBAL_GRID = 24  # Lite's 336 px global view, in patches per side
INFUSION_HEADS = 8  # Lite cross-attention heads (head_dim 144)
VIT_HEADS, VIT_HEAD_DIM = 16, 72  # vision encoder attention


# ---- region tokenizer (bench_region.py) ----------------------------------------------------------


@dataclass(frozen=True)
class RegionCase:
    """Regions of one call: a feature grid `(h, w)` per region and the masked cells of each."""

    name: str
    grids: tuple[tuple[int, int], ...]
    cells: tuple[int, ...]

    def describe(self) -> str:
        grids = " ".join(f"{h}x{w}" for h, w in self.grids) if len(self.grids) <= 8 else f"{len(self.grids)} grids"
        return f"R={len(self.grids)} grids {grids}, {sum(self.cells)} mask cells ({min(self.cells)}-{max(self.cells)}), C={C} D={D} K={K}"


def _cuda_region_case(count: int = 64, cell_range: tuple[int, int] = (30, 150), seed: int = 2) -> RegionCase:
    """`count` regions of 30-150 masked cells, each mask covering 30-60% of a roughly 5:6 grid."""
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randint(cell_range[0], cell_range[1] + 1, (count,), generator=generator).tolist()
    grids = []
    for n in cells:
        side = math.sqrt(n / (0.3 + 0.3 * torch.rand((), generator=generator).item()))
        grids.append((max(2, round(side)), max(2, round(side * 1.2))))
    return RegionCase("64reg", tuple(grids), tuple(cells))


REGION_CPU = RegionCase(
    "8reg",
    grids=((10, 12), (12, 14), (14, 14), (16, 16), (14, 20), (18, 18), (20, 20), (22, 22)),
    cells=(40, 48, 60, 72, 84, 96, 100, 36),  # docs/spec.md §3.1: 32..~100 patches per region
)
REGION_CUDA = _cuda_region_case()


# ---- varlen attention (bench_attention.py) --------------------------------------------------------


@dataclass(frozen=True)
class VarlenCase:
    """Packed segments: query and key lengths per segment, heads and head size."""

    name: str
    lengths_q: tuple[int, ...]
    lengths_k: tuple[int, ...]
    heads: int
    head_dim: int

    def describe(self) -> str:
        if self.lengths_q == self.lengths_k:
            lengths = f"{len(self.lengths_q)} segments of {min(self.lengths_q)}-{max(self.lengths_q)} tokens ({sum(self.lengths_q)} rows)"
        else:
            lengths = f"{len(self.lengths_q)} segments of {max(self.lengths_q)} queries vs {max(self.lengths_k)} keys"
        return f"{lengths}, {self.heads} heads x {self.head_dim}"


def _crop_lengths(count: int, seed: int = 0) -> tuple[int, ...]:
    """Token counts of `count` vision-encoder crops, 100-600 patches each."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(100, 601, (count,), generator=generator).tolist())


VARLEN_VIT_CPU = VarlenCase("vit_8crops", _crop_lengths(8), _crop_lengths(8), VIT_HEADS, VIT_HEAD_DIM)
VARLEN_VIT_CUDA = VarlenCase("vit_64crops", _crop_lengths(64), _crop_lengths(64), VIT_HEADS, VIT_HEAD_DIM)
VARLEN_INFUSION_CUDA = VarlenCase(
    "infusion_8img", (8 * K,) * 8, (GLOBAL_GRID**2,) * 8, INFUSION_HEADS, C // INFUSION_HEADS
)


# ---- object-centric infusion (bench_infusion.py) ---------------------------------------------------


@dataclass(frozen=True)
class InfusionCase:
    """Images of one call and regions per image; one global map per image, one local map per region."""

    name: str
    images: int
    regions_per_image: int

    @property
    def regions(self) -> int:
        return self.images * self.regions_per_image

    def describe(self) -> str:
        return (f"{self.images} image(s) x {self.regions_per_image} regions, K={K}, C={C}, {INFUSION_HEADS} heads, "
                f"global {GLOBAL_GRID}x{GLOBAL_GRID} per image, local {LOCAL_GRID}x{LOCAL_GRID} per region")


INFUSION_CPU = InfusionCase("1img_8reg", images=1, regions_per_image=8)
INFUSION_CUDA = InfusionCase("8img_8reg", images=8, regions_per_image=8)
LITE_ENCODER_CPU = InfusionCase("1img_8reg", images=1, regions_per_image=8)  # masks on 16x16 crops


# ---- whole model (bench_model.py) ------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCase:
    """One `describe()` workload on a random-weight model of a profiling preset.

    Attributes:
        name: the pair name's shape part.
        preset: `pixelrefer_fast.profiling.presets` name (`cpu-default`, `2b`, `lite-2b`).
        variant: `"full"` or `"lite"`.
        items: images per batched call (the baseline describes them one at a time).
        regions: masks per image (the drawn sample's objects).
        new_tokens: tokens generated per item (eos suppressed, so exactly this many).
        image_size: (width, height) of the drawn sample image.
    """

    name: str
    preset: str
    variant: str
    items: int
    regions: int
    new_tokens: int
    image_size: tuple[int, int]

    def describe(self) -> str:
        width, height = self.image_size
        return (f"{self.preset} ({self.variant}), {self.items} image(s) {width}x{height} x {self.regions} region(s), "
                f"{self.new_tokens} new tokens, K={K}")


MODEL_CPU = (
    ModelCase("lite_4img_2reg_16tok", "cpu-default", "lite", items=4, regions=2, new_tokens=16, image_size=(336, 252)),
    ModelCase("full_4img_2reg_16tok", "cpu-default", "full", items=4, regions=2, new_tokens=16, image_size=(336, 252)),
)
MODEL_CUDA = (
    ModelCase("lite2b_1img_1reg_32tok", "lite-2b", "lite", items=1, regions=1, new_tokens=32, image_size=(640, 480)),
    ModelCase("lite2b_16img_4reg_16tok", "lite-2b", "lite", items=16, regions=4, new_tokens=16, image_size=(640, 480)),
    ModelCase("2b_1img_1reg_32tok", "2b", "full", items=1, regions=1, new_tokens=32, image_size=(640, 480)),
)


# ---- decoding (bench_decode.py) -------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeCase:
    """One batch decoded by `describe()`'s two decodings on a random-weight preset model.

    Attributes:
        name: the pair name's shape part.
        preset: a profiling preset, or `"tiny"` (cpu-default's vision with a 2 x 64 LLM).
        variant: `"full"` or `"lite"`.
        batch: items per call (one image and one region each).
        new_tokens: tokens generated per item (eos suppressed, so exactly this many).
        image_size: (width, height) of the drawn sample image.
    """

    name: str
    preset: str
    variant: str
    batch: int
    new_tokens: int
    image_size: tuple[int, int] = (336, 252)

    def describe(self) -> str:
        return (f"{self.preset} {self.variant}, batch {self.batch} x 1 image {self.image_size[0]}x{self.image_size[1]} "
                f"x 1 region, {self.new_tokens} new tokens (prefill included)")


DECODE_CPU = (
    DecodeCase("tiny_lite_b1_32tok", "tiny", "lite", batch=1, new_tokens=32),
    DecodeCase("cpudefault_lite_b1_32tok", "cpu-default", "lite", batch=1, new_tokens=32),
    DecodeCase("cpudefault_full_b4_32tok", "cpu-default", "full", batch=4, new_tokens=32),
)
# ragged batches (bench_decode.py's compaction pairs): row 0 runs `new_tokens`, the others are cancelled after
# `RAGGED_SHORT` tokens, as the server ends rows at their `max_tokens`
RAGGED_SHORT = 4
RAGGED_CPU = (DecodeCase("cpudefault_lite_b8_64tok", "cpu-default", "lite", batch=8, new_tokens=64),)
RAGGED_CUDA = (DecodeCase("lite2b_b16_64tok", "lite-2b", "lite", batch=16, new_tokens=64, image_size=(640, 480)),)
DECODE_CUDA = (
    DecodeCase("lite2b_b1_32tok", "lite-2b", "lite", batch=1, new_tokens=32, image_size=(640, 480)),
    DecodeCase("lite2b_b16_32tok", "lite-2b", "lite", batch=16, new_tokens=32, image_size=(640, 480)),
    DecodeCase("2b_b1_32tok", "2b", "full", batch=1, new_tokens=32, image_size=(640, 480)),
    DecodeCase("2b_b16_32tok", "2b", "full", batch=16, new_tokens=32, image_size=(640, 480)),
)


# ---- the tests' tiny sizes (bench_caption.py, bench_serve.py) ----------------------------------------

TINY_PRESET = ArchPreset(
    name="tiny", description="the tests' tiny checkpoint sizes",
    vision=VisionShape(hidden_size=48, intermediate_size=80, num_layers=2, num_heads=2),
    llm=LLMShape(hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                 vocab_size=32768),
    region=RegionShape(mask_num=4),
)
