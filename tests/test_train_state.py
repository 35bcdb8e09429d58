"""A training's saved state (copymachine/trainstate.py): a killed training resumes at its last
saved step, a state of other inputs is removed, an sd-scripts without the options saves none.
Against the recording fake of sd-scripts, which saves and resumes as train_network.py does."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

from copymachine import trainstate
from copymachine.cli import cli
from copymachine.lorafile import write_safetensors


def _images(tmp_path, scene):
    original = tmp_path / "original.png"
    small = scene.image.resize((128, 128), Image.Resampling.LANCZOS)
    small.save(original)
    edited = tmp_path / "edited.png"
    ImageEnhance.Contrast(small).enhance(1.6).save(edited)
    return original, edited


def _argv(fake_engine, original, edited, run_dir, *extra):
    return [
        "train", "--effect", "custom", "--base", str(fake_engine.base), "--image", str(original), "--edited", str(edited),
        "--out", str(run_dir), "--cache-dir", str(run_dir.parent / "cache"), "--resolution", "64", "--max-steps", "6",
        "--no-copy-check", "--set", "watch.save_every_n_steps=2", *fake_engine.engine_args, *extra,
    ]  # fmt: skip


def _kill_after_state(argv, env, pattern: str, root: Path, timeout: float = 60) -> Path:
    """Run the CLI in a process group of its own and SIGKILL it once a complete state matching
    `pattern` (under `root`) is there; returns that state folder."""
    proc = subprocess.Popen([sys.executable, "-m", "copymachine", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = [p.parent for p in root.glob(pattern + "/random_states_0.pkl")]
            if found and trainstate._complete(found[0]):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return found[0]
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    raise AssertionError(f"no complete state {pattern} appeared (exit {proc.returncode})")


def _trainings(fake_engine, stage_dir: str) -> list[dict]:
    return [c for c in fake_engine.calls() if c["script"].endswith("train_network.py") and stage_dir in c["config"]["output_dir"]]


def test_a_killed_training_resumes_at_its_last_saved_step(fake_engine, scene, tmp_path, monkeypatch):
    original, edited = _images(tmp_path, scene)
    run_dir = tmp_path / "run 'a' 画像"
    argv = _argv(fake_engine, original, edited, run_dir)
    env = dict(os.environ, COPYMACHINE_FAKE_STEP_SECONDS="0.25", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    state = _kill_after_state(argv, env, "cache/copy-lora/*/.partial/copy-lora/copy-lora-step00000004-state", tmp_path)
    assert json.loads((state / "train_state.json").read_text())["current_step"] == 4

    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "copy LoRA (memo step 2): resuming at step 4 of 6 (saved state copy-lora-step00000004-state)" in result.output
    (resumed,) = _trainings(fake_engine, "copy-lora")  # a SIGKILLed call records nothing
    assert resumed["config"]["save_every_n_steps"] == 2
    assert resumed["config"]["resume"] == str(state) and resumed["config"]["skip_until_initial_step"] is True
    assert resumed["config"]["save_last_n_steps_state"] == 1
    log = (run_dir / "logs" / "copy-lora.log").read_text(encoding="utf-8")
    assert "skipping 4 steps" in log
    # done: the scratch folder, states and all, is gone
    assert not list((tmp_path / "cache").glob("copy-lora/*/.partial"))
    assert (run_dir / f"{run_dir.name}-custom.safetensors").is_file()


def test_a_state_of_other_inputs_is_removed_not_resumed(fake_engine, scene, tmp_path):
    original, edited = _images(tmp_path, scene)
    run_dir = tmp_path / "run"
    argv = _argv(fake_engine, original, edited, run_dir)
    env = dict(os.environ, COPYMACHINE_FAKE_STEP_SECONDS="0.25", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    # the effect LoRA trains in the run folder: its scratch folder is the same for every key
    state = _kill_after_state(argv, env, "run/custom/.partial/custom--effect-lora/*-step00000002-state", tmp_path)

    result = CliRunner().invoke(cli, [*argv, "--set", "effect.learning_rate=0.0002"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "custom: effect LoRA (memo step 5): removed a saved training state of other inputs (another stage key)" in result.output
    assert "resuming" not in result.output
    last = _trainings(fake_engine, "effect-lora")[-1]
    assert "resume" not in last["config"]
    assert not state.exists()


def test_the_scratch_folder_keeps_only_the_newest_complete_state_of_its_key(tmp_path):
    scratch = tmp_path / "scratch"

    def state(step: int, complete: bool = True) -> Path:
        folder = scratch / f"lora-step{step:08d}-state"
        folder.mkdir(parents=True)
        (folder / "train_state.json").write_text(json.dumps({"current_epoch": 1, "current_step": step}))
        write_safetensors(folder / "model.safetensors", {"w": np.zeros(4, np.float32)})
        for name in ("optimizer.bin", "scheduler.bin"):
            (folder / name).write_bytes(pickle.dumps(name))
        data = pickle.dumps({"rng": step})
        (folder / "random_states_0.pkl").write_bytes(data if complete else data[:-3])  # cut off by a kill
        return folder

    def torch_saved(folder: Path, cut: bool) -> None:
        """What accelerate writes with torch.save: a zip; a kill mid-write leaves no zip directory."""
        import io
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps({"rng": 1}))
        data = buf.getvalue()
        (folder / "random_states_0.pkl").write_bytes(data[:-30] if cut else data)

    trainstate.mark(scratch, "key1")
    state(2), state(4), state(6, complete=False)
    torch_saved(state(8), cut=False)
    torch_saved(state(10), cut=True)
    (scratch / "lora.safetensors").write_bytes(b"half a LoRA")
    assert trainstate.resumable(scratch, "key1", total_steps=12).step == 8
    assert trainstate.resumable(scratch, "key1", total_steps=8).step == 4  # not at the last step: sd-scripts refuses
    assert trainstate.resumable(scratch, "key2", total_steps=8) is None
    assert trainstate.keep(scratch, "key1") is None
    assert sorted(p.name for p in scratch.iterdir()) == ["lora-step00000008-state", trainstate.KEY_FILE]
    assert trainstate.keep(scratch, "key2") is not None
    assert list(scratch.iterdir()) == []


def test_an_sd_scripts_without_the_options_saves_no_state_and_says_so(fake_engine, scene, tmp_path, monkeypatch):
    original, edited = _images(tmp_path, scene)
    monkeypatch.setenv("COPYMACHINE_FAKE_WITHOUT_OPTIONS", "train_network.py:--skip_until_initial_step")
    # another checkout (its own commit, so its own cached capabilities: a plain copy of the fake
    # tree has the fake's identity, and an earlier test may have learnt that one with the option)
    fake = fake_engine.tree_copy(tmp_path / "older sd-scripts", commit="8" * 40)
    argv = [a if a != str(fake_engine.root) else str(fake) for a in _argv(fake_engine, original, edited, tmp_path / "run")]
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "train_network.py has no --skip_until_initial_step: copy LoRA (memo step 2) saves no state, so a killed training starts again at step 0" in result.output
    assert all("save_state" not in c["config"] for c in fake_engine.calls() if c["script"].endswith("train_network.py"))


def test_samples_land_in_the_run_folder_at_the_interval_and_tensorboard_is_asked_for(fake_engine, scene, tmp_path):
    original, edited = _images(tmp_path, scene)
    run_dir = tmp_path / "run 'samples'"
    argv = _argv(fake_engine, original, edited, run_dir, "--samples", "3", "--tensorboard", "--set", "watch.sample_prompts={caption}|a red car")
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for stage in ("copy-lora", "custom--effect-lora"):
        names = sorted(p.name for p in (run_dir / "samples" / stage).iterdir())
        # steps 3 and 6, two prompts each, seeds 1 and 2
        assert [n.split("_")[-4:-2] + [n.rsplit("_", 1)[-1]] for n in names] == [["000003", "00", "1.png"], ["000003", "01", "2.png"], ["000006", "00", "1.png"], ["000006", "01", "2.png"]], names
        (call,) = _trainings(fake_engine, f".partial/{stage}")
        prompts = Path(call["config"]["sample_prompts"])
        assert prompts.name == f"{stage}-samples.txt"
        assert prompts.read_text(encoding="utf-8").splitlines() == ["1girl --w 64 --h 64 --d 1 --s 20 --l 7", "a red car --w 64 --h 64 --d 2 --s 20 --l 7"]
        assert list((run_dir / "tensorboard").glob(f"{stage}-*/network_train/events.out.tfevents.*"))
    assert f"watch with: tensorboard --logdir {shlex.quote(str(run_dir / 'tensorboard'))}" in result.output
    trainings = [c for c in fake_engine.calls() if c["script"].endswith("train_network.py")]
    assert {c["config"]["sample_sampler"] for c in trainings} == {"euler_a"}
    assert {c["config"]["sample_every_n_steps"] for c in trainings} == {3}
    # the queue page's job view: every sample, as it was made
    from copymachine.events import parse
    from copymachine.ui.store import progress_view

    events = [{"event": "sample", "path": str(run_dir / "samples" / "a.png"), "title": "copy LoRA"}, {"event": "sample", "path": "/b.png", "title": "custom: effect LoRA"}]
    assert progress_view([parse(e) for e in events])["samples"] == [{"path": str(run_dir / "samples" / "a.png"), "title": "copy LoRA"},
                                                                    {"path": "/b.png", "title": "custom: effect LoRA"}]


def test_samples_and_state_do_not_change_the_stage_keys(fake_engine, scene, tmp_path):
    """Saving, samples and TensorBoard do not change the weights: a run with them reuses the
    trainings of a run without."""
    original, edited = _images(tmp_path, scene)
    run_dir = tmp_path / "run"
    plain = [a for a in _argv(fake_engine, original, edited, run_dir) if a != "watch.save_every_n_steps=2"]
    plain.remove("--set")
    assert CliRunner().invoke(cli, plain, catch_exceptions=False).exit_code == 0
    again = CliRunner().invoke(cli, [*plain, "--samples", "2", "--tensorboard", "--set", "watch.save_every_n_steps=2"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "copy LoRA (memo step 2): up to date, skipped" in again.output and "effect LoRA (memo step 5): up to date, skipped" in again.output


def _copy_stop_run(fake_engine, scene, tmp_path, *extra):
    original, edited = _images(tmp_path, scene)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, [*_argv(fake_engine, original, edited, run_dir), "--copy-stop-at", "0.9", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stages = {s["name"]: s for s in json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["stages"]}
    record = stages["copy-lora"]["outputs"]["lora"]["copy_stop"]
    lora = next((tmp_path / "cache").glob("copy-lora/*/copy-lora.safetensors"))
    from copymachine.lorafile import read_safetensors

    assert json.loads(read_safetensors(lora).metadata["copymachine_copy_stop"]) == record
    return result, record, original


def test_copy_stop_stops_after_the_first_segment_when_the_copy_copies(fake_engine, scene, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_COPY", str(tmp_path / "original.png"))  # gen_img renders the original: SSIM 1
    result, record, _ = _copy_stop_run(fake_engine, scene, tmp_path)
    assert "copy LoRA (memo step 2): copy check at step 2 of 6: SSIM 1.000, 1.000, 1.000, 1.000 (mean 1.000, stop at >= 0.9) -> copies: stopping here" in result.output
    assert record["stopped_at"] == 2 and record["stopped_early"] is True and record["ceiling"] == 6
    assert [c["step"] for c in record["checks"]] == [2]
    trainings = _trainings(fake_engine, ".partial/copy-lora")
    assert [c["config"]["max_train_steps"] for c in trainings] == [2]


def test_copy_stop_runs_to_the_ceiling_when_the_copy_does_not_copy(fake_engine, scene, tmp_path):
    _, record, _ = _copy_stop_run(fake_engine, scene, tmp_path)  # random weights: unrelated pictures
    assert record["stopped_at"] == 6 and record["stopped_early"] is False
    assert [c["step"] for c in record["checks"]] == [2, 4] and all(c["mean_ssim"] < 0.9 for c in record["checks"])
    trainings = _trainings(fake_engine, ".partial/copy-lora")
    # three segments, each resumed from the state the one before saved
    assert [c["config"]["max_train_steps"] for c in trainings] == [2, 4, 6]
    assert ["resume" in c["config"] for c in trainings] == [False, True, True]
    assert trainings[2]["config"]["resume"].endswith("copy-lora-step00000004-state")
    assert {c["config"]["lr_warmup_steps"] for c in trainings} == {0}  # the whole training's warmup, not the segment's


def test_copy_stop_segments_start_after_the_warmup():
    from copymachine.copystop import boundaries

    assert boundaries(3072, 500, 256) == [512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072]
    assert boundaries(6, 0, 2) == [2, 4, 6]
    assert boundaries(3072, 500, 5000) == [3072]


def _without_paths(argv: list[str]) -> list[str]:
    """gen_img.py's options with the values that name a file left out (the folder, the prompt file, the LoRAs)."""
    paths = {"--outdir", "--from_file", "--network_weights", "--ckpt"}
    out, skip = [], False
    for a in argv:
        if a.startswith("--"):
            skip = a in paths
        if not skip or a.startswith("--"):
            out.append(a)
    return out


