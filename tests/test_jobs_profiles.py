"""Device profiles (CPU, GPU, low VRAM) and several trainings side by side, against the fake
(its stand-in torch reports COPYMACHINE_FAKE_CUDA=N GPUs)."""

from __future__ import annotations

import itertools
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from copymachine.cli import cli
from copymachine.errors import EXIT_ENGINE


@pytest.fixture
def image(tmp_path, scene):
    path = tmp_path / "original.png"
    scene.image.resize((128, 128), Image.Resampling.LANCZOS).save(path)
    return path


def run(fake_engine, image, out, *extra):
    args = ["train", "--base", str(fake_engine.base), "--image", str(image), "--out", str(out), "--resolution", "64", "--max-steps", "3", "--no-copy-check", *fake_engine.engine_args, *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def trainings(fake_engine):
    return [c for c in fake_engine.calls() if c["script"].endswith("train_network.py")]


def test_gpu_profile_keeps_the_recipe_and_goes_faster(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    result = run(fake_engine, image, tmp_path / "gpu", "--effect", "contrast")
    assert result.exit_code == 0, result.output
    assert "profile gpu (bf16)" in result.output
    copy = trainings(fake_engine)[0]
    cfg = copy["config"]
    assert cfg["mixed_precision"] == "bf16" and copy["launcher"]["options"]["mixed_precision"] == "bf16"
    assert cfg["sdpa"] is True and cfg["cache_latents"] is True
    # the recipe is untouched
    assert (cfg["optimizer_type"], cfg["network_dim"], cfg["learning_rate"]) == ("AdamW", 64, 1e-4)
    assert "gradient_checkpointing" not in cfg
    resize = next(c for c in fake_engine.calls() if c["script"].endswith("resize_lora.py"))
    assert resize["args"]["device"] == "cpu"  # sd-scripts issue #904


def test_low_vram_profile(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    result = run(fake_engine, image, tmp_path / "low", "--effect", "contrast", "--low-vram")
    assert result.exit_code == 0, result.output
    cfg = trainings(fake_engine)[0]["config"]
    assert cfg["optimizer_type"] == "AdamW8bit"
    assert cfg["gradient_checkpointing"] is True and cfg["cache_latents_to_disk"] is True


def test_cpu_profile_and_cpu_runs_stay_sequential(fake_engine, image, tmp_path):
    result = run(fake_engine, image, tmp_path / "cpu", "--effect", "contrast", "--effect", "posterize", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert "CPU runs stay sequential" in result.output
    cfg = trainings(fake_engine)[0]["config"]
    assert cfg["mixed_precision"] == "no" and "sdpa" not in cfg and "cache_latents" not in cfg
    calls = trainings(fake_engine)
    for earlier, later in itertools.pairwise(calls):
        assert earlier["finished"] <= later["started"]


def test_effects_train_side_by_side_on_one_gpu(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0.3")
    result = run(fake_engine, image, tmp_path / "par", "--effect", "contrast", "--effect", "posterize", "--effect", "jpeg", "--jobs", "3")
    assert result.exit_code == 0, result.output
    copy, *effects = trainings(fake_engine)
    assert len(effects) == 3
    assert all(e["started"] >= copy["finished"] for e in effects)  # the copy machine first
    latest_start = max(e["started"] for e in effects)
    earliest_end = min(e["finished"] for e in effects)
    assert latest_start < earliest_end, "the three effect trainings did not overlap"
    assert all("CUDA_VISIBLE_DEVICES" not in e["env"] for e in effects)  # one GPU, shared
    assert "contrast: effect LoRA (memo step 5): done in" in result.output  # parallel lines name their job
    for effect in ("contrast", "posterize", "jpeg"):
        assert (tmp_path / "par" / f"par-{effect}.safetensors").is_file()


def test_one_gpu_each_on_a_multi_gpu_machine(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "2")
    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0.3")
    result = run(fake_engine, image, tmp_path / "multi", "--effect", "contrast", "--effect", "posterize")
    assert result.exit_code == 0, result.output
    assert "2 trainings side by side on 2 GPUs" in result.output
    effects = trainings(fake_engine)[1:]
    assert sorted(e["env"]["CUDA_VISIBLE_DEVICES"] for e in effects) == ["0", "1"]


def test_a_failed_effect_does_not_stop_the_others(fake_engine, image, tmp_path, monkeypatch):
    # calls: 1 copy LoRA, 2 contrast effect LoRA, 3 posterize effect LoRA (sequential on the CPU)
    monkeypatch.setenv("COPYMACHINE_FAKE_FAIL", "train_network:exit1:2")
    out = tmp_path / "partial"
    result = run(fake_engine, image, out, "--effect", "contrast", "--effect", "posterize")
    assert result.exit_code == EXIT_ENGINE
    assert (out / "partial-posterize.safetensors").is_file()
    assert not (out / "partial-contrast.safetensors").exists()
    summary = result.output[result.output.index("summary:") :]
    assert "posterize" in summary and str(out / "partial-posterize.safetensors") in summary
    assert "contrast" in summary and "failed in 'contrast: effect LoRA (memo step 5)'" in summary
    stages = {s["name"]: s["status"] for s in json.loads((out / "manifest.json").read_text())["stages"]}
    assert stages["contrast/effect-lora"] == "failed" and stages["contrast/final"] == "pending"
    assert stages["posterize/final"] == "done"
    # the next run redoes only the failed effect
    monkeypatch.delenv("COPYMACHINE_FAKE_FAIL")
    before = len(trainings(fake_engine))
    result = run(fake_engine, image, out, "--effect", "contrast", "--effect", "posterize")
    assert result.exit_code == 0, result.output
    assert len(trainings(fake_engine)) == before + 1


def test_a_bad_edit_stops_its_run_before_any_training(fake_engine, image, tmp_path):
    shifted = tmp_path / "shifted.png"
    Image.open(image).rotate(3).save(shifted)
    result = run(fake_engine, image, tmp_path / "bad", "--edited", str(shifted))
    assert result.exit_code != 0 and "your edit cannot be used" in result.output
    assert fake_engine.calls() == []  # the copy LoRA is not trained for a run that cannot finish


def test_effect_all_with_jobs_2_keeps_two_trainings_at_a_time(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0.2")
    out = tmp_path / "all"
    result = run(fake_engine, image, out, "--effect", "all", "--jobs", "2")
    assert result.exit_code == 0, result.output
    effects = trainings(fake_engine)[1:]
    assert len(effects) == 5
    events = sorted([(e["started"], 1) for e in effects] + [(e["finished"], -1) for e in effects])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == [f"all-{e}.safetensors" for e in sorted(["outline", "flat", "contrast", "posterize", "jpeg"])]
    assert sum(c["config"]["network_dim"] == 128 for c in effects) == 2  # flat and jpeg: the memo's retrain
