"""Build random-weight models from a preset and measure every stage of one sweep point.

The stages are the model's own methods, timed on its real forward (`model(**placed)`, the prefill
with `logits_to_keep=1`) by wrapping them on the instance (`measure.StageTimer`; CUDA events on a
GPU, with the allocator's peak over the weights per stage and, once, the kernel launches per stage):

- `preprocess`: `PixelReferFastProcessor` on the batch (host only: crops, resizes, patchify,
  tokenization); `place_inputs` (the host check and the copies) is not timed;
- `vision`: `encode_pixels`, ONE packed vision-encoder call over every pixel source;
- `projector` (full model): `project_images` (2x2 merge, token pruning, projector);
- `region`: `tokenize_regions` (box position embedding, pooling, k-means), for the full model
  also `project_regions` (`feat_linear`);
- `infusion` (Lite): `infuse_regions` and `project_regions`;
- `prefill`: `splice` and `run_llm` (Qwen2 on the spliced embeddings, fresh cache);
- `decode`: `decode_tokens` steps of `generate` with the chosen decoding (`DECODINGS`), the
  call timed whole minus its own prefill forward.

A stage that runs out of memory (CUDA OOM or `MemoryError`) is reported as `oom` and the rest of
the point as `skipped`; any other exception as `error` (its one-line message kept). The sweep then
goes on with the next point.
"""

from __future__ import annotations

import inspect
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..defaults import DECODINGS
from . import flops, progress
from .measure import MemoryReading, StageTimer, Timing, count_launches, memory_scope, out_of_memory_errors, time_stage
from .presets import ArchPreset
from .report import STAGES
from .sample import sample_video
from .sweep import SweepPoint

logger = logging.getLogger("pixelrefer_fast.profiling")

# report stage -> the model methods (`PixelReferFastModel`) its time is the sum of; the forward calls them
STAGE_METHODS = {
    "vision": ("encode_pixels",),
    "projector": ("project_images",),
    "region": ("tokenize_regions",),
    "infusion": ("infuse_regions",),
    "prefill": ("splice", "run_llm"),
}


def stage_methods(model) -> dict[str, tuple[str, ...]]:
    """`STAGE_METHODS` for `model`'s variant: `feat_linear` (`project_regions`) counts in `region`
    (full model) or `infusion` (Lite, where it follows the infusion); no projector in Lite."""
    stages = {k: v for k, v in STAGE_METHODS.items() if not (model.config.is_lite and k == "projector")}
    if model.config.is_lite:
        stages["infusion"] = (*stages["infusion"], "project_regions")
    else:
        stages.pop("infusion")
        stages["region"] = (*stages["region"], "project_regions")
    return stages


KERNEL_OPS = {
    "full": ("varlen_attention", "region_pool", "kmeans"),
    "lite": ("varlen_attention", "region_pool", "kmeans", "object_infusion"),
}
_CPU = torch.device("cpu")


@dataclass
class StageResult:
    """The measurement of one stage of one point.

    Attributes:
        stage: one of `report.STAGES`.
        status: `ok`, `oom`, `skipped`, `unavailable` or `error`.
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
    """A random-weight `PixelReferFast(Lite)ForCausalLM` of one variant with its processor pieces."""

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
    """The model config of `variant` with the preset's shapes (a checkpoint's own config for `--model`)."""
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
    """The checkpoint's tokenizer for `--model` directories that hold one, else the byte tokenizer."""
    from .tokenizer import byte_tokenizer

    if preset.model_dir is not None:
        directory = Path(preset.model_dir)
        if any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(directory))
    return byte_tokenizer()


