"""See what you made: `copymachine preview` (a strength sweep of a LoRA on a model) and
`copymachine inspect` (what is in a LoRA file)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
from PIL import Image

from copymachine import recipe as recipe_mod
from copymachine.cli import cli
from copymachine.cli.common import engine_options, make_settings
from copymachine.errors import InputError
from copymachine.families import parse_model_files, with_files
from copymachine.files import HashCache
from copymachine.images import image_info
from copymachine.lorafile import summarize_lora
from copymachine.lorainfo import format_report, lora_report
from copymachine.methods import training_size
from copymachine.models import base_options, choose_prediction, inspect_base_model, lora_clip_skip, lora_family
from copymachine.pipeline import Pipeline
from copymachine.plan import FileRef, Planner
from copymachine.progress import Reporter
from copymachine.recipe import MEMO
from copymachine.stages import kind_versions
from copymachine.stages.leakage import leakage_params
from copymachine.stages.leakage import planned_outputs as leakage_outputs
from copymachine.stages.leakage import summary as leakage_summary
from copymachine.stages.preview import planned_outputs, preview_params


@cli.command()
@click.argument("lora", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The checkpoint to render on (best: one the LoRA was not trained on).")
@click.option("--strengths", default=MEMO.preview.strengths, show_default=True,
              help="LoRA strengths, comma-separated: the sheet's columns (0 = the model alone, framed).")
@click.option("--prompt", "prompts", multiple=True,
              help=f"A prompt; repeat for several (rows). Default: {MEMO.preview.prompts!r}.")
@click.option("--seed", "seeds", multiple=True, type=int,
              help=f"A seed; repeat for several (rows: prompt x seed). Default: {MEMO.preview.seeds}.")
@click.option("--size", type=click.IntRange(64, 4096),
              help="Image side in pixels (a multiple of 64). Default: the model family's (512 for SD1).")
@click.option("--steps", type=click.IntRange(1, 1000), default=MEMO.preview.steps, show_default=True,
              help="Sampling steps.")
@click.option("--font", type=click.Path(dir_okay=False, path_type=Path),
              help="A .ttf/.otf font for the labels (the built-in one is ASCII only; for train: --set "
              "preview.font=FILE).")
@click.option("--original", type=click.Path(dir_okay=False, path_type=Path),
              help="The LoRA's training image: also measure leakage (see below). Default: original.png beside the LoRA "
              "when its sha256 is the one in the LoRA's metadata.")
@click.option("--no-leakage", is_flag=True, help="Do not measure leakage.")
@click.option("--model-file", "model_files", multiple=True, metavar="NAME=FILE",
              help="The other files MODEL's family needs (FLUX.1: clip_l, t5xxl, ae; Anima: qwen3, vae), as train "
                   "takes them.")
@engine_options
def preview(lora, model, strengths, prompts, seeds, size, steps, font, original, no_leakage, model_files,
            sd_scripts, python, device, tokenizer_cache_dir, offline, verbose):
    """Render a strength sweep of LORA on MODEL: a labelled contact sheet (rows: prompt x seed; columns: strengths; the
    0 column framed) written beside the LoRA as <name>-preview.png, and the single images in <name>-preview/.

    gen_img.py runs once, the LoRA loaded once (unmerged); each image is one prompt-file line with its own strength
    (--am) and seed (--d). Re-running with the same inputs does nothing.

    Leakage (with the training image, --original): does the LoRA drag its training image into unrelated pictures? A
    second gen_img.py run renders the recipe's [leakage] prompts (unrelated to the training caption) at strength 0 and
    at 1, 2, 3, at the training image's size, and measures each image's SSIM to the training image (LPIPS too when
    installed). The gain over the same seed at strength 0 is how much closer the LoRA pulls an unrelated picture to its
    training image (0: not at all; 1: it draws it); the LoRA leaks from the first strength whose mean gain reaches 0.1.
    Printed, written under the sheet's title and to <name>-preview/leakage.json.

    \b
    Example:
      copymachine preview runs/girl/girl-outline.safetensors --model other-sd15.safetensors --seed 1 --seed 2
    """
    reporter = Reporter(verbose=verbose)
    lora = lora.resolve()
    summary, checkpoint = _checked(lora, model, size, font)
    checkpoint = dataclasses.replace(checkpoint, family=with_files(checkpoint.family, parse_model_files(model_files),
                                                                   checkpoint.embedded))
    settings = make_settings(sd_scripts, python, device, tokenizer_cache_dir, offline, reporter)
    precision = settings.mixed_precision if settings.mixed_precision != "no" else "float"
    # as the LoRA was trained: its clip skip (ss_clip_skip), the checkpoint's prediction type
    clip_skip = lora_clip_skip(summary.metadata, checkpoint.family)
    options = base_options(checkpoint.family, clip_skip, choose_prediction(checkpoint))
    params = preview_params(
        MEMO.preview, checkpoint.family, precision, options, strengths=recipe_mod.strengths(strengths, "--strengths"),
        prompts=list(prompts), seeds=recipe_mod.seeds(",".join(str(s) for s in seeds), "--seed") if seeds else [],
        size=size, steps=steps)
    state = lora.parent / ".copymachine"
    hashes = HashCache(state / "hashes.json")
    planner = Planner(state, state, hashes, kind_versions(settings.engine))
    planner.plan.manifest_name = f"{lora.stem}-preview.manifest.json"
    inputs = {"lora": planner.external(lora), "model": planner.external(checkpoint.path.resolve())}
    if font is not None:
        inputs["font"] = planner.external(font.resolve())
    training_image = None if no_leakage else _training_image(original, lora, summary.metadata, hashes)
    if training_image is not None:
        inputs["leakage"] = _plan_leakage(planner, inputs, training_image, checkpoint, precision, options)
    title = f"strength sweep of {lora.name} on {checkpoint.path.name}"
    stage = planner.add("preview", "preview", title, inputs=inputs, params=params,
                        outputs=planned_outputs(params, lora.stem), workdir=lora.parent)
    n = len(params.prompts) * len(params.seeds) * len(params.strengths)
    reporter.info(f"preview: {n} images ({len(params.prompts)} prompt(s) x {len(params.seeds)} seed(s) x "
                  f"{len(params.strengths)} strengths) at {params.size[0]} px, {params.steps} steps")
    Pipeline(planner.plan, settings, reporter, hashes).run()
    hashes.save()
    if training_image is not None:
        scores = json.loads(planner.plan.stage("leakage").outputs["scores"].read_text(encoding="utf-8"))
        reporter.info(f"{lora.name}: {leakage_summary(scores)}")
    elif not no_leakage:
        reporter.info("leakage not measured: give the LoRA's training image with --original "
                      f"(none found beside {lora.name})")
    click.echo(str(stage.outputs["sheet"]))


def _checked(lora: Path, model: Path, size: int | None, font: Path | None):
    """The LoRA's summary and the checkpoint, checked against each other; --size and --font checked."""
    summary = summarize_lora(lora)
    lora_fam = lora_family(list(summary.modules), summary.metadata)
    checkpoint = inspect_base_model(model, for_training=False)
    if lora_fam is not None and lora_fam.base_model_version != checkpoint.family.base_model_version:
        raise InputError(f"{lora.name} is a {lora_fam.label} LoRA but --model is {checkpoint.family.label}")
    if size is not None and size % 64:
        raise InputError(f"--size must be a multiple of 64, not {size}")
    if font is not None and not font.is_file():
        raise InputError(f"--font not found: {font}")
    return summary, checkpoint


