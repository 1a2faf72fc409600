"""Random-weight checkpoints in the OFFICIAL layout of PixelRefer / PixelRefer-Lite.

`write_random_checkpoint(directory, variant, size)` writes what a released checkpoint folder holds:
`config.json` with the released field names (`model_type`, `vision_encoder_config` with
VideoLLaMA3's `model_type`, the unused training fields), the state dict with the released key names
and shapes (one safetensors file, sharded safetensors with an index, or `pytorch_model.bin`),
`generation_config.json` with Qwen2.5-Instruct-like sampling defaults (`repetition_penalty`
included), VL3-SigLIP-NaViT's `preprocessor_config.json` and the tokenizer files. Nothing is
downloaded: the tokenizer is a small byte-level BPE trained in-process (`tiny_tokenizer`) with the
Qwen2 pre-tokenizer pattern and PixelRefer's special tokens.

The answers are noise (random weights), but loading, the processor, `describe`, the CLI and the
server run exactly as on a real checkpoint, at the speed of the chosen size. Command line:
`pixelrefer-fast init-random DIR --variant lite --size tiny`.

Sizes (`SIZES`):

- `tiny`: LLM hidden 64 (4 heads of 16, 2 KV heads, 2 layers, MLP 96), vision hidden 48 (2 heads of
  24, 2 layers, MLP 80), `mask_num` 4; the vocabulary is the tokenizer's (~430). What the tests use.
- `cpu-default`: the profile's `cpu-default` preset (vision 2 x 144, LLM 2 x 256, vocabulary
  32768, `mask_num` 32).
- `2b`: PixelRefer-2B's shapes (SigLIP-NaViT 27 x 1152, Qwen2.5-1.5B, vocabulary 151669), stored in
  bfloat16 (about 4.4 GB on disk).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

FORMATS = ("safetensors", "safetensors-sharded", "bin")
VARIANTS = ("full", "lite")

QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PIXELREFER_ADDED_TOKENS = ["<image>", "<|stream_start|>", "<|stream_end|>", "<REGION>"]
_CORPUS = [
    "What is the category of the object? Please describe in detail the marked object in the video.",
    "There is one object in the image: a dog on a bed beside a laptop. Time 0.0s: 1.5 2.0 3.5",
    "user assistant system The bridge crosses the river; the skyline stands behind it.",
    "Colourful wooden stools in a shop front. A herd of horses runs on the grass, one white horse in front.",
    "[ ] ( ) , . : ; ! ? 0 1 2 3 4 5 6 7 8 9 \n\n What is the relationship between and ?",
]


@dataclass(frozen=True)
class CheckpointSize:
    """The shapes of one `--size`.

    Attributes:
        llm: Qwen2 sizes (`hidden_size`, `intermediate_size`, `num_hidden_layers`,
            `num_attention_heads`, `num_key_value_heads`).
        vision: SigLIP-NaViT sizes (`hidden_size`, `intermediate_size`, `num_hidden_layers`,
            `num_attention_heads`).
        mask_num: tokens per region K.
        vocab_size: embedding rows; None: the tokenizer's length.
        dtype: the stored dtype (`config.json`'s `torch_dtype`).
        tie_word_embeddings: the default for this size (2B ties; the 7B layout does not).
    """

    llm: dict
    vision: dict
    mask_num: int
    vocab_size: int | None
    dtype: str = "float32"
    tie_word_embeddings: bool = True


SIZES: dict[str, CheckpointSize] = {
    "tiny": CheckpointSize(
        llm=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        vision=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2),
        mask_num=4, vocab_size=None,
    ),
    "cpu-default": CheckpointSize(
        llm=dict(hidden_size=256, intermediate_size=1496, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1),
        vision=dict(hidden_size=144, intermediate_size=538, num_hidden_layers=2, num_attention_heads=2),
        mask_num=32, vocab_size=32768,
    ),
    "2b": CheckpointSize(
        llm=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2),
        vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16),
        mask_num=32, vocab_size=151669, dtype="bfloat16",
    ),
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _size(size: str | CheckpointSize) -> CheckpointSize:
    if isinstance(size, CheckpointSize):
        return size
    if size not in SIZES:
        raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
    return SIZES[size]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.add_special_tokens(CHAT_SPECIAL_TOKENS + PIXELREFER_ADDED_TOKENS)
    return tok.to_str()


def tiny_tokenizer(save_dir: str | Path | None = None):
    """A small Qwen2-style fast tokenizer (deterministic, ~430 ids, built offline); saved to `save_dir` if given.

    Returns:
        `transformers.PreTrainedTokenizerFast` with eos `<|im_end|>`, pad `<|endoftext|>`, no BOS,
        and the PixelRefer tokens `<image>`, `<|stream_start|>`, `<|stream_end|>`, `<REGION>`
        as special tokens with consecutive ids, in that order, at the end of the vocabulary.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None,
        additional_special_tokens=PIXELREFER_ADDED_TOKENS, padding_side="left",
    )
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer


