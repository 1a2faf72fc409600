"""Build random-weight models from a preset and measure every stage of one sweep point.

The stages, each timed on the previous stage's output (the sample through the processor):

- ``preprocess``: ``PixelReferFastProcessor`` on the batch (host only: crops, resizes, patchify,
  tokenization);
- ``vision``: the ONE packed vision-encoder call over every pixel source (global images / video
  frames, region crops, Lite's global and local views), ``model.model.encode_pixels``;
- ``projector`` (full model): 2x2 merge of video frames, token pruning and the projector on the
  global tokens, ``model.model.get_image_features``;
- ``region``: box position embedding, mask pooling and k-means (``region_encoder.tokenize``); for
  the full model also ``feat_linear`` (the encoder's whole forward);
- ``infusion`` (Lite): the two object-centric cross-attentions and ``feat_linear``;
- ``prefill``: the LLM on the spliced ``inputs_embeds`` with a fresh KV cache, logits for the last
  position (as ``generate`` does);
- ``decode``: ``decode_tokens`` greedy steps on a copy of the prefill cache (the copy is untimed).

A stage that runs out of memory (CUDA OOM or ``MemoryError``) is reported as ``oom`` and the rest of
the point as ``skipped``; any other exception as ``error`` (its one-line message kept). The sweep then
goes on with the next point.
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import flops, progress
from .measure import MemoryReading, Timing, memory_scope, out_of_memory_errors, time_stage
from .presets import ArchPreset
from .report import STAGES
from .sample import sample_video
from .sweep import SweepPoint

logger = logging.getLogger("pixelrefer_fast.profiling")

KERNEL_OPS = {"full": ("varlen_attention", "region_pool", "kmeans"), "lite": ("varlen_attention", "region_pool", "kmeans", "object_infusion")}
_CPU = torch.device("cpu")


@dataclass
class StageResult:
    """The measurement of one stage of one point.

    Attributes:
        stage: one of ``report.STAGES``.
        status: ``ok``, ``oom``, ``skipped``, ``unavailable`` or ``error``.
        message: why it did not run (empty when ok).
        timing, memory: latency and peak memory (None unless ok).
        cost: analytic FLOPs and bytes (None unless ok).
        tokens: rows the stage produced or consumed (patches, object tokens, sequence tokens, new tokens).
        regions: regions handled (for regions/s), None where it does not apply.
        shapes: the stage's input shapes, recorded in the row.
    """

    stage: str
    status: str = "ok"
    message: str = ""
    timing: Timing | None = None
    memory: MemoryReading | None = None
    cost: flops.StageCost | None = None
    tokens: int | None = None
    regions: int | None = None
    shapes: dict = field(default_factory=dict)


@dataclass
class PointOutcome:
    """All stage results of a point plus the token counts the processor produced."""

    results: list[StageResult]
    image_tokens: int | None = None
    llm_tokens: int | None = None
    kernels: dict[str, str] = field(default_factory=dict)


@dataclass
class BuiltModel:
    """A random-weight ``PixelReferFast(Lite)ForCausalLM`` of one variant with its processor pieces."""

    variant: str
    model: torch.nn.Module
    tokenizer: object
    dtype: torch.dtype
    device: torch.device


def _model_classes(variant: str):
    from ..configuration_pixelrefer_fast import PixelReferFastConfig, PixelReferFastLiteConfig
    from ..modeling_pixelrefer_fast import PixelReferFastForCausalLM, PixelReferFastLiteForCausalLM

    if variant == "lite":
        return PixelReferFastLiteConfig, PixelReferFastLiteForCausalLM
    return PixelReferFastConfig, PixelReferFastForCausalLM


def model_config(preset: ArchPreset, variant: str):
    """The model config of ``variant`` with the preset's shapes (a checkpoint's own config for ``--model``)."""
    config_class, _ = _model_classes(variant)
    if preset.model_dir is not None:
        config = config_class.from_pretrained(preset.model_dir)
        if config.model_type != config_class.model_type:
            config = config_class(**{k: v for k, v in config.to_dict().items() if k != "model_type"})
        return config
    vision, llm = preset.vision, preset.llm
    return config_class(
        vocab_size=llm.vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_layers,
        num_attention_heads=llm.num_heads,
        num_key_value_heads=llm.num_kv_heads,
        head_dim=llm.head_dim,
        max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.rms_norm_eps,
        tie_word_embeddings=llm.tie_word_embeddings,
        vision_encoder_config=dict(
            hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size,
            num_hidden_layers=vision.num_layers,
            num_attention_heads=vision.num_heads,
            patch_size=vision.patch_size,
            spatial_merge_size=vision.spatial_merge_size,
            layer_norm_eps=vision.layer_norm_eps,
        ),
        mm_hidden_size=vision.hidden_size,
        spatial_merge_size=vision.spatial_merge_size,
        mm_max_length=preset.mm_max_length,
        mask_num=preset.region.mask_num,
        region_kmeans_iters=preset.region.kmeans_iters(variant),
    )


def load_tokenizer(preset: ArchPreset):
    """The checkpoint's tokenizer for ``--model`` directories that hold one, else the byte tokenizer."""
    from .tokenizer import byte_tokenizer

    if preset.model_dir is not None:
        directory = Path(preset.model_dir)
        if any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(directory))
    return byte_tokenizer()


