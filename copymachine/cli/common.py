"""Options and set-up shared by the commands that run sd-scripts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import click

from copymachine import capabilities, preflight, profiles
from copymachine import engine as engine_mod
from copymachine.errors import EnvironmentProblem
from copymachine.progress import Reporter
from copymachine.stages import Settings


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
            help="The Python that runs sd-scripts. Default: $SD_SCRIPTS_PYTHON, else <sd-scripts>/venv, else <kohya_ss>/venv beside <kohya_ss>/sd-scripts, else this one.",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cuda", "cpu"]),
            default="auto",
            show_default=True,
            help="Where sd-scripts trains. auto: the GPU when its torch sees one (bf16 from compute capability 8.0, else fp16), else the CPU (fp32).",
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


def make_settings(
    sd_scripts: Path | None,
    python: str | None,
    device: str,
    tokenizer_cache_dir: Path | None,
    offline: bool,
    reporter: Reporter,
    require: bool = True,
    low_vram: bool = False,
) -> Settings:
    """Locate sd-scripts, ask its Python what it has, and choose the device profile
    (copymachine/profiles.py): the GPU profile when its torch sees a CUDA GPU, else the CPU."""
    engine = engine_mod.locate(sd_scripts, python)
    warning = preflight.engine_warning(engine)
    if warning:
        reporter.warn(f"sd-scripts at {warning}")
    if tokenizer_cache_dir is not None and not Path(tokenizer_cache_dir).is_dir():
        raise EnvironmentProblem(f"--tokenizer-cache-dir is not a folder: {tokenizer_cache_dir}")
    try:
        probe = engine.probe()
    except EnvironmentProblem:
        if require:
            raise
        probe = None
    caps = None
    if probe is not None and require:
        engine.require(probe)
        # what this sd-scripts can do (each script's --help, once per checkout): refused here,
        # before any stage, when copymachine cannot drive it
        caps = capabilities.learn(engine, on_progress=lambda done, total: reporter.counting("capabilities", capabilities.progress_text(done, total), done, total))
        capabilities.require(engine, caps)
    cuda = bool(probe and probe.cuda)
    if device == "cuda" and not cuda:
        raise EnvironmentProblem(f"--device cuda, but the torch of {engine.python} sees no CUDA GPU")
    use_cuda = cuda and device != "cpu"
    if low_vram and not use_cuda:
        reporter.warn("--low-vram has no effect on the CPU: training there uses no GPU memory")
    if use_cuda:
        precision, why = profiles.choose_precision(probe.compute, probe.bf16)  # type: ignore[union-attr]
        profile = profiles.gpu_profile(precision == "bf16", low_vram, why=why)
        caveat = profiles.precision_caveat(probe.gpus, precision)  # type: ignore[union-attr]
        if caveat:
            reporter.warn(caveat)
    else:
        profile = profiles.CPU
    reporter.info(f"sd-scripts {engine.root}; its Python {engine.python} ({engine.python_reason})" + (f"; trains in {profile.mixed_precision} ({profile.why})" if use_cuda else ""))
    return Settings(
        engine=engine,
        probe=probe,
        profile=profile,
        tokenizer_cache_dir=Path(tokenizer_cache_dir).resolve() if tokenizer_cache_dir else None,
        offline=offline or os.environ.get("HF_HUB_OFFLINE") == "1",
        gpus=len(probe.gpus) if use_cuda else 0,  # type: ignore[union-attr]
        capabilities=caps,
    )
