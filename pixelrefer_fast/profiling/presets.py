"""Architecture presets for the profile: the shapes that decide speed and cost, never weights.

A preset holds the sizes of every stage (vision encoder, projector, region tokenizer, Lite infusion,
Qwen2 LLM) and the budget limits a sweep point must respect. The profile builds random-weight modules
from it, because latency, FLOPs and memory do not depend on weight values.

Presets (`PRESETS`):

- `cpu-default`: the real structure (ViT with 2-D RoPE and packed varlen attention, region
  tokenizer, Lite infusion, Qwen2 LLM with GQA and tied embeddings) shrunk so the default sweep runs
  in a few minutes on two CPU cores: vision 2 layers x 144 channels (2 heads of 72, the real head
  size), LLM 2 layers x 256 (2 query heads of 128, 1 KV head), a 32768-token vocabulary (the
  real 151669 would make `lm_head` 90% of this tiny LLM's decode step).
- `2b`, `7b`: PixelRefer-2B / 7B (docs/spec.md §1 and §4): VL3-SigLIP-NaViT (27 x 1152, 16 heads,
  MLP 4304) and Qwen2.5-1.5B (28 x 1536, 12/2 heads, MLP 8960, tied) or Qwen2.5-7B (28 x 3584,
  28/4 heads, MLP 18944).
- `lite-2b`, `lite-7b`: the same sizes; their default variant is Lite.

`preset_from_model_dir(path)` reads a local checkpoint's `config.json` (docs/spec.md §9.2) into a
preset; nothing else in the directory is read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = ("full", "lite")


class ProfileInputError(ValueError):
    """A profile request that cannot run: unknown preset, empty sweep, a budget over the model's limits."""


@dataclass(frozen=True)
class VisionShape:
    """The vision encoder (SigLIP-NaViT with 2-D RoPE) sizes.

    Attributes:
        hidden_size: channels C (1152 in the released models).
        intermediate_size: MLP width (4304).
        num_layers: encoder blocks (27).
        num_heads: attention heads (16, head_dim 72).
        patch_size: pixels per patch side (14); a patch row holds `3 * patch_size**2` values.
        spatial_merge_size: the 2x2 merge of video frames (2).
        layer_norm_eps: LayerNorm epsilon (1e-6).
    """

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27
    num_heads: int = 16
    patch_size: int = 14
    spatial_merge_size: int = 2
    layer_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size**2


@dataclass(frozen=True)
class LLMShape:
    """The Qwen2 language model sizes.

    Attributes:
        hidden_size: D (1536 for 2B, 3584 for 7B).
        intermediate_size: MLP width (8960 / 18944).
        num_layers: decoder layers (28).
        num_heads: query heads (12 / 28).
        num_kv_heads: key/value heads (2 / 4).
        head_dim: per-head size (128).
        vocab_size: rows of the embedding and of `lm_head` (151669).
        tie_word_embeddings: `lm_head` shares the embedding (2B: True).
        max_position_embeddings: the longest sequence the model accepts (32768).
        rms_norm_eps, rope_theta: Qwen2 constants.
    """

    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_layers: int = 28
    num_heads: int = 12
    num_kv_heads: int = 2
    head_dim: int = 128
    vocab_size: int = 151669
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6


@dataclass(frozen=True)
class RegionShape:
    """Region tokenizer and Lite infusion settings.

    Attributes:
        mask_num: tokens per region K (32); a sweep overrides it per point.
        kmeans_iters_full, kmeans_iters_lite: Lloyd iterations (5 full, 3 Lite).
        infusion_heads: heads of the Lite cross-attentions (8, head_dim 144 at C=1152).
        infusion_eps: LayerNorm epsilon of the Lite infusion (1e-5).
        global_view, local_view: Lite's squashed global and local views in pixels (336, 224).
    """

    mask_num: int = 32
    kmeans_iters_full: int = 5
    kmeans_iters_lite: int = 3
    infusion_heads: int = 8
    infusion_eps: float = 1e-5
    global_view: int = 336
    local_view: int = 224

    def kmeans_iters(self, variant: str) -> int:
        return self.kmeans_iters_lite if variant == "lite" else self.kmeans_iters_full


@dataclass(frozen=True)
class ArchPreset:
    """Everything the profile needs to build random-weight stages and check a sweep point.

    Attributes:
        name: the preset name (`cpu-default`, `2b`, ...) or `model:<dir>`.
        description: one line for the report.
        vision, llm, region: stage sizes.
        mm_max_length: image token budget of the processor (8192): `max_pixels = mm_max_length *
            4 * 14**2` for video, `mm_max_length * 14**2` per still image and per crop call.
        max_frames: longest video the config allows (180).
        default_variants: variants a sweep runs when none is given.
        model_dir: the checkpoint directory for `model:<dir>` presets, else None.
    """

    name: str
    description: str
    vision: VisionShape = field(default_factory=VisionShape)
    llm: LLMShape = field(default_factory=LLMShape)
    region: RegionShape = field(default_factory=RegionShape)
    mm_max_length: int = 8192
    max_frames: int = 180
    default_variants: tuple[str, ...] = ("full",)
    model_dir: str | None = None

    @property
    def mm_hidden_size(self) -> int:
        return self.vision.hidden_size

    def to_dict(self) -> dict:
        """JSON-ready description (recorded in every profile)."""
        return dataclasses.asdict(self)


_QWEN25_1_5B = LLMShape()
_QWEN25_7B = LLMShape(
    hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4, tie_word_embeddings=False
)

