"""Pre-flight of the disk space: what the stages still to run will write, against the free space of each disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copymachine.errors import OutputError
from copymachine.files import free_bytes
from copymachine.models import ModelInfo
from copymachine.preflight.model import model_parameters
from copymachine.preflight.paths import existing_ancestor
from copymachine.progress import Reporter
from copymachine.stamps import sized_stamp
from copymachine.vram import LORA_PER_DIM_TEXT, LORA_PER_DIM_UNET

GB = 1024**3
MB = 1024**2

# Parameters of a LoRA per unit of rank: vram.py's U-Net (DiT) and text-encoder figures, one table for both estimates
# (SD1.5: 590k, its dim-64 LoRA 151 MB at float; the DiTs train their transformer alone)
LORA_PARAMS_PER_RANK = {name: round((unet + LORA_PER_DIM_TEXT.get(name, 0)) * 1e6)
                        for name, unet in LORA_PER_DIM_UNET.items()}
BYTES = {"float": 4, "fp32": 4, "fp16": 2, "bf16": 2}
SMALL_STAGE_BYTES = 20 * MB  # images, captions, checks, configs, logs of one stage


@dataclass
class SpaceNeed:
    folder: Path  # the stage folder (its disk is what counts)
    bytes: int
    what: str
    stage: str = ""  # the stage's name (a need of a plan's stage)


def lora_bytes(family: str, rank: int, precision: str) -> int:
    return LORA_PARAMS_PER_RANK.get(family, LORA_PARAMS_PER_RANK["sd1"]) * max(int(rank), 1) * BYTES.get(precision, 4)


def estimate_space(plan, model: ModelInfo, params: int) -> list[SpaceNeed]:
    """Bytes each stage that is not done yet will write."""
    family = model.family.name
    lora = {"train_lora": lambda p: (p.training.network_dim, p.training.save_precision),
            "extract_lora": lambda p: (p.dim, "float"), "resize_lora": lambda p: (p.rank, p.save_precision),
            "svd_merge": lambda p: (p.rank, p.save_precision)}
    estimate: dict[str, int] = {}
    needs = []
    for stage in plan.stages:
        size, what = 0, "images and notes"
        if stage.kind == "merge_model":
            size, what = params * BYTES.get(stage.spec.save_precision, 4), "a merged model"
        elif stage.kind in lora:
            size, what = lora_bytes(family, *lora[stage.kind](stage.spec)), "a LoRA"
        elif stage.kind == "finalize":
            ref = stage.inputs.get("lora")
            fallback = lora_bytes(family, 64, "float")
            size = estimate.get(ref.producer, fallback) if ref is not None and ref.producer else fallback
            what = "the final LoRA"
        estimate[stage.name] = size  # its file, which a later stage may copy (the final LoRA)
        size += SMALL_STAGE_BYTES
        if sized_stamp(stage) is None:
            needs.append(SpaceNeed(stage.workdir, size, what, stage.name))
    return needs


def by_disk(needs: list[SpaceNeed]) -> list[list[SpaceNeed]]:
    """The needs grouped by the disk of their folders (or nearest existing parents), in the order first named."""
    groups: dict[int, list[SpaceNeed]] = {}
    for need in needs:
        groups.setdefault(os.stat(existing_ancestor(need.folder)).st_dev, []).append(need)
    return list(groups.values())


def one_image_run_needs(family: str, run_dir: Path, cache_dir: Path) -> list[SpaceNeed]:
    """What a default one-image run writes, without a plan (doctor): the copy LoRA; the effect, resized, final LoRA."""
    lora = lora_bytes(family, 64, "float")
    return [SpaceNeed(run_dir, 3 * lora + 6 * SMALL_STAGE_BYTES, "run folders"),
            SpaceNeed(cache_dir, lora + 2 * SMALL_STAGE_BYTES, "cache")]


def human(n: int) -> str:
    if n >= GB:
        return f"{n / GB:.1f} GB"
    return f"{max(n, 0) / MB:.0f} MB"


def check_space(plan, model: ModelInfo, reporter: Reporter, needs: list[SpaceNeed] | None = None) -> dict[str, Any]:
    """Refuse a disk with less free space than the stages still to run write there (+ 5 % + 200 MB); the estimate."""
    needs = estimate_space(plan, model, model_parameters(model)) if needs is None else needs
    summary = {}
    for items in by_disk(needs):
        total = sum(n.bytes for n in items)
        required = int(total * 1.05) + 200 * MB
        folder = min((n.folder for n in items), key=lambda p: len(p.parts))
        free = free_bytes(folder)
        summary[str(folder)] = {"needed": required, "free": free}
        if free < required:
            largest = max(items, key=lambda n: n.bytes)
            raise OutputError(f"not enough disk space at {existing_ancestor(folder)}: this run still writes "
                              f"~{human(required)} there (largest: {largest.what}, {human(largest.bytes)}), "
                              f"{human(free)} free; free some space, or put the cache (--cache-dir) or the run (--out) "
                              "on another disk")
    return summary


def disk_full(folder: Path, stage_title: str, needed: int | None, cause: str = "",
              log: Path | None = None) -> OutputError:
    """The one-line error of a stage that met a full disk: the folder, its need, what is free, how to go on."""
    folder = Path(folder)
    try:
        free = f", {human(free_bytes(folder))} free"
    except OSError:
        free = ""
    need = f" ~{human(needed)} ({needed:,} bytes)" if needed else ""
    return OutputError(f"not enough disk space at {folder}{f' ({cause})' if cause else ''}: stage '{stage_title}' "
                       f"writes{need or ' its outputs'} there{free}; free some space (or put --cache-dir / --out on "
                       "another disk) and run the same command again: it resumes at this stage"
                       + (f". Log: {log}" if log else ""))