def _plan_leakage(planner: Planner, inputs: dict, training_image: Path, checkpoint, precision: str, options) -> FileRef:
    """The leakage stage (stages/leakage.py, as a run plans it) at the size the LoRA trained: its
    family's native area (the default training size), the training image's aspect kept."""
    width, height = image_info(training_image)["size"]
    size = training_size(width, height, checkpoint.family.default_size)
    params = leakage_params(MEMO.leakage, checkpoint.family, size, precision, options)
    lora = inputs["lora"].path
    leak_inputs = {**inputs, "original000": planner.external(training_image.resolve())}
    leak_inputs.pop("font", None)
    planner.add("leakage", "leakage", f"leakage of {lora.name} on {checkpoint.path.name}", inputs=leak_inputs,
                params=params, outputs=leakage_outputs(params, f"{lora.stem}-preview/"), workdir=lora.parent)
    return planner.plan.ref("leakage", "scores")


def _training_image(option: Path | None, lora: Path, metadata: dict, hashes: HashCache) -> Path | None:
    """--original, else original.png beside the LoRA when its sha256 is the LoRA's recorded one."""
    if option is not None:
        if not option.is_file():
            raise InputError(f"--original not found: {option}")
        try:
            with Image.open(option) as im:
                im.verify()
        except OSError:
            raise InputError(f"--original is not a readable image file: {option}") from None
        return option
    candidate = lora.parent / "original.png"
    recorded = str(metadata.get("copymachine.original_sha256", "")).split(",")
    return candidate if candidate.is_file() and hashes.sha256(candidate) in recorded else None


@cli.command()
@click.argument("lora", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Everything as JSON (long metadata whole).")
def inspect(lora, as_json):
    """What is in a kohya LoRA: rank(s) and alpha(s), module counts (U-Net / text encoder), base model version,
    sd-scripts' ss_* training metadata, copymachine's metadata and the weight norm of each block (TE, IN00-IN11, MID,
    OUT00-OUT11). Reads the file only; needs no sd-scripts.

    \b
    Example:
      copymachine inspect runs/girl/girl-outline.safetensors
    """
    report = lora_report(lora)
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        click.echo(format_report(report))
