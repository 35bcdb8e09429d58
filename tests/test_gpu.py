"""The GPU a user really has (issue 20, points 7-11), against the fake sd-scripts, whose stand-in
torch reports COPYMACHINE_FAKE_CUDA GPUs of compute capability COPYMACHINE_FAKE_CUDA_CAPABILITY
with COPYMACHINE_FAKE_VRAM GiB: bf16 only from capability 8.0, the user's CUDA_VISIBLE_DEVICES, the
VRAM estimate before any work, the kohya_ss layout, the first run's progress line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from copymachine import capabilities, engine, preflight, profiles, vram
from copymachine.cli import cli
from copymachine.cli import doctor as doctor_module
from copymachine.errors import EXIT_ENVIRONMENT, EngineError
from copymachine.settings import visible_device

GB = 1024**3


@pytest.fixture
def image(tmp_path, scene):
    path = tmp_path / "original.png"
    scene.image.resize((128, 128), Image.Resampling.LANCZOS).save(path)
    return path


def train(fake_engine, *args, engine_args=None):
    return CliRunner().invoke(cli, ["train", "--max-steps", "3", "--no-copy-check", *(engine_args or fake_engine.engine_args), *args], catch_exceptions=False)


def trainings(fake_engine):
    return [c for c in fake_engine.calls() if c["script"].endswith("train_network.py")]


# --- 7: bf16 only from compute capability 8.0 --------------------------------------------------


@pytest.mark.parametrize(
    "compute, torch_bf16, precision",
    [
        ([(7, 5)], True, "fp16"),  # T4, RTX 20xx, GTX 16xx: torch says bf16 (emulated)
        ([(7, 0)], True, "fp16"),  # V100
        ([(8, 6)], True, "bf16"),  # RTX 30xx
        ([(9, 0)], True, "bf16"),  # H100
        ([(8, 6), (7, 5)], True, "fp16"),  # mixed GPUs: the oldest decides
        ([(8, 0)], False, "fp16"),  # a torch without bf16 there
        ([], True, "fp16"),  # capability unknown
    ],
)
def test_precision_by_compute_capability(compute, torch_bf16, precision):
    assert profiles.choose_precision(compute, torch_bf16)[0] == precision


@pytest.mark.parametrize("capability, precision", [("7.5", "fp16"), ("8.6", "bf16")])
def test_the_run_trains_in_the_precision_of_the_capability(fake_engine, image, tmp_path, monkeypatch, capability, precision):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA_CAPABILITY", capability)
    result = train(fake_engine, "--base", str(fake_engine.base), "--image", str(image), "--out", str(tmp_path / "r"), "--resolution", "64", "--effect", "contrast")
    assert result.exit_code == 0, result.output
    assert f"profile gpu ({precision})" in result.output
    why = "compute capability 7.5 < 8.0: no native bf16" if precision == "fp16" else "compute capability 8.6 >= 8.0: native bf16"
    assert f"trains in {precision} ({why}" in result.output
    for call in trainings(fake_engine):
        assert call["config"]["mixed_precision"] == precision and call["launcher"]["options"]["mixed_precision"] == precision
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["mixed_precision"] == precision and manifest["mixed_precision_why"].startswith(why)
    assert manifest["sd_scripts"]["python_found"] == "given by --python"
    estimate = manifest["run"]["vram"]  # the VRAM estimate, and what it was compared with
    assert estimate["free_bytes"] == 70 * GB and estimate["largest_stage"] and estimate["estimate_bytes"] >= estimate["largest_bytes"] > vram.CUDA_CONTEXT


@pytest.fixture
def roomy(monkeypatch):
    monkeypatch.setattr(preflight.memory, "memory_bytes", lambda: {"total": 32 * GB, "available": 24 * GB, "swap": 0})
    monkeypatch.setattr(doctor_module, "free_bytes", lambda path: 100 * GB)


def doctor_rows(fake_engine, tmp_path, *extra) -> dict[str, str]:
    args = ["doctor", "--sd-scripts", str(fake_engine.root), "--python", sys.executable, "--out", str(tmp_path / "runs"), *extra]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    rows = {}
    for line in result.stdout.splitlines()[1:-1]:
        status, what = line.split()[:2]
        rows.setdefault(what, f"{status} {line.split(None, 2)[2]}")
    return rows


def test_doctor_says_fp16_on_a_turing_card_and_why(fake_engine, tmp_path, roomy, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA_CAPABILITY", "7.5")
    monkeypatch.setenv("COPYMACHINE_FAKE_GPU_NAME", "Tesla T4")
    monkeypatch.setenv("COPYMACHINE_FAKE_VRAM", "14.5,15")
    gpu = doctor_rows(fake_engine, tmp_path)["GPU"]
    assert gpu == "ok torch 0.0+fake sees Tesla T4, 14.5 GB of 15.0 GB VRAM free; trains in fp16 (compute capability 7.5 < 8.0: no native bf16 (emulated, slow))"


def test_doctor_warns_about_fp16_on_a_gtx_16(fake_engine, tmp_path, roomy, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA_CAPABILITY", "7.5")
    monkeypatch.setenv("COPYMACHINE_FAKE_GPU_NAME", "NVIDIA GeForce GTX 1660 SUPER")
    gpu = doctor_rows(fake_engine, tmp_path)["GPU"]
    assert gpu.startswith("warn ") and "trains in fp16" in gpu and "NaN losses in fp16 (kohya-ss/sd-scripts#293)" in gpu


# --- 8: the user's CUDA_VISIBLE_DEVICES -------------------------------------------------------


@pytest.mark.parametrize(
    "index, inherited, expected",
    [
        (1, None, "1"),  # no mask: the index
        (0, "2,3", "2"),
        (1, "2,3", "3"),
        (1, " 3 , 1 ", "1"),  # the mask's order, spaces ignored
        (1, "GPU-8f2a,GPU-77c1", "GPU-77c1"),  # UUIDs
        (0, "MIG-4b1e/1/2", "MIG-4b1e/1/2"),
        (0, "", ""),  # empty: no GPU visible stays so
    ],
)
def test_visible_device_indexes_the_inherited_mask(index, inherited, expected):
    assert visible_device(index, inherited) == expected


def test_visible_device_stops_at_an_invalid_entry():
    # CUDA ignores the entries from the first invalid one on: "0,-1,2" shows one GPU
    assert visible_device(0, "5,-1,2") == "5"
    with pytest.raises(EngineError):
        visible_device(1, "5,-1,2")


def test_jobs_land_on_the_users_gpus(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "2")  # torch sees two: the user's 2 and 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0.2")
    result = train(fake_engine, "--base", str(fake_engine.base), "--image", str(image), "--out", str(tmp_path / "m"), "--resolution", "64", "--effect", "contrast", "--effect", "posterize")
    assert result.exit_code == 0, result.output
    effects = trainings(fake_engine)[1:]
    assert sorted(e["env"]["CUDA_VISIBLE_DEVICES"] for e in effects) == ["2", "3"]


# --- 9: VRAM ------------------------------------------------------------------------------------


def test_the_estimate_grows_with_size_dim_and_family():
    small = vram.training("sd1", (512, 512), 64).total
    assert vram.training("sd1", (768, 768), 64).total > small
    assert vram.training("sd1", (512, 512), 128).total > small
    assert vram.training("sdxl", (512, 512), 64).total > small
    assert vram.training("sd1", (512, 512), 64, optimizer="AdamW8bit", gradient_checkpointing=True).total < small
    # SDXL's --low-vram: the text encoders' weights and LoRA part leave the GPU
    full = vram.training("sdxl", (1024, 1024), 64, gradient_checkpointing=True, optimizer="AdamW8bit")
    unet = vram.training("sdxl", (1024, 1024), 64, gradient_checkpointing=True, optimizer="AdamW8bit", unet_only=True)
    assert unet.parts["model weights"] < full.parts["model weights"] and unet.total < full.total
    # every process counts its own CUDA context
    assert vram.training("sd1", (64, 64), 64).parts["CUDA context"] == vram.render("sd1", (64, 64)).parts["CUDA context"] == vram.CUDA_CONTEXT


def test_the_sd15_lora_parameters_match_the_lora_measured_here():
    # a dim-64 SD1.5 LoRA of sd-scripts' networks.lora was 151 MB at float (measured on the real sd-scripts, reference sd-scripts-facts.md)
    per_dim = vram.LORA_PER_DIM_UNET["sd1"] + vram.LORA_PER_DIM_TEXT["sd1"]
    assert abs(per_dim * 1e6 * 64 * 4 - 151e6) < 0.02 * 151e6


@pytest.fixture
def sdxl_base(fake_engine, tmp_path):
    base = fake_engine.make_checkpoint(tmp_path / "sdxl base.safetensors", family="sdxl", seed=0)
    (fake_engine.tokenizers / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k").mkdir()
    return base


def vram_warning(output: str) -> str | None:
    return next((line for line in output.splitlines() if line.startswith("warning:") and "GPU memory" in line), None)


def sdxl_dry_run(fake_engine, sdxl_base, out, *extra):
    return train(fake_engine, "--base", str(sdxl_base), "--out", str(out), "--effect", "contrast", "--dry-run", *extra)


def test_an_8gb_card_is_told_before_any_work_that_sdxl_will_not_fit(fake_engine, sdxl_base, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    monkeypatch.setenv("COPYMACHINE_FAKE_VRAM", "7.5,8")
    result = sdxl_dry_run(fake_engine, sdxl_base, tmp_path / "xl")
    assert result.exit_code == 0, result.output
    warning = vram_warning(result.output)
    assert "at 1024x1024" in warning and "even --low-vram" in warning and "GPU 0 (Fake GPU) has 7.5 GB free of 8.0 GB" in warning
    assert "U-Net trained alone" in warning
    assert fake_engine.calls() == []


def test_a_16gb_card_is_told_to_use_low_vram_for_sdxl(fake_engine, sdxl_base, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    monkeypatch.setenv("COPYMACHINE_FAKE_VRAM", "15.5,16")
    result = sdxl_dry_run(fake_engine, sdxl_base, tmp_path / "xl")
    warning = vram_warning(result.output)
    assert "; --low-vram needs ~" in warning and "even" not in warning
    # with --low-vram it fits: no warning; the SDXL trainings cache the text encoders' outputs
    result = sdxl_dry_run(fake_engine, sdxl_base, tmp_path / "xl-low", "--low-vram")
    assert result.exit_code == 0, result.output
    assert vram_warning(result.output) is None
    assert "GPU memory by copymachine's estimate: the largest stage, " in result.output and "GPU 0 (Fake GPU) has 15.5 GB free of 16.0 GB" in result.output
    config = next((tmp_path / "xl-low").rglob("*effect-lora-training.toml")).read_text()
    assert "cache_text_encoder_outputs = true" in config and "network_train_unet_only = true" in config


def test_sdxl_low_vram_trains_the_unet_on_cached_text_encoder_outputs(fake_engine, sdxl_base, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    result = train(fake_engine, "--base", str(sdxl_base), "--image", str(image), "--out", str(tmp_path / "xl"), "--resolution", "64", "--effect", "contrast", "--low-vram")
    assert result.exit_code == 0, result.output
    for call in trainings(fake_engine):
        assert call["config"]["cache_text_encoder_outputs"] is True and call["config"]["network_train_unet_only"] is True
        # sd-scripts asserts that cached text-encoder outputs come with unshuffled captions
        assert call["dataset_config"]["general"]["shuffle_caption"] is False
    assert (tmp_path / "xl" / "xl-contrast.safetensors").is_file()
    assert "note: --low-vram on SDXL: the text encoders' outputs are cached once and the U-Net trains alone" in result.output


def test_sd15_low_vram_keeps_the_text_encoder(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    result = train(fake_engine, "--base", str(fake_engine.base), "--image", str(image), "--out", str(tmp_path / "low"), "--resolution", "64", "--effect", "contrast", "--low-vram")
    assert result.exit_code == 0, result.output
    config = trainings(fake_engine)[0]["config"]
    assert config["optimizer_type"] == "AdamW8bit" and "network_train_unet_only" not in config and "cache_text_encoder_outputs" not in config
    assert "--low-vram on SDXL" not in result.output


def test_the_default_jobs_follow_the_estimate(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    args = ["--base", str(fake_engine.base), "--image", str(image), "--resolution", "512", "--effect", "contrast", "--effect", "posterize", "--effect", "outline", "--dry-run"]
    monkeypatch.setenv("COPYMACHINE_FAKE_VRAM", "70,80")
    assert "3 trainings side by side on one GPU" in train(fake_engine, *args, "--out", str(tmp_path / "a")).output
    monkeypatch.setenv("COPYMACHINE_FAKE_VRAM", "14,16")  # two SD1.5 trainings at 512 px (~6.5 GiB each), not three
    assert "2 trainings side by side on one GPU" in train(fake_engine, *args, "--out", str(tmp_path / "b")).output
    monkeypatch.setenv("COPYMACHINE_FAKE_VRAM", "7.5,8")
    output = train(fake_engine, *args, "--out", str(tmp_path / "c")).output
    assert "side by side" not in output and vram_warning(output) is None  # one at a time fits
    output = train(fake_engine, *args, "--out", str(tmp_path / "d"), "--jobs", "3").output
    assert "--jobs 3: 3 stages side by side need ~" in output and "use --jobs 1" in output


def test_low_vram_without_bitsandbytes_is_refused_before_any_work(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    root = fake_engine.tree_copy(tmp_path / "sd-scripts", without="bitsandbytes")
    args = ["--sd-scripts", str(root), "--python", sys.executable, "--tokenizer-cache-dir", str(fake_engine.tokenizers), "--offline"]
    result = train(fake_engine, "--base", str(fake_engine.base), "--image", str(image), "--out", str(tmp_path / "r"), "--resolution", "64", "--effect", "contrast", "--low-vram", engine_args=args)
    assert result.exit_code == EXIT_ENVIRONMENT
    assert "--low-vram trains with AdamW8bit, which needs bitsandbytes" in result.output and "pip install bitsandbytes" in result.output
    assert fake_engine.calls() == []


def test_doctor_compares_the_estimate_with_the_free_vram(fake_engine, tmp_path, roomy, monkeypatch, sdxl_base):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    monkeypatch.setenv("COPYMACHINE_FAKE_VRAM", "70,80")
    assert doctor_rows(fake_engine, tmp_path)["VRAM"].startswith("ok training Stable Diffusion 1.x at 512x512, dim 128, needs ~")
    monkeypatch.setenv("COPYMACHINE_FAKE_VRAM", "7.5,8")
    row = doctor_rows(fake_engine, tmp_path, "--base", str(sdxl_base))["VRAM"]
    assert row.startswith("warn training SDXL at 1024x1024") and "will likely not fit even with --low-vram" in row
    monkeypatch.setenv("COPYMACHINE_FAKE_VRAM", "15.5,16")
    row = doctor_rows(fake_engine, tmp_path, "--base", str(sdxl_base))["VRAM"]
    assert "use --low-vram (" in row and "bitsandbytes" in row  # the fake's Python has no bitsandbytes distribution


# --- 10: the kohya_ss layout -------------------------------------------------------------------


def kohya(tmp_path: Path, windows: bool = False) -> Path:
    root = tmp_path / "kohya ss"
    (root / "sd-scripts" / "networks").mkdir(parents=True)
    (root / "sd-scripts" / "train_network.py").write_text("")
    (root / "kohya_gui.py").write_text("")
    python = root / "venv" / ("Scripts/python.exe" if windows else "bin/python")
    python.parent.mkdir(parents=True)
    python.write_text("")
    return root


@pytest.mark.parametrize("windows", [False, True])
def test_the_kohya_ss_venv_beside_sd_scripts_is_found(tmp_path, monkeypatch, windows):
    monkeypatch.delenv("SD_SCRIPTS_PYTHON", raising=False)
    root = kohya(tmp_path, windows)
    found = engine.locate(root / "sd-scripts")
    assert found.python == str(root / "venv" / ("Scripts/python.exe" if windows else "bin/python"))
    assert found.python_reason == f"the kohya_ss venv beside sd-scripts ({root.resolve()})"
    # the kohya_ss folder itself names its sd-scripts
    assert engine.locate(root).root == (root / "sd-scripts").resolve()


def test_what_comes_before_the_kohya_ss_venv(tmp_path, monkeypatch):
    root = kohya(tmp_path)
    own = root / "sd-scripts" / "venv" / "bin" / "python"
    own.parent.mkdir(parents=True)
    own.write_text("")
    assert engine.locate(root / "sd-scripts").python_reason == "the venv inside the sd-scripts folder"
    monkeypatch.setenv("SD_SCRIPTS_PYTHON", "/env/python")
    assert (engine.locate(root / "sd-scripts").python, engine.locate(root / "sd-scripts").python_reason) == ("/env/python", "from $SD_SCRIPTS_PYTHON")
    assert engine.locate(root / "sd-scripts", "/opt/py").python_reason == "given by --python"


def test_a_venv_beside_a_plain_checkout_is_not_taken(tmp_path, monkeypatch):
    monkeypatch.delenv("SD_SCRIPTS_PYTHON", raising=False)
    root = kohya(tmp_path)
    (root / "kohya_gui.py").unlink()  # not a kohya_ss folder: its venv may be anything
    found = engine.locate(root / "sd-scripts")
    assert found.python == sys.executable and found.python_reason.startswith("copymachine's own Python")


def test_the_run_says_which_python_and_why(fake_engine, image, tmp_path):
    result = train(fake_engine, "--base", str(fake_engine.base), "--image", str(image), "--out", str(tmp_path / "r"), "--resolution", "64", "--effect", "contrast", "--dry-run")
    assert f"its Python {sys.executable} (given by --python)" in result.output


# --- 11: the first run's progress line -------------------------------------------------------


def test_learning_the_scripts_shows_progress_once(fake_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_ENGINE_CACHE", str(tmp_path / "engines"))
    root = fake_engine.tree_copy(tmp_path / "sd-scripts", commit="5" * 40)
    seen: list[tuple[int, int]] = []
    caps = capabilities.learn(engine.Engine(root=root, python=sys.executable, commit="5" * 40), on_progress=lambda d, t: seen.append((d, t)))
    n = (len(capabilities.SCRIPTS) + len(capabilities.FAMILY_SCRIPTS))
    assert seen == [(i, n) for i in range(n + 1)] and not caps.errors
    again: list[tuple[int, int]] = []
    capabilities.learn(engine.Engine(root=root, python=sys.executable, commit="5" * 40), on_progress=lambda d, t: again.append((d, t)))
    assert again == []  # learnt once: from the cache, nothing to count


def test_the_first_run_prints_the_count(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_ENGINE_CACHE", str(tmp_path / "engines"))
    args = ["--base", str(fake_engine.base), "--image", str(image), "--resolution", "64", "--effect", "contrast"]
    first = train(fake_engine, *args, "--out", str(tmp_path / "a"))
    assert first.exit_code == 0, first.output
    n = (len(capabilities.SCRIPTS) + len(capabilities.FAMILY_SCRIPTS))
    assert f"learning what this sd-scripts can do, once: 3/{n} scripts" in first.output
    assert first.output.index(f"once: 0/{n} scripts") < first.output.index(f"once: {n}/{n} scripts")
    second = train(fake_engine, *args, "--out", str(tmp_path / "b"))
    assert "learning what this sd-scripts can do" not in second.output
    assert os.listdir(tmp_path / "engines")


def test_disk_estimates_a_lora_as_vram_counts_it():
    """One count of a LoRA's parameters per rank (U-Net + text encoders) for disk and VRAM: SD1.5's dim-64 LoRA at
    float is 151 MB (measured); SDXL's text encoders add 0.903M per rank (12 layers 768 wide, 32 layers 1280 wide:
    the disk table said 3.4M in all, vram.py 3.56M)."""
    from copymachine.preflight.disk import lora_bytes
    from copymachine.vram import LORA_PER_DIM_TEXT, LORA_PER_DIM_UNET

    assert round(lora_bytes("sd1", 64, "float") / 1e6) == 151
    assert round(lora_bytes("sdxl", 32, "fp16") / 2**20) == 217
    for family, unet in LORA_PER_DIM_UNET.items():
        assert lora_bytes(family, 1, "float") == round((unet + LORA_PER_DIM_TEXT.get(family, 0)) * 1e6) * 4
