"""Configurations of PixelRefer and PixelRefer-Lite, read from the released `config.json` unchanged.

Three classes:

- `PixelReferFastVisionConfig`: the NaViT SigLIP vision encoder (VL3-SigLIP-NaViT shape by default),
  the `vision_encoder_config` sub-config of the released checkpoints (docs/spec.md §4, §9.2).
- `PixelReferFastConfig` (`model_type="pixelrefer_qwen2"`): Qwen2 fields plus the multimodal fields
  of the full model and our region-encoder options.
- `PixelReferFastLiteConfig` (`model_type="pixelreferlite_qwen2"`): the same fields with the Lite
  defaults (3 k-means iterations, first-local-crop reuse).

Both top-level configs subclass transformers' own `Qwen2Config` so every LLM field (`hidden_size`,
`num_key_value_heads`, `rope_theta` / `rope_parameters`, `tie_word_embeddings`, ...) keeps its
meaning. Fields of the released file that inference does not use (`mm_vision_select_layer`,
`image_aspect_ratio`, `tokenizer_model_max_length`, learning rates, Lite's `cross_attn_*` /
`fast_token_*`, ...) are kept as plain attributes and written back by `save_pretrained`.
"""

from __future__ import annotations

import re
from typing import Any

from transformers import Qwen2Config
from transformers.configuration_utils import PreTrainedConfig

MODEL_TYPE = "pixelrefer_qwen2"
LITE_MODEL_TYPE = "pixelreferlite_qwen2"
MODEL_TYPES = (MODEL_TYPE, LITE_MODEL_TYPE)
KMEANS_INITS = ("parity", "deterministic")
_PROJECTOR_PATTERN = re.compile(r"^mlp(\d+)x_gelu$")


def projector_depth(projector_type: str) -> int:
    """Number of Linear layers of an `mlp{N}x_gelu` projector; `ValueError` for any other type."""
    match = _PROJECTOR_PATTERN.match(projector_type) if isinstance(projector_type, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"mm_projector_type={projector_type!r} is not supported; accepted: 'mlp<N>x_gelu' with N >= 1 "
            "(the released checkpoints use 'mlp2x_gelu')"
        )
    return int(match.group(1))


