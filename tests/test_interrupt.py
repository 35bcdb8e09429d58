"""Ctrl-C and `kill`: a real SIGINT (and SIGTERM) to a running `copymachine train` stops its
sd-scripts child, keeps every finished stage, and says how to resume; the same command then
finishes without redoing what was done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from killharness import alive, child_of_lock, cmdline, stamps
from PIL import Image

from copymachine.errors import EXIT_INTERRUPTED


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_sd_scripts_and_says_how_to_resume(fake_engine, scene, tmp_path, sig):
    image = tmp_path / "original.png"
    scene.image.resize((128, 128), Image.Resampling.LANCZOS).save(image)
    run_dir, cache_dir = tmp_path / "run", tmp_path / "cache"
    argv = [sys.executable, "-m", "copymachine", "train", "--effect", "contrast", "--base", str(fake_engine.base), "--image", str(image),
            "--out", str(run_dir), "--cache-dir", str(cache_dir), "--resolution", "64", "--max-steps", "3", "--no-copy-check", *fake_engine.engine_args]  # fmt: skip
    env = dict(os.environ, COPYMACHINE_FAKE_STEP_SECONDS="2")
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    child = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        child = child_of_lock(run_dir, proc.pid)
        if child and "train_network.py" in cmdline(child):
            break
        time.sleep(0.02)
    assert child, "training did not start"
    time.sleep(0.3)
    before = stamps([run_dir, cache_dir])
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_INTERRUPTED, err
    last = err.strip().splitlines()[-1]
    assert last == "copymachine: interrupted; sd-scripts was stopped and every finished stage is kept: run the same command again to resume"
    assert not alive(child)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    status = {s["name"]: s["status"] for s in manifest["stages"]}
    assert status["copy-lora"] == "interrupted" and status["captions"] == "done"
    assert not list(cache_dir.rglob(".partial"))  # the interrupted attempt's scratch is gone
    assert (run_dir / ".lock").read_text(encoding="utf-8").find("child_pgid") == -1
    if sig != signal.SIGINT:
        return
    # the same command finishes, redoing none of the finished stages
    env["COPYMACHINE_FAKE_STEP_SECONDS"] = "0"
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert result.returncode == 0, result.stderr
    after = stamps([run_dir, cache_dir])
    assert all(after[p] == text for p, text in before.items())
    assert result.stderr.count("up to date, skipped") == len(before) == 3
