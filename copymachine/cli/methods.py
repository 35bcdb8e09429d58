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
    """Train a slider LoRA with the copy-machine method. Its stages, in the order they run (the
    edit first, so a bad edit stops the run before any training), each with the memo's step:

    \b
    memo step 1  original image   --image, or generated from the base model
    memo step 4  edited image     a built-in effect, or your --edited image (checked first)
    memo step 2  captions         one fixed caption, the same for both images
    memo step 2  copy LoRA        over-fit on the original (dim 64, 3072 steps), cached
    memo step 3  copy model       the base model + the copy LoRA, in memory (--copy-model file: a file)
    memo step 3  copy check       does the copy model copy? (SSIM >= 0.8; --no-copy-check)
    memo step 5  effect LoRA      trained on the copy model with the edited image
    memo step 9  resize           to rank 8 -> final LoRA <run folder>/<name>.safetensors

    With several images (--image a.png --image b.png, or --images DIR) each gets its own copy
    machine and effect LoRA (memo step 6), combined by the memo's steps 7-9 (or --combine svd).
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
    """Train a slider LoRA with the difference-extraction method (差分抽出法). Its stages, in the
    order they run, each with its step in the memo's difference extraction:

    \b
    memo step 1  original image                --image, or generated from the base model
    memo step 3  edited image                  a built-in effect, or your --edited image (checked first)
    memo step 2  captions                      one fixed caption, the same for both images
    memo step 2  LoRA A of the original        over-fitted (4096 steps) on the base model, cached
    memo step 2  copy check                    does LoRA A copy? (SSIM >= 0.8; --no-copy-check)
    memo step 4  LoRA B of the edited image    the same recipe
    memo step 5  difference B - A              svd_merge_lora.py --new_rank 8 --save_precision fp16

    Positive strength = more of the edit (B - A). The memo's --ratios 1 -1 gave A - B,
    where positive strength removed the edit: --sign memo reproduces that.

    \b
    Example:
      copymachine diff --effect outline --base sd15.safetensors --image girl.png
    """
    echo_finals(run_method(DIFFERENCE, RunOptions(**options)))
