"""`--copy-stop-at SSIM`: the copy LoRA trains in segments and stops when the copy copies.

The memo trains the copy LoRA 3072 steps; that stays the default and the ceiling. With
`--copy-stop-at`, the training runs in segments of the save interval (recipe
watch.save_every_n_steps): each segment is an sd-scripts run up to the segment's last step,
resumed from the previous segment's saved state (copymachine/trainstate.py), so the step count,
optimizer and RNG go on. The first segment ends at the first multiple of the interval at or
after the warmup (500 steps). After each segment the copy check (the recipe's [copy_check]
prompts and seeds, the copy LoRA on the base model at the merge ratio, as the memory route's
check) renders and scores the segment's LoRA; the training stops at the first segment whose mean
SSIM reaches the value. The last segment (the ceiling) is not checked here: the run's own copy
check stage checks the LoRA it keeps.

The checks so far are kept in the scratch folder (`copy-stop.json`) beside the saved state, so
a killed run goes on with the next segment. The stage's stamp (and so the manifest) and the
LoRA's metadata (`copymachine_copy_stop`) record the step it stopped at and every check's scores.

Scheduler note: each segment builds its scheduler for its own last step; the recipe's
constant_with_warmup depends on the warmup only, so the learning rate per step is the memo's.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copymachine.files import atomic_write_json, atomic_write_text
from copymachine.plan import StageParams

STATE_FILE = "copy-stop.json"
METADATA_KEY = "copymachine_copy_stop"


@dataclass(frozen=True)
class CopyStop(StageParams):
    """In the copy LoRA's key: stopping early changes the LoRA."""

    min_ssim: float
    segment: int  # steps per segment (the save interval)
    check: Any = None  # the copy check's parameters (CopyCheckParams): prompts, seeds, size, sampler
    lora_multiplier: float = 1.0
    base_weights_multipliers: list[float] = field(default_factory=list)


def boundaries(total: int, warmup: int, segment: int) -> list[int]:
    """The last step of each segment: multiples of `segment` from the first at or after `warmup`,
    then `total` (the ceiling)."""
    segment = max(1, segment)
    first = max(segment, -(-warmup // segment) * segment)
    ends = list(range(first, total, segment))
    return [*ends, total]


def load(scratch: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((scratch / STATE_FILE).read_text(encoding="utf-8"))["checks"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def save(scratch: Path, checks: list[dict[str, Any]], stopped_at: int | None, total: int, min_ssim: float) -> None:
    atomic_write_json(scratch / STATE_FILE, summary(checks, stopped_at, total, min_ssim))


def summary(checks: list[dict[str, Any]], stopped_at: int | None, total: int, min_ssim: float) -> dict[str, Any]:
    return {"min_ssim": min_ssim, "ceiling": total, "stopped_at": stopped_at, "stopped_early": stopped_at is not None and stopped_at < total, "checks": checks}


def check_lora(stage, ctx, lora: Path, step: int) -> dict[str, Any]:
    """The copy check on the LoRA of `step`: render the recipe's copy-check prompts with it on the
    base model, SSIM against the training image. Returns {"step", "mean_ssim", "ssim"}."""
    from copymachine.genimg import collect_sequential, file_names_supported, gen_img_args, render_prompt_file
    from copymachine.images import load_rgb
    from copymachine.similarity import reference_at, ssim_score
    from copymachine.stages.copy_check import prompt_lines
    from copymachine.stages.train_lora import base_weight_inputs

    stop: CopyStop = stage.spec.copy_stop
    cc = stop.check
    caption_path = stage.input("caption")
    caption = caption_path.read_text(encoding="utf-8").strip() if caption_path.is_file() else ""
    lines = prompt_lines(cc, caption)
    outdir = ctx.scratch / f"check-{step:08d}"
    outdir.mkdir(parents=True, exist_ok=True)
    prompt_file = stage.workdir / "config" / f"{stage.slug}-stop-check.txt"
    named = file_names_supported(ctx.settings)
    atomic_write_text(prompt_file, render_prompt_file(lines, file_names=named))
    loras = [*base_weight_inputs(stage), lora]
    multipliers = [*stop.base_weights_multipliers, stop.lora_multiplier]
    args = gen_img_args(
        stage.input("base"), cc.family_flag, outdir, prompt_file, cc.sampler, cc.precision, ctx.settings.tokenizer_cache_dir,
        loras, extra=ctx.settings.profile.gen_options, multipliers=multipliers, sequential=not named,
    )  # fmt: skip
    images = [outdir / line.file_name for line in lines]
    collect = None if named else (lambda: collect_sequential(outdir, [p.name for p in images]))
    ctx.run(ctx.engine.run_script("gen_img.py", args), "gen_img.py", expected=images, collect=collect)
    reference = reference_at(load_rgb(stage.input("image")), tuple(cc.size))
    ssims = [round(ssim_score(reference, load_rgb(p)), 4) for p in images]
    return {"step": step, "mean_ssim": round(statistics.fmean(ssims), 4), "ssim": ssims}


def record_in_lora(path: Path, data: dict[str, Any]) -> None:
    """Add the copy-stop record to the LoRA's safetensors metadata (`copymachine_copy_stop`, JSON);
    the header is rewritten, the tensor bytes are copied as they are."""
    import os
    import struct

    from copymachine.files import replace_file

    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        body = f.read()
    header.setdefault("__metadata__", {})[METADATA_KEY] = json.dumps(data, separators=(",", ":"))
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + body)
    replace_file(tmp, path)