def build_model(preset: ArchPreset, variant: str, device: torch.device, dtype: torch.dtype, *, seed: int = 0) -> BuiltModel:
    """Random weights of the preset's shapes, initialised directly on ``device`` in ``dtype``.

    The LLM attention is transformers' flash-attention 2 when flash-attn is installed (CUDA, 16-bit),
    else SDPA, as ``from_pretrained`` picks it.
    """
    from ..modeling_pixelrefer_fast import default_llm_attention

    _, model_class = _model_classes(variant)
    config = model_config(preset, variant)
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation=default_llm_attention(dtype))
    model.eval()
    tokenizer = load_tokenizer(preset)
    return BuiltModel(variant=variant, model=model, tokenizer=tokenizer, dtype=dtype, device=device)


def make_processor(built: BuiltModel, preset: ArchPreset, point: SweepPoint):
    """The processor of the point: its variant, ``mask_num`` and vision-token budget."""
    from ..image_processing_pixelrefer_fast import PixelReferFastImageProcessor
    from ..processing_pixelrefer_fast import PixelReferFastProcessor

    budget = point.max_tokens or preset.mm_max_length
    merge = preset.vision.spatial_merge_size
    image_processor = PixelReferFastImageProcessor(
        max_pixels=PixelReferFastImageProcessor.max_pixels_for(budget, merge, preset.vision.patch_size),
        patch_size=preset.vision.patch_size,
        merge_size=merge,
    )
    processor = PixelReferFastProcessor(
        built.tokenizer, image_processor, variant=point.variant, mask_num=point.mask_num, max_frames=preset.max_frames
    )
    built.model.set_special_token_ids(built.tokenizer)
    return processor


def make_items(point: SweepPoint, *, seed: int = 0) -> list:
    """``point.batch`` copies of the sample item: an image with R masks, or a video.

    Video: the full model sees every frame and one mask per object on frame 0; Lite (no global frames)
    sees each object on every frame (``[Time t:<REGION> x K, ...]`` per object), its video workload.
    """
    from ..processing_pixelrefer_fast import PixelReferItem

    width, height = point.image_size
    scene = sample_video(point.frames, point.regions, width, height, seed=seed)
    question = "Describe " + ", ".join(["<region>"] * point.regions) + " in detail."
    if point.frames == 1:
        item = PixelReferItem(question=question, image=scene.image, masks=list(scene.masks))
    elif point.variant == "full":
        item = PixelReferItem(question=question, video=list(scene.frames), masks=list(scene.masks),
                              frame_ids=[0] * point.regions)
    else:
        per_frame = [scene.masks_at(t) for t in range(point.frames)]
        masks = [[per_frame[t][r] for t in range(point.frames)] for r in range(point.regions)]
        item = PixelReferItem(question=question, video=list(scene.frames), masks=masks,
                              frame_ids=[list(range(point.frames))] * point.regions)
    return [item] * point.batch


def cache_keyword() -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier 5.x), as Qwen2's forward names it."""
    from transformers import Qwen2Model

    return "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"


def output_cache(output):
    """The KV cache of a model output (``cache`` in transformers >= 5.2x, ``past_key_values`` before)."""
    for key in ("cache", "past_key_values"):
        if key in output.keys():
            return output[key]
    raise RuntimeError("the prefill returned no KV cache (use_cache=True was passed)")


def _segments(grid_thw: torch.Tensor) -> list[int]:
    """Attention segments (one per frame) of a packed call."""
    return [int(h * w) for t, h, w in grid_thw.tolist() for _ in range(int(t))]


