"""Options and set-up shared by the commands that run sd-scripts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from copymachine.run import make_settings

__all__ = ["engine_options", "make_settings"]  # make_settings lives in copymachine/run.py


def engine_options(f: Callable) -> Callable:
    """--sd-scripts, --python, --device, --tokenizer-cache-dir, --offline."""
    options = [
        click.option(
            "--sd-scripts",
            "sd_scripts",
            type=click.Path(file_okay=False, path_type=Path),
            help="Your sd-scripts checkout. Default: $SD_SCRIPTS, else vendor/sd-scripts (the submodule).",
        ),
        click.option(
            "--python",
            "python",
            help="The Python that runs sd-scripts. Default: $SD_SCRIPTS_PYTHON, else <sd-scripts>/venv, else this one.",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cuda", "cpu"]),
            default="auto",
            show_default=True,
            help="Where sd-scripts trains. auto: the GPU when its torch sees one (bf16, or fp16 without bf16), else the CPU (fp32).",
        ),
        click.option(
            "--tokenizer-cache-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Folder with the CLIP tokenizer(s), handed to every sd-scripts call that takes --tokenizer_cache_dir (offline machines).",
        ),
        click.option("--offline", is_flag=True, help="No hub access: sets HF_HUB_OFFLINE=1 for sd-scripts."),
        click.option("-v", "--verbose", is_flag=True, help="Also print each sd-scripts command line."),
    ]
    for option in reversed(options):
        f = option(f)
    return f
