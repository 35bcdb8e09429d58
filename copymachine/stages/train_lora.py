"""Stage (memo steps 2 and 5): train a LoRA with sd-scripts on one image.

The dataset folder holds exactly one image and its caption; the dataset and training configs
are rendered from templates/ and the training runs through `accelerate launch`. The copy LoRA
trains on the base model; the effect LoRA on the copy model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from copymachine.errors import InputError
from copymachine.files import copy_into_place
from copymachine.images import load_rgb, save_png
from copymachine.lorafile import validate_lora
from copymachine.models import BaseOptions, Family
from copymachine.plan import OPTIONAL, StageParams, WeightedLora
from copymachine.recipe import TrainingRecipe
from copymachine.render import write_config
from copymachine.stages import Settings, StageContext, StageKind, reset_scratch

CAPTION_EXTENSION = ".txt"  # sd-scripts' default is ".caption": always set it
BASE_WEIGHT_PREFIX = "weights"
# Run by sd-scripts' Python in place of the training script when LoRAs are merged in memory
LAUNCHER = Path(__file__).resolve().parent.parent / "sd_side" / "base_weights_launcher.py"


def base_weight_input_name(i: int) -> str:
    """Input names of the LoRAs merged into the base in memory (--base_weights), in order."""
    return f"{BASE_WEIGHT_PREFIX}{i:03d}"


def base_weight_inputs(stage) -> list[Path]:
    return [stage.input(name) for name in sorted(stage.inputs) if name.startswith(BASE_WEIGHT_PREFIX)]


@dataclass(frozen=True)
class TrainParams(StageParams):
    family: Family
    training: TrainingRecipe
    size: tuple[int, int]
    max_train_steps: int | None  # --max-steps, when below the recipe's steps
    warmup_steps: int
    mixed_precision: str
    training_options: dict[str, Any]
    # the multipliers of the LoRAs merged into the base in memory (inputs weights000, ...)
    base_weights_multipliers: list[float] | None = field(default=None, metadata=OPTIONAL)
    # clip skip and the prediction type (copymachine.models.BaseOptions; None: the defaults)
    model: BaseOptions | None = field(default=None, metadata=OPTIONAL)
    # sd-scripts options the recipe does not name ([sd_args], --sd-arg), in the TOML as they are
    sd_args: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)


# Training TOML keys copymachine writes itself (templates/training.toml.j2, dataset.toml.j2, the
# profiles), and what sets each: --sd-arg adds options, it does not replace the recipe's.
_RECIPE = "the recipe key {}.{} (--set {}.{}=..., for copy, effect or diff)"
OWN_KEYS: dict[str, str] = {
    **{key: _RECIPE.format("copy", name, "copy", name) for key, name in (
        ("network_module", "network_module"), ("network_dim", "network_dim"), ("network_alpha", "network_alpha"),
        ("optimizer_type", "optimizer"), ("learning_rate", "learning_rate"), ("lr_scheduler", "lr_scheduler"),
        ("lr_warmup_steps", "warmup_steps"), ("max_train_epochs", "epochs"), ("seed", "seed"),
        ("save_precision", "save_precision"), ("shuffle_caption", "shuffle_caption"), ("keep_tokens", "keep_tokens"),
        ("num_repeats", "repeats"), ("train_batch_size", "batch_size"), ("batch_size", "batch_size"))},
    "max_train_steps": "--max-steps",
    "resolution": "--resolution",
    "clip_skip": "--clip-skip (the recipe key model.clip_skip)",
    "v_parameterization": "--v-pred (or the checkpoint's v_pred key)",
    "zero_terminal_snr": "--zero-terminal-snr (or the checkpoint's ztsnr key)",
    "mixed_precision": "the device profile (bf16/fp16 on a GPU, fp32 on the CPU)",
    "v2": "the base model's family",
    "no_half_vae": "the base model's family (always on for SDXL)",
    **{key: "copymachine itself" for key in (
        "pretrained_model_name_or_path", "tokenizer_cache_dir", "base_weights", "base_weights_multiplier", "dataset_config",
        "output_dir", "output_name", "save_model_as", "training_comment", "console_log_simple", "config_file",
        "train_data_dir", "caption_extension", "enable_bucket")},
}


def check_sd_args(sd_args: dict[str, Any]) -> None:
    """Refuse an --sd-arg that names a key copymachine writes itself, naming what sets it."""
    for key in sd_args:
        if key in OWN_KEYS:
            raise InputError(f"--sd-arg {key}: copymachine sets {key} itself; use {OWN_KEYS[key]}")


def training_plan(
    training: TrainingRecipe,
    family: Family,
    size: tuple[int, int],
    settings: Settings,
    max_steps: int | None,
    inputs: dict[str, Any],
    base_weights: Sequence[WeightedLora] = (),
    model: BaseOptions | None = None,
    sd_args: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], TrainParams]:
    """The stage's inputs (`inputs`: base, image, caption; plus the LoRAs merged into the base
    in memory first) and its parameters: the recipe's training, shortened by `max_steps` with
    the same share of warmup, the profile's optimizer and training options."""
    max_train_steps = None
    warmup = training.warmup_steps
    if max_steps is not None and max_steps < training.steps:
        max_train_steps = max_steps
        # keep the recipe's shape: the same share of the run warms up
        warmup = int(training.warmup_steps * max_steps / training.steps)
    if settings.profile.optimizer:  # the low-VRAM profile's 8-bit AdamW
        training = dataclasses.replace(training, optimizer=settings.profile.optimizer)
    options = settings.profile.training_options_for(family.name)
    if options.get("cache_text_encoder_outputs"):
        # sd-scripts refuses cached text-encoder outputs with shuffled captions (one output per caption)
        training = dataclasses.replace(training, shuffle_caption=False)
    inputs = {**inputs, **{base_weight_input_name(i): w.lora for i, w in enumerate(base_weights)}}
    params = TrainParams(
        family=family,
        training=training,
        size=(int(size[0]), int(size[1])),
        max_train_steps=max_train_steps,
        warmup_steps=warmup,
        mixed_precision=settings.mixed_precision,
        training_options=options,
        # only with LoRAs merged in memory, so the stage keys of trainings without them stay as they were
        base_weights_multipliers=[w.ratio for w in base_weights] or None,
        model=model.for_training() if model else None,
        sd_args=dict(sd_args) if sd_args else None,
    )
    return inputs, params


