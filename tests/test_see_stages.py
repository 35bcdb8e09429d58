"""The copy check, the preview and the tools' metadata, with gen_img.py and the LoRA tools played
by the recording fake of sd-scripts (tests/fake_sdscripts; its "perfect copy" mode,
COPYMACHINE_FAKE_COPY, plays a copy machine that copies)."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from copymachine.cli import cli
from copymachine.cli.common import make_settings
from copymachine.errors import EXIT_CHECK, CheckFailed
from copymachine.files import HashCache
from copymachine.lorafile import read_safetensors, write_safetensors
from copymachine.methods import COPY_MACHINE, DIFFERENCE, Request, make_sources, plan
from copymachine.models import SD1
from copymachine.pipeline import Pipeline
from copymachine.plan import Planner
from copymachine.progress import Reporter
from copymachine.recipe import MEMO
from copymachine.runner import command_line
from copymachine.stages import Settings, kind_versions
from copymachine.stages.copy_check import CopyCheckParams
from copymachine.stages.copy_check import planned_outputs as check_outputs

GEN_IMG = "gen_img.py"


@pytest.fixture
def sd(fake_engine) -> Settings:
    """How copymachine runs the recording fake (its Python is this one)."""
    return make_settings(fake_engine.root, sys.executable, "cpu", fake_engine.tokenizers, True, Reporter(stream=io.StringIO(), live=False))


def renders(fake_engine) -> list[list[str]]:
    """The argv of every gen_img.py call the fake recorded; each as copymachine must build it:
    no global --seed (every line has its own), never --network_merge, the family flag after --ckpt."""
    calls = [c["argv"] for c in fake_engine.calls() if Path(c["script"]).name == GEN_IMG]
    for argv in calls:
        assert "--seed" not in argv and "--network_merge" not in argv and argv[argv.index("--ckpt") + 2] == "--v1"
    return calls


def sd1_checkpoint(path: Path) -> Path:
    keys = ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "model.diffusion_model.input_blocks.0.0.weight"]
    write_safetensors(path, {k: np.zeros(2, np.float16) for k in keys})
    return path


def small_lora(path: Path, metadata=None) -> Path:
    t = {}
    for name in ("lora_te_text_model_encoder_layers_0_mlp_fc1", "lora_unet_down_blocks_0_attentions_0_proj_in"):
        t[f"{name}.lora_down.weight"] = np.ones((4, 8), np.float16)
        t[f"{name}.lora_up.weight"] = np.ones((8, 4), np.float16)
        t[f"{name}.alpha"] = np.array(4, np.float16)
    write_safetensors(path, t, {"ss_base_model_version": "sd_v1", **(metadata or {})})
    return path


# --- where the new stages sit in the plans --------------------------------------------------


def request(tmp_path, scene_path, method=COPY_MACHINE, **kw) -> Request:
    return Request(method=method, base=sd1_checkpoint(tmp_path / "base.safetensors"), family=SD1, effects=["outline"], recipe=MEMO, sources=make_sources([scene_path], []), out=tmp_path / "run", resolution=64, **kw)


def test_train_plan_checks_the_copy_model_and_previews_at_the_end(tmp_path, scene_path, sd):
    p = plan(request(tmp_path, scene_path, preview_model=tmp_path / "base.safetensors"), sd, HashCache(None))
    names = [s.name for s in p.stages]
    assert names.index("copy-check") == names.index("copy-lora") + 1 < names.index("outline/effect-lora")
    assert names[-1] == "outline/preview"
    check = p.stage("copy-check")
    # in memory: the copy LoRA rendered unmerged on the base model, at the merge ratio
    assert check.inputs["model"].external and check.inputs["copy_lora"].producer == "copy-lora" and "lora" not in check.inputs
    assert check.workdir == p.run_dir / "copy-check" and not check.shared  # images in the run folder
    assert check.params["size"] == [64, 64] and check.params["seeds"] == [1, 2, 3, 4] and check.params["prompts"][0] == "{caption}"
    assert check.gate == {"min_ssim": 0.8} and "min_ssim" not in check.params
    assert check.params["sampler"] == "euler"  # deterministic: no fresh noise at every step (euler_a)
    assert "copycheck000" in p.stage("outline/final").inputs
    preview = p.stage("outline/preview")
    assert preview.inputs["lora"].producer == "outline/final"
    # leakage: measured on the resized LoRA (the final's weights) before the final, which records it
    leakage = p.stage("outline/leakage")
    assert names.index("outline/resize") < names.index("outline/leakage") < names.index("outline/final")
    assert leakage.inputs["lora"].producer == "outline/resize" and leakage.inputs["original000"].producer == "original"
    assert p.stage("outline/final").inputs["leakage"].producer == "outline/leakage" and preview.inputs["leakage"].producer == "outline/leakage"
    assert leakage.params["strengths"] == [0.0, 1.0, 2.0, 3.0] and leakage.params["size"] == [64, 64] and leakage.params["seeds"] == [1, 2, 3]
    assert preview.outputs["sheet"] == p.run_dir / "run-outline-preview.png"
    assert preview.params["strengths"] == [-1.0, -0.5, 0.0, 0.5, 1.0] and preview.params["size"] == [512, 512]
    # the gate is not part of the key
    from copymachine.recipe import apply_overrides

    strict = apply_overrides(MEMO, {"copy_check": {"min_ssim": 0.95}}, "test")
    other = plan(dataclasses.replace(request(tmp_path, scene_path), recipe=strict), sd, HashCache(None))
    assert other.stage("copy-check").key == check.key and other.stage("copy-check").gate == {"min_ssim": 0.95}


def test_preview_font_is_an_input(tmp_path, scene_path, sd):
    from copymachine.errors import InputError
    from copymachine.recipe import apply_overrides

    font = tmp_path / "font.ttf"
    font.write_bytes(b"font")
    recipe = apply_overrides(MEMO, {"preview": {"font": str(font)}}, "test")
    p = plan(dataclasses.replace(request(tmp_path, scene_path, preview_model=tmp_path / "base.safetensors"), recipe=recipe), sd, HashCache(None))
    assert p.stage("outline/preview").inputs["font"].path == font.resolve()
    recipe = apply_overrides(MEMO, {"preview": {"font": str(tmp_path / "none.ttf")}}, "test")
    with pytest.raises(InputError, match=r"preview.font not found"):
        plan(dataclasses.replace(request(tmp_path, scene_path, preview_model=tmp_path / "base.safetensors"), recipe=recipe), sd, HashCache(None))


def test_no_copy_check_plans_none(tmp_path, scene_path, sd):
    p = plan(request(tmp_path, scene_path, copy_check=False), sd, HashCache(None))
    assert not [s for s in p.stages if s.kind in ("copy_check", "preview")]
    assert not [n for n in p.stage("outline/final").inputs if n.startswith("copycheck")]


def test_diff_checks_lora_a_on_the_base(tmp_path, scene_path, sd):
    p = plan(request(tmp_path, scene_path, method=DIFFERENCE), sd, HashCache(None))
    names = [s.name for s in p.stages]
    assert names.index("copy-check") == names.index("lora-a") + 1 < names.index("outline/lora-b")
    check = p.stage("copy-check")
    assert check.inputs["lora"].producer == "lora-a" and check.inputs["model"].external


def test_dry_run_prints_the_check_and_preview_commands(tmp_path, scene_path, sd, fake_engine, capsys):
    p = plan(request(tmp_path, scene_path, preview_model=tmp_path / "base.safetensors"), sd, HashCache(None))
    Pipeline(p, sd, Reporter(live=False), HashCache(None), argv=["test"]).run(dry_run=True)
    out = capsys.readouterr().out
    assert "copy check" in out and "strength sweep" in out and "outline: leakage on base.safetensors: gen_img.py, 12 images" in out
    gen_img = command_line([sys.executable, str(fake_engine.root / GEN_IMG)])
    assert sum(1 for line in out.splitlines() if line.startswith(gen_img + " ")) == 3  # copy check, leakage, preview
    assert not fake_engine.calls() and not (p.run_dir / "copy-check" / "copy-1.png").exists()
    prompts = (p.run_dir / "copy-check" / "config" / "copy-check-prompts.txt").read_text(encoding="utf-8")
    assert prompts.startswith("{caption} --w 64 --h 64 --d 1 --s 20")


# --- the copy check -------------------------------------------------------------------------


def check_plan(tmp_path, scene_path, min_ssim=0.8, images=3):
    hashes = HashCache(tmp_path / "hashes.json")
    planner = Planner(tmp_path / "run", tmp_path / "cache", hashes, kind_versions())
    model = sd1_checkpoint(tmp_path / "copy model.safetensors")
    caption = tmp_path / "caption.txt"
    caption.write_text("1girl, 猫\n", encoding="utf-8")
    params = CopyCheckParams(
        family_flag="--v1",
        prompts=["{caption}", "landscape", "{caption}"][:images],
        seeds=list(range(1, images + 1)),
        negative_prompt="",
        size=[64, 64],
        steps=2,
        sampler="euler_a",
        scale=7.0,
        precision="float",
    )
    inputs = {"model": planner.external(model), "original": planner.external(scene_path), "caption": planner.external(caption)}
    planner.add("copy-check", "copy_check", "copy check", inputs=inputs, params=params, outputs=check_outputs(images), workdir=tmp_path / "run" / "copy-check", gate={"min_ssim": min_ssim})
    return planner.plan, hashes


def run_plan(the_plan, hashes, sd):
    stream = io.StringIO()
    try:
        Pipeline(the_plan, sd, Reporter(stream=stream, live=False), hashes, argv=["test"]).run()
    finally:
        manifest = json.loads(the_plan.manifest_path.read_text(encoding="utf-8"))
    return stream.getvalue(), manifest


def test_a_copy_model_that_does_not_copy_stops_the_run(tmp_path, scene_path, sd, fake_engine):
    the_plan, hashes = check_plan(tmp_path, scene_path)
    with pytest.raises(CheckFailed) as failed:
        run_plan(the_plan, hashes, sd)
    assert failed.value.exit_code == EXIT_CHECK == 7
    assert failed.value.message.startswith("the copy model does not copy yet: mean SSIM 0.0")
    assert "train the copy LoRA longer" in failed.value.message
    folder = tmp_path / "run" / "copy-check"
    assert sorted(p.name for p in folder.glob("*.png")) == ["copy-1.png", "copy-2.png", "copy-3.png", "copy-check.png"]
    scores = json.loads((folder / "copy-check.json").read_text(encoding="utf-8"))
    assert [r["prompt"] for r in scores["images"]] == ["1girl, 猫", "landscape", "1girl, 猫"]
    assert scores["lpips"].startswith("LPIPS not installed") and scores["images"][0]["lpips"] is None
    assert scores["ssim_of"] == f"luma at {scores['size'][0]}x{scores['size'][1]}"  # below 256 px: its own size
    manifest = json.loads(the_plan.manifest_path.read_text(encoding="utf-8"))
    record = manifest["stages"][0]
    assert record["status"] == "done" and record["verdict"]["passed"] is False and record["gate"] == {"min_ssim": 0.8}
    assert record["outputs"]["scores"]["mean_ssim"] < 0.2 and len(record["outputs"]["scores"]["ssim"]) == 3
    sheet = Image.open(folder / "copy-check.png")
    assert sheet.width > 4 * 128  # the original and three images
    # a re-run judges again, renders nothing
    calls = len(renders(fake_engine))
    with pytest.raises(CheckFailed):
        run_plan(*check_plan(tmp_path, scene_path), sd)
    assert len(renders(fake_engine)) == calls
    # a lower bar passes without rendering again
    out, manifest = run_plan(*check_plan(tmp_path, scene_path, min_ssim=0.0), sd)
    assert len(renders(fake_engine)) == calls and "-> copies" in out
    assert manifest["stages"][0]["verdict"]["passed"] is True


def test_a_copy_machine_that_copies_passes(tmp_path, scene_path, sd, fake_engine, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_COPY", str(scene_path))
    out, manifest = run_plan(*check_plan(tmp_path, scene_path, images=2), sd)
    assert "SSIM 1.000, 1.000 (mean 1.000, need >= 0.8)" in out and "-> copies" in out
    assert manifest["stages"][0]["verdict"] == {"passed": True, "mean_ssim": 1.0, "min_ssim_required": 0.8}
    assert renders(fake_engine)  # each render as copymachine must build it


# --- copymachine preview --------------------------------------------------------------------


def test_preview_command_writes_the_sheet_beside_the_lora(tmp_path, fake_engine):
    folder = tmp_path / "my 'loras' ロラ"
    folder.mkdir()
    lora = small_lora(folder / "slider a.safetensors")
    model = sd1_checkpoint(tmp_path / "other model.safetensors")
    args = ["preview", str(lora), "--model", str(model), "--strengths", "-1, 0, 0.5", "--prompt", "a cat --d 9", "--prompt", "a dog", "--seed", "4", "--size", "64", "--steps", "2", *fake_engine.engine_args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    sheet = folder / "slider a-preview.png"
    assert result.stdout.strip().splitlines()[-1] == str(sheet)
    cells = sorted(p.name for p in (folder / "slider a-preview").iterdir())
    assert cells == sorted(f"prompt{p}-seed4-m{m}.png" for p in (1, 2) for m in ("-1", "0", "0.5"))
    image = Image.open(sheet)
    assert image.width > 3 * 128 + 64 and image.height > 2 * 128
    assert sorted(p.name for p in folder.iterdir()) == [".copymachine", ".stages", "slider a-preview", "slider a-preview.png", "slider a.safetensors"]
    argv = renders(fake_engine)[0]
    assert argv[argv.index("--network_weights") + 1] == str(lora)
    prompts = Path(argv[argv.index("--from_file") + 1])
    assert prompts.parent == folder / ".copymachine" / "config"  # nothing else beside the LoRA
    assert "a cat -d 9 --n" in prompts.read_text(encoding="utf-8")
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "up to date, skipped" in again.output and len(renders(fake_engine)) == 1


def test_preview_refuses_a_model_of_another_family(tmp_path, fake_engine):
    lora = small_lora(tmp_path / "l.safetensors", {"ss_base_model_version": "sdxl_base_v1-0"})
    model = sd1_checkpoint(tmp_path / "m.safetensors")
    result = CliRunner().invoke(cli, ["preview", str(lora), "--model", str(model), *fake_engine.engine_args])
    assert result.exit_code == 3 and "SDXL LoRA but --model is Stable Diffusion 1.x" in result.output
    result = CliRunner().invoke(cli, ["preview", str(small_lora(tmp_path / "k.safetensors")), "--model", str(model), "--size", "100", *fake_engine.engine_args])
    assert result.exit_code == 3 and "multiple of 64" in result.output
    result = CliRunner().invoke(cli, ["preview", str(small_lora(tmp_path / "k.safetensors")), "--model", str(model), "--strengths", "0,50", *fake_engine.engine_args])
    assert result.exit_code == 3 and "--strengths: 50 must be from -10 to 10" in result.output
    result = CliRunner().invoke(cli, ["preview", str(small_lora(tmp_path / "k.safetensors")), "--model", str(model), "--seed", "-4", *fake_engine.engine_args])
    assert result.exit_code == 3 and "--seed: -4 must be from 0 to 4294967295" in result.output


# --- copymachine metadata -------------------------------------------------------------------


def test_tool_outputs_carry_copymachine_metadata(tmp_path, fake_engine):
    engine = ["--sd-scripts", str(fake_engine.tree_copy(tmp_path / "sd-scripts", commit="0" * 40)), *fake_engine.engine_args[2:]]
    a = small_lora(tmp_path / "a.safetensors", {"copymachine.method": "copy-machine", "copymachine.effect": "outline", "ss_network_dim": "4"})
    b = small_lora(tmp_path / "b.safetensors")
    out = tmp_path / "out" / "merged.safetensors"
    result = CliRunner().invoke(cli, ["svd-merge", "--lora", f"{a}:1", "--lora", f"{b}:-0.5", "--rank", "4", "--out", str(out), *engine])
    assert result.exit_code == 0, result.output
    md = read_safetensors(out).metadata
    assert md["copymachine.tool"] == "svd-merge" and md["copymachine.sd_scripts_commit"] == "0" * 40 and md["copymachine.version"]
    inputs = json.loads(md["copymachine.inputs"])
    assert [(i["file"], i["ratio"]) for i in inputs] == [("a.safetensors", 1.0), ("b.safetensors", -0.5)]
    assert inputs[0]["method"] == "copy-machine" and inputs[0]["effect"] == "outline" and len(inputs[0]["sha256"]) == 64
    assert json.loads(md["copymachine.tool_params"])["rank"] == 4
    resized = tmp_path / "out" / "r.safetensors"
    result = CliRunner().invoke(cli, ["resize", str(a), "--rank", "4", "--out", str(resized), *engine])
    assert result.exit_code == 0, result.output
    md = read_safetensors(resized).metadata
    # resize keeps its input's keys (as resize_lora.py does) and adds the tool's
    assert md["copymachine.effect"] == "outline" and md["copymachine.tool"] == "resize"


def test_final_lora_records_the_copy_check(tmp_path, scene_path, sd, fake_engine, monkeypatch):
    """The final LoRA's metadata carries the copy-check scores next to the method's keys."""
    monkeypatch.setenv("COPYMACHINE_FAKE_COPY", str(scene_path))
    request_ = request(tmp_path, scene_path)
    p = plan(request_, sd, HashCache(None))
    # stand in for the trainings: the copy LoRA / effect LoRA / resize outputs are small LoRAs
    keep = {"original", "outline/edit", "captions", "copy-check", "outline/final"}
    for s in p.stages:
        if s.name not in keep:
            for path in s.outputs.values():
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".safetensors":
                    small_lora(path)
    p.stages = [s for s in p.stages if s.name in keep]
    for s in p.stages:
        for name, ref in list(s.inputs.items()):
            if ref.producer and ref.producer not in keep:
                s.inputs[name] = type(ref)(path=ref.path)
    Pipeline(p, sd, Reporter(live=False), HashCache(None), argv=["test"]).run()
    md = read_safetensors(p.finals["outline"]).metadata
    check = json.loads(md["copymachine.copy_check"])
    assert check[0]["mean_ssim"] == 1.0 and check[0]["size"] == [64, 64]
    for key in ("method", "effect", "effect_params", "recipe", "original_sha256", "edited_sha256", "sign", "version", "sd_scripts_commit"):
        assert md[f"copymachine.{key}"]
    assert renders(fake_engine)  # the copy check's, as copymachine must build it