class PixelReferFastVisionConfig(PreTrainedConfig):
    r"""The NaViT SigLIP vision encoder of PixelRefer (VL3-SigLIP-NaViT architecture, docs/spec.md §4).

    Read from the `vision_encoder_config` entry of a released `config.json`; extra keys of that entry
    (`architectures`, `_name_or_path`, ...) are kept as attributes, its `model_type` is dropped.

    Args:
        hidden_size (`int`, defaults to 1152): channels C of the patch tokens.
        intermediate_size (`int`, defaults to 4304): MLP width.
        num_hidden_layers (`int`, defaults to 27): pre-norm transformer blocks.
        num_attention_heads (`int`, defaults to 16): heads; `hidden_size / heads` must be a multiple of
            4 (2-D RoPE splits each head's half into a row and a column part).
        num_channels (`int`, defaults to 3): image channels.
        patch_size (`int`, defaults to 14): patch side; a packed row holds
            `num_channels * patch_size**2` (588) values.
        hidden_act (`str`, defaults to `"gelu_pytorch_tanh"`): MLP activation.
        layer_norm_eps (`float`, defaults to 1e-6): eps of every LayerNorm.
        attention_dropout (`float`, defaults to 0.0): unused at inference.
        spatial_merge_size (`int`, defaults to 2): video frames' window size (read from the checkpoint;
            the encoder takes the per-image stride from its `merge_sizes` input).
        rope_theta (`float`, defaults to 10000.0): base of the 2-D rotary frequencies.
    """

    model_type = "pixelrefer_fast_vision"

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    spatial_merge_size: int = 2
    rope_theta: float = 10000.0

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"vision hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.head_dim % 4:
            raise ValueError(
                f"vision head_dim={self.head_dim} (hidden_size / num_attention_heads) must be a multiple of 4 for the 2-D RoPE"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patch_dim(self) -> int:
        """Values per packed patch row: `num_channels * patch_size**2` (588)."""
        return self.num_channels * self.patch_size * self.patch_size


class PixelReferFastConfig(Qwen2Config):
    r"""PixelRefer (Vision-Object framework): Qwen2 + NaViT vision encoder + projector + region encoder.

    Reads the released `config.json` unchanged. All Qwen2 fields are inherited from `Qwen2Config`
    (`vocab_size`, `hidden_size` D, `intermediate_size`, `num_hidden_layers`,
    `num_attention_heads`, `num_key_value_heads`, `rms_norm_eps`, `rope_theta` /
    `rope_parameters`, `max_position_embeddings`, `tie_word_embeddings`, `dtype` / `torch_dtype`,
    `bos_token_id`, `eos_token_id`, `pad_token_id`, ...).

    Released fields (docs/spec.md §9.2):
        vision_encoder_config (`dict` or `PixelReferFastVisionConfig`, optional): the vision encoder;
            VL3-SigLIP-NaViT defaults when absent.
        mm_vision_encoder (`str`, defaults to `"DAMO-NLP-SG/VL3-SigLIP-NaViT"`): the vision repo the
            official code took the image processor from; informational here.
        mm_hidden_size (`int`, defaults to 1152): vision channels C; must equal the vision `hidden_size`.
        mm_projector_type (`str`, defaults to `"mlp2x_gelu"`): `mlp<N>x_gelu` (N Linear layers, GELU
            between).
        spatial_merge_size (`int`, defaults to 2): stride of video frames (2x2 average of features).
        mm_max_length (`int`, optional): vision-token budget of the processor; absent means the official
            fallback `9477 // spatial_merge_size**2`.
        use_token_compression (`bool`, defaults to True): video frame pruning (the processor applies it).
        mask_num (`int`, defaults to 32): K, region tokens per mask (k-means clusters).
        image_token_index (`int`, optional): id of `<image>`; set from the tokenizer at load time.
        region_token_index (`int`, optional): id of `<REGION>`; set from the tokenizer at load time.

    Our options (the defaults reproduce the three quirks of the official code the released weights were
    trained with; each option gives the corrected or deterministic behaviour):
        kmeans_init (`str`, defaults to `"parity"`): k-means initialisation of the region tokenizer:
            `"parity"` draws `randperm` from the global CPU RNG per clustered region in region order
            (official behaviour, random token order); `"deterministic"` uses a fixed, batched init.
        swap_box_axes (`bool`, defaults to True): box position embedding with the official swapped axes
            (docs/spec.md §5.3); False gives the corrected layout (not what the weights were trained with).
        reuse_first_local_crop (`bool`, defaults to True): Lite only, read by the processor: later masks
            on an image reuse the first mask's 224-px local view (official quirk, docs/spec.md §3.2).
        region_kmeans_iters (`int`, defaults to 5 full / 3 Lite): k-means iterations.

    Example:
        >>> from transformers import AutoConfig
        >>> import pixelrefer_fast  # registers the model types
        >>> config = AutoConfig.from_pretrained("path/to/PixelRefer-2B")
    """

    model_type = MODEL_TYPE
    sub_configs = {"vision_encoder_config": PixelReferFastVisionConfig}

    vision_encoder_config: Any = None
    mm_vision_encoder: str = "DAMO-NLP-SG/VL3-SigLIP-NaViT"
    mm_hidden_size: int = 1152
    mm_projector_type: str = "mlp2x_gelu"
    spatial_merge_size: int = 2
    mm_max_length: int | None = None
    use_token_compression: bool = True
    mask_num: int = 32
    image_token_index: int | None = None
    region_token_index: int | None = None
    kmeans_init: str = "parity"
    swap_box_axes: bool = True
    reuse_first_local_crop: bool = True
    region_kmeans_iters: int = 5

    def __post_init__(self, **kwargs):
        vision = self.vision_encoder_config
        if vision is None:
            vision = PixelReferFastVisionConfig(hidden_size=self.mm_hidden_size)
        elif isinstance(vision, dict):
            vision = PixelReferFastVisionConfig(**vision)
        elif not isinstance(vision, PixelReferFastVisionConfig):
            raise TypeError(
                f"vision_encoder_config must be a dict or PixelReferFastVisionConfig, got {type(vision).__name__}"
            )
        self.vision_encoder_config = vision
        super().__post_init__(**kwargs)
        self._validate_multimodal_fields()

    def _validate_multimodal_fields(self) -> None:
        projector_depth(self.mm_projector_type)
        if self.mm_hidden_size != self.vision_encoder_config.hidden_size:
            raise ValueError(
                f"mm_hidden_size={self.mm_hidden_size} differs from vision_encoder_config.hidden_size="
                f"{self.vision_encoder_config.hidden_size}; they must be equal"
            )
        if self.kmeans_init not in KMEANS_INITS:
            raise ValueError(f"kmeans_init={self.kmeans_init!r} is not supported; accepted: {KMEANS_INITS}")
        for name in ("mask_num", "region_kmeans_iters", "spatial_merge_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")

    @property
    def is_lite(self) -> bool:
        """True for PixelRefer-Lite (Object-Only framework: no global image tokens)."""
        return self.model_type == LITE_MODEL_TYPE


class PixelReferFastLiteConfig(PixelReferFastConfig):
    r"""PixelRefer-Lite (Object-Only framework): the fields of `PixelReferFastConfig` with Lite defaults.

    Differences from the full model's defaults: `region_kmeans_iters=3` (official Lite k-means), and
    the processor option `reuse_first_local_crop=True` matters here. `mm_projector_type` is still
    read (the released Lite checkpoints carry projector weights) but the projector is not built.
    """

    model_type = LITE_MODEL_TYPE

    region_kmeans_iters: int = 3


__all__ = [
    "LITE_MODEL_TYPE",
    "MODEL_TYPE",
    "MODEL_TYPES",
    "PixelReferFastConfig",
    "PixelReferFastLiteConfig",
    "PixelReferFastVisionConfig",
    "projector_depth",
]
