"""sd-scripts' ways of failing (out of memory, a full disk, a signal, an exception, NaN loss, no
output) turned into one clear message with the log's excerpt."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from copymachine.errors import DiskFull, EngineError, is_disk_full
from copymachine.heavy import import_fix, known_import_failure

if TYPE_CHECKING:
    from copymachine.plan import Stage
    from copymachine.runner import RunResult, StreamWatcher

OOM_FIX = "close other programs, use a smaller --resolution, or --low-vram where offered"
OOM_KILLER = " (the system's out-of-memory killer does this when RAM runs out: close other programs, or add swap)"


def check_result(stage: Stage, what: str, result: RunResult, expected: list[Path]) -> None:
    w = result.watcher
    where, log = f"stage '{stage.title}' ({what})", f"Log: {result.log_path}"
    tail = w.tail_lines(12)
    if w.oom:
        raise EngineError(f"{where} ran out of memory; {OOM_FIX}. {log}", details=tail)
    log_error = getattr(result, "log_error", None)
    if result.returncode != 0 and (w.no_space or (log_error is not None and is_disk_full(log_error))):
        raise DiskFull(f"{where} failed: the disk is full. {log}", folder=stage.workdir, log=result.log_path)
    killed_by = _killed_by(result.returncode, tail)
    if killed_by:
        hint = OOM_KILLER if killed_by == "SIGKILL" else ""
        raise EngineError(f"{where} was killed by {killed_by}{hint}. {log}", details=tail)
    if result.returncode != 0:
        cause, details = _root_cause(w, tail)
        raise EngineError(f"{where} failed with exit code {result.returncode}{cause}. {log}", details=details)
    if w.nan:
        fix = "lower the learning rate or use bf16/fp32"
        raise EngineError(f"{where} produced NaN loss (training diverged); {fix}. {log}", details=tail)
    missing = [p for p in expected if not p.exists()]
    if missing:
        hint = "sd-scripts does that when it finds no images"
        if what == "gen_img.py":
            folder = missing[0].parent
            found = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            listed = ", ".join(found[:4]) + (" ..." if len(found) > 4 else "") if found else "no file"
            hint = f"it wrote {listed} in {folder}"
        raise EngineError(f"{where} exited 0 but wrote no {missing[0].name} ({hint}). {log}", details=tail)


def _root_cause(watcher: StreamWatcher, tail: list[str]) -> tuple[str, list[str]]:
    """': <first exception>[; <usual fix>]', and the log excerpt with its frame and line above the tail unless
    the tail shows both (the launcher's traceback pushes the child's out of the last lines)."""
    root = watcher.root_cause
    if root is None:
        return "", tail
    cause = f": {root.exception}"
    kind = root.exception.split(":")[0].rsplit(".", 1)[-1]
    if kind in ("ImportError", "ModuleNotFoundError") and known_import_failure(root.exception):
        cause += "; " + import_fix(root.failed_module(), root.exception, where="sd-scripts' venv")
    shown = [*root.frame(), root.exception]
    if all(line in tail for line in shown):
        return cause, tail
    return cause, [*shown, "…", *tail]


def _killed_by(returncode: int, tail: list[str]) -> str | None:
    """The signal that ended sd-scripts: its own exit status, or (under `accelerate launch`,
    which exits 1) the launcher's `died with <Signals.SIGKILL: 9>`."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    for line in tail:
        m = re.search(r"died with <Signals\.(SIG[A-Z0-9]+)", line)
        if m:
            return m.group(1)
    return None
