"""Resume mid-stage on the real sd-scripts (CPU, 64 px): a 6-step copy LoRA saving its state every
2 steps is SIGKILLed once the state of step 4 is complete, and the same command resumes it at step 4
(`resume` + `skip_until_initial_step`); it ends at step 6, and its LoRA is compared with an
uninterrupted run's. Then --samples and --tensorboard on the same engine, and --copy-stop-at, which
keeps the copy check's blank rule: on the fixture with a VAE decoder that outputs black, the first
segment's check (step 2) ends the run with the blank-render error (exit 1).

Wall time on 2 CPU cores (loaded by other work): 235 s for the first test, 363 s for the second
(measured; 530 s with the black-VAE copy, 2026-12-07; with the recipe's check of 4 images of 20 steps
it took 456 s, the check's gen_img.py alone 301 s in one run).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from realkit import draw_original, run_cli
from safetensors.numpy import load_file, save_file

from copymachine import trainstate
from copymachine.files import read_toml
from copymachine.lorafile import read_safetensors

pytestmark = pytest.mark.integration

# The largest |difference| of a weight between the resumed and the uninterrupted LoRA. Two
# uninterrupted runs are bit-identical (measured: 0.0); resumed at step 4, steps 5-6 differ by at
# most 2.96e-4 (measured; 268 of 792 tensors identical, the alphas among them): sd-scripts restores
# the RNG states, but the draws after the restore are not those of the uninterrupted run (likely
# the data loader's new iterator drawing its sampler seed from torch's generator). AdamW moves a
# weight by about the learning rate (1e-4) a step, so two steps bound it near 2e-4-1e-3.
MAX_DIFF = 1e-3


def _argv(root: Path, name: str, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir, *extra: str,
          cache: str | None = None) -> list[str]:
    original, edited = root / "original.png", root / "edited.png"
    if not original.exists():
        draw_original(original)
        ImageEnhance.Contrast(Image.open(original)).enhance(1.6).save(edited)
    return [
        "train", "--effect", "custom", "--image", str(original), "--edited", str(edited), "--base", str(random_sd15),
        "--out", str(root / name), "--cache-dir", str(root / f"cache {cache or name}"), "--sd-scripts", str(sd_scripts_dir),
        "--python", str(sd_python), "--tokenizer-cache-dir", str(tokenizer_cache_dir), "--offline", "--device", "cpu",
        "--resolution", "64", "--max-steps", "6", "--rank", "0", "--no-copy-check", "--set", "watch.save_every_n_steps=2", *extra,
    ]  # fmt: skip


def _black_vae(src: Path, dst: Path) -> Path:
    """The fixture with a VAE decoder whose last conv outputs -10 everywhere: every render is black, on any CPU.
    (The random fixture itself rendered black on one machine and not on another: 0.053 SSIM, measured.)
    Training encodes with the VAE's encoder only, so the copy LoRA trains as on the fixture."""
    tensors = load_file(str(src))
    tensors["first_stage_model.decoder.conv_out.weight"][...] = 0
    tensors["first_stage_model.decoder.conv_out.bias"][...] = -10
    save_file(tensors, str(dst), metadata=read_safetensors(src).metadata or None)
    return dst


def _copy_lora(root: Path, name: str) -> Path:
    return next((root / f"cache {name}" / "copy-lora").glob("*/copy-lora.safetensors"))


def _weights(path: Path) -> dict[str, np.ndarray]:
    f = read_safetensors(path)
    return {k: f.read(k).astype(np.float64) for k in f.tensors}


def test_a_killed_training_resumes_at_step_4_and_ends_at_step_6(tmp_path, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    root = tmp_path / "resume 'real' 画像"
    root.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    args = (sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir)
    plain = run_cli(_argv(root, "plain", *args), env)
    assert plain.returncode == 0, plain.stderr[-3000:]

    argv = _argv(root, "killed", *args)
    proc = subprocess.Popen([sys.executable, "-m", "copymachine", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, state = time.monotonic() + 900, None
    while proc.poll() is None and time.monotonic() < deadline:
        found = [p.parent for p in (root / "cache killed").glob("copy-lora/*/.partial/copy-lora/copy-lora-step00000004-state/random_states_0.pkl")]
        if found and trainstate._complete(found[0]):
            state = found[0]
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert state is not None, "the state of step 4 was not seen"
    resumed = run_cli(argv, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "copy LoRA (memo step 2): resuming at step 4 of 6" in resumed.stderr
    log = (root / "killed" / "logs" / "copy-lora.log").read_text(encoding="utf-8", errors="replace")
    assert "load train state from" in log and "'current_step': 4" in log and "skipping 4 steps" in log
    lora = _copy_lora(root, "killed")
    assert read_safetensors(lora).metadata["ss_steps"] == "6"
    a, b = _weights(_copy_lora(root, "plain")), _weights(lora)
    assert a.keys() == b.keys()
    assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a) <= MAX_DIFF
    assert not list((root / "cache killed").glob("copy-lora/*/.partial"))  # done: the states are gone


def test_samples_tensorboard_then_a_copy_stop_on_a_blank_check(tmp_path, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    root = tmp_path / "watch"
    root.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    args = (sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir)
    result = run_cli(_argv(root, "run", *args, "--samples", "2", "--tensorboard"), env)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = sorted(p.name for p in (root / "run" / "samples" / "copy-lora").glob("*.png"))
    assert [re.search(r"_(\d{6})_00_", n).group(1) for n in samples] == ["000002", "000004", "000006"], samples
    assert list((root / "run" / "tensorboard").rglob("events.out.tfevents.*"))

    # --copy-stop-at keeps the copy check's blank rule, and the black-VAE fixture renders black: the
    # first segment's check (step 2) cannot score, and the run ends there with the copy check's one
    # line and its exit code (1, docs/troubleshooting.md), not after training 6 steps. Same cache
    # folder: the hashes of the images are reused; another base is another copy LoRA key, so its 2
    # steps train anew. One check image of 2 sampling steps (the recipe's 4 of 20 took 301 s here).
    check = ("--set", "copy_check.images=1", "--set", "copy_check.steps=2")
    black = _black_vae(random_sd15, tmp_path / "sd15-random-black-vae.safetensors")
    stop = run_cli(_argv(root, "stop", sd_scripts_dir, sd_python, black, tokenizer_cache_dir, "--copy-stop-at", "0.99",
                         *check, cache="run"), env)
    assert stop.returncode == 1, stop.stderr[-3000:]
    assert "copy LoRA (memo step 2): --copy-stop-at 0.99: segments ending at steps 2, 4, 6" in stop.stderr
    error = "copymachine: error: stage 'copy LoRA (memo step 2)': gen_img.py rendered a blank image (black)"
    assert error in stop.stderr, stop.stderr[-3000:]
    assert "copy check at step" not in stop.stderr  # no check scored
    # the failed attempt keeps its newest saved state: step 2's; no segment went on to step 4
    (scratch,) = [p for p in (root / "cache run").glob("copy-lora/*/.partial/copy-lora") if p.is_dir()]
    assert sorted(p.name for p in scratch.glob("*-state")) == ["copy-lora-step00000002-state"]
    training = read_toml(scratch.parents[1] / "config" / "copy-lora-training.toml", "training config")
    assert training["training"]["max_train_steps"] == 2  # the first segment's sd-scripts run, the last one started
    assert (scratch.parents[1] / "config" / "copy-lora-stop-check.txt").is_file()  # the check's prompts
