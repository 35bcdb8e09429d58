"""The leakage score against the real sd-scripts, on the CPU: `diff --preview-model` on the
random-weight checkpoint (3 training steps, 64 px, 2 sampling steps). A LoRA trained 3 steps on
random weights pulls nothing towards its training image, so every SSIM gain must be near 0 and the
run must say "no leakage" — the plumbing (the extra gen_img.py run, --am per line, the scores, the
sheet's label, the final LoRA's metadata and `inspect`) measured on the real renders, not a claim
that real LoRAs do not leak.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image
from realkit import draw_original, run_cli

from copymachine.lorafile import read_safetensors

pytestmark = pytest.mark.integration


def test_leakage_on_random_weights(tmp_path, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    images = tmp_path / "画像 'quoted'"
    images.mkdir()
    original = draw_original(images / "original.png")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    run_dir = tmp_path / "runs" / "leak run"
    args = [
        "diff", "--effect", "contrast", "--image", str(original), "--base", str(random_sd15),
        "--resolution", "64", "--max-steps", "3", "--no-copy-check", "--cache-dir", str(tmp_path / "cache"), "--out", str(run_dir),
        "--preview-model", str(random_sd15), "--set", "preview.size=64", "--set", "preview.steps=2", "--set", "preview.seeds=1",
        "--set", "leakage.steps=2",
        "--sd-scripts", str(sd_scripts_dir), "--python", str(sd_python), "--tokenizer-cache-dir", str(tokenizer_cache_dir), "--device", "cpu",
    ]  # fmt: skip
    t0 = time.monotonic()
    result = run_cli(args, env)
    wall = time.monotonic() - t0
    assert result.returncode == 0, result.stderr[-4000:]
    scores = json.loads((run_dir / "contrast" / "leakage" / "leakage.json").read_text(encoding="utf-8"))
    gains = scores["ssim_gain"]
    print(f"\ndiff --preview-model with leakage: wall {wall:.0f} s; SSIM gains on random weights {gains}; leaks_at {scores['leaks_at']}; LPIPS: {scores['lpips']}")
    assert list(gains) == ["1", "2", "3"] and scores["size"] == [64, 64]
    # nothing leaks on random weights: no strength pulls an image towards the training image (a gain
    # above 0.05), and no gain of either sign reaches the threshold (0.1); measured here: 1: -0.0,
    # 2: -0.0, 3: -0.054 (random noise moving the image further away)
    assert all(g < 0.05 for g in gains.values()) and all(abs(g) < 0.1 for g in gains.values()), gains
    assert scores["leaks_at"] is None and "-> no leakage up to strength 3" in result.stderr
    for entry in scores["images"]:
        assert Image.open(run_dir / "contrast" / "leakage" / entry["file"]).size == (64, 64)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    stages = {s["name"]: s for s in manifest["stages"]}
    command = stages["contrast/leakage"]["commands"][0]
    assert "gen_img.py" in command and "--network_merge" not in command and "--seed" not in command
    prompts = (run_dir / "config" / "contrast--leakage-prompts.txt").read_text(encoding="utf-8").splitlines()
    assert len(prompts) == 12 and all(" --am " in line for line in prompts)
    final = Path(result.stdout.strip().splitlines()[-1])
    stored = json.loads(read_safetensors(final).metadata["copymachine.leakage"])
    assert stored["ssim_gain"] == gains and stored["leaks_at"] is None
    shown = run_cli(["inspect", str(final)], env)
    assert shown.returncode == 0 and "no leakage at these strengths" in shown.stdout
    assert (run_dir / "leak run-contrast-preview.png").is_file()