def build_model(preset: ArchPreset, variant: str, device: torch.device, dtype: torch.dtype, *, seed: int = 0) -> BuiltModel:
    """Random weights of the preset's shapes, initialised directly on `device` in `dtype`.

    The LLM attention is transformers' flash-attention 2 when flash-attn is installed (CUDA, 16-bit),
    else SDPA, as `from_pretrained` picks it.
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


def make_processor(built: BuiltModel, preset: ArchPreset, point: SweepPoint, *, share_images: bool = False):
    """The processor of the point: its variant, `mask_num` and vision-token budget.

    `share_images` is off by default: a point's batch repeats one sample item (`make_items`) to stand
    for `batch` different images, which a sharing processor would encode once.
    """
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
        built.tokenizer, image_processor, variant=point.variant, mask_num=point.mask_num, max_frames=preset.max_frames,
        share_images=share_images,
    )
    built.model.set_special_token_ids(built.tokenizer)
    return processor


def make_items(point: SweepPoint, *, seed: int = 0) -> list:
    """`point.batch` copies of the sample item: an image with R masks, or a video.

    Video: the full model sees every frame and one mask per object on frame 0; Lite (no global frames)
    sees each object on every frame (`[Time t:<REGION> x K, ...]` per object), its video workload.
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
    """`cache` (transformers >= 5.2x) or `past_key_values` (earlier 5.x), as Qwen2's forward names it."""
    from transformers import Qwen2Model

    return "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"


def output_cache(output):
    """The KV cache of a model output (`cache` in transformers >= 5.2x, `past_key_values` before)."""
    for key in ("cache", "past_key_values"):
        if key in output.keys():
            return output[key]
    raise RuntimeError("the prefill returned no KV cache (use_cache=True was passed)")


def _segments(grid_thw: torch.Tensor) -> list[int]:
    """Attention segments (one per frame) of a packed call (host metadata)."""
    return [int(h * w) for t, h, w in grid_thw.tolist() for _ in range(int(t))]


