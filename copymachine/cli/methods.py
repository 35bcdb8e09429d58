"""`copymachine train` (the copy-machine method) and `copymachine diff` (difference extraction):
their click options, made from RunOptions (copymachine/options.py) and run by copymachine/run.py."""

from __future__ import annotations

from pathlib import Path

import click

from copymachine.cli import cli
from copymachine.cli.common import run_options
from copymachine.methods import COPY_MACHINE, DIFFERENCE
from copymachine.run import RunOptions, run_method


def echo_finals(finals: list[Path]) -> None:
    """stdout carries only results: one final LoRA per line."""
    for path in finals:
        click.echo(str(path))


@cli.command()
@run_options("train")
def train(**options):
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
    echo_finals(run_method(COPY_MACHINE, RunOptions(**options)))


@cli.command()
@run_options("diff")
def diff(**options):
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
    echo_finals(run_method(DIFFERENCE, RunOptions(**options)))
