"""Stage (memo steps 2 and 5): train a LoRA with sd-scripts on one image and its caption, the configs
rendered from templates/. The copy LoRA trains on the base model; the effect LoRA on the copy model."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from copymachine import copystop, trainstate
from copymachine.errors import InputError
from copymachine.files import atomic_write_text, copy_into_place
from copymachine.genimg import base_weight_input_name, base_weight_inputs
from copymachine.images import load_rgb, save_png
from copymachine.lorafile import validate_lora
from copymachine.models import BaseOptions, Family
from copymachine.plan import COSMETIC, OPTIONAL, StageParams, WeightedLora
from copymachine.recipe import MEMO, TrainingRecipe, WatchRecipe, split_prompts
from copymachine.render import write_config
from copymachine.stages import Settings, StageContext, StageKind, reset_scratch

CAPTION_EXTENSION = ".txt"  # sd-scripts' default is ".caption": always set it
SAMPLE_KEYS = ("sample_every_n_steps", "sample_prompts", "sample_sampler")
LOG_KEYS = ("logging_dir", "log_prefix")
# Run by sd-scripts' Python in place of the training script when LoRAs are merged in memory
LAUNCHER = Path(__file__).resolve().parent.parent / "sd_side" / "base_weights_launcher.py"


@dataclass(frozen=True)
class TrainParams(StageParams):
    family: Family
    training: TrainingRecipe
    size: tuple[int, int]
    max_train_steps: int | None  # --max-steps, when below the recipe's steps
    warmup_steps: int
    mixed_precision: str
    training_options: dict[str, Any]
    base_weights_multipliers: list[float] | None = field(default=None, metadata=OPTIONAL)
    save_every_n_steps: int = field(default=0, metadata=COSMETIC)
    copy_stop: copystop.CopyStop | None = field(default=None, metadata=OPTIONAL)
    # --samples N, --tensorboard: not in the key (sd-scripts restores its RNG states after sampling)
    sample_every_n_steps: int = field(default=0, metadata=COSMETIC)
    watch: WatchRecipe = field(default_factory=lambda: MEMO.watch, metadata=COSMETIC)
    logging_dir: str | None = field(default=None, metadata=COSMETIC)
    model: BaseOptions | None = field(default=None, metadata=OPTIONAL)
    # sd-scripts options the recipe does not name ([sd_args], --sd-arg), in the TOML as they are
    sd_args: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)

    @property
    def total_steps(self) -> int:
        return self.max_train_steps or self.training.steps


# Training TOML keys copymachine writes itself, and what sets each: --sd-arg adds options, never replaces them.
_RECIPE = "the recipe key {}.{} (--set {}.{}=..., for copy, effect or diff)"
OWN_KEYS: dict[str, str] = {
    **{key: _RECIPE.format("copy", name, "copy", name) for key, name in (
        ("network_module", "network_module"), ("network_dim", "network_dim"), ("network_alpha", "network_alpha"),
        ("optimizer_type", "optimizer"), ("learning_rate", "learning_rate"), ("lr_scheduler", "lr_scheduler"),
        ("lr_warmup_steps", "warmup_steps"), ("max_train_epochs", "epochs"), ("seed", "seed"),
        ("save_precision", "save_precision"), ("shuffle_caption", "shuffle_caption"),
        ("keep_tokens", "keep_tokens"), ("num_repeats", "repeats"), ("train_batch_size", "batch_size"),
        ("batch_size", "batch_size"))},
    "max_train_steps": "--max-steps",
    "resolution": "--resolution",
    "clip_skip": "--clip-skip (the recipe key model.clip_skip)",
    "v_parameterization": "--v-pred (or the checkpoint's v_pred key)",
    "zero_terminal_snr": "--zero-terminal-snr (or the checkpoint's ztsnr key)",
    "mixed_precision": "the device profile (bf16/fp16 on a GPU, fp32 on the CPU)",
    "v2": "the base model's family",
    "no_half_vae": "the base model's family (always on for SDXL)",
    **dict.fromkeys(("clip_l", "clip_g", "t5xxl", "ae", "qwen3", "vae"), "--model-file NAME=FILE"),
    **dict.fromkeys((*trainstate.SAVE_KEYS, *trainstate.RESUME_KEYS),
                    "the recipe key watch.save_every_n_steps (0: no saved state)"),
    **dict.fromkeys(SAMPLE_KEYS, "--samples N (prompts, sampler: the recipe's [watch] keys)"),
    **dict.fromkeys(LOG_KEYS, "--tensorboard"),
    **dict.fromkeys((
        "pretrained_model_name_or_path", "tokenizer_cache_dir", "base_weights", "base_weights_multiplier",
        "dataset_config", "output_dir", "output_name", "save_model_as", "training_comment", "console_log_simple",
        "config_file", "train_data_dir", "caption_extension", "enable_bucket"), "copymachine itself"),
}


def check_sd_args(sd_args: dict[str, Any]) -> None:
    """Refuse an --sd-arg that names a key copymachine writes itself, naming what sets it."""
    for key in sd_args:
        if key in OWN_KEYS:
            raise InputError(f"--sd-arg {key}: copymachine sets {key} itself; use {OWN_KEYS[key]}")


def training_plan(
    training: TrainingRecipe, family: Family, size: tuple[int, int], settings: Settings, max_steps: int | None,
    inputs: dict[str, Any], base_weights: Sequence[WeightedLora] = (), model: BaseOptions | None = None,
    sd_args: dict[str, Any] | None = None, save_every_n_steps: int = 0, samples: int = 0,
    watch: WatchRecipe | None = None, logging_dir: Path | None = None, copy_stop: copystop.CopyStop | None = None,
) -> tuple[dict[str, Any], TrainParams]:  # fmt: skip
    """The stage's inputs and parameters; `max_steps` shortens the training with the same share of warmup."""
    max_train_steps = None
    warmup = training.warmup_steps
    if max_steps is not None and max_steps < training.steps:
        max_train_steps = max_steps
        warmup = int(training.warmup_steps * max_steps / training.steps)
    if settings.profile.optimizer:  # the low-VRAM profile's 8-bit AdamW
        training = dataclasses.replace(training, optimizer=settings.profile.optimizer)
    options = settings.profile.training_options_for(family.name)
    if training.network_module == MEMO.copy.network_module:  # the family's own LoRA module (networks.lora_flux)
        training = dataclasses.replace(training, network_module=family.network_module)
    if options.get("cache_text_encoder_outputs") or family.training_options.get("cache_text_encoder_outputs"):
        # sd-scripts refuses cached text-encoder outputs with shuffled captions (one output per caption)
        training = dataclasses.replace(training, shuffle_caption=False)
    inputs = {**inputs, **{base_weight_input_name(i): w.lora for i, w in enumerate(base_weights)}}
    params = TrainParams(
        family=family, training=training, size=(int(size[0]), int(size[1])), max_train_steps=max_train_steps,
        warmup_steps=warmup, mixed_precision=settings.mixed_precision, training_options=options,
        # only with LoRAs merged in memory, so the stage keys of trainings without them stay as they were
        base_weights_multipliers=[w.ratio for w in base_weights] or None,
        model=model.for_training() if model else None, sd_args=dict(sd_args) if sd_args else None,
        save_every_n_steps=save_every_n_steps, sample_every_n_steps=samples, watch=watch or MEMO.watch,
        logging_dir=str(logging_dir) if logging_dir else None, copy_stop=copy_stop,
    )  # fmt: skip
    return inputs, params


