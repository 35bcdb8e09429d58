"""A full disk in the middle of a run, against the recording fake of sd-scripts: a tmpfs as the
run and cache folder (tests/diskfull.py), filled while the effect LoRA trains. The run ends in
one line naming the folder and the bytes the stage needs (exit 5), leaves no partial file at a
final path and keeps the copy LoRA's stamp; with space freed the same command resumes at the
effect LoRA. The same on the real sd-scripts: tests/integration/test_disk_full_real.py.

A full disk met by one of copymachine's own writes (not sd-scripts') ends in the same line: the
second test makes the final LoRA's write fail with ENOSPC.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

from click.testing import CliRunner
from diskfull import SmallDisk, check_after_full_disk, fill_during_effect_training, run_to_end
from PIL import Image, ImageEnhance

from copymachine.cli import cli
from copymachine.errors import EXIT_OUTPUT


def _pictures(tmp_path, scene):
    original = tmp_path / "original.png"
    scene.image.resize((128, 128), Image.Resampling.LANCZOS).save(original)
    edited = tmp_path / "edited.png"
    ImageEnhance.Contrast(Image.open(original)).enhance(1.6).save(edited)
    return original, edited


def _argv(fake_engine, original, edited, run_dir, cache_dir):
    return ["train", "--effect", "custom", "--base", str(fake_engine.base), "--image", str(original), "--edited", str(edited),
            "--out", str(run_dir), "--cache-dir", str(cache_dir), "--resolution", "64", "--max-steps", "3", "--no-copy-check",
            "--rank", "0", *fake_engine.engine_args]  # fmt: skip


def _run(argv, env):
    return subprocess.run([sys.executable, "-m", "copymachine", *argv], env=env, capture_output=True, text=True, encoding="utf-8", timeout=120)


def test_a_full_disk_mid_training_ends_in_one_line_and_the_same_command_resumes(fake_engine, scene, tmp_path):
    original, edited = _pictures(tmp_path, scene)  # the inputs and the base model stay off the small disk
    # 900 MB passes pre-flight (it asks ~800 MB: three LoRAs at dim 64 of ~150 MB, the small files of 7 stages, a
    # 200 MB margin); a tmpfs takes RAM only for what is written
    with SmallDisk(tmp_path / "small disk", 900) as disk:
        run_dir, cache_dir = disk.path / "run", disk.path / "cache"
        argv = _argv(fake_engine, original, edited, run_dir, cache_dir)
        env = dict(os.environ, COPYMACHINE_FAKE_STEP_SECONDS="0.4")
        proc = subprocess.Popen([sys.executable, "-m", "copymachine", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
        before = fill_during_effect_training(proc, disk, run_dir, cache_dir, leave=256 * 1024, timeout=60)  # the logs fit, the LoRA does not
        _, err = proc.communicate(timeout=60)
        line = check_after_full_disk(proc.returncode, err, disk, run_dir, cache_dir, before)
        assert "Log: " in line and "custom--effect-lora.log" in line  # sd-scripts' own write failed
        assert str(run_dir / "custom") in line

        disk.grow()
        env["COPYMACHINE_FAKE_STEP_SECONDS"] = "0"
        run_to_end(argv, env, _run, run_dir, cache_dir, before)
        assert (run_dir / "run-custom.safetensors").is_file()


def test_a_full_disk_in_copymachines_own_write_ends_in_the_same_line(fake_engine, scene, tmp_path, monkeypatch):
    from copymachine.stages import finalize

    original, edited = _pictures(tmp_path, scene)
    run_dir, cache_dir = tmp_path / "run", tmp_path / "cache"
    argv = _argv(fake_engine, original, edited, run_dir, cache_dir)
    real = finalize.write_uniform_rank

    def full(src, dst, *a, **kw):
        with open(dst, "wb") as f:  # half of it, then the disk is full
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(finalize, "write_uniform_rank", full)
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == EXIT_OUTPUT, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"copymachine: error: not enough disk space at {run_dir} (writing run-custom.safetensors): stage 'custom: final LoRA' writes ~"), line
    assert "bytes) there" in line and "it resumes at this stage" in line
    assert not (run_dir / "run-custom.safetensors").exists() and not list(run_dir.rglob(".partial"))

    monkeypatch.setattr(finalize, "write_uniform_rank", real)
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (run_dir / "run-custom.safetensors").is_file()
    assert result.output.count("up to date, skipped") >= 4  # only the final LoRA ran again