def prepare_training_image(source: Path, target: Path, size: tuple[int, int]) -> None:
    """Copy the training image, resized to the training size if it differs (the same
    deterministic resize for the original and the edited image, so they stay aligned)."""
    im = load_rgb(source)  # upright, as every size was read
    if im.size != tuple(size):
        im = im.resize(tuple(size), Image.Resampling.LANCZOS)
    save_png(im, target)


class TrainLora(StageKind):
    kind = "train_lora"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.spec
        training = p.training
        dataset_dir = stage.workdir / "dataset" / stage.slug
        config_dir = stage.workdir / "config"
        out = ctx.scratch_output("lora")
        if not ctx.dry_run:
            reset_scratch(dataset_dir)
            prepare_training_image(stage.input("image"), dataset_dir / "image.png", tuple(p.size))
            copy_into_place(stage.input("caption"), dataset_dir / f"image{CAPTION_EXTENSION}")
        width, height = p.size
        dataset_config = write_config(
            config_dir / f"{stage.slug}-dataset.toml",
            "dataset.toml.j2",
            stage=stage.name,
            training=training,
            caption_extension=CAPTION_EXTENSION,
            resolution=[width, height],
            enable_bucket=False,
            image_dir=dataset_dir,
        )
        config = write_config(
            config_dir / f"{stage.slug}-training.toml",
            "training.toml.j2",
            stage=stage.name,
            base_model=stage.input("base"),
            family=p.family,
            tokenizer_cache_dir=ctx.settings.tokenizer_cache_dir,
            training=training,
            warmup_steps=p.warmup_steps,
            dataset_config=dataset_config,
            resolution_text=f"{width},{height}",
            max_train_steps=p.max_train_steps,
            # an --sd-arg replaces the profile's own value of a key (gradient_checkpointing = false)
            profile={"mixed_precision": p.mixed_precision, "training_options": {k: v for k, v in p.training_options.items() if k not in (p.sd_args or {})}},
            base_weights=[str(w) for w in base_weight_inputs(stage)],
            base_weights_multipliers=p.base_weights_multipliers or [],
            model_options=p.model.training_keys() if p.model else {},
            sd_args=p.sd_args or {},
            output_dir=ctx.scratch,
            output_name=out.stem,
            comment=f"copymachine {stage.name}",
        )
        ctx.run(
            ctx.engine.launch_training(p.family.train_script, config, p.mixed_precision, launcher=LAUNCHER if base_weight_inputs(stage) else None),
            Path(p.family.train_script).name,
            expected=[out],
        )

    def validate(self, stage, name, path, ctx):
        return validate_lora(path, f"{stage.title} output", expected_rank=stage.spec.training.network_dim).facts()

    def describe(self, stage) -> str:
        p = stage.spec
        steps = p.max_train_steps or p.training.steps
        merged = base_weight_inputs(stage)
        onto = f", on the base + {', '.join(w.name for w in merged)} merged in memory" if merged else ""
        return f"{stage.title}: {p.family.train_script}, {steps} steps at {p.size[0]}x{p.size[1]}{onto}"


KIND = TrainLora()
