"""Kill and resume against the real sd-scripts: `copymachine train` SIGKILLed three times — during
the copy LoRA's training, during the copy model's merge, while merge_lora.py writes the 4 GB
copy model — re-run each time with the same command, then interrupted once with SIGINT (Ctrl-C)
during the effect LoRA's training, then run to the end. After every attempt tests/killharness.py
checks that every file at a final path loads, the manifest matches the disk, no finished stage
was redone and the orphaned sd-scripts of the last kill no longer runs. The paths have spaces,
quotes, a backslash, a percent sign and Japanese characters in them.

Wall time on 2 CPU cores: about 2.5 minutes (measured 135 s and 144 s: four trainings of 3 steps at 64 px
started, three merges started, one finished). Peak memory: one merge (13.4 GB); the next run ends an orphaned
merge before it starts its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from killharness import KillHarness, Scenario, alive, child_of_lock, phase_now, stamps
from PIL import Image, ImageEnhance
from realkit import draw_original

pytestmark = pytest.mark.integration


def test_three_kills_and_a_ctrl_c_against_the_real_engine(tmp_path, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    root = tmp_path / "kill real 'q' \\ 100% 画像"
    images = root / "images"
    images.mkdir(parents=True)
    original = draw_original(images / "original.png")
    edited = images / "edited (contrast).png"
    ImageEnhance.Contrast(Image.open(original)).enhance(1.6).save(edited)
    run_dir, cache_dir = root / "runs" / "kill run", root / "cache"
    argv = [
        "train",
        "--effect", "custom",
        "--image", str(original),
        "--edited", str(edited),
        "--base", str(random_sd15),
        "--out", str(run_dir),
        "--cache-dir", str(cache_dir),
        "--sd-scripts", str(sd_scripts_dir),
        "--python", str(sd_python),
        "--tokenizer-cache-dir", str(tokenizer_cache_dir),
        "--offline",
        "--device", "cpu",
        "--resolution", "64",
        "--max-steps", "3",
        "--rank", "0",  # resize_lora.py takes 90 s on the CPU and adds nothing here
        "--no-copy-check",  # random weights copy nothing
        "--copy-model", "file",  # the memo's route: kills land in merge_lora.py and in its 4 GB write
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    seed = int(os.environ.get("COPYMACHINE_KILL_SEED") or 20260207)
    harness = KillHarness(env=env, cwd=tmp_path, seed=seed, windows={"training": 6.0, "merge": 6.0, "write": 0.5, "other": 1.0, "any": 60.0}, timeout_s=900, deep=True)
    harness.cover([["training"], ["merge"], ["write"]])
    scenario = Scenario("train (real)", argv, run_dir, cache_dir, ("training",), (), str(run_dir / "kill run-custom.safetensors"))
    t0 = time.monotonic()

    # three SIGKILLs, aimed at the copy LoRA's training, the merge and the merge's write
    landed = []
    for _ in range(3):
        killed, phase = harness.attempt(scenario, harness.next_target(scenario))
        assert killed, "the run finished before the aimed phase came"
        landed.append(phase)
    assert landed == ["training", "merge", "write"], harness.report.events

    # Ctrl-C during the effect LoRA's training: sd-scripts stops, the message says how to resume
    before = stamps(scenario.roots)
    proc = subprocess.Popen([sys.executable, "-m", "copymachine", *argv], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
    deadline = time.monotonic() + 600
    child = None
    while proc.poll() is None and time.monotonic() < deadline:
        copy_model_done = any(cache_dir.glob("copy-model/*/.stages/copy-model.json"))
        if copy_model_done and phase_now(run_dir, scenario.roots, proc.pid) == "training":
            child = child_of_lock(run_dir, proc.pid)
            time.sleep(3.0)  # well into its start-up
            break
        time.sleep(0.05)
    assert child, "the effect LoRA's training was not seen"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "run the same command again to resume" in err
    assert not alive(child), "sd-scripts still runs after Ctrl-C"
    assert not [p for p in harness.orphans if alive(p)], "an orphan of the kills outlived the next run"
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert {s["name"]: s["status"] for s in manifest["stages"]}["custom/effect-lora"] == "interrupted"
    assert not list(run_dir.glob("custom/.partial/*/*.safetensors"))
    after = stamps(scenario.roots)
    assert all(after.get(p) == text for p, text in before.items()), "a finished stage was redone"

    # left alone, the same command finishes
    killed, phase = harness.attempt(scenario, "never")
    assert not killed and phase == "completed"
    harness.report.wall_s = time.monotonic() - t0
    final = Path(scenario.final)
    assert final.is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    status = {s["name"]: s["status"] for s in manifest["stages"]}
    assert status["copy-lora"] == "skipped" and status["copy-model"] == "skipped" and status["custom/final"] == "done"
    assert not [p for r in scenario.roots for p in r.rglob(".partial")]
    print(f"\n{harness.report.summary()}")
    for event in harness.report.events:
        print("  " + event)
