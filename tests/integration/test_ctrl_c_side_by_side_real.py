"""Ctrl-C with two trainings side by side, against the real sd-scripts (CPU, 64 px): only the main
thread receives Ctrl-C, the trainings run under worker threads. Two images, so two copy LoRAs
train at once (`--jobs 2`; on the CPU copymachine keeps runs sequential, so the test runs it
through tests/integration/cpu_side_by_side.py, which honours --jobs there and changes nothing
else). Both sd-scripts are well into training (their logs show the `steps:` bar) when:

1. one Ctrl-C (SIGINT to copymachine): both sd-scripts end within the grace time (GRACE_S, 10 s:
   after it the supervisor escalates to SIGTERM), by the polite word, and copymachine exits 130;
2. the same command, then two Ctrl-C 0.3 s apart: the second ends both at once (SIGKILL to each
   process group), copymachine exits 130 within a few seconds.

After each: both copy LoRAs are `interrupted` in the manifest, no sd-scripts of the run is left,
no scratch, no temporary file, every file at a final path loads (tests/killharness.py).

Measured (2 CPU cores, 69 s in all): one Ctrl-C, both sd-scripts ended 0.99 s and 1.01 s after it
(exit -2: the SIGINT), copymachine exited after 1.23 s; two Ctrl-C, both ended 0.56 s and 0.59 s
after the first (exit -9: the second's SIGKILL), copymachine exited after 0.97 s. Peak memory: two
trainings at once (~14 GB): hold /tmp/sdscripts.lock (one sd-scripts user at a time).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from killharness import alive, check_disk, cmdline
from PIL import Image, ImageEnhance, ImageOps
from realkit import draw_original

from copymachine.supervise import GRACE_S, KILL_S

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DRIVER = HERE / "cpu_side_by_side.py"


def _children(run_dir: Path) -> list[int]:
    try:
        holder = json.loads((run_dir / ".lock").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [int(p) for p in holder.get("child_pgids", []) if alive(int(p)) and "train_network.py" in cmdline(int(p))]


def _training(log: Path, offsets: dict[Path, int]) -> bool:
    """The log shows the `steps:` bar of this attempt (after what earlier attempts wrote)."""
    try:
        with open(log, "rb") as f:
            f.seek(offsets.get(log, 0))
            return b"steps:" in f.read()
    except OSError:
        return False


def _exit_code(log: Path) -> int | None:
    codes = re.findall(r"# exit code (-?\d+)", log.read_text(encoding="utf-8", errors="replace"))
    return int(codes[-1]) if codes else None


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_both(argv, env, run_dir: Path, timeout: float = 600) -> tuple[subprocess.Popen, list[int], list[Path]]:
    offsets = {log: log.stat().st_size for log in (run_dir / "logs").glob("*copy-lora.log")}
    # Ctrl-C as in a terminal, even where this test's own SIGINT is ignored (under nohup or time(1))
    proc = subprocess.Popen([sys.executable, str(DRIVER), *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", preexec_fn=_default_sigint)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        children = _children(run_dir)
        logs = sorted((run_dir / "logs").glob("*copy-lora.log"))
        if len(children) == 2 and len(logs) == 2 and all(_training(log, offsets) for log in logs):
            return proc, children, logs
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # copymachine stops its sd-scripts (a SIGKILL would orphan them)
    _, err = proc.communicate(timeout=60)
    raise AssertionError(f"two trainings side by side were not seen (exit {proc.returncode}): {err[-3000:]}")


def _watch_until_gone(proc: subprocess.Popen, children: list[int], t0: float, timeout: float = 60) -> tuple[dict[int, float], float, str]:
    """Seconds after t0 at which each child ended, and copymachine exited."""
    gone: dict[int, float] = {}
    deadline = t0 + timeout
    while time.monotonic() < deadline and (len(gone) < len(children) or proc.poll() is None):
        for pgid in children:
            if pgid not in gone and not alive(pgid):
                gone[pgid] = time.monotonic() - t0
        time.sleep(0.02)
    exited = time.monotonic() - t0
    _, err = proc.communicate(timeout=30)
    return gone, exited, err


def _check_left(run_dir: Path, cache_dir: Path, err: str, proc: subprocess.Popen) -> None:
    tmp = run_dir.parent
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("copymachine: interrupted; sd-scripts was stopped"), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    copies = {s["name"]: s["status"] for s in manifest["stages"] if s["kind"] == "train_lora"}
    interrupted = [n for n, st in copies.items() if st == "interrupted"]
    assert len(interrupted) == 2, copies
    roots = [run_dir, cache_dir]
    assert not [p for r in roots for p in r.rglob(".partial")], "scratch left behind"
    facts = check_disk(run_dir, roots)
    assert facts["temps"] == [], facts["temps"]
    assert not list(cache_dir.glob("copy-lora/*/copy-lora.safetensors")), "a copy LoRA at its final path"
    leftover = [p for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != os.getpid() and str(tmp) in cmdline(int(p.name))]
    assert not leftover, [cmdline(int(p.name)) for p in leftover]


def test_ctrl_c_stops_two_trainings_side_by_side_on_the_real_engine(tmp_path, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    images = tmp_path / "images"
    images.mkdir()
    girl = draw_original(images / "girl.png")
    mirrored = images / "mirrored.png"
    ImageOps.mirror(ImageEnhance.Brightness(Image.open(girl)).enhance(0.8)).save(mirrored)
    run_dir, cache_dir = tmp_path / "run", tmp_path / "cache"
    argv = [
        "train", "--effect", "contrast", "--image", str(girl), "--image", str(mirrored),
        "--base", str(random_sd15), "--out", str(run_dir), "--cache-dir", str(cache_dir),
        "--sd-scripts", str(sd_scripts_dir), "--python", str(sd_python), "--tokenizer-cache-dir", str(tokenizer_cache_dir),
        "--offline", "--device", "cpu", "--resolution", "64",
        "--max-steps", "400",  # long enough to be stopped in the middle of training
        "--no-copy-check", "--jobs", "2",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    # 1. one Ctrl-C: both stop within the grace time, by the polite word
    proc, children, logs = _start_both(argv, env, run_dir)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    gone, exited, err = _watch_until_gone(proc, children, t0)
    assert "trainings side by side on the CPU (test-only" in err
    print(f"\none Ctrl-C: sd-scripts ended after {sorted(round(s, 2) for s in gone.values())} s, copymachine exited after {exited:.2f} s; exit codes {[_exit_code(log) for log in logs]}")
    assert len(gone) == 2 and max(gone.values()) < GRACE_S, gone
    assert all(_exit_code(log) not in (-9, -15) for log in logs), [_exit_code(log) for log in logs]  # neither needed SIGTERM or SIGKILL
    _check_left(run_dir, cache_dir, err, proc)

    # 2. the same command, two Ctrl-C: the second ends both at once
    proc, children, logs = _start_both(argv, env, run_dir)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    gone, exited, err = _watch_until_gone(proc, children, t0)
    codes = [_exit_code(log) for log in logs]
    print(f"two Ctrl-C: sd-scripts ended after {sorted(round(s, 2) for s in gone.values())} s, copymachine exited after {exited:.2f} s; exit codes {codes}")
    assert len(gone) == 2 and max(gone.values()) < 0.3 + KILL_S, gone
    assert exited < 0.3 + KILL_S + 3, exited
    _check_left(run_dir, cache_dir, err, proc)
