"""What the Results page of `copymachine ui` does to files: trash a result, copy it to a LoRA folder. A request's
paths are a stranger's input: a result is a final LoRA a finished job made, under the runs folder; a folder is
one of the listed LoRA folders, exactly."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from copymachine.errors import InputError
from copymachine.files import copy_into_place, move_into_place
from copymachine.ui.files import RunsFiles

TRASH = "_trash"
# the LoRA folder beside a model folder: A1111/Forge models/Stable-diffusion, ComfyUI models/checkpoints
LORAS_BESIDE = {"stable-diffusion": "Lora", "checkpoints": "loras"}


def lora_folders(given: list[Path], model_folders: list[Path]) -> list[Path]:
    """--loras and COPYMACHINE_LORAS, and the LoRA folders beside the model folders found (those that exist)."""
    near = [m.parent / LORAS_BESIDE[m.name.lower()] for m in model_folders if m.name.lower() in LORAS_BESIDE]
    return list(dict.fromkeys(p.expanduser().resolve() for p in [*given, *near] if p.expanduser().is_dir()))


def result_file(raw: Any, jobs: list[dict[str, Any]], files: RunsFiles) -> Path:
    """The final LoRA a request names: one a finished job made, a file under the runs folder."""
    made = {f for job in jobs if job.get("status") == "done" for f in job.get("finals") or []}
    if not isinstance(raw, str) or raw not in made or not files.allowed(Path(raw)) or not Path(raw).is_file():
        raise InputError(f"not a result of this UI: {str(raw)[:200]}")
    return Path(raw)


def trash(path: Path, runs: Path) -> Path:
    """Move a result into <runs>/_trash/<time>/ (a delete the user can undo by hand)."""
    folder = runs / TRASH / time.strftime("%Y%m%d-%H%M%S")
    target, n = folder / path.name, 1
    while target.exists():
        target, n = folder / f"{path.stem}-{n}{path.suffix}", n + 1
    move_into_place(path, target)
    return target


def copy_to(path: Path, raw: Any, folders: list[Path]) -> Path:
    """Copy a result into one of the LoRA folders (never over a file already there)."""
    folder = Path(raw) if isinstance(raw, str) and raw else None
    if folder is None or folder not in folders or folder.resolve() != folder:
        known = ", ".join(map(str, folders)) or "none; start the UI with --loras DIR"
        raise InputError(f"not one of the UI's LoRA folders ({known}): {str(raw)[:200]}")
    target = folder / path.name
    if os.path.lexists(target):
        raise InputError(f"{target} already exists: rename or remove it there first")
    copy_into_place(path, target)
    return target
