"""`copymachine train` (the copy-machine method) and `copymachine diff` (difference extraction):
their click options, turned into RunOptions and run by copymachine/run.py."""

from __future__ import annotations

from pathlib import Path

import click

from copymachine import effects as effect_registry
from copymachine.cli import cli
from copymachine.cli.common import engine_options
from copymachine.cli.see import see_options
from copymachine.methods import COPY_MACHINE, DIFFERENCE
from copymachine.run import RunOptions, run_method


def method_options(f):
    """The options `train` and `diff` share (their effect on a run is the same)."""
    options = [
        click.option("--effect", "effects", multiple=True, metavar="EFFECT", help="outline, flat, contrast, posterize, jpeg, all, or custom (with --edited). Repeatable."),
        click.option("--base", required=True, type=click.Path(path_type=Path), help="Base model: a single-file SD checkpoint (.safetensors)."),
        click.option("--image", "images", multiple=True, type=click.Path(path_type=Path), help="An original image; repeat for several (memo step 6). Default: generate one with the base model."),
        click.option("--images", "images_dir", type=click.Path(path_type=Path), help="A folder of original images (instead of --image)."),
        click.option("--edited", "edited", multiple=True, type=click.Path(path_type=Path), help="Your own edit of --image (effect custom), one per --image, checked for size and alignment first."),
        click.option("--edited-dir", type=click.Path(path_type=Path), help="A folder of your edits of --images, matched by file name."),
        click.option("--edit-in-place", is_flag=True, help="Your edits keep every pixel in place (you only drew on the picture): an alignment fit pulled by thick new lines is then a note, not a refusal."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder. Default: runs/<image name>."),
        click.option("--name", help="File name of the final LoRA. Default: <run folder name>-<effect>."),
        click.option("--caption", help="Caption of both training images (the same text for both). Default: the recipe's."),
        click.option("--prompt", help="Prompt for a generated original image (when no image is given)."),
        click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False, path_type=Path), metavar="NAME|FILE", help="A built-in recipe by name (memo, the default; fast: traintrain's Difference preset, ~1,000 steps) or a recipe TOML file over the memo's numbers (`copymachine recipe --list`)."),
        click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one number (copy.network_dim=32, effect.epochs=4, resize.rank=4) or an effect parameter (outline.width=2). Repeatable."),
        click.option("--amount", type=float, default=1.0, show_default=True, help=f"Strength of a built-in edit: original + AMOUNT x (edit - original), {effect_registry.AMOUNT_RANGE} (1 = the edit, negative = its opposite; beyond that the edit only saturates)."),
        click.option("--resolution", type=click.IntRange(64, 4096), metavar="N", help="Training size: about N x N px, the picture's aspect kept, sides multiples of 64 (2048x1536 at 512 trains at 576x448). Default: the model's native size (512 for SD1.x/2.x, 1024 for SDXL); a generated original trains at its own size. 64 for quick tests."),
        click.option("--max-steps", type=click.IntRange(1), help="Cap every training at this many steps (warmup scaled alike); for quick test runs."),
        click.option("--rank", type=click.IntRange(0), help="Rank of the final LoRA (memo: 8). 0 keeps the trained rank (train only)."),
        click.option("--combine", type=click.Choice(["merge", "svd"]), help="How several images' LoRAs are combined: merge = the memo's steps 7-9 (merge into the model, extract, resize); svd = svd_merge_lora.py, exact and cheaper."),
        click.option(
            "--copy-model",
            type=click.Choice(["memory", "file"]),
            help="memory (default): the effect LoRA trains on the base model with the copy LoRA merged in memory (sd-scripts' --base_weights), the same weights without a 4-13 GB file; file: merge_lora.py writes the copy model, as the memo does. Also where --absorb's styles go. Recipe key merge.copy_model.",
        ),
        click.option("--clip-skip", type=click.IntRange(1, 12), help="CLIP layer counted from the last, for every training and render (SD1.x; 2 for NovelAI-derived anime models). Default: the recipe's model.clip_skip (1). Recorded in the LoRA as ss_clip_skip."),
        click.option("--v-pred", is_flag=True, help="The base model is a v-prediction model (sd-scripts' v_parameterization in every training and render); found by itself when the checkpoint has a v_pred key."),
        click.option("--zero-terminal-snr", is_flag=True, help="The v-prediction base model has a zero-terminal-SNR schedule (sd-scripts' zero_terminal_snr); found by itself from a ztsnr key."),
        click.option("--sd-arg", "sd_args", multiple=True, metavar="KEY=VALUE", help="Add an sd-scripts training option the recipe does not name (noise_offset=0.05, network_args='[\"conv_dim=8\"]', xformers), to every training; checked against the training script's --help before any work. Repeatable; recipe table [sd_args]."),
        click.option("--absorb", multiple=True, metavar="STYLE.safetensors[:RATIO]", help="Merge a style LoRA into the base model first; every training uses the result (the memo's tip). Repeatable."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Where shared stages (copy LoRAs, copy models, LoRA A) are kept. Default: $COPYMACHINE_CACHE, else <run folder>/../_cache."),
        click.option("--jobs", type=click.IntRange(1), help="Trainings run side by side (several effects or images): one per GPU on a multi-GPU machine, else as many as the GPU's free memory holds (default); CPU runs stay sequential."),
        click.option("--samples", type=click.IntRange(1), metavar="N", help="Every N steps of each training, render the recipe's [watch] sample prompt(s) with the LoRA so far (the effect LoRA: on the copy model at +1) into <run folder>/samples/<stage>/; the web UI's queue page shows the latest. Each costs one render (README)."),
        click.option("--tensorboard", is_flag=True, help="sd-scripts writes TensorBoard logs into <run folder>/tensorboard/; the run prints the `tensorboard --logdir` line."),
        click.option("--low-vram", is_flag=True, help="For small GPUs: gradient checkpointing, 8-bit AdamW (needs bitsandbytes), latents cached on disk; SDXL also caches the text encoders' outputs and trains the U-Net only. Opt-in: the memo trains with plain AdamW and both."),
        click.option("--dry-run", is_flag=True, help="Write the configs and print every command; run nothing."),
        click.option("--no-wait", is_flag=True, help="Exit at once (code 6) instead of waiting when another run holds the run folder or a cache entry."),
        click.option("--force", is_flag=True, help="Write into a run folder that holds another run (or files copymachine did not make), replacing what it writes there."),
        click.option("--allow-pickle", is_flag=True, help="Accept a pickle checkpoint (.ckpt) as --base: copymachine does not open it (assumes SD1.x); sd-scripts loads it with torch. Only for files you trust."),
    ]
    # --help lists the method's options first, then the checks and previews, then the engine's
    f = engine_options(f)
    f = see_options(f)
    for option in reversed(options):
        f = option(f)
    return f


