"""`copymachine setup`: sd-scripts, its venv, torch and its requirements, then doctor
(copymachine/install.py; `make setup` runs it)."""

from __future__ import annotations

from pathlib import Path

import click

from copymachine import install
from copymachine.cli import cli
from copymachine.cli.doctor import doctor
from copymachine.progress import Reporter


@cli.command()
@click.option("--sd-scripts", "sd_scripts", type=click.Path(path_type=Path),
              help="The sd-scripts to set up; when the folder is absent or empty, the pinned sd-scripts is fetched "
                   "into it (the submodule of copymachine's repository, else a git clone). Default: vendor/sd-scripts.")
@click.option("--torch", "torch", default=install.DEFAULT_TORCH, show_default=True,
              help="pip's requirement(s) for torch, e.g. \"torch==2.6.0 torchvision==0.21.0 --index-url "
                   "https://download.pytorch.org/whl/cu124\"; none: install no torch (the venv has one).")  # fmt: skip
@click.option("--python", "python",
              help="The Python that makes sd-scripts' venv. Default: the one running copymachine.")
@click.pass_context
def setup(ctx, sd_scripts, torch, python):
    """Set up sd-scripts for copymachine, on any system (the same as `make setup`): the sd-scripts
    given or the pinned one fetched, its own venv (<sd-scripts>/venv), torch, sd-scripts'
    requirements; then doctor. Exit: doctor's.

    On Windows the package index's default torch is CPU-only: with an NVIDIA GPU and no
    --index-url in --torch, setup stops first and names the CUDA build that fits the driver.

    \b
    Example:
      copymachine setup --torch "torch torchvision --index-url https://download.pytorch.org/whl/cu124"
    """
    reporter = Reporter()
    root, python_path = install.setup(sd_scripts, torch, reporter.info, python)
    reporter.info(f"set up: sd-scripts {root}, its Python {python_path}; doctor:")
    ctx.invoke(doctor, sd_scripts=root, python=python_path)
