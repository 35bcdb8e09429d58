"""copymachine train / diff on FLUX.1, SD3.5 and Anima against the recording fake of sd-scripts, from layout-only
checkpoints (every key and shape of the released files, zeros in a sparse file: tests/fake_sdscripts/README.md).
What is tested is the decision copymachine makes for each family: which trainer, LoRA module, options and
renderer it calls, with which files, and what it refuses. The real sd-scripts runs on Anima
(tests/integration/test_anima_method_real.py); FLUX.1 and SD3.5 do not fit this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from copymachine.cli import cli
from copymachine.lorafile import read_safetensors

FILES = {"flux-dev": ("clip_l", "t5xxl", "ae"), "sd3-5-large": ("clip_l", "clip_g", "t5xxl"), "anima": ("qwen3", "vae"),
         "chroma": ("t5xxl", "ae")}
TRAINERS = {"flux-dev": "flux_train_network.py", "sd3-5-large": "sd3_train_network.py",
            "anima": "anima_train_network.py", "chroma": "flux_train_network.py"}
RENDERERS = {"flux-dev": "flux_minimal_inference.py", "sd3-5-large": "sd3_minimal_inference.py",
             "anima": "anima_minimal_inference.py", "chroma": "flux_minimal_inference.py"}
MODULES = {"flux-dev": "networks.lora_flux", "sd3-5-large": "networks.lora_sd3", "anima": "networks.lora_anima",
           "chroma": "networks.lora_flux"}


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def family_world(fake_engine, tmp_path, scene_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("fake_mc", fake_engine.root / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("google_t5-v1_1-xxl", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"):
        (fake_engine.tokenizers / name).mkdir(parents=True, exist_ok=True)

    def world(family: str, text_encoders: bool = False):
        base = module.make_checkpoint(tmp_path / "models" / f"{family} base.safetensors", family=family,
                                      text_encoders=text_encoders)
        files = [] if text_encoders else [
            a for n in FILES[family]
            for a in ("--model-file", f"{n}={module.make_model_file(tmp_path / 'models' / f'{n} ファイル.safetensors', n)}")]
        return base, files

    return world


def _train_args(fake_engine, base, files, image, out, *extra):
    return ["train", "--effect", "contrast", "--base", base, *files, "--image", image, "--out", out,
            "--resolution", "64", "--max-steps", "3", *fake_engine.engine_args, *extra]  # fmt: skip


# slow: a FLUX.1 or SD3.5 dry run hashes its 10-24 GB (sparse) checkpoint, as a run hashes every input: 14-30 s here
BIG = pytest.mark.slow


@pytest.mark.parametrize("family", [pytest.param("flux-dev", marks=BIG), pytest.param("sd3-5-large", marks=BIG),
                                    "anima", pytest.param("chroma", marks=BIG)])
def test_a_dry_run_plans_the_family_trainer_and_renderer(fake_engine, family_world, scene_path, tmp_path, family):
    base, files = family_world(family)
    result = invoke(_train_args(fake_engine, base, files, scene_path, tmp_path / "run", "--dry-run"))
    assert result.exit_code == 0, result.output
    assert f"{TRAINERS[family]}, 3 steps at 64x64" in result.output
    assert RENDERERS[family] in result.output and "gen_img.py" not in result.output
    training = next((tmp_path / "run" / "contrast" / "config").glob("*effect-lora-training.toml")).read_text()
    assert f'network_module = "{MODULES[family]}"' in training and "network_train_unet_only = true" in training
    for name in FILES[family]:
        assert f"{'qwen3' if name == 'qwen3' else name} = " in training and "ファイル" in training
    assert fake_engine.calls() == []


@pytest.mark.parametrize("family", ["flux-dev", "sd3-5-large", "anima"])
def test_without_its_other_files_the_run_asks_for_them_in_one_line(fake_engine, family_world, scene_path, tmp_path,
                                                                   family):
    base, files = family_world(family)
    result = invoke(_train_args(fake_engine, base, files[:-2], scene_path, tmp_path / "run", "--dry-run"))
    assert result.exit_code == 3
    lines = [x for x in result.stderr.splitlines() if x.startswith("copymachine: error:")]
    assert len(lines) == 1 and "needs its other files beside the checkpoint: give --model-file" in lines[0]
    assert not (tmp_path / "run").exists()


@BIG
def test_sd35_with_its_text_encoders_inside_needs_no_files(fake_engine, family_world, scene_path, tmp_path):
    base, files = family_world("sd3-5-large", text_encoders=True)
    result = invoke(_train_args(fake_engine, base, files, scene_path, tmp_path / "run", "--dry-run"))
    assert result.exit_code == 0, result.output
    assert "--clip_l" not in result.output


@pytest.mark.parametrize("option, message", [
    (["--copy-model", "file"], "--copy-model file: copymachine keeps the copy model in memory on FLUX.1"),
    (["--clip-skip", "2"], "clip skip 2: FLUX.1 dev has no clip skip to choose"),
    (["--v-pred"], "FLUX.1 dev is a flow-matching model"),
])  # fmt: skip
def test_what_flux_refuses(fake_engine, family_world, scene_path, tmp_path, option, message):
    base, files = family_world("flux-dev")
    result = invoke(_train_args(fake_engine, base, files, scene_path, tmp_path / "run", "--dry-run", *option))
    assert result.exit_code == 3 and message in result.stderr, result.stderr


@BIG  # 8-10 s each
@pytest.mark.parametrize("method", ["train", "diff"])
def test_anima_end_to_end_on_the_fake(fake_engine, family_world, scene_path, tmp_path, method):
    """Every stage on the fake: trainings, the copy check, leakage and the sweep through the Anima renderer (its
    files named by seed), the resize or the SVD merge; the final LoRA has Anima's modules."""
    base, files = family_world("anima")
    out = tmp_path / "run"
    args = _train_args(fake_engine, base, files, scene_path, out, "--preview-model", base,
                       "--set", "copy_check.min_ssim=0", "--set", "preview.size=64")
    args[0] = method
    result = invoke(args)
    assert result.exit_code == 0, result.output
    final = read_safetensors(out / "run-contrast.safetensors")
    assert final.metadata["ss_base_model_version"] == "anima"
    assert all(k.startswith("lora_unet_") for k in final.tensors)
    scripts = fake_engine.scripts()
    assert "anima_train_network.py" in scripts and "anima_minimal_inference.py" in scripts
    assert "gen_img.py" not in scripts
    assert ("svd_merge_lora.py" if method == "diff" else "resize_lora.py") in scripts
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["run"]["family"] == "anima"
    assert (out / "run-contrast-preview.png").is_file()
    assert Path(out / "copy-check" / "copy-check.json").is_file()
