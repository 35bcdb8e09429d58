"""`--copy-stop-at SSIM`: the copy LoRA trains in segments and stops when the copy copies.

The memo's 3072 steps stay the default and the ceiling. With `--copy-stop-at`, each segment (the
save interval, recipe watch.save_every_n_steps) is an sd-scripts run up to its last step, resumed
from the previous segment's saved state (copymachine/trainstate.py), so the step count, optimizer
and RNG go on; the first ends at the first multiple of the interval at or after the warmup. After
each, the copy check's own scorer (`copy_check.score_copies`) measures the segment's LoRA on the
base model at the merge ratio; the training stops at the first segment whose mean SSIM reaches the
value (the same bar as copy_check.min_ssim). The ceiling is not checked here: the run's own copy
check stage checks the LoRA it keeps. The checks so far are kept beside the saved state
(`copy-stop.json`), so a killed run goes on with the next segment; the stamp and the LoRA's
metadata (`copymachine_copy_stop`) record the step it stopped at and every check's scores.

Each segment builds its scheduler for its own last step; the recipe's constant_with_warmup
depends on the warmup only, so the learning rate per step is the memo's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copymachine.files import atomic_write_json
from copymachine.plan import StageParams
from copymachine.stages.copy_check import CopyCheckParams, score_copies
from copymachine.stages.finalize import add_metadata

STATE_FILE = "copy-stop.json"
METADATA_KEY = "copymachine_copy_stop"


@dataclass(frozen=True)
class CopyStop(StageParams):
    """In the copy LoRA's key: stopping early changes the LoRA."""

    min_ssim: float
    segment: int  # steps per segment (the save interval)
    # the copy check's parameters: prompts, seeds, size, sampler, model options, the LoRAs' ratios
    check: CopyCheckParams


def boundaries(total: int, warmup: int, segment: int) -> list[int]:
    """The last step of each segment: multiples of `segment` from the first at or after `warmup`,
    then `total` (the ceiling)."""
    segment = max(1, segment)
    first = max(segment, -(-warmup // segment) * segment)
    return [*range(first, total, segment), total]


def load(scratch: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((scratch / STATE_FILE).read_text(encoding="utf-8"))["checks"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def save(scratch: Path, checks: list[dict[str, Any]], stopped_at: int | None, total: int, min_ssim: float) -> dict:
    data = {"min_ssim": min_ssim, "ceiling": total, "stopped_at": stopped_at,
            "stopped_early": stopped_at is not None and stopped_at < total, "checks": checks}
    atomic_write_json(scratch / STATE_FILE, data)
    return data


def step_lora(out: Path, step: int) -> Path:
    """The LoRA sd-scripts saved with the state of `step`, beside the training's output `out`."""
    return out.with_name(f"{out.stem}-step{step:08d}{out.suffix}")


def check_segment(stage, ctx, lora: Path, step: int, checks: list[dict[str, Any]], total: int) -> bool:
    """The copy check on the LoRA of `step`, on the training's base model against its image: added
    to `checks` and the state file, reported; whether it copies."""
    stop: CopyStop = stage.spec.copy_stop
    outdir = ctx.scratch / f"check-{step:08d}"
    outdir.mkdir(parents=True, exist_ok=True)
    prompt_file = stage.workdir / "config" / f"{stage.slug}-stop-check.txt"
    copies = score_copies(stage, ctx, stop.check, stage.input("base"), stage.input("image"), outdir, prompt_file, lora)
    assert copies is not None  # the copy stop never runs on a dry run
    checks.append({"step": step, "mean_ssim": copies.mean_ssim, "ssim": copies.ssims})
    passed = copies.mean_ssim >= stop.min_ssim
    save(ctx.scratch, checks, step if passed else None, total, stop.min_ssim)
    ssims = ", ".join(f"{x:.3f}" for x in copies.ssims)
    verdict = "copies: stopping here" if passed else "goes on"
    ctx.reporter.info(f"{stage.title}: copy check at step {step} of {total}: SSIM {ssims} "
                      f"(mean {copies.mean_ssim:.3f}, stop at >= {stop.min_ssim:g}) -> {verdict}")
    return passed


def record_in_lora(path: Path, data: dict[str, Any]) -> None:
    """Add the copy-stop record to the LoRA's safetensors metadata (`copymachine_copy_stop`, JSON)."""
    add_metadata(path, {METADATA_KEY: json.dumps(data, separators=(",", ":"))})