def state_options(stage, ctx: StageContext, every: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """The TOML keys that save the state and resume from this stage key's newest one (copymachine/trainstate.py)."""
    p = stage.spec
    every = every or p.save_every_n_steps
    if not every or every >= p.total_steps:
        return {}
    if _lacking(stage, ctx, (*trainstate.SAVE_KEYS, *trainstate.RESUME_KEYS),
                "saves no state, so a killed training starts again at step 0"):
        return {}
    options: dict[str, Any] = {"save_state": True, "save_every_n_steps": every, "save_last_n_steps_state": 1,
                               "save_last_n_steps": 1}
    if ctx.dry_run or quiet:
        return options
    saved = trainstate.resumable(ctx.scratch, stage.key, p.total_steps)
    trainstate.mark(ctx.scratch, stage.key)
    if saved is not None:
        options.update(resume=str(saved.path), skip_until_initial_step=True)
        ctx.reporter.info(f"{stage.title}: resuming at step {saved.step} of {p.total_steps} "
                          f"(saved state {saved.path.name})")
    return options


def _lacking(stage, ctx: StageContext, keys: Sequence[str], consequence: str) -> bool:
    """Whether this sd-scripts' training script lacks one of the TOML keys `keys` (said in a note)."""
    caps = ctx.settings.capabilities
    script = stage.spec.family.train_script
    lacking = caps.lacking(script, [f"--{k}" for k in keys]) if caps is not None else []
    if lacking and caps is not None:
        ctx.reporter.note(f"sd-scripts {caps.version_text()}: {script} has no {', '.join(lacking)}: {stage.title} "
                          f"{consequence}")
    return bool(lacking)


def sample_prompts(stage, caption: str) -> list[str]:
    """sd-scripts' sample prompt lines (train_util.line_to_prompt_dict), seeds sample_seed, sample_seed+1, ..."""
    w = stage.spec.watch
    width, height = stage.spec.size
    prompts = split_prompts(w.sample_prompts.replace("{caption}", caption)) or [caption]
    return [f"{p} --w {width} --h {height} --d {w.sample_seed + i} --s {w.sample_steps} --l {w.sample_scale:g}"
            for i, p in enumerate(prompts)]


def watch_options(stage, ctx: StageContext, config_dir: Path) -> dict[str, Any]:
    """The TOML keys of --samples and --tensorboard; each skipped with a note when sd-scripts lacks one."""
    p = stage.spec
    options: dict[str, Any] = {}
    if p.sample_every_n_steps and not _lacking(stage, ctx, SAMPLE_KEYS, "renders no samples"):
        caption_file = stage.input("caption")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        prompts = config_dir / f"{stage.slug}-samples.txt"
        if not ctx.dry_run:
            atomic_write_text(prompts, "\n".join(sample_prompts(stage, caption)) + "\n")
        options.update(sample_every_n_steps=p.sample_every_n_steps, sample_prompts=str(prompts),
                       sample_sampler=p.watch.sample_sampler)
    if p.logging_dir and not _lacking(stage, ctx, LOG_KEYS, "writes no TensorBoard logs"):
        options.update(logging_dir=p.logging_dir, log_prefix=f"{stage.slug}-")
        ctx.reporter.info(f"{stage.title}: TensorBoard logs in {p.logging_dir}; watch with: "
                          f"tensorboard --logdir {shlex.quote(p.logging_dir)}")
    return options


def collect_samples(stage, ctx: StageContext) -> None:
    """Copy each new sample image from <output_dir>/sample/ to the run folder's samples/<stage>/ (the UI serves
    only its runs folder; a shared copy LoRA's folder is in the cache) and announce it."""
    rendered = ctx.scratch / "sample"
    if not rendered.is_dir():
        return
    target = ctx.plan.run_dir / "samples" / stage.slug
    for png in sorted(rendered.glob("*.png"), key=lambda q: q.stat().st_mtime):
        final = target / png.name
        if final.exists():
            continue
        try:
            target.mkdir(parents=True, exist_ok=True)
            copy_into_place(png, final)
        except OSError:
            continue  # still being written: the next progress line copies it
        ctx.reporter.event("sample", path=str(final), title=stage.title)
        ctx.reporter.info(f"{stage.title}: sample {final}")


class TrainLora(StageKind):
    kind = "train_lora"
    needs_engine = True
    keeps_state = True  # its scratch folder keeps the newest saved state between attempts

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.spec
        dataset_dir = stage.workdir / "dataset" / stage.slug
        if not ctx.dry_run:
            reset_scratch(dataset_dir)
            # the same deterministic resize for the original and the edited image, so they stay aligned
            image = load_rgb(stage.input("image"))
            if image.size != tuple(p.size):
                image = image.resize((p.size[0], p.size[1]), Image.Resampling.LANCZOS)
            save_png(image, dataset_dir / "image.png")
            copy_into_place(stage.input("caption"), dataset_dir / f"image{CAPTION_EXTENSION}")
        if p.copy_stop is not None and not ctx.dry_run:
            self._segments(stage, ctx, dataset_dir)
        else:
            self._train(stage, ctx, dataset_dir, p.max_train_steps, state_options(stage, ctx))

    def _train(self, stage, ctx: StageContext, dataset_dir: Path, max_train_steps: int | None,
               saving: dict[str, Any]) -> None:
        p = stage.spec
        config_dir = stage.workdir / "config"
        out = ctx.scratch_output("lora")
        width, height = p.size
        dataset_config = write_config(
            config_dir / f"{stage.slug}-dataset.toml", "dataset.toml.j2", stage=stage.name, training=p.training,
            caption_extension=CAPTION_EXTENSION, resolution=[width, height], enable_bucket=False, image_dir=dataset_dir,
        )  # fmt: skip
        # an --sd-arg replaces the profile's own value of a key (gradient_checkpointing = false)
        options = {k: v for k, v in p.training_options.items() if k not in (p.sd_args or {})}
        merged = base_weight_inputs(stage)
        config = write_config(
            config_dir / f"{stage.slug}-training.toml", "training.toml.j2", stage=stage.name,
            base_model=stage.input("base"), family=p.family, model_files=p.family.file_options(),
            tokenizer_cache_dir=ctx.settings.tokenizer_cache_dir,
            training=p.training, warmup_steps=p.warmup_steps, dataset_config=dataset_config,
            resolution_text=f"{width},{height}", max_train_steps=max_train_steps,
            profile={"mixed_precision": p.mixed_precision, "training_options": options},
            base_weights=[str(w) for w in merged], base_weights_multipliers=p.base_weights_multipliers or [],
            # where the family's model sits when sd-scripts merges (not with block swap: its model stays on the CPU)
            base_weights_options={} if options.get("blocks_to_swap") else p.family.base_weights_options,
            model_options=p.model.training_keys() if p.model else {}, sd_args=p.sd_args or {},
            segment_options=p.training.segment_options(p.total_steps) if p.copy_stop else {},
            output_dir=ctx.scratch, output_name=out.stem, saving={**saving, **watch_options(stage, ctx, config_dir)},
            comment=f"copymachine {stage.name}",
        )  # fmt: skip
        launch = ctx.engine.launch_training(p.family.train_script, config, p.mixed_precision,
                                           launcher=LAUNCHER if merged else None,
                                           network_module=p.training.network_module)
        watch = (lambda: collect_samples(stage, ctx)) if p.sample_every_n_steps else None
        ctx.run(launch, Path(p.family.train_script).name, expected=[out], watch=watch)

    def _segments(self, stage, ctx: StageContext, dataset_dir: Path) -> None:
        """--copy-stop-at: train segment by segment, the copy check after each (copymachine/copystop.py)."""
        p = stage.spec
        stop: copystop.CopyStop = p.copy_stop
        total = p.total_steps
        out = ctx.scratch_output("lora")
        saving = state_options(stage, ctx, every=stop.segment, quiet=True)
        if not saving:
            if stop.segment < total:  # else there is one segment: the whole training
                ctx.reporter.note(f"{stage.title}: --copy-stop-at needs saved states, which this sd-scripts cannot "
                                  f"save; it trains all {total} steps")
            self._train(stage, ctx, dataset_dir, p.max_train_steps, {})
            return
        saved = trainstate.resumable(ctx.scratch, stage.key, total)
        reached = saved.step if saved else 0
        checks = [c for c in copystop.load(ctx.scratch) if c["step"] <= reached]
        stopped = None
        ends = copystop.boundaries(total, p.warmup_steps, stop.segment)
        ctx.reporter.info(f"{stage.title}: --copy-stop-at {stop.min_ssim:g}: segments ending at steps "
                          f"{', '.join(map(str, ends))}")
        passed_before = [c["step"] for c in checks if c["mean_ssim"] >= stop.min_ssim]
        if passed_before and copystop.step_lora(out, reached).is_file():  # killed after the check that stops it
            stopped = passed_before[0]
            copy_into_place(copystop.step_lora(out, reached), out)
        for end in [] if stopped else [reached, *ends]:
            if end < reached or (end == reached and (end not in ends or any(c["step"] == end for c in checks))):
                continue
            if end > reached:
                self._train(stage, ctx, dataset_dir, end, state_options(stage, ctx, every=stop.segment))
                reached = end
            if end >= total:
                break  # the ceiling: the run's copy check stage checks this one
            if copystop.check_segment(stage, ctx, copystop.step_lora(out, end), end, checks, total):
                stopped = end
                copy_into_place(copystop.step_lora(out, end), out)
                break
        copystop.record_in_lora(out, copystop.save(ctx.scratch, checks, stopped or total, total, stop.min_ssim))

    def validate(self, stage, name, path, ctx):
        facts = validate_lora(path, f"{stage.title} output", expected_rank=stage.spec.training.network_dim).facts()
        with contextlib.suppress(OSError, ValueError):
            if stage.spec.copy_stop is not None:
                facts["copy_stop"] = json.loads((ctx.scratch / copystop.STATE_FILE).read_text(encoding="utf-8"))
        return facts

    def describe(self, stage) -> str:
        p = stage.spec
        merged = base_weight_inputs(stage)
        onto = f", on the base + {', '.join(w.name for w in merged)} merged in memory" if merged else ""
        return f"{stage.title}: {p.family.train_script}, {p.total_steps} steps at {p.size[0]}x{p.size[1]}{onto}"


KIND = TrainLora()
