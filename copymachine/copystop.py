"""`--copy-stop-at SSIM`: the copy LoRA trains in segments (the save interval; each an sd-scripts run resumed
from the previous saved state) up to the memo's 3072 steps, and stops at the first segment whose LoRA the
copy check's scorer passes. The checks so far are kept in `copy-stop.json`, so a killed run goes on. Each
segment builds its scheduler for its own last step; constant_with_warmup depends on the warmup only, so the
learning rate per step is the memo's.
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
    check: CopyCheckParams


def boundaries(total: int, warmup: int, segment: int) -> list[int]:
    """Each segment's last step: multiples of `segment` from the first at or after `warmup`, then `total`."""
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
    return out.with_name(f"{out.stem}-step{step:08d}{out.suffix}")


def check_segment(stage, ctx, lora: Path, step: int, checks: list[dict[str, Any]], total: int) -> bool:
    """The copy check on the LoRA of `step` (added to `checks` and the state file, reported); whether it copies."""
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
    add_metadata(path, {METADATA_KEY: json.dumps(data, separators=(",", ":"))})