def _offsets(grid_thw: torch.Tensor, device: torch.device) -> torch.Tensor:
    return F.pad(grid_thw.to("cpu", torch.long).prod(-1).cumsum(0), (1, 0)).to(device=device, dtype=torch.int32)


def _merge(cost_a: flops.StageCost, cost_b: flops.StageCost) -> flops.StageCost:
    return flops.StageCost(cost_a.flops + cost_b.flops, cost_a.bytes + cost_b.bytes, {**cost_a.parts, **cost_b.parts})


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class _PointRun:
    """Runs the stages of one point in order, stopping (``skipped``) after the first failure."""

    def __init__(self, built: BuiltModel, preset: ArchPreset, point: SweepPoint, *, warmup: int, repeats: int,
                 decode_tokens: int):
        self.built, self.preset, self.point = built, preset, point
        self.model = built.model
        self.device, self.dtype = built.device, built.dtype
        self.warmup, self.repeats, self.decode_tokens = warmup, repeats, decode_tokens
        self.results: list[StageResult] = []
        self.outcome = PointOutcome(results=self.results)
        self.failed: str | None = None
        self.dtype_bytes = torch.tensor([], dtype=self.dtype).element_size()

    def measure(self, stage: str, fn, *, device: torch.device | None = None, setup=None, cost=None, tokens=None,
                regions=None, shapes=None):
        """Time one stage; returns its output, or None when it (or an earlier stage) did not run."""
        if self.failed is not None:
            self.results.append(StageResult(stage, "skipped", f"not run: {self.failed}"))
            return None
        device = device or self.device
        progress.stage_started(stage)
        try:
            with memory_scope(device) as memory:
                timing, out = time_stage(fn, device, warmup=self.warmup, repeats=self.repeats, setup=setup)
        except out_of_memory_errors() as exc:
            self.failed = f"{stage} ran out of memory"
            self.results.append(StageResult(stage, "oom", _one_line(exc), shapes=shapes or {}))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return None
        except Exception as exc:  # a failing stage is reported in the profile; the sweep goes on
            logger.debug("stage %s failed", stage, exc_info=True)
            self.failed = f"{stage} failed"
            self.results.append(StageResult(stage, "error", _one_line(exc), shapes=shapes or {}))
            return None
        self.results.append(StageResult(stage, "ok", "", timing, memory, cost, tokens, regions, shapes or {}))
        return out

    def run(self, processor, items) -> PointOutcome:
        point, preset, model = self.point, self.preset, self.model
        channels, hidden = preset.mm_hidden_size, model.config.hidden_size
        outcome = self.outcome

        batch = self.measure("preprocess", lambda: processor(items), device=_CPU,
                             shapes={"items": point.batch, "frames": point.frames, "regions_per_item": point.regions})
        if batch is None:
            return self._finish(outcome)
        from ..modeling_pixelrefer_fast import PixelReferFastInputs

        batch = batch.to(self.device)
        inputs = PixelReferFastInputs(**{k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")})
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        num_regions = int(batch["crop_grid_thw"].shape[0])
        outcome.llm_tokens = int(input_ids.shape[1])
        self.results[0].tokens = int(attention_mask.sum())
        self.results[0].regions = num_regions

        grids = [g for g in (batch.get("image_grid_thw"), batch["crop_grid_thw"], batch.get("global_grid_thw"),
                             batch.get("local_grid_thw")) if g is not None]
        segments = [s for g in grids for s in _segments(g.cpu())]
        vision = self.measure(
            "vision", lambda: model.model.encode_pixels(inputs),
            cost=flops.vision_encoder_cost(preset.vision, segments, dtype_bytes=self.dtype_bytes),
            tokens=sum(segments), regions=num_regions,
            shapes={"segments": len(segments), "patches": sum(segments), "longest_segment": max(segments)},
        )
        if vision is None:
            return self._finish(outcome)

        image_features = None
        if point.variant == "full":
            keep = batch.get("image_token_keep")
            merged = sum(int(t * h * w) // int(s) ** 2 for (t, h, w), s in
                         zip(batch["image_grid_thw"].tolist(), batch["image_merge_sizes"].tolist()))
            image_tokens = int(keep.sum()) if keep is not None else merged
            outcome.image_tokens = image_tokens // point.batch
            image_features = self.measure(
                "projector", lambda: model.model.get_image_features(inputs, vision),
                cost=flops.mlp2_cost(image_tokens, channels, hidden, dtype_bytes=self.dtype_bytes, name="mm_projector"),
                tokens=image_tokens, shapes={"merged_tokens": merged, "kept_tokens": image_tokens},
            )
            if image_features is None:
                return self._finish(outcome)
        else:
            outcome.image_tokens = 0

        region_features = self._regions(inputs, batch, vision, num_regions, channels, hidden)
        if region_features is None:
            return self._finish(outcome)

        embeds = self._splice(input_ids, image_features, region_features)
        batch_size, seq_len = input_ids.shape
        cache_kw = cache_keyword()
        prefill_out = self.measure(
            "prefill", lambda: model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=True, logits_to_keep=1),
            cost=flops.llm_prefill_cost(_llm_shape(model.config), batch_size, seq_len, logits_positions=1, dtype_bytes=self.dtype_bytes),
            tokens=batch_size * seq_len, shapes={"batch": batch_size, "seq_len": seq_len, "attn": model.config._attn_implementation},
        )
        if prefill_out is None:
            return self._finish(outcome)
        prefill_cache = output_cache(prefill_out)
        first = prefill_out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        steps = self.decode_tokens

        def decode(cache):
            ids, mask = first, attention_mask
            for _ in range(steps):
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                out = model(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_kw: cache})
                ids = out.logits[:, -1].argmax(-1, keepdim=True)
            return ids

        self.measure(
            "decode", decode, setup=lambda: copy.deepcopy(prefill_cache),
            cost=flops.llm_decode_steps_cost(_llm_shape(model.config), batch_size, seq_len, steps, dtype_bytes=self.dtype_bytes),
            tokens=batch_size * steps, shapes={"batch": batch_size, "context": seq_len, "new_tokens": steps},
        )
        return self._finish(outcome)

    def _regions(self, inputs, batch, vision, num_regions, channels, hidden):
        """The region (and Lite infusion) stages, called as the model's forward calls them; returns the
        object embeddings ``[n, D]`` or None."""
        from ..modeling_region import RegionInputs

        point, model = self.point, self.model
        encoder = model.model.region_encoder
        encoder.mask_num = point.mask_num
        crop_grid = batch["crop_grid_thw"].to("cpu", torch.long)
        mask_hw = batch["region_mask_hw"].to("cpu", torch.long)
        masks_host = batch["region_masks"].to("cpu")
        cells = (crop_grid[:, 1] * crop_grid[:, 2]).tolist()
        offsets = F.pad(mask_hw.prod(1).cumsum(0), (1, 0)).tolist()
        selected = [int((masks_host[a:b] > 0).sum()) for a, b in zip(offsets[:-1], offsets[1:])]
        tokenizer_cost = flops.region_tokenizer_cost(
            cells, selected, point.mask_num, channels, encoder.num_iters, dtype_bytes=self.dtype_bytes
        )
        shapes = {"regions": num_regions, "crop_cells": sum(cells), "mask_cells": sum(selected), "mask_num": point.mask_num,
                  "kmeans_init": encoder.kmeans_init}
        if point.variant == "full":
            object_tokens = int(batch["region_token_counts"].sum())
            result = self.measure(
                "region", lambda: model.model.get_region_features(inputs, vision),
                cost=_merge(tokenizer_cost, flops.mlp2_cost(object_tokens, channels, hidden, dtype_bytes=self.dtype_bytes, name="feat_linear")),
                tokens=object_tokens, regions=num_regions, shapes={**shapes, "includes": "pool+kmeans+feat_linear"},
            )
            return None if result is None else result[0]
        regions = RegionInputs(
            features=vision["crops"], feature_hw=crop_grid[:, 1:], masks=batch["region_masks"], mask_hw=mask_hw,
            boxes=batch["region_boxes"], image_hw=batch["region_image_hw"],
        )
        tokenized = self.measure(
            "region", lambda: encoder.tokenize(regions),
            cost=tokenizer_cost, tokens=num_regions * point.mask_num, regions=num_regions,
            shapes={**shapes, "includes": "pool+kmeans+pad"},
        )
        if tokenized is None:
            return None
        tokens = tokenized[0]
        device = tokens.device
        local_grid, global_grid = batch["local_grid_thw"].cpu(), batch["global_grid_thw"].cpu()
        region_local, region_global = batch["region_local"], batch["region_global"]
        cu_local, cu_global = _offsets(local_grid, device), _offsets(global_grid, device)

        def infuse():
            fused = encoder.infuse(tokens, vision["local"], cu_local, region_local, vision["global"], cu_global, region_global)
            return encoder.project(fused.reshape(-1, fused.shape[-1]), vision["crops"].dtype)

        infusion_cost = flops.infusion_cost(
            point.mask_num, channels, encoder.num_heads, _segments(local_grid), region_local.tolist(),
            _segments(global_grid), region_global.tolist(), dtype_bytes=self.dtype_bytes,
        )
        return self.measure(
            "infusion", infuse,
            cost=_merge(infusion_cost, flops.mlp2_cost(num_regions * point.mask_num, channels, hidden, dtype_bytes=self.dtype_bytes, name="feat_linear")),
            tokens=num_regions * point.mask_num, regions=num_regions,
            shapes={"local_maps": int(local_grid.shape[0]), "global_maps": int(global_grid.shape[0]),
                    "local_rows": sum(_segments(local_grid)), "global_rows": sum(_segments(global_grid)),
                    "includes": "infusion+feat_linear"},
        )

    def _splice(self, input_ids, image_features, region_features):
        """``inputs_embeds`` with the features over their placeholders (as the model's forward does)."""
        model = self.model
        embeds = model.model.embed_tokens(input_ids)
        for token_id, features, name in ((model.config.image_token_index, image_features, "<image>"),
                                         (model.config.region_token_index, region_features, "<REGION>")):
            slots = input_ids == token_id
            count = int(slots.sum())
            rows = 0 if features is None else int(features.shape[0])
            if count != rows:
                raise RuntimeError(f"the prompt has {count} {name} tokens but the stages produced {rows} features")
            if rows:
                embeds = embeds.masked_scatter(slots[..., None], features.to(embeds.dtype))
        return embeds

    def fail_next(self, status: str, exc: BaseException) -> None:
        """Record a failure outside a timed call (setup, splicing) on the first stage not yet reported."""
        done = {r.stage for r in self.results}
        stage = next(s for s in STAGES if s not in done)
        self.failed = f"{stage} failed" if status == "error" else f"{stage} ran out of memory"
        self.results.append(StageResult(stage, status, _one_line(exc)))

    def _finish(self, outcome: PointOutcome) -> PointOutcome:
        import pixelrefer_kernels

        done = {r.stage for r in self.results}
        for stage in STAGES:
            if stage not in done:
                if stage == "projector" and self.point.variant == "lite":
                    self.results.append(StageResult(stage, "skipped", "Lite has no global image tokens"))
                elif stage == "infusion" and self.point.variant == "full":
                    self.results.append(StageResult(stage, "skipped", "the full model has no infusion"))
                else:
                    self.results.append(StageResult(stage, "skipped", f"not run: {self.failed}"))
        self.results.sort(key=lambda r: STAGES.index(r.stage))
        ops = KERNEL_OPS[self.point.variant]
        outcome.kernels = {op: name for op in ops if (name := pixelrefer_kernels.last_backend(op)) is not None}
        return outcome