PRESETS: dict[str, ArchPreset] = {
    "cpu-default": ArchPreset(
        name="cpu-default",
        description="real structure shrunk for 2 CPU cores: ViT 2x144 (2 heads of 72), LLM 2x256 (2/1 heads of 128), vocab 32768",
        vision=VisionShape(hidden_size=144, intermediate_size=538, num_layers=2, num_heads=2),
        llm=LLMShape(hidden_size=256, intermediate_size=1496, num_layers=2, num_heads=2, num_kv_heads=1, vocab_size=32768),
        default_variants=("full", "lite"),
    ),
    "2b": ArchPreset(name="2b", description="PixelRefer-2B: SigLIP-NaViT 27x1152 + Qwen2.5-1.5B", llm=_QWEN25_1_5B),
    "7b": ArchPreset(name="7b", description="PixelRefer-7B: SigLIP-NaViT 27x1152 + Qwen2.5-7B", llm=_QWEN25_7B),
    "lite-2b": ArchPreset(
        name="lite-2b",
        description="PixelRefer-Lite-2B: SigLIP-NaViT 27x1152 + Qwen2.5-1.5B, object tokens only",
        llm=_QWEN25_1_5B,
        default_variants=("lite",),
    ),
    "lite-7b": ArchPreset(
        name="lite-7b",
        description="PixelRefer-Lite-7B: SigLIP-NaViT 27x1152 + Qwen2.5-7B, object tokens only",
        llm=_QWEN25_7B,
        default_variants=("lite",),
    ),
}


def get_preset(name: str) -> ArchPreset:
    """The preset called `name`; `ProfileInputError` listing the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ProfileInputError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def _int_field(config: dict, key: str, default: int, where: str) -> int:
    value = config.get(key)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ProfileInputError(f"{where}: field {key!r} must be a positive integer, got {value!r}")
    return value


def preset_from_model_dir(path: str | Path) -> ArchPreset:
    """A preset with the sizes of the checkpoint in `path` (its `config.json`; weights unread).

    Reads the Qwen2 fields, `vision_encoder_config` (missing fields take the released values),
    `mm_max_length`, `mask_num`, `max_frames` and `model_type` (`pixelreferlite_qwen2`
    makes Lite the default variant). Raises `ProfileInputError` when the directory or its
    `config.json` is missing or unreadable, or a size field is not a positive integer.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ProfileInputError(f"--model {str(path)!r}: no such directory")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ProfileInputError(f"--model {str(path)!r}: no config.json in the directory")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileInputError(f"--model {str(path)!r}: cannot read config.json ({exc})") from None
    if not isinstance(config, dict):
        raise ProfileInputError(f"--model {str(path)!r}: config.json does not hold a JSON object")
    where = str(config_path)
    base_llm, base_vision = LLMShape(), VisionShape()
    llm_fields = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    hidden = _int_field(llm_fields, "hidden_size", base_llm.hidden_size, where)
    heads = _int_field(llm_fields, "num_attention_heads", base_llm.num_heads, where)
    llm = LLMShape(
        hidden_size=hidden,
        intermediate_size=_int_field(llm_fields, "intermediate_size", base_llm.intermediate_size, where),
        num_layers=_int_field(llm_fields, "num_hidden_layers", base_llm.num_layers, where),
        num_heads=heads,
        num_kv_heads=_int_field(llm_fields, "num_key_value_heads", heads, where),
        head_dim=_int_field(llm_fields, "head_dim", hidden // heads, where),
        vocab_size=_int_field(llm_fields, "vocab_size", base_llm.vocab_size, where),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", llm_fields.get("tie_word_embeddings", False))),
        max_position_embeddings=_int_field(llm_fields, "max_position_embeddings", base_llm.max_position_embeddings, where),
        rms_norm_eps=float(llm_fields.get("rms_norm_eps", base_llm.rms_norm_eps)),
        rope_theta=float(llm_fields.get("rope_theta", base_llm.rope_theta)),
    )
    vision_fields = config.get("vision_encoder_config") or config.get("vision_config") or {}
    if not isinstance(vision_fields, dict):
        raise ProfileInputError(f"{where}: 'vision_encoder_config' must be a JSON object")
    vision = VisionShape(
        hidden_size=_int_field(vision_fields, "hidden_size", config.get("mm_hidden_size", base_vision.hidden_size), where),
        intermediate_size=_int_field(vision_fields, "intermediate_size", base_vision.intermediate_size, where),
        num_layers=_int_field(vision_fields, "num_hidden_layers", base_vision.num_layers, where),
        num_heads=_int_field(vision_fields, "num_attention_heads", base_vision.num_heads, where),
        patch_size=_int_field(vision_fields, "patch_size", base_vision.patch_size, where),
        spatial_merge_size=_int_field(config, "spatial_merge_size", base_vision.spatial_merge_size, where),
    )
    lite = "lite" in str(config.get("model_type", ""))
    return ArchPreset(
        name=f"model:{directory.name}",
        description=f"config.json of {directory.resolve()} (random weights of the same shapes)",
        vision=vision,
        llm=llm,
        region=RegionShape(mask_num=_int_field(config, "mask_num", 32, where)),
        mm_max_length=_int_field(config, "mm_max_length", 8192, where),
        max_frames=_int_field(config, "max_frames", 180, where),
        default_variants=("lite",) if lite else ("full",),
        model_dir=str(directory.resolve()),
    )
