"""`copymachine setup`: sd-scripts, its venv, torch and its requirements, then doctor
(copymachine/install.py; `make setup` runs it); `setup --tokenizers DIR`: the offline tokenizer folder."""

from __future__ import annotations

from pathlib import Path

import click

from copymachine import install
from copymachine.cli import cli
from copymachine.cli.doctor import doctor
from copymachine.engine import locate
from copymachine.progress import Reporter


@cli.command()
@click.option("--sd-scripts", "sd_scripts", type=click.Path(path_type=Path),
              help="The sd-scripts to set up; when the folder is absent or empty, the pinned sd-scripts is fetched "
                   "into it (the submodule of copymachine's repository, else a git clone). Default: vendor/sd-scripts.")
@click.option("--torch", "torch", default=install.DEFAULT_TORCH, show_default=True,
              help="pip's requirement(s) for torch, e.g. \"torch==2.6.0 torchvision==0.21.0 --index-url "
                   "https://download.pytorch.org/whl/cu124\"; none: install no torch (the venv has one).")  # fmt: skip
@click.option("--base-python", "base_python",
              help="The Python that makes sd-scripts' venv (not the one sd-scripts runs in: that is the venv's). "
                   "Default: the one running copymachine.")
@click.option("--tokenizers", "tokenizers", type=click.Path(file_okay=False, path_type=Path),
              help="Instead of setting up, make the tokenizer folder for offline runs (--tokenizer-cache-dir DIR "
                   "--offline) from what is installed: the Hugging Face cache, else open-clip-torch's vocabulary "
                   "in sd-scripts' Python, else the hub (not with HF_HUB_OFFLINE=1).")
@click.pass_context
def setup(ctx, sd_scripts, torch, base_python, tokenizers):
    """Set up sd-scripts for copymachine, on any system (the same as `make setup`): the sd-scripts
    given or the pinned one fetched, its own venv (<sd-scripts>/venv), torch, sd-scripts'
    requirements; then doctor. Exit: doctor's.

    On Windows the package index's default torch is CPU-only: with an NVIDIA GPU and no
    --index-url in --torch, setup stops first and names the CUDA build that fits the driver.
    If git cannot fetch sd-scripts, give one you have: --sd-scripts DIR (make setup SD_SCRIPTS=DIR).

    \b
    Examples:
      copymachine setup --torch "torch torchvision --index-url https://download.pytorch.org/whl/cu124"
      copymachine setup --tokenizers ~/tok   # then: train ... --tokenizer-cache-dir ~/tok --offline
    """
    reporter = Reporter()
    if tokenizers is not None:
        engine = locate(sd_scripts)  # the sd-scripts and Python every command finds
        install.make_tokenizers(tokenizers, engine.python, reporter.info)
        reporter.info(f"tokenizers: {tokenizers} (--tokenizer-cache-dir {tokenizers} --offline); doctor:")
        ctx.invoke(doctor, sd_scripts=engine.root, python=engine.python, tokenizer_cache_dir=tokenizers)
        return
    root, python_path = install.setup(sd_scripts, torch, reporter.info, base_python)
    reporter.info(f"set up: sd-scripts {root}, its Python {python_path}; doctor:")
    ctx.invoke(doctor, sd_scripts=root, python=python_path)