def official_config(variant: str, vocab_size: int, token_ids: dict[str, int], *, size: str | CheckpointSize = "tiny",
                    tie_word_embeddings: bool = True, dtype: str | None = None) -> dict:
    """A `config.json` dict with the released field names (values of `size`)."""
    shapes = _size(size)
    config = {
        "architectures": ["PixelreferliteQwen2ForCausalLM" if variant == "lite" else "PixelreferQwen2ForCausalLM"],
        "model_type": "pixelreferlite_qwen2" if variant == "lite" else "pixelrefer_qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "hidden_act": "silu",
        **shapes.llm,
        "initializer_range": 0.02,
        "max_position_embeddings": 32768,
        "max_window_layers": 21,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": dtype or shapes.dtype,
        "transformers_version": "4.46.3",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
        "image_aspect_ratio": "qwen2vl",
        "image_size": 28,
        "image_token_index": token_ids["<image>"],
        "image_token_length": 1,
        "is_alignment": False,
        "llm_lr": None,
        "mask_num": shapes.mask_num,
        "max_frames": 180,
        "mm_hidden_size": shapes.vision["hidden_size"],
        "mm_max_length": 8192,
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_encoder": "DAMO-NLP-SG/SigLIP-NaViT",
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "region_encoder_lr": 1e-05,
        "region_token_index": token_ids["<REGION>"],
        "spatial_merge_size": 2,
        "tokenizer_model_max_length": 16384,
        "tokenizer_padding_side": "right",
        "use_mm_proj": True,
        "use_token_compression": True,
        "vision_encoder_lr": None,
        "vision_encoder_config": {
            "model_type": "videollama3_vision_encoder",
            **shapes.vision,
            "num_channels": 3,
            "patch_size": 14,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
            "attention_dropout": 0.0,
            "torch_dtype": "bfloat16",
        },
    }
    if variant == "lite":
        config.update({"cross_attn_layers": None, "fast_token_num": None})
    return config


