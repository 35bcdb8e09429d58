"""Stage (memo steps 2 and 5): train a LoRA with sd-scripts on one image.

The dataset folder holds exactly one image and its caption; the dataset and training configs
are rendered from templates/ and the training runs through `accelerate launch`. The copy LoRA
trains on the base model; the effect LoRA on the copy model.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from copymachine.files import copy_into_place
from copymachine.images import save_png
from copymachine.lorafile import validate_lora
from copymachine.render import AttrDict, write_config
from copymachine.stages import StageContext, StageKind, reset_scratch

CAPTION_EXTENSION = ".txt"  # sd-scripts' default is ".caption": always set it
BASE_WEIGHT_PREFIX = "weights"
# Run by sd-scripts' Python in place of the training script when LoRAs are merged in memory
LAUNCHER = Path(__file__).resolve().parent.parent / "sd_side" / "base_weights_launcher.py"


def base_weight_input_name(i: int) -> str:
    """Input names of the LoRAs merged into the base in memory (--base_weights), in order."""
    return f"{BASE_WEIGHT_PREFIX}{i:03d}"


def base_weight_inputs(stage) -> list[Path]:
    return [stage.input(name) for name in sorted(stage.inputs) if name.startswith(BASE_WEIGHT_PREFIX)]


def prepare_training_image(source: Path, target: Path, size: tuple[int, int]) -> None:
    """Copy the training image, resized to the training size if it differs (the same
    deterministic resize for the original and the edited image, so they stay aligned)."""
    with Image.open(source) as im:
        im = im.convert("RGB")
        if im.size != tuple(size):
            im = im.resize(tuple(size), Image.Resampling.LANCZOS)
        save_png(im, target)


class TrainLora(StageKind):
    kind = "train_lora"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.params
        training = p["training"]
        dataset_dir = stage.workdir / "dataset" / stage.slug
        config_dir = stage.workdir / "config"
        out = ctx.scratch_output("lora")
        if not ctx.dry_run:
            reset_scratch(dataset_dir)
            prepare_training_image(stage.input("image"), dataset_dir / "image.png", tuple(p["size"]))
            copy_into_place(stage.input("caption"), dataset_dir / f"image{CAPTION_EXTENSION}")
        width, height = p["size"]
        dataset_config = write_config(
            config_dir / f"{stage.slug}-dataset.toml",
            "dataset.toml.j2",
            stage=stage.name,
            training=AttrDict(training),
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
            family=AttrDict(p["family"]),
            tokenizer_cache_dir=ctx.settings.tokenizer_cache_dir,
            training=AttrDict(training),
            warmup_steps=p["warmup_steps"],
            dataset_config=dataset_config,
            resolution_text=f"{width},{height}",
            max_train_steps=p["max_train_steps"],
            profile=AttrDict({"mixed_precision": p["mixed_precision"], "training_options": p["training_options"]}),
            base_weights=[str(w) for w in base_weight_inputs(stage)],
            base_weights_multipliers=p.get("base_weights_multipliers", []),
            output_dir=ctx.scratch,
            output_name=out.stem,
            comment=f"copymachine {stage.name}",
        )
        ctx.run(
            ctx.engine.launch_training(p["family"]["train_script"], config, p["mixed_precision"], launcher=LAUNCHER if base_weight_inputs(stage) else None),
            Path(p["family"]["train_script"]).name,
            expected=[out],
        )

    def validate(self, stage, name, path, ctx):
        return validate_lora(path, f"{stage.title} output", expected_rank=stage.params["training"]["network_dim"]).facts()

    def describe(self, stage) -> str:
        p = stage.params
        steps = p["max_train_steps"] or p["training"]["repeats"] * p["training"]["epochs"] // p["training"]["batch_size"]
        merged = base_weight_inputs(stage)
        onto = f", on the base + {', '.join(w.name for w in merged)} merged in memory" if merged else ""
        return f"{stage.title}: {p['family']['train_script']}, {steps} steps at {p['size'][0]}x{p['size'][1]}{onto}"


KIND = TrainLora()
