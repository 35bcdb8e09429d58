"""A full disk in the middle of a run, against the real sd-scripts (CPU, 64 px, 3 steps): the run
and cache folders on a tmpfs (tests/diskfull.py; root only, skipped otherwise), the base model
(2.1 GB) outside it. The tmpfs passes pre-flight; once the copy LoRA is done and the effect LoRA
trains, it is shrunk to what it holds plus 1 MB, so sd-scripts' save of the effect LoRA (~150 MB)
meets ENOSPC. The run must end in one line naming the folder and the bytes the stage needs (exit
5, no traceback), leave no partial file at a final path and the copy LoRA's stamp as it was; with
the space back, the same command resumes at the effect LoRA and finishes.

Wall time on 2 CPU cores: about 2 minutes (three trainings of 3 steps at 64 px). Peak memory: one
training (~7 GB) and the tmpfs's ~500 MB.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from diskfull import SmallDisk, check_after_full_disk, fill_during_effect_training, run_to_end
from PIL import Image, ImageEnhance
from realkit import draw_original, run_cli

pytestmark = pytest.mark.integration


def test_a_full_disk_mid_training_on_the_real_engine(tmp_path, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    images = tmp_path / "images"
    images.mkdir()
    original = draw_original(images / "original.png")
    edited = images / "edited.png"
    ImageEnhance.Contrast(Image.open(original)).enhance(1.6).save(edited)
    # pre-flight asks ~800 MB (three LoRAs at dim 64 of ~150 MB, the small files of 7 stages, a 200 MB margin)
    with SmallDisk(tmp_path / "small disk", 900) as disk:
        run_dir, cache_dir = disk.path / "run", disk.path / "cache"
        argv = [
            "train", "--effect", "custom", "--image", str(original), "--edited", str(edited),
            "--base", str(random_sd15), "--out", str(run_dir), "--cache-dir", str(cache_dir),
            "--sd-scripts", str(sd_scripts_dir), "--python", str(sd_python), "--tokenizer-cache-dir", str(tokenizer_cache_dir),
            "--offline", "--device", "cpu", "--resolution", "64", "--max-steps", "3",
            "--rank", "0",  # resize_lora.py takes 90 s on the CPU and adds nothing here
            "--no-copy-check",  # random weights copy nothing
        ]  # fmt: skip
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", "copymachine", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
        try:
            before = fill_during_effect_training(proc, disk, run_dir, cache_dir, leave=1024**2, timeout=600)
            _, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        line = check_after_full_disk(proc.returncode, err, disk, run_dir, cache_dir, before)
        print(f"\n{line}")
        # sd-scripts' own failure, read from its output (the log may end early: the disk is full)
        assert "Log: " in line and "custom--effect-lora.log" in line, line

        disk.grow()
        result = run_to_end(argv, env, lambda a, e: run_cli(a, e, timeout=900), run_dir, cache_dir, before)
        assert (run_dir / f"{run_dir.name}-custom.safetensors").is_file(), result.stderr[-2000:]
