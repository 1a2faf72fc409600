"""Tiny random-weight checkpoints in the OFFICIAL layout of PixelRefer / PixelRefer-Lite.

Written from the spec (§9), independently of our module tree: the ``config.json`` uses the released
field names (``model_type``, ``vision_encoder_config`` with VideoLLaMA3's ``model_type``, the unused
training fields), the state dict uses the released key names and shapes, and the files come in the
formats the loaders must read: one safetensors file, sharded safetensors with an index, or
``pytorch_model.bin``. ``generation_config.json`` carries Qwen2.5-Instruct-like sampling defaults with
``repetition_penalty``; ``preprocessor_config.json`` is VL3-SigLIP-NaViT's. The tokenizer is
``fixtures.make_tiny_tokenizer`` (task C).

Sizes: LLM hidden 64 (4 heads of 16, 2 KV heads, 2 layers, MLP 96), vision hidden 48 (2 heads of 24,
2 layers, MLP 80), ``mask_num`` 4; Lite's infusion attention has 8 heads of 6.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from tests.model.fixtures import make_tiny_tokenizer

FORMATS = ("safetensors", "safetensors-sharded", "bin")
VARIANTS = ("full", "lite")

LLM = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
VISION = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2)
MASK_NUM = 4


def official_config(variant: str, vocab_size: int, token_ids: dict[str, int], *, tie_word_embeddings: bool = True,
                    dtype: str = "float32") -> dict:
    """A ``config.json`` dict with the released field names (values sized down)."""
    config = {
        "architectures": ["PixelreferliteQwen2ForCausalLM" if variant == "lite" else "PixelreferQwen2ForCausalLM"],
        "model_type": "pixelreferlite_qwen2" if variant == "lite" else "pixelrefer_qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "hidden_act": "silu",
        **LLM,
        "initializer_range": 0.02,
        "max_position_embeddings": 32768,
        "max_window_layers": 21,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": dtype,
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
        "mask_num": MASK_NUM,
        "max_frames": 180,
        "mm_hidden_size": VISION["hidden_size"],
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
            **VISION,
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


def official_key_shapes(variant: str, vocab_size: int, *, tie_word_embeddings: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of the released state dict with its shape (spec §9.1), sized down."""
    c, ci, d, di = VISION["hidden_size"], VISION["intermediate_size"], LLM["hidden_size"], LLM["intermediate_size"]
    kv = LLM["num_key_value_heads"] * (d // LLM["num_attention_heads"])
    shapes: dict[str, tuple[int, ...]] = {}
    vis = "model.vision_encoder.vision_encoder."
    shapes[vis + "embeddings.patch_embedding.weight"] = (c, 3, 14, 14)
    shapes[vis + "embeddings.patch_embedding.bias"] = (c,)
    for i in range(VISION["num_hidden_layers"]):
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
    for i in range(LLM["num_hidden_layers"]):
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
    elif fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    else:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def make_tiny_checkpoint(
    directory: str | Path,
    variant: str = "full",
    fmt: str = "safetensors",
    *,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    drop_keys: tuple[str, ...] = (),
    extra_keys: dict[str, torch.Tensor] | None = None,
    config_overrides: dict | None = None,
) -> Path:
    """Write a tiny checkpoint in the official layout into ``directory``; returns the directory.

    Args:
        variant: "full" (``pixelrefer_qwen2``) or "lite" (``pixelreferlite_qwen2``).
        fmt: "safetensors", "safetensors-sharded" (2 shards + index) or "bin" (``pytorch_model.bin``).
        tie_word_embeddings: False stores ``lm_head.weight`` (7B layout).
        drop_keys / extra_keys: remove / add state-dict entries (to test the strict loader).
        config_overrides: entries replacing those of ``config.json``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(directory)
    vocab = tokenizer.get_vocab()
    token_ids = {t: vocab[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<REGION>")}
    config = official_config(variant, len(tokenizer), token_ids, tie_word_embeddings=tie_word_embeddings)
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
    shapes = official_key_shapes(variant, len(tokenizer), tie_word_embeddings=tie_word_embeddings)
    state = random_state_dict(shapes, seed=seed)
    for key in drop_keys:
        del state[key]
    state.update(extra_keys or {})
    _save_weights(state, directory, fmt)
    return directory