@pytest.mark.parametrize("plan", ["clip-skip-2", "v-pred", "sdxl"])
def test_copy_stop_renders_and_scores_as_the_copy_check(fake_engine, scene, tmp_path, monkeypatch, plan):
    """Issue 30: the copy stop calls the copy check's scorer: the same gen_img.py options (clip skip,
    v-prediction, SDXL's float32 VAE), the same prompt lines, the same base and the LoRAs at the same
    ratios; only the folders and the LoRA file (the step's, not the kept one) differ."""
    monkeypatch.setenv("COPYMACHINE_FAKE_COPY", str(tmp_path / "original.png"))  # SSIM 1: stops at step 2
    original, edited = _images(tmp_path, scene)
    argv = _argv(fake_engine, original, edited, tmp_path / "run", "--copy-stop-at", "0.9")
    argv.remove("--no-copy-check")
    expected = {"clip-skip-2": ["--clip_skip", "2"], "v-pred": ["--v_parameterization"], "sdxl": ["--sdxl", "--no_half_vae"]}
    if plan == "sdxl":
        base = fake_engine.make_checkpoint(tmp_path / "sdxl base.safetensors", family="sdxl", seed=0)
        (fake_engine.tokenizers / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k").mkdir()
        argv[argv.index("--base") + 1] = str(base)
    else:
        argv += ["--clip-skip", "2"] if plan == "clip-skip-2" else ["--v-pred"]
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "copy LoRA (memo step 2): copy check at step 2 of 6" in result.output
    gens = [c for c in fake_engine.calls() if c["script"] == "gen_img.py"]
    outdir = [Path(c["argv"][c["argv"].index("--outdir") + 1]) for c in gens]
    stop = [c for c, d in zip(gens, outdir) if d.name == "check-00000002"]
    check = [c for c, d in zip(gens, outdir) if "copy-check" in d.parts[-1]]
    assert len(stop) == 1 and len(check) == 1, [str(d) for d in outdir]
    stop_argv, check_argv = stop[0]["argv"], check[0]["argv"]
    assert _without_paths(stop_argv) == _without_paths(check_argv)
    assert all(a in stop_argv for a in expected[plan]), stop_argv
    assert stop_argv[stop_argv.index("--ckpt") + 1] == check_argv[check_argv.index("--ckpt") + 1]  # the base model
    assert stop_argv[stop_argv.index("--network_weights") + 1].endswith("copy-lora-step00000002.safetensors")
    prompts = [Path(a[a.index("--from_file") + 1]).read_text(encoding="utf-8") for a in (stop_argv, check_argv)]
    assert prompts[0] == prompts[1] and "copy-1.png" in prompts[0]
