"""The engine set-up every command that runs sd-scripts shares: sd-scripts located, its Python asked
what it has (and, for a run, what its scripts can do), and the device profile chosen."""

from __future__ import annotations

import os
from pathlib import Path

from copymachine import capabilities, preflight, profiles
from copymachine import engine as engine_mod
from copymachine.errors import EnvironmentProblem
from copymachine.progress import Reporter
from copymachine.settings import Settings


def make_settings(sd_scripts: Path | None, python: str | None, device: str, tokenizer_cache_dir: Path | None,
                  offline: bool, reporter: Reporter, require: bool = True, low_vram: bool = False) -> Settings:
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
        # what this sd-scripts can do (each script's --help, once per checkout): refused here, before any stage,
        # when copymachine cannot drive it
        caps = capabilities.learn(engine, on_progress=lambda done, total: reporter.counting(
            "capabilities", capabilities.progress_text(done, total), done, total))
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
    trains = f"; trains in {profile.mixed_precision} ({profile.why})" if use_cuda else ""
    reporter.info(f"sd-scripts {engine.root}; its Python {engine.python} ({engine.python_reason}){trains}")
    return Settings(engine=engine, probe=probe, profile=profile,
                    tokenizer_cache_dir=Path(tokenizer_cache_dir).resolve() if tokenizer_cache_dir else None,
                    offline=offline or os.environ.get("HF_HUB_OFFLINE") == "1",
                    gpus=len(probe.gpus) if use_cuda else 0, capabilities=caps)  # type: ignore[union-attr]