def _llm_shape(config):
    """The ``LLMShape`` of a model config (for the FLOPs)."""
    from .presets import LLMShape

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return LLMShape(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        head_dim=head_dim,
        vocab_size=config.vocab_size,
        tie_word_embeddings=bool(config.tie_word_embeddings),
    )


def run_point(built: BuiltModel, preset: ArchPreset, point: SweepPoint, *, warmup: int, repeats: int,
              decode_tokens: int, seed: int = 0) -> PointOutcome:
    """Measure every stage of ``point`` on ``built`` (see the module docstring); never raises for a
    failing stage: failures become ``oom`` / ``error`` results."""
    run = _PointRun(built, preset, point, warmup=warmup, repeats=repeats, decode_tokens=decode_tokens)
    try:
        processor = make_processor(built, preset, point)
        items = make_items(point, seed=seed)
        with torch.inference_mode():
            return run.run(processor, items)
    except out_of_memory_errors() as exc:
        run.fail_next("oom", exc)
    except Exception as exc:  # setup or splicing failed: report it, keep sweeping
        logger.debug("point %s failed outside a timed stage", point, exc_info=True)
        run.fail_next("error", exc)
    if built.device.type == "cuda":
        torch.cuda.empty_cache()
    return run._finish(run.outcome)


__all__ = ["BuiltModel", "PointOutcome", "StageResult", "build_model", "make_items", "model_config", "run_point"]