def official_key_shapes(variant: str, vocab_size: int, *, size: str | CheckpointSize = "tiny",
                        tie_word_embeddings: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of the released state dict with its shape, at `size`."""
    shapes_of = _size(size)
    llm, vision = shapes_of.llm, shapes_of.vision
    c, ci, d, di = vision["hidden_size"], vision["intermediate_size"], llm["hidden_size"], llm["intermediate_size"]
    head_dim = d // llm["num_attention_heads"]
    kv = llm["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {}
    vis = "model.vision_encoder.vision_encoder."
    shapes[vis + "embeddings.patch_embedding.weight"] = (c, 3, 14, 14)
    shapes[vis + "embeddings.patch_embedding.bias"] = (c,)
    for i in range(vision["num_hidden_layers"]):
        pre = f"{vis}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{pre}self_attn.{proj}.weight"] = (c, c)
            shapes[f"{pre}self_attn.{proj}.bias"] = (c,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{pre}{norm}.weight"] = (c,)
            shapes[f"{pre}{norm}.bias"] = (c,)
        shapes[f"{pre}mlp.fc1.weight"], shapes[f"{pre}mlp.fc1.bias"] = (ci, c), (ci,)
        shapes[f"{pre}mlp.fc2.weight"], shapes[f"{pre}mlp.fc2.bias"] = (c, ci), (c,)
    shapes[vis + "post_layernorm.weight"] = (c,)
    shapes[vis + "post_layernorm.bias"] = (c,)
    shapes["model.mm_projector.readout.0.weight"], shapes["model.mm_projector.readout.0.bias"] = (d, c), (d,)
    shapes["model.mm_projector.readout.2.weight"], shapes["model.mm_projector.readout.2.bias"] = (d, d), (d,)
    reg = "model.region_encoder."
    shapes[reg + "pos_linear.weight"], shapes[reg + "pos_linear.bias"] = (c, 2), (c,)
    shapes[reg + "feat_linear.0.weight"], shapes[reg + "feat_linear.0.bias"] = (d, c), (d,)
    shapes[reg + "feat_linear.2.weight"], shapes[reg + "feat_linear.2.bias"] = (d, d), (d,)
    if variant == "lite":
        shapes[reg + "mask_embedding.weight"], shapes[reg + "mask_embedding.bias"] = (c, 1, 1, 1), (c,)
        for scope in ("local", "global"):
            shapes[f"{reg}fusion_attention_{scope}.in_proj_weight"] = (3 * c, c)
            shapes[f"{reg}fusion_attention_{scope}.in_proj_bias"] = (3 * c,)
            shapes[f"{reg}fusion_attention_{scope}.out_proj.weight"] = (c, c)
            shapes[f"{reg}fusion_attention_{scope}.out_proj.bias"] = (c,)
            shapes[f"{reg}ln_{scope}.weight"], shapes[f"{reg}ln_{scope}.bias"] = (c,), (c,)
    shapes["model.embed_tokens.weight"] = (vocab_size, d)
    for i in range(llm["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        shapes[pre + "self_attn.q_proj.weight"], shapes[pre + "self_attn.q_proj.bias"] = (d, d), (d,)
        for proj in ("k_proj", "v_proj"):
            shapes[f"{pre}self_attn.{proj}.weight"], shapes[f"{pre}self_attn.{proj}.bias"] = (kv, d), (kv,)
        shapes[pre + "self_attn.o_proj.weight"] = (d, d)
        shapes[pre + "mlp.gate_proj.weight"] = shapes[pre + "mlp.up_proj.weight"] = (di, d)
        shapes[pre + "mlp.down_proj.weight"] = (d, di)
        shapes[pre + "input_layernorm.weight"] = shapes[pre + "post_attention_layernorm.weight"] = (d,)
    shapes["model.norm.weight"] = (d,)
    if not tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab_size, d)
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """O(1) activations: weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norms ~ 1 + N(0, 0.1), biases ~ N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        if "norm" in key and key.endswith("weight") or key.endswith(("ln_local.weight", "ln_global.weight")):
            value = 1.0 + 0.1 * noise
        elif key.endswith("bias"):
            value = 0.1 * noise
        elif "embed_tokens" in key:
            value = noise
        else:
            value = noise / math.sqrt(math.prod(shape[1:]))
        state[key] = value.to(dtype).contiguous()
    return state


def _save_weights(state: dict[str, torch.Tensor], directory: Path, fmt: str) -> None:
    from safetensors.torch import save_file

    if fmt == "safetensors":
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    elif fmt == "safetensors-sharded":
        keys = sorted(state)
        shards = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
        weight_map, total = {}, 0
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file({k: state[k] for k in shard}, directory / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            total += sum(state[k].numel() * state[k].element_size() for k in shard)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    else:
        torch.save(state, directory / "pytorch_model.bin")


def write_random_checkpoint(
    directory: str | Path,
    variant: str = "full",
    size: str | CheckpointSize = "tiny",
    fmt: str = "safetensors",
    *,
    tie_word_embeddings: bool | None = None,
    seed: int = 0,
    drop_keys: tuple[str, ...] = (),
    extra_keys: dict[str, torch.Tensor] | None = None,
    config_overrides: dict | None = None,
) -> Path:
    """Write a random-weight checkpoint in the official layout into `directory`; returns the directory.

    Args:
        directory: created if missing; existing files of the same names are replaced.
        variant: `"full"` (`pixelrefer_qwen2`) or `"lite"` (`pixelreferlite_qwen2`).
        size: `"tiny"`, `"cpu-default"` or `"2b"` (`SIZES`), or a `CheckpointSize`.
        fmt: `"safetensors"`, `"safetensors-sharded"` (2 shards + index) or `"bin"`
            (`pytorch_model.bin`).
        tie_word_embeddings: False stores `lm_head.weight` (7B layout); None takes the size's default.
        seed: the weights' random seed.
        drop_keys / extra_keys: remove / add state-dict entries (to test a strict loader).
        config_overrides: entries replacing those of `config.json`.

    Raises:
        ValueError: an unknown variant, size or format.

    Example:
        >>> write_random_checkpoint("/tmp/pixelrefer-tiny", "lite", "tiny")
        PosixPath('/tmp/pixelrefer-tiny')
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    shapes_of = _size(size)
    tie = shapes_of.tie_word_embeddings if tie_word_embeddings is None else tie_word_embeddings
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(directory)
    vocab = tokenizer.get_vocab()
    token_ids = {t: vocab[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<REGION>")}
    vocab_size = max(len(tokenizer), shapes_of.vocab_size or 0)
    config = official_config(variant, vocab_size, token_ids, size=shapes_of, tie_word_embeddings=tie)
    config.update(config_overrides or {})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    generation = {
        "bos_token_id": token_ids["<|endoftext|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
        "do_sample": True,
        "eos_token_id": [token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        "repetition_penalty": 1.1,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "transformers_version": "4.46.3",
    }
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
    preprocessor = {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "image_processor_type": "DAMOVLImageProcessor",
        "max_tokens": 16384, "min_tokens": 16, "patch_size": 14, "resample": 3, "rescale_factor": 1 / 255,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    shapes = official_key_shapes(variant, vocab_size, size=shapes_of, tie_word_embeddings=tie)
    state = random_state_dict(shapes, seed=seed, dtype=_DTYPES[shapes_of.dtype])
    for key in drop_keys:
        del state[key]
    state.update(extra_keys or {})
    _save_weights(state, directory, fmt)
    return directory


__all__ = [
    "FORMATS",
    "SIZES",
    "VARIANTS",
    "CheckpointSize",
    "official_config",
    "official_key_shapes",
    "random_state_dict",
    "tiny_tokenizer",
    "write_random_checkpoint",
]
