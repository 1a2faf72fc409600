"""Loading official-layout checkpoints: formats, tied lm_head, strict keys, model types, config, round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

import pixelrefer_fast
import pixelrefer_kernels
from pixelrefer_fast import PixelReferFastConfig, PixelReferFastForCausalLM, PixelReferFastLiteForCausalLM
from pixelrefer_fast.checkpoint import special_token_ids
from pixelrefer_fast.modeling_pixelrefer_fast import load_pretrained
from tests.model.fixtures import box_mask
from tests.model.tiny_checkpoint import FORMATS, official_key_shapes, random_state_dict
from tests.model.tiny_checkpoint import make_tiny_checkpoint as make

CLASSES = {"full": PixelReferFastForCausalLM, "lite": PixelReferFastLiteForCausalLM}


def _expected_state(variant, vocab, tied=True):
    """The official keys our model must hold, with their saved values (Lite drops the projector)."""
    state = random_state_dict(official_key_shapes(variant, vocab, tie_word_embeddings=tied), seed=0)
    if variant == "lite":
        state = {k: v for k, v in state.items() if not k.startswith("model.mm_projector.")}
    return state


@pytest.mark.parametrize("variant", ["full", "lite"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_official_layout_loads_through_auto_class(tmp_path, variant, fmt):
    directory = make(tmp_path, variant, fmt)
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert type(model) is CLASSES[variant]
    assert not model.training
    state = model.state_dict()
    expected = _expected_state(variant, model.config.vocab_size)
    assert set(state) - {"lm_head.weight"} == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied (2B layout)


def test_untied_lm_head_loads(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(make(tmp_path, "full", tie_word_embeddings=False))
    expected = _expected_state("full", model.config.vocab_size, tied=False)
    assert torch.equal(model.lm_head.weight, expected["lm_head.weight"])
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize(
    "variant, drop, extra, pattern",
    [
        pytest.param("full", ("model.layers.1.mlp.down_proj.weight",), None, "missing keys.*model.layers.1.mlp.down_proj.weight",
                     id="missing-llm"),
        pytest.param("full", ("model.mm_projector.readout.2.bias",), None, "missing keys.*model.mm_projector.readout.2.bias",
                     id="missing-projector"),
        pytest.param("lite", ("model.region_encoder.fusion_attention_global.in_proj_weight",), None,
                     "missing keys.*fusion_attention_global.in_proj_weight", id="missing-lite-infusion"),
        pytest.param("full", (), {"model.foreign.weight": torch.ones(2)}, "unexpected keys.*model.foreign.weight",
                     id="foreign"),
        pytest.param("full", (), {"model.region_encoder.mask_embedding.bias": torch.ones(48)},
                     "unexpected keys.*mask_embedding.bias", id="lite-key-in-full"),
    ],
)
def test_missing_or_foreign_keys_are_named(tmp_path, variant, drop, extra, pattern):
    directory = make(tmp_path, variant, drop_keys=drop, extra_keys=extra)
    with pytest.raises(ValueError, match=pattern):
        AutoModelForCausalLM.from_pretrained(directory)


def test_lite_allow_list(tmp_path):
    """Lite's unused weights: the projector is accepted and dropped, mask_embedding may be absent."""
    directory = make(tmp_path, "lite", drop_keys=("model.region_encoder.mask_embedding.weight",
                                                   "model.region_encoder.mask_embedding.bias"))
    model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert {k for k in info["unexpected_keys"] if not k.startswith("model.mm_projector.")} == set()
    assert not hasattr(model.model, "mm_projector")
    assert hasattr(model.model.region_encoder, "mask_embedding")


@pytest.mark.parametrize("model_type", ["qwen2_vl_unknown", "qwen2"])
def test_unknown_model_type_is_a_clear_error(tmp_path, model_type):
    directory = make(tmp_path, "full", config_overrides={"model_type": model_type})
    with pytest.raises(ValueError, match=f"model_type '{model_type}' is not a PixelRefer checkpoint"):
        load_pretrained(directory)
    with pytest.raises(ValueError, match="accepted model types: pixelrefer_qwen2, pixelreferlite_qwen2"):
        PixelReferFastForCausalLM.from_pretrained(directory)
    if model_type != "qwen2":
        with pytest.raises(ValueError, match=model_type):
            AutoModelForCausalLM.from_pretrained(directory)