def _merge(cost_a: flops.StageCost, cost_b: flops.StageCost) -> flops.StageCost:
    return flops.StageCost(cost_a.flops + cost_b.flops, cost_a.bytes + cost_b.bytes, {**cost_a.parts, **cost_b.parts})


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class _PointRun:
    """Runs the stages of one point in order, stopping (`skipped`) after the first failure."""

    def __init__(self, built: BuiltModel, preset: ArchPreset, point: SweepPoint, *, warmup: int, repeats: int,
                 decode_tokens: int, decoding: str = DECODINGS[0]):
        self.built, self.preset, self.point = built, preset, point
        self.model = built.model
        self.device, self.dtype = built.device, built.dtype
        self.warmup, self.repeats, self.decode_tokens = warmup, repeats, decode_tokens
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        self.decoding = decoding
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
                             shapes={"items": point.batch, "frames": point.frames, "regions_per_item": point.regions,
                                     "includes": "processor"})
        if batch is None:
            return self._finish(outcome)
        batch = dict(batch)
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        num_regions = int(batch["crop_grid_thw"].shape[0])
        batch_size, seq_len = input_ids.shape
        outcome.llm_tokens = int(seq_len)
        self.results[0].tokens = int(attention_mask.sum())
        self.results[0].regions = num_regions
        if point.variant == "full":
            keep = batch.get("image_token_keep")
            merged = sum(int(t * h * w) // int(m) ** 2 for (t, h, w), m in
                         zip(batch["image_grid_thw"].tolist(), batch["image_merge_sizes"].tolist()))
            image_tokens = int(keep.sum()) if keep is not None else merged
            outcome.image_tokens = image_tokens // point.batch
        else:
            outcome.image_tokens, image_tokens, merged = 0, 0, 0

        forward = self._forward_stages(batch)
        if forward is None:
            return self._finish(outcome)
        samples, calls, peaks, launches = forward
        costs = self._costs(batch, num_regions, image_tokens, channels, hidden, batch_size, seq_len)
        grids = [g for g in (batch.get("image_grid_thw"), batch["crop_grid_thw"], batch.get("global_grid_thw"),
                             batch.get("local_grid_thw")) if g is not None]
        segments = [s for g in grids for s in _segments(g)]
        object_tokens = int(batch["region_token_counts"].sum())
        shapes = {
            "vision": {"segments": len(segments), "patches": sum(segments), "longest_segment": max(segments)},
            "projector": {"merged_tokens": merged, "kept_tokens": image_tokens},
            "region": {"regions": num_regions, "mask_num": point.mask_num, "kmeans_init": model.config.kmeans_init,
                       "includes": "pool+kmeans" + ("+feat_linear" if point.variant == "full" else "+pad")},
            "infusion": {"includes": "infusion+feat_linear"},
            "prefill": {"batch": int(batch_size), "seq_len": int(seq_len), "attn": model.config._attn_implementation,
                        "includes": "splice+llm"},
        }
        tokens = {"vision": sum(segments), "projector": image_tokens, "region": object_tokens, "infusion": object_tokens,
                  "prefill": int(batch_size * seq_len)}
        for stage in STAGE_METHODS:
            if stage not in samples:
                continue
            if self.device.type == "cuda":
                memory = MemoryReading(kind="cuda_allocator_peak_over_weights", peak_mb=peaks.get(stage))
            else:
                memory = peaks[stage]
            stage_shapes = {**shapes[stage], "calls": calls.get(stage, 0)}
            if launches is not None:
                stage_shapes["kernel_launches"] = launches.get(stage, 0)
            self.results.append(StageResult(stage, "ok", "", Timing.from_samples(samples[stage]), memory, costs.get(stage),
                                            tokens[stage], num_regions if stage != "prefill" else None, stage_shapes))
        self._decode(batch, batch_size, seq_len)
        return self._finish(outcome)

    def _forward_stages(self, batch):
        """Time the model's stage methods on its real forward (`model(**placed)`, the prefill with
        `logits_to_keep=1`); returns per-stage samples, call counts, CUDA peaks and launch counts."""
        model = self.model
        targets = {stage: [(model.model, name) for name in names] for stage, names in stage_methods(model).items()}
        place = lambda: model.place_inputs(batch, mask_num=self.point.mask_num)  # noqa: E731 untimed host check and copies
        samples: dict[str, list[float]] = {}
        timer = StageTimer(self.device, targets, on_first_call=progress.stage_started)
        passes = self.warmup + self.repeats
        try:
            with memory_scope(self.device) as forward_memory, timer:
                for repeat in range(passes):
                    placed = place()
                    timer.start_pass()
                    model(**placed, use_cache=True, logits_to_keep=1)
                    totals = timer.collect()
                    for stage in totals:
                        progress.call_done(repeat + 1, passes, stage)
                    if repeat >= self.warmup:
                        for stage, ms in totals.items():
                            samples.setdefault(stage, []).append(ms)
                calls = {stage: n // passes for stage, n in timer.calls.items()}
                peaks = dict(timer.peaks_mb)
                launches = count_launches(lambda: model(**place(), use_cache=True, logits_to_keep=1), self.device)
        except out_of_memory_errors() as exc:
            self._forward_failed(timer.failed_stage, "oom", exc)
            return None
        except Exception as exc:  # a failing forward is reported in the profile; the sweep goes on
            logger.debug("the forward failed in stage %s", timer.failed_stage, exc_info=True)
            self._forward_failed(timer.failed_stage, "error", exc)
            return None
        if self.device.type != "cuda":  # no per-stage reading on the CPU: the whole forward's peak RSS
            peaks = {stage: forward_memory for stage in samples}
        return samples, calls, peaks, launches

    def _costs(self, batch, num_regions, image_tokens, channels, hidden, batch_size, seq_len) -> dict:
        model, point, b = self.model, self.point, self.dtype_bytes
        encoder = model.model.region_encoder
        mask_num = point.mask_num
        crop_grid = batch["crop_grid_thw"]
        cells = (crop_grid[:, 1] * crop_grid[:, 2]).tolist()
        selected = batch["region_mask_cells"].tolist()
        candidates = (batch.get("image_grid_thw"), crop_grid, batch.get("global_grid_thw"), batch.get("local_grid_thw"))
        grids = [g for g in candidates if g is not None]
        segments = [s for g in grids for s in _segments(g)]
        object_tokens = int(batch["region_token_counts"].sum())
        costs = {
            "vision": flops.vision_encoder_cost(self.preset.vision, segments, dtype_bytes=b),
            "prefill": flops.llm_prefill_cost(_llm_shape(model.config), batch_size, seq_len, logits_positions=1, dtype_bytes=b),
        }
        tokenizer = flops.region_tokenizer_cost(cells, selected, mask_num, channels, encoder.num_iters, dtype_bytes=b)
        feat_linear = flops.mlp2_cost(object_tokens, channels, hidden, dtype_bytes=b, name="feat_linear")
        if point.variant == "full":
            costs["projector"] = flops.mlp2_cost(image_tokens, channels, hidden, dtype_bytes=b, name="mm_projector")
            costs["region"] = _merge(tokenizer, feat_linear)
        else:
            local_grid, global_grid = batch["local_grid_thw"], batch["global_grid_thw"]
            costs["region"] = tokenizer
            costs["infusion"] = _merge(flops.infusion_cost(
                mask_num, channels, encoder.num_heads, _segments(local_grid), batch["region_local"].tolist(),
                _segments(global_grid), batch["region_global"].tolist(), dtype_bytes=b,
            ), feat_linear)
        return costs

    def _decode(self, batch, batch_size, seq_len) -> None:
        """Decode steps with `self.decoding` (`describe`'s loop, `generate_new_tokens`): `1 + steps` new
        tokens timed whole, minus its first forward (the prefill, timed by a hook on the same call)."""
        from ..decoding import generate_new_tokens, resolve_options

        model, steps = self.model, self.decode_tokens
        plan = resolve_options(model.generation_config, self.built.tokenizer, steps + 1, {"min_new_tokens": steps + 1})
        prefill_ms: list[float] = []

        def generate(placed):
            with StageTimer(self.device, {"forward": [(model, "forward")]}) as timer:
                generate_new_tokens(model, placed, plan, decoding=self.decoding)
                prefill_ms.append(timer.collect_calls()["forward"][0])

        self.measure(
            "decode", generate, setup=lambda: model.place_inputs(batch, mask_num=self.point.mask_num),
            cost=flops.llm_decode_steps_cost(_llm_shape(model.config), batch_size, seq_len, steps, dtype_bytes=self.dtype_bytes),
            tokens=batch_size * steps,
            shapes={"batch": int(batch_size), "context": int(seq_len), "new_tokens": steps, "decoding": self.decoding},
        )
        row = self.results[-1]
        if row.stage == "decode" and row.status == "ok":
            whole = row.timing
            prefill = statistics.median(prefill_ms[-whole.repeats:])
            row.shapes["generate_median_ms"] = whole.median_ms
            row.shapes["prefill_in_generate_ms"] = prefill
            row.timing = Timing(*(max(v - prefill, 0.0) for v in (whole.median_ms, whole.p20_ms, whole.p80_ms, whole.min_ms, whole.max_ms)),
                                whole.repeats)

    def _forward_failed(self, stage: str | None, status: str, exc: BaseException) -> None:
        """Record a failure of the forward on the stage whose method raised (else the first not reported);
        the stages before it ran but were not timed through a whole forward."""
        if stage is None:
            self.fail_next(status, exc)
            return
        self.failed = f"{stage} failed" if status == "error" else f"{stage} ran out of memory"
        self.results.append(StageResult(stage, status, _one_line(exc)))
        if self.device.type == "cuda" and status == "oom":
            torch.cuda.empty_cache()

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
    """The `LLMShape` of a model config (for the FLOPs)."""
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
              decode_tokens: int, seed: int = 0, decoding: str = DECODINGS[0]) -> PointOutcome:
    """Measure every stage of `point` on `built` (see the module docstring); never raises for a
    failing stage: failures become `oom` / `error` results."""
    run = _PointRun(built, preset, point, warmup=warmup, repeats=repeats, decode_tokens=decode_tokens, decoding=decoding)
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


__all__ = [
    "DECODINGS", "STAGE_METHODS", "BuiltModel", "PointOutcome", "StageResult", "build_model", "make_items", "model_config", "run_point",
    "stage_methods",
]
