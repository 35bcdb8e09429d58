"""A small disk that fills up in the middle of a run: a tmpfs mounted for one test as the run and
cache folder (Linux, root), shrunk to what it holds (plus a little) while a training runs, and
grown again to resume. Shared by the fast test (the recording fake) and the integration test
(the real sd-scripts).

Shrinking the tmpfs (`mount -o remount,size=…`) is what another program filling the disk does to
the run, without writing a filler of hundreds of MB into RAM: every write that needs a new page
then fails with ENOSPC, sd-scripts' and copymachine's alike.

After the failure `check_after_full_disk` checks what the issue asks: one line, no traceback,
the folder and the bytes needed named, no partial file at a final path (tests/killharness.py's
check_disk: every final file loads, no temporary file is left), and the stamps of the stages
finished before the disk filled unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from killharness import check_disk, stamps

MB = 1024**2


class SmallDisk:
    """A tmpfs of `size_mb` at `path` for the life of the `with` block; skips the test (with the
    reason) where mounting is not permitted."""

    def __init__(self, path: Path, size_mb: int):
        self.path = Path(path)
        self.size_mb = size_mb

    def __enter__(self) -> SmallDisk:
        if not sys.platform.startswith("linux"):
            pytest.skip("the full-disk test mounts a tmpfs: Linux only")
        if os.geteuid() != 0:
            pytest.skip("the full-disk test mounts a tmpfs as the run folder, which needs root (run the tests as root, or in a container)")
        if shutil.which("mount") is None:
            pytest.skip("the full-disk test needs mount(8)")
        self.path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip() or r.returncode})")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)

    def used(self) -> int:
        return shutil.disk_usage(self.path).used

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def resize(self, size_bytes: int) -> None:
        kib = -(-size_bytes // 1024)
        r = subprocess.run(["mount", "-o", f"remount,size={kib}k", str(self.path)], capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError(f"remount size={kib}k failed: {r.stderr.strip()}")

    def fill(self, leave: int) -> int:
        """The disk full but for `leave` bytes (what it holds now + `leave`). The run writes on
        while this measures: retried until the remount takes. Returns the new size."""
        for _ in range(50):
            size = self.used() + leave
            try:
                self.resize(size)
                return size
            except OSError:
                time.sleep(0.05)  # it grew past `size` meanwhile
        raise AssertionError("could not shrink the tmpfs")

    def grow(self) -> None:
        """Space freed: back to the size it was mounted with."""
        self.resize(self.size_mb * MB)


def copy_lora_done(cache_dir: Path) -> bool:
    return any(cache_dir.glob("copy-lora/*/.stages/copy-lora.json"))


def fill_during_effect_training(proc: subprocess.Popen, disk: SmallDisk, run_dir: Path, cache_dir: Path, leave: int, timeout: float = 600) -> dict[str, str]:
    """Wait until the copy LoRA is done and the effect LoRA's training runs, then fill the disk.
    Returns the stamps on disk at that moment (the finished stages')."""
    deadline = time.monotonic() + timeout
    log = run_dir / "logs" / "custom--effect-lora.log"
    while proc.poll() is None and time.monotonic() < deadline:
        if copy_lora_done(cache_dir) and log.is_file():
            before = stamps([run_dir, cache_dir])
            disk.fill(leave)
            return before
        time.sleep(0.02)
    raise AssertionError(f"the effect LoRA's training was not seen (exit {proc.poll()}): {proc.stderr.read()[-2000:] if proc.poll() is not None and proc.stderr else ''}")


def check_after_full_disk(returncode: int, err: str, disk: SmallDisk, run_dir: Path, cache_dir: Path, before: dict[str, str]) -> str:
    """What a run that met a full disk must leave; returns its error line."""
    from copymachine.errors import EXIT_OUTPUT

    assert returncode == EXIT_OUTPUT, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("copymachine: error: not enough disk space at "), err[-3000:]
    folder = re.search(r"not enough disk space at (.+?)(?: \(|: stage)", line).group(1)
    assert Path(folder).is_relative_to(disk.path), line  # the folder on the full disk
    assert re.search(r"stage 'custom: effect LoRA \(memo step 5\)' writes ~\d+ MB \([\d,]+ bytes\) there, \d+ MB free", line), line
    assert "run the same command again: it resumes at this stage" in line
    roots = [run_dir, cache_dir]
    facts = check_disk(run_dir, roots)  # every file at a final path loads
    assert facts["temps"] == [], facts["temps"]  # no temporary file of a write cut short
    assert not [p for r in roots for p in r.rglob(".partial")], "scratch of the failed stage left behind"
    assert not (run_dir / "custom" / "effect-lora.safetensors").exists()
    after = stamps(roots)
    assert before and all(after.get(p) == text for p, text in before.items()), "a finished stage's stamp changed"
    return line


def run_to_end(argv: list[str], env: dict[str, str], run: Callable[[list[str], dict[str, str]], subprocess.CompletedProcess], run_dir: Path, cache_dir: Path, before: dict[str, str]) -> subprocess.CompletedProcess:
    """The same command after space was freed: resumes at the effect LoRA, redoes nothing done."""
    import json

    result = run(argv, env)
    assert result.returncode == 0, result.stderr[-3000:]
    status = {s["name"]: s["status"] for s in json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["stages"]}
    assert status["copy-lora"] == "skipped" and status["custom/effect-lora"] == "done", status
    after = stamps([run_dir, cache_dir])
    assert all(after.get(p) == text for p, text in before.items()), "a finished stage was redone"
    return result