def test_wrong_variant_class_names_the_right_one(tmp_path):
    directory = make(tmp_path, "lite")
    with pytest.raises(ValueError, match="use PixelReferFastLiteForCausalLM"):
        PixelReferFastForCausalLM.from_pretrained(directory)
    assert type(load_pretrained(directory)) is PixelReferFastLiteForCausalLM


def test_token_ids_come_from_the_tokenizer(tmp_path):
    directory = make(tmp_path, "full", config_overrides={"image_token_index": 3, "region_token_index": 4})
    ids = special_token_ids(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert (model.config.image_token_index, model.config.region_token_index) == (ids["<image>"], ids["<REGION>"])
    assert ids["<REGION>"] == ids["<image>"] + 3  # official order: <image>, stream start/end, <REGION>


def test_config_reads_the_released_file_unchanged(tmp_path):
    directory = make(tmp_path, "full")
    raw = json.loads((directory / "config.json").read_text())
    config = AutoConfig.from_pretrained(directory)
    assert type(config) is PixelReferFastConfig
    vision = config.vision_encoder_config
    assert (vision.hidden_size, vision.num_attention_heads, vision.num_hidden_layers, vision.patch_size) == (48, 2, 2, 14)
    for key in ("mm_hidden_size", "mm_projector_type", "mask_num", "mm_max_length", "spatial_merge_size",
                "use_token_compression", "mm_vision_select_layer", "tokenizer_model_max_length", "mm_vision_encoder"):
        assert getattr(config, key) == raw[key], key
    assert config.rope_parameters["rope_theta"] == raw["rope_theta"]
    assert (config.kmeans_init, config.swap_box_axes, config.region_kmeans_iters) == ("parity", True, 5)
    assert AutoConfig.from_pretrained(make(tmp_path / "lite", "lite")).region_kmeans_iters == 3
    config.save_pretrained(tmp_path / "saved")
    again = AutoConfig.from_pretrained(tmp_path / "saved")
    volatile = ("_name_or_path", "transformers_version")
    assert {k: v for k, v in again.to_dict().items() if k not in volatile} == {
        k: v for k, v in config.to_dict().items() if k not in volatile
    }


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        pytest.param({"mm_projector_type": "linear"}, "mm_projector_type='linear' is not supported", id="projector"),
        pytest.param({"mm_hidden_size": 64}, "mm_hidden_size=64 differs", id="mm-hidden"),
        pytest.param({"kmeans_init": "random"}, "kmeans_init='random'", id="kmeans-init"),
        pytest.param({"mask_num": 0}, "mask_num=0", id="mask-num"),
    ],
)
def test_bad_config_values_are_refused(tmp_path, overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        AutoConfig.from_pretrained(make(tmp_path, "full", config_overrides=overrides))


@pytest.mark.parametrize("variant", ["full", "lite"])
def test_save_pretrained_round_trip(tmp_path, variant):
    source = make(tmp_path / "source", variant, tie_word_embeddings=variant == "lite")
    model = AutoModelForCausalLM.from_pretrained(source)
    processor = AutoProcessor.from_pretrained(source)
    assert isinstance(processor, pixelrefer_fast.PixelReferFastProcessor)
    model.save_pretrained(tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as f:
        saved_keys = set(f.keys())
    assert saved_keys == set(_expected_state(variant, model.config.vocab_size, tied=variant == "lite"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    image = torch.randint(0, 256, (56, 70, 3), dtype=torch.uint8).numpy()
    batch = model.place_inputs(processor(images=[image], masks=[[box_mask(56, 70, 10, 10, 25, 30)]], text=["What is <region>?"]))
    outputs = []
    for m in (model, reloaded):
        torch.manual_seed(0)
        with torch.inference_mode(), pixelrefer_kernels.force("torch"):
            outputs.append(m(**batch).logits)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
