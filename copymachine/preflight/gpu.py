"""Pre-flight on the GPU: how many stages share it, whether the largest fits, bitsandbytes for 8-bit optimizers."""

from __future__ import annotations

from copymachine import vram
from copymachine.errors import EnvironmentProblem
from copymachine.preflight.disk import human
from copymachine.progress import Reporter

LOW_VRAM_TEXT = ("gradient checkpointing, 8-bit AdamW; for SDXL also the text encoders' outputs cached and the U-Net "
                 "trained alone")


def gpu_memory(settings) -> tuple[int | None, int | None, str]:
    """(free, total, which) of the pinned GPU, else the one with the least free memory (a job may land on any)."""
    probe = settings.probe
    vram = list(probe.vram) if probe is not None else []
    if not vram:
        return None, None, ""
    pinned = settings.pinned_gpu
    index = pinned if pinned is not None and pinned < len(vram) else min(range(len(vram)), key=lambda i: vram[i][0])
    name = probe.gpus[index] if index < len(probe.gpus) else "a CUDA GPU"
    return vram[index][0], vram[index][1], f"GPU {index} ({name})"


def vram_advice(plan, free: int, low_vram: bool) -> str | None:
    """What to say when the plan's largest GPU stage will not fit in `free` bytes; None when it fits."""
    ranked = vram.largest(plan)
    if not ranked or ranked[0][1].total <= free:
        return None
    stage, need = ranked[0]
    text = f"'{stage.title}' ({need.what}) needs ~{human(need.total)} of GPU memory by copymachine's estimate"
    if low_vram:
        return text + (" even with --low-vram; use a smaller --resolution or network dim (--set copy.network_dim=N, "
                       "--set effect.network_dim=N), or a GPU with more memory")
    lighter = vram.largest(plan, low_vram=True)[0][1]
    if lighter.total <= free:
        return text + f"; --low-vram needs ~{human(lighter.total)} ({LOW_VRAM_TEXT})"
    return text + (f"; even --low-vram ({LOW_VRAM_TEXT}) needs ~{human(lighter.total)}: also lower --resolution or the "
                   "network dim, or use a GPU with more memory")


def check_vram(plan, settings, requested_jobs: int | None, trainings: int, reporter: Reporter) -> int:
    """How many stages share the GPU (--jobs, else what its free memory holds), warning when it will not fit."""
    options = [s.spec.training_options for s in plan.stages if s.kind == "train_lora"]
    if any(o.get("network_train_unet_only") and o.get("cache_text_encoder_outputs") for o in options):
        reporter.note("--low-vram on SDXL: the text encoders' outputs are cached once and the U-Net trains alone, so "
                      "the LoRAs have no text-encoder part (the memo trains both) and the caption is not shuffled")
    free, total, which = gpu_memory(settings)
    gpus = settings.gpus
    jobs = requested_jobs or vram.default_jobs(plan, gpus, free, trainings)
    per_gpu = 1 if gpus > 1 else jobs  # several GPUs: one stage on each
    ranked = vram.largest(plan)
    if not ranked:
        return jobs
    peak = vram.side_by_side(plan, per_gpu)
    stage, need = ranked[0]
    plan.info.vram = {"estimate_bytes": peak, "largest_stage": stage.name, "largest_bytes": need.total,
                      "parts": need.parts, "side_by_side": per_gpu, "free_bytes": free, "total_bytes": total,
                      "basis": "estimate (copymachine/vram.py): weights and optimizer from parameter counts, "
                               "activations and CUDA context not measured on a GPU"}
    if free is None:
        return jobs
    where = f"{which} has {human(free)} free of {human(total or 0)}"
    advice = vram_advice(plan, free, settings.profile.name == "gpu-low-vram")
    if advice:
        reporter.warn(f"{advice}; {where}: it will likely run out of memory")
    elif peak > free:
        fits = vram.fitting_jobs(plan, free, jobs)
        reporter.warn(f"--jobs {jobs}: {per_gpu} stages side by side need ~{human(peak)} of GPU memory by "
                      f"copymachine's estimate; {where}: use --jobs {fits}")
    else:
        together = f"; {per_gpu} side by side ~{human(peak)}" if per_gpu > 1 else ""
        reporter.info(f"GPU memory by copymachine's estimate: the largest stage, '{stage.title}' ({need.what}), "
                      f"~{human(need.total)}{together}; {where}")
    return jobs


def check_bitsandbytes(plan, settings) -> None:
    """An 8-bit optimizer needs bitsandbytes in sd-scripts' Python: refused when it is missing or broken."""
    optimizers = sorted({s.spec.training.optimizer for s in plan.stages if s.kind == "train_lora"
                         and "8bit" in s.spec.training.optimizer.lower()})
    if not optimizers or settings.engine is None:
        return
    probe = settings.engine.probe(("bitsandbytes",))
    broken = f"fails to import it ({probe.broken['bitsandbytes']})" if probe.broken else None
    problem = "lacks it" if probe.missing else broken
    if problem:
        low_vram = settings.profile.optimizer in optimizers
        raise EnvironmentProblem(f"{'--low-vram trains' if low_vram else 'the recipe trains'} with "
                                 f"{', '.join(optimizers)}, which needs bitsandbytes; the Python for sd-scripts "
                                 f"({settings.engine.python}) {problem}: pip install bitsandbytes into it"
                                 + (", or train without --low-vram" if low_vram else ""))


# CPU seconds per training step at 64x64 px: docs/benchmarks.md item 6 (2 cores, SD1.5, the memo's copy LoRA,
# sd-scripts' own step timer, measured on a busy machine). Scaled by pixel count: an estimate, not a measurement.
CPU_STEP_SECONDS_64PX = 7.6
SMOKE_TEST = "--resolution 64 --max-steps 3 --no-copy-check"


def duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.0f} s"


def cpu_estimate(plan, cuda: bool) -> str:
    """Each training's CPU time (the 64 px figure scaled by pixel count), and the flags of a quick test."""
    why = "its torch sees no CUDA GPU" if not cuda else "--device cpu"
    parts, total = [], 0.0
    for stage in plan.stages:
        if stage.kind == "train_lora":
            p = stage.spec
            seconds = p.total_steps * CPU_STEP_SECONDS_64PX * p.size[0] * p.size[1] / (64 * 64)
            total += seconds
            parts.append(f"{stage.title} {p.total_steps:,} steps at {p.size[0]}x{p.size[1]} ~{duration(seconds)}")
    return (f"sd-scripts trains on the CPU ({why}). Estimated time (docs/benchmarks.md's CPU figure at 64 px, "
            f"{CPU_STEP_SECONDS_64PX:.1f} s per step on 2 cores, scaled by pixel count: an estimate): "
            + "; ".join(parts) + f"; trainings in all ~{duration(total)}. "
            f"To test the set-up quickly: {SMOKE_TEST}")