def echo_finals(finals: list[Path]) -> None:
    """stdout carries only results: one final LoRA per line."""
    for path in finals:
        click.echo(str(path))


@cli.command()
@method_options
@click.option("--copy-stop-at", type=click.FloatRange(0, 1), metavar="SSIM", help="Opt-in: train the copy LoRA in segments of the save interval (recipe watch.save_every_n_steps), run the copy check after each, and stop at the first whose mean SSIM reaches SSIM (not before the 500 warmup steps). The memo's 3072 steps stay the default and the ceiling.")
def train(copy_stop_at, **options):
    """Train a slider LoRA with the copy-machine method (memo steps 1-5, 9).

    \b
    1. original image   --image, or generated from the base model
    2. edit             a built-in effect, or your --edited image (checked first)
    3. captions         one fixed caption, the same for both images
    4. copy LoRA        over-fit on the original (dim 64, 3072 steps), cached
    5. copy model       the copy LoRA merged into the base model, cached
    6. copy check       does the copy model copy? (SSIM >= 0.8; --no-copy-check)
    7. effect LoRA      trained on the copy model with the edited image
    8. resize           to rank 8 -> <run folder>/<name>.safetensors

    With several images (--image a.png --image b.png, or --images DIR) each gets its own copy
    machine and effect LoRA, combined by the memo's steps 7-9 (or --combine svd).
    Re-running the same command skips every finished stage; a killed run resumes.

    \b
    Examples:
      copymachine train --effect outline --base sd15.safetensors --image girl.png
      copymachine train --edited girl-inked.png --image girl.png --base sd15.safetensors
      copymachine train --effect all --base sd15.safetensors --image girl.png --image cat.png
      copymachine train --effect flat --base sd15.safetensors --dry-run
    """
    echo_finals(run_method(COPY_MACHINE, RunOptions(copy_stop_at=copy_stop_at, **options)))


@cli.command()
@method_options
@click.option("--sign", type=click.Choice(["edit", "memo"]), default="edit", show_default=True, help="edit: positive strength = more of the edit (B - A). memo: the memo's ratios 1 -1 (A - B), where positive strength removes the edit.")
def diff(sign, **options):
    """Train a slider LoRA with the difference-extraction method (差分抽出法).

    \b
    1. LoRA A   over-fitted copy of the original (4096 steps) on the base model, cached
    2. LoRA B   over-fitted copy of the edited image, same recipe
    3. B - A    svd_merge_lora.py --new_rank 8 --precision float --save_precision fp16

    Positive strength = more of the edit (B - A). The memo's --ratios 1 -1 gave A - B,
    where positive strength removed the edit: --sign memo reproduces that.

    \b
    Example:
      copymachine diff --effect outline --base sd15.safetensors --image girl.png
    """
    echo_finals(run_method(DIFFERENCE, RunOptions(sign=sign, **options)))
