"""SDXL: the same commands, run folder and resume, with SDXL's scripts and options (against the fake)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from copymachine.cli import cli
from copymachine.errors import EXIT_ENVIRONMENT
from copymachine.lorafile import validate_lora


@pytest.fixture
def sdxl(fake_engine, tmp_path, scene):
    base = fake_engine.make_checkpoint(tmp_path / "sdxl base.safetensors", family="sdxl", seed=0)
    (fake_engine.tokenizers / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k").mkdir()
    image = tmp_path / "original.png"
    scene.image.resize((128, 128), Image.Resampling.LANCZOS).save(image)
    second = tmp_path / "second.png"
    scene.image.resize((128, 128)).rotate(90).save(second)
    return {"base": base, "image": image, "second": second}


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def common(fake_engine, sdxl, out):
    return ["--base", str(sdxl["base"]), "--image", str(sdxl["image"]), "--out", str(out), "--resolution", "64", "--max-steps", "3", "--no-copy-check", *fake_engine.engine_args]


def test_train_uses_the_sdxl_scripts(fake_engine, sdxl, tmp_path):
    out = tmp_path / "xl"
    result = invoke(["train", "--effect", "contrast", *common(fake_engine, sdxl, out)])
    assert result.exit_code == 0, result.output
    assert "SDXL base" in result.output
    assert fake_engine.scripts() == ["sdxl_train_network.py", "sdxl_train_network.py", "resize_lora.py"]
    copy, effect = fake_engine.calls()[:2]
    assert copy["config"]["no_half_vae"] is True
    assert "v2" not in copy["config"]
    assert effect["config"]["base_weights"] == [str(out.parent / "_cache" / "copy-lora" / Path(copy["outputs"][0]).parent.parent.parent.name / "copy-lora.safetensors")]
    assert effect["unet_target_modules"] == ["Transformer2DModel"]
    result = invoke(["train", "--effect", "contrast", *common(fake_engine, sdxl, tmp_path / "xl-file"), "--copy-model", "file"])
    assert result.exit_code == 0, result.output
    assert fake_engine.scripts()[3:] == ["sdxl_merge_lora.py", "sdxl_train_network.py", "resize_lora.py"]  # the copy LoRA was cached
    merge = fake_engine.calls()[3]
    assert "v2" not in merge["argv"] and merge["args"]["precision"] == "float"
    final = out / "xl-contrast.safetensors"
    summary = validate_lora(final, expected_rank=8)
    assert any(m.startswith("lora_te1_") for m in summary.modules) and any(m.startswith("lora_te2_") for m in summary.modules)
    # the same resume
    before = len(fake_engine.calls())
    assert invoke(["train", "--effect", "contrast", *common(fake_engine, sdxl, out)]).exit_code == 0
    assert len(fake_engine.calls()) == before


def test_diff_and_the_memo_route_with_sdxl(fake_engine, sdxl, tmp_path):
    result = invoke(["diff", "--effect", "contrast", *common(fake_engine, sdxl, tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert fake_engine.scripts() == ["sdxl_train_network.py", "sdxl_train_network.py", "svd_merge_lora.py"]
    result = invoke(["train", "--effect", "contrast", *common(fake_engine, sdxl, tmp_path / "two"), "--image", str(sdxl["second"])])
    assert result.exit_code == 0, result.output
    extract = next(c for c in fake_engine.calls() if c["script"].endswith("extract_lora_from_models.py"))
    assert "--sdxl" in extract["argv"]


def test_generated_original_uses_gen_img_sdxl_at_1024(fake_engine, sdxl, tmp_path):
    result = invoke(["train", "--effect", "contrast", "--base", str(sdxl["base"]), "--out", str(tmp_path / "g"), "--dry-run", *fake_engine.engine_args])
    assert result.exit_code == 0, result.output
    gen = next(line for line in result.stdout.splitlines() if "gen_img.py" in line)
    assert "--sdxl" in gen.split()
    prompt_file = tmp_path / "_cache" / "generated"
    line = next(prompt_file.rglob("*prompt.txt")).read_text(encoding="utf-8")
    assert "--w 1024 --h 1024" in line
    manifest_info = [line for line in result.stdout.splitlines() if "train_network.py" in line]
    assert all("sdxl_train_network.py" in m for m in manifest_info)
    assert "1024x1024" in result.stdout


def test_offline_without_the_second_tokenizer_is_named(fake_engine, sdxl, tmp_path):
    (fake_engine.tokenizers / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k").rmdir()
    result = invoke(["train", "--effect", "contrast", *common(fake_engine, sdxl, tmp_path / "t")])
    assert result.exit_code == EXIT_ENVIRONMENT
    assert "lacks laion_CLIP-ViT-bigG-14-laion2B-39B-b160k" in result.output and "SDXL needs" in result.output
    assert fake_engine.calls() == []


def test_a_merge_that_will_not_fit_in_ram_is_named_before_starting(fake_engine, sdxl, tmp_path, monkeypatch):
    from copymachine import preflight

    gib = 2**30
    monkeypatch.setattr(preflight.memory, "memory_bytes", lambda: {"total": 24 * gib, "available": 22 * gib, "swap": 0})
    # in memory (the default) nothing is merged into a checkpoint: no merge peak to warn about
    result = invoke(["train", "--effect", "contrast", *common(fake_engine, sdxl, tmp_path / "mem")])
    assert result.exit_code == 0 and "needs ~" not in result.output
    result = invoke(["train", "--effect", "contrast", *common(fake_engine, sdxl, tmp_path / "ram"), "--copy-model", "file"])
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if "needs ~" in line)
    assert "copy model" in warning and "SDXL checkpoint at float" in warning and "--set merge.precision=fp16" in warning
    assert result.output.index(warning) < result.output.index("[1/")  # before any stage runs
    # at fp16 (22.7 GiB measured) it fits in 24 GB: no warning
    result = invoke(["train", "--effect", "contrast", *common(fake_engine, sdxl, tmp_path / "ram16"), "--copy-model", "file", "--set", "merge.precision=fp16", "--set", "merge.save_precision=fp16"])
    assert result.exit_code == 0 and "needs ~" not in result.output
    # SD1.5's 13.4 GB merge fits
    monkeypatch.setattr(preflight.memory, "memory_bytes", lambda: {"total": 16 * gib, "available": 15 * gib, "swap": 0})
    result = invoke(["train", "--effect", "contrast", "--base", str(fake_engine.base), "--image", str(sdxl["image"]), "--out", str(tmp_path / "sd1"), "--resolution", "64", "--max-steps", "3", "--no-copy-check", "--copy-model", "file", *fake_engine.engine_args])
    assert result.exit_code == 0 and "needs ~" not in result.output
