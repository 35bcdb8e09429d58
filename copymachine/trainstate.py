"""A training's saved state (sd-scripts' `--save_state`, into `<output_name>-step<NNNNNNNN>-state/` of the
stage's scratch folder), so a killed training resumes mid-way. The scratch folder keeps the newest state with
the stage key it was trained for (`state-key.txt`); a re-run of that key resumes from it (`resume` +
`skip_until_initial_step`), a state of another key is removed, never resumed.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

KEY_FILE = "state-key.txt"
_STATE_DIR = re.compile(r"-step(\d{8})-state$")
# accelerate's save_state writes the random states last; sd-scripts' pre-save hook train_state.json first
_STATE_FILES = ("train_state.json", "optimizer.bin", "scheduler.bin", "random_states_0.pkl")
SAVE_KEYS = ("save_state", "save_every_n_steps", "save_last_n_steps_state", "save_last_n_steps")
RESUME_KEYS = ("resume", "skip_until_initial_step")


@dataclass(frozen=True)
class SavedState:
    path: Path
    step: int


def _whole(path: Path) -> bool:
    """A file written to its end: a torch.save zip (its end-of-central-directory record is last), a
    plain pickle (its STOP opcode "." is last), or a safetensors file (as long as its header says)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        if path.suffix == ".safetensors":
            with safe_open(path, "np"):  # refuses a file its header does not cover exactly
                return True
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return z.testzip() is None if size < 64 * 1024 * 1024 else bool(z.namelist())
        with open(path, "rb") as f:
            f.seek(-1, 2)
            return f.read(1) == b"."
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, SafetensorError):
        return False


def _complete(folder: Path) -> bool:
    """Every file of the state is there and whole: a state cut off by a kill is not resumed."""
    models = [p for p in folder.iterdir()
              if p.suffix in (".safetensors", ".bin") and p.name.startswith(("model", "pytorch_model"))]
    if not models or not all((folder / name).is_file() for name in _STATE_FILES):
        return False
    if not all(_whole(p) for p in [*models, *(folder / n for n in _STATE_FILES if n != "train_state.json")]):
        return False
    try:
        int(json.loads((folder / "train_state.json").read_text(encoding="utf-8"))["current_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def states(scratch: Path) -> list[SavedState]:
    if not scratch.is_dir():
        return []
    found = []
    for p in scratch.iterdir():
        m = _STATE_DIR.search(p.name)
        if p.is_dir() and m and _complete(p):
            found.append(SavedState(p, int(m.group(1))))
    return sorted(found, key=lambda s: s.step)


def keep(scratch: Path, key: str) -> str | None:
    """Before and after a training attempt: empty `scratch` except its newest complete state of `key`; what
    was removed, for the progress line, or None."""
    if not scratch.is_dir():
        return None
    saved_key = _saved_key(scratch)
    newest = states(scratch)[-1:] if saved_key == key else []
    removed = None
    if saved_key not in (None, key) and any(_STATE_DIR.search(p.name) for p in scratch.iterdir()):
        removed = "a saved training state of other inputs (another stage key)"
    kept = {s.path for s in newest}
    # with the state: its key, the step LoRA saved with it and the copy checks so far (--copy-stop-at)
    also = {KEY_FILE, "copy-stop.json", *(f"{s.path.name.removesuffix('-state')}.safetensors" for s in newest)}
    for p in list(scratch.iterdir()):
        if kept and (p in kept or p.name in also):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return removed


def _saved_key(scratch: Path) -> str | None:
    try:
        return (scratch / KEY_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def mark(scratch: Path, key: str) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / KEY_FILE).write_text(key + "\n", encoding="utf-8")


def resumable(scratch: Path, key: str, total_steps: int) -> SavedState | None:
    """The newest complete state of `key` before the last step (sd-scripts refuses to resume at or past it)."""
    if _saved_key(scratch) != key:
        return None
    usable = [s for s in states(scratch) if s.step < total_steps]
    return usable[-1] if usable else None
