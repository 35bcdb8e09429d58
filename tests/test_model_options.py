"""Issue 20, the model: clip skip, v-prediction, SDXL renders' float32 VAE, blank renders refused,
and sd-scripts options the recipe does not name (--sd-arg), on the recording fake of sd-scripts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from copymachine.cli import cli
from copymachine.errors import EXIT_ENGINE, EXIT_INPUT, InputError
from copymachine.jobfile import load_jobs
from copymachine.lorafile import read_safetensors, write_safetensors
from copymachine.models import SD1, BaseOptions, Prediction, base_options, choose_prediction, inspect_base_model
from copymachine.recipe import MEMO, apply_overrides, load_recipe_file, parse_sd_args, parse_set_options
from copymachine.stages.train_lora import OWN_KEYS


def invoke(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture
def image(tmp_path, scene) -> Path:
    path = tmp_path / "original.png"
    scene.image.resize((128, 128), Image.Resampling.LANCZOS).save(path)
    return path


def with_markers(path: Path, *markers: str) -> Path:
    """The checkpoint at `path` with v-pred marker tensors added (as NoobAI-XL V-Pred has them)."""
    st = read_safetensors(path)
    tensors = {k: st.read(k) for k in st.tensors}
    tensors.update({m: np.zeros((0,), np.float32) for m in markers})
    out = path.with_name(path.stem + "-" + "-".join(markers) + ".safetensors")
    write_safetensors(out, tensors, st.metadata)
    return out


def run_args(fake_engine, base: Path, out: Path, *extra: str, image: Path | None = None) -> list[str]:
    args = ["train", "--effect", "contrast", "--base", str(base), "--out", str(out), "--resolution", "64", "--max-steps", "3", *fake_engine.engine_args, *extra]
    return args + (["--image", str(image)] if image else ["--set", "generate.width=64", "--set", "generate.height=64"])


def gen_calls(fake_engine) -> list[dict]:
    return [c for c in fake_engine.calls() if c["script"] == "gen_img.py"]


def trainings(fake_engine) -> list[dict]:
    return [c for c in fake_engine.calls() if c["script"] in ("train_network.py", "sdxl_train_network.py")]


# --- the recipe and the parsing ----------------------------------------------------------------


def test_recipe_shows_clip_skip_and_sd_args_and_checks_them(tmp_path):
    shown = invoke(["recipe"])
    assert shown.exit_code == 0
    assert "[model]\nclip_skip = 1\n" in shown.output and "[sd_args]" in shown.output
    assert MEMO.model.clip_skip == 1 and MEMO.sd_args == {}
    with pytest.raises(InputError, match=r"model.clip_skip=13 must be from 1 to 12 \(CLIP ViT-L/14 has 12 layers\)"):
        apply_overrides(MEMO, parse_set_options(["model.clip_skip=13"]), "--set")
    path = tmp_path / "r.toml"
    path.write_text('[model]\nclip_skip = 2\n[sd_args]\nnoise_offset = 0.05\nnetwork_args = ["conv_dim=8", "conv_alpha=4"]\n', encoding="utf-8")
    r = load_recipe_file(path)
    assert r.model.clip_skip == 2 and r.sd_args == {"noise_offset": 0.05, "network_args": ["conv_dim=8", "conv_alpha=4"]}
    assert r.to_dict()["sd_args"] == r.sd_args
    # --set sd_args.KEY=VALUE reads the value as TOML too (sd-scripts takes the TOML's values as they are)
    assert apply_overrides(MEMO, parse_set_options(["sd_args.min_snr_gamma=5"]), "--set").sd_args == {"min_snr_gamma": 5}


def test_sd_arg_values_are_toml_values():
    got = parse_sd_args(["noise_offset=0.05", "xformers", "network_args=[\"conv_dim=8\"]", "fp8_base=true", "min_timestep=100", "mode=some text"])
    assert got == {"noise_offset": 0.05, "xformers": True, "network_args": ["conv_dim=8"], "fp8_base": True, "min_timestep": 100, "mode": "some text"}
    for bad in ("=1", "no-dash=1", "two words=1"):
        with pytest.raises(InputError):
            parse_sd_args([bad])


def test_prediction_from_the_keys_or_the_flags(fake_engine, tmp_path):
    plain = inspect_base_model(fake_engine.base)
    assert choose_prediction(plain) == choose_prediction(plain, False, False)
    assert not choose_prediction(plain).v_parameterization and choose_prediction(plain).label == "epsilon-prediction"
    flagged = choose_prediction(plain, v_pred=True)
    assert flagged.v_parameterization and not flagged.zero_terminal_snr and flagged.why == "--v-pred"
    marked = inspect_base_model(with_markers(fake_engine.base, "v_pred", "ztsnr"))
    p = choose_prediction(marked)
    assert p.v_parameterization and p.zero_terminal_snr and p.why == "the checkpoint has a v_pred key, a ztsnr key"
    with pytest.raises(InputError, match="zero terminal SNR needs a v-prediction model"):
        choose_prediction(plain, zero_terminal_snr=True)
    with pytest.raises(InputError, match="has a ztsnr key but no v_pred key"):
        choose_prediction(inspect_base_model(with_markers(fake_engine.base, "ztsnr")))


def test_options_are_only_in_the_keys_when_not_the_defaults():
    default = base_options(SD1, 1, Prediction())
    assert default == BaseOptions() and default.or_none() is None and default.gen_img_args() == [] and default.training_keys() == {}
    two = BaseOptions(clip_skip=2, v_parameterization=True, zero_terminal_snr=True, no_half_vae=True)
    assert two.gen_img_args() == ["--clip_skip", "2", "--v_parameterization", "--zero_terminal_snr", "--no_half_vae"]
    assert two.training_keys() == {"clip_skip": 2, "v_parameterization": True, "zero_terminal_snr": True}
    assert two.for_training() == BaseOptions(clip_skip=2, v_parameterization=True, zero_terminal_snr=True)


# --- clip skip ---------------------------------------------------------------------------------


@pytest.fixture
def copying(monkeypatch, scene_path):
    """The fake's copy machine copies: every render is this picture (the copy check passes)."""
    monkeypatch.setenv("COPYMACHINE_FAKE_COPY", str(scene_path))


def test_clip_skip_reaches_every_training_and_render_and_the_lora(fake_engine, tmp_path, copying):
    """--clip-skip 2: clip_skip in every training TOML, --clip_skip 2 in every gen_img.py call
    (the generated original, the copy check, leakage and the preview), ss_clip_skip in the LoRA."""
    other = fake_engine.make_checkpoint(tmp_path / "other.safetensors", family="sd15", seed=1)
    out = tmp_path / "run"
    result = invoke(run_args(fake_engine, fake_engine.base, out, "--clip-skip", "2", "--no-copy-check", "--preview-model", str(other), "--set", "preview.size=64"))
    assert result.exit_code == 0, result.output
    assert "clip skip 2" in result.output
    assert [c["config"]["clip_skip"] for c in trainings(fake_engine)] == [2, 2]
    gens = gen_calls(fake_engine)
    assert len(gens) == 3  # generated original, leakage, preview
    for call in gens:
        argv = call["argv"]
        assert argv[argv.index("--clip_skip") + 1] == "2", argv
    final = out / "run-contrast.safetensors"
    assert read_safetensors(final).metadata["ss_clip_skip"] == "2"
    info = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["run"]
    assert info["clip_skip"] == 2 and info["recipe"]["model"] == {"clip_skip": 2}
    # the copy check renders with it too
    result = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "checked", "--clip-skip", "2", "--set", "copy_check.images=1"))
    assert result.exit_code == 0, result.output
    check = gen_calls(fake_engine)[-1]
    assert any("copy-1.png" in i["file"] for i in check["images"]) and "--clip_skip" in check["argv"]


def test_default_clip_skip_passes_nothing(fake_engine, tmp_path):
    result = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "run", "--no-copy-check"))
    assert result.exit_code == 0, result.output
    assert "clip_skip" not in trainings(fake_engine)[0]["config"]
    assert "--clip_skip" not in gen_calls(fake_engine)[0]["argv"] and "--v_parameterization" not in gen_calls(fake_engine)[0]["argv"]
    assert "epsilon-prediction (no v_pred key in the checkpoint)" in result.output


def test_clip_skip_changes_the_stage_keys(fake_engine, tmp_path):
    one = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "one", "--dry-run", "--no-copy-check"))
    two = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "two", "--dry-run", "--no-copy-check", "--clip-skip", "2"))
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    keys = [sorted(p.name for p in (tmp_path / "_cache" / "copy-lora").iterdir())]
    assert len(keys[0]) == 2  # two copy-LoRA cache entries: clip skip is part of the key


# --- v-prediction ------------------------------------------------------------------------------


def test_v_pred_keys_reach_training_and_rendering_and_the_dry_run_says_why(fake_engine, tmp_path, copying):
    base = with_markers(fake_engine.base, "v_pred", "ztsnr")
    out = tmp_path / "run"
    dry = invoke(run_args(fake_engine, base, tmp_path / "dry", "--dry-run", "--no-copy-check"))
    assert dry.exit_code == 0, dry.output
    assert "v-prediction with zero terminal SNR (the checkpoint has a v_pred key, a ztsnr key)" in dry.output
    result = invoke(run_args(fake_engine, base, out, "--set", "copy_check.images=1"))
    assert result.exit_code == 0, result.output
    for call in trainings(fake_engine):
        assert call["config"]["v_parameterization"] is True and call["config"]["zero_terminal_snr"] is True
    gens = gen_calls(fake_engine)
    assert len(gens) == 2  # the generated original and the copy check
    for call in gens:
        assert "--v_parameterization" in call["argv"] and "--zero_terminal_snr" in call["argv"]
    info = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["run"]
    assert info["prediction"] == {"type": "v-prediction with zero terminal SNR", "why": "the checkpoint has a v_pred key, a ztsnr key"}
    md = read_safetensors(out / "run-contrast.safetensors").metadata
    assert md["modelspec.prediction_type"] == "v" and md["ss_zero_terminal_snr"] == "True"


def test_v_pred_flag_for_a_file_without_the_keys(fake_engine, tmp_path):
    result = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "run", "--v-pred", "--no-copy-check"))
    assert result.exit_code == 0, result.output
    assert "v-prediction (--v-pred)" in result.output
    assert all(c["config"]["v_parameterization"] is True and "zero_terminal_snr" not in c["config"] for c in trainings(fake_engine))
    assert "--v_parameterization" in gen_calls(fake_engine)[0]["argv"]
    bad = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "bad", "--zero-terminal-snr", "--dry-run"))
    assert bad.exit_code == EXIT_INPUT and "zero terminal SNR needs a v-prediction model; add --v-pred" in bad.output


def test_doctor_names_the_prediction_type(fake_engine, tmp_path):
    base = with_markers(fake_engine.base, "v_pred")
    result = invoke(["doctor", "--sd-scripts", str(fake_engine.root), "--python", __import__("sys").executable, "--out", str(tmp_path / "runs"), "--base", str(base)])
    line = next(x for x in result.output.splitlines() if "base model" in x and "prediction" in x)
    assert "ok" in line and "v-prediction (the checkpoint has a v_pred key)" in line
    result = invoke(["doctor", "--sd-scripts", str(fake_engine.root), "--python", __import__("sys").executable, "--out", str(tmp_path / "runs"), "--base", str(fake_engine.base)])
    assert "epsilon-prediction (no v_pred key in the checkpoint); --v-pred" in result.output


# --- SDXL renders and blank renders ------------------------------------------------------------


@pytest.fixture
def sdxl_base(fake_engine, tmp_path) -> Path:
    (fake_engine.tokenizers / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k").mkdir()
    return Path(fake_engine.make_checkpoint(tmp_path / "sdxl base.safetensors", family="sdxl", seed=0))


def test_sdxl_renders_with_a_float32_vae_and_has_no_clip_skip(fake_engine, sdxl_base, tmp_path, copying):
    result = invoke(run_args(fake_engine, sdxl_base, tmp_path / "xl", "--set", "copy_check.images=1"))
    assert result.exit_code == 0, result.output
    gens = gen_calls(fake_engine)
    assert len(gens) == 2 and all("--no_half_vae" in c["argv"] and "--clip_skip" not in c["argv"] for c in gens)
    assert all("clip_skip" not in c["config"] and c["config"]["no_half_vae"] is True for c in trainings(fake_engine))
    bad = invoke(run_args(fake_engine, sdxl_base, tmp_path / "bad", "--clip-skip", "2", "--dry-run"))
    assert bad.exit_code == EXIT_INPUT and "SDXL has no clip skip to choose" in bad.output


def test_sd1_renders_keep_the_half_vae(fake_engine, tmp_path):
    assert invoke(run_args(fake_engine, fake_engine.base, tmp_path / "run", "--no-copy-check")).exit_code == 0
    assert "--no_half_vae" not in gen_calls(fake_engine)[0]["argv"]


def test_a_black_generated_original_is_refused(fake_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_FAIL", "gen_img:nan")  # NaN latents decode to black
    result = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "run", "--no-copy-check"))
    assert result.exit_code == EXIT_ENGINE
    line = next(x for x in result.output.splitlines() if "copymachine: error:" in x)
    assert "generated original image (memo step 1)" in line and "rendered a blank image (black)" in line and "likely cause: the checkpoint's VAE" in line
    assert not trainings(fake_engine)  # nothing trained on it
    assert not list((tmp_path / "_cache").rglob("generated.png"))


def test_a_black_copy_check_image_is_refused_not_scored(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_FAIL", "gen_img:nan")
    out = tmp_path / "run"
    result = invoke(run_args(fake_engine, fake_engine.base, out, "--set", "copy_check.images=2", image=image))
    assert result.exit_code == EXIT_ENGINE
    line = next(x for x in result.output.splitlines() if "copymachine: error:" in x)
    assert "copy check" in line and "blank image (black): copy-1.png" in line and "Nothing was trained on or scored" in line
    assert not (out / "copy-check" / "copy-check.json").exists()
    assert len(trainings(fake_engine)) == 1  # the copy LoRA; no effect LoRA


def test_blank_cause_names_half_precision(tmp_path):
    from copymachine.errors import EngineError
    from copymachine.genimg import refuse_blank

    black = tmp_path / "black.png"
    Image.new("RGB", (64, 64), (1, 0, 2)).save(black)
    fine = tmp_path / "fine.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(fine)
    refuse_blank([fine], "here", "fp16", None)
    with pytest.raises(EngineError, match=r"blank image \(black\): black.png; likely cause: the VAE decoding in fp16"):
        refuse_blank([fine, black], "here", "fp16", None)
    grey = tmp_path / "grey.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(grey)
    with pytest.raises(EngineError, match=r"one colour \(128, 128, 128\).*already decodes in float32, --no_half_vae"):
        refuse_blank([grey], "here", "bf16", BaseOptions(no_half_vae=True))


# --- --sd-arg ----------------------------------------------------------------------------------


def test_sd_arg_reaches_every_training_and_the_keys_and_the_manifest(fake_engine, tmp_path):
    out = tmp_path / "run"
    result = invoke(run_args(fake_engine, fake_engine.base, out, "--no-copy-check", "--sd-arg", "noise_offset=0.05", "--sd-arg", 'network_args=["conv_dim=8", "conv_alpha=4"]'))
    assert result.exit_code == 0, result.output
    for call in trainings(fake_engine):
        assert call["config"]["noise_offset"] == 0.05 and call["config"]["network_args"] == ["conv_dim=8", "conv_alpha=4"]
        assert call["args"]["noise_offset"] == 0.05
    info = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["run"]
    assert info["sd_args"] == {"noise_offset": 0.05, "network_args": ["conv_dim=8", "conv_alpha=4"]}
    entries = {p.name for p in (tmp_path / "_cache" / "copy-lora").iterdir()}
    assert invoke(run_args(fake_engine, fake_engine.base, tmp_path / "plain", "--no-copy-check")).exit_code == 0
    assert len({p.name for p in (tmp_path / "_cache" / "copy-lora").iterdir()} - entries) == 1  # another key


def test_unknown_sd_arg_names_the_closest_before_any_work(fake_engine, tmp_path):
    result = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "run", "--sd-arg", "noise_ofset=0.05"))
    assert result.exit_code == EXIT_INPUT
    lines = [x for x in result.output.splitlines() if "copymachine: error:" in x]
    assert len(lines) == 1 and "--sd-arg noise_ofset: train_network.py of sd-scripts" in lines[0] and "has no option --noise_ofset; closest: noise_offset" in lines[0]
    assert not fake_engine.calls()  # nothing ran
    own = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "run", "--sd-arg", "network_dim=32", "--dry-run"))
    assert own.exit_code == EXIT_INPUT and "copymachine sets network_dim itself; use the recipe key copy.network_dim" in own.output
    assert set(OWN_KEYS) >= {"clip_skip", "v_parameterization", "learning_rate", "mixed_precision", "resolution"}


def test_a_dry_run_checks_sd_args_as_the_run_does(fake_engine, tmp_path):
    """Issue 31: a dry run learns the script's options (once per install) and checks the keys against them."""
    result = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "run", "--sd-arg", "noise_offset=0.05", "--dry-run", "--no-copy-check"))
    assert result.exit_code == 0, result.output
    assert "not checked against" not in result.output
    result = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "run", "--sd-arg", "noise_ofset=0.05", "--dry-run", "--no-copy-check"))
    assert result.exit_code == EXIT_INPUT and "has no option --noise_ofset; closest: noise_offset" in result.output


def test_sd_arg_in_a_jobs_file_and_a_recipe_file(fake_engine, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[sd_args]\nmin_snr_gamma = 5\n", encoding="utf-8")
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        f"[[job]]\neffect = 'contrast'\nbase = {str(fake_engine.base)!r}\nout = 'run'\nresolution = 64\nmax-steps = 3\nno-copy-check = true\n"
        f"sd-arg = ['noise_offset=0.05']\nclip-skip = 2\nrecipe = 'r.toml'\nsd-scripts = {str(fake_engine.root)!r}\npython = {__import__('sys').executable!r}\n"
        f"tokenizer-cache-dir = {str(fake_engine.tokenizers)!r}\noffline = true\nset = ['generate.width=64', 'generate.height=64']\n",
        encoding="utf-8",
    )
    job = load_jobs(jobs)[0]
    assert job.options.sd_args == ("noise_offset=0.05",) and job.options.clip_skip == 2
    result = invoke(["queue", str(jobs)])
    assert result.exit_code == 0, result.output
    for call in trainings(fake_engine):
        assert call["config"]["noise_offset"] == 0.05 and call["config"]["min_snr_gamma"] == 5 and call["config"]["clip_skip"] == 2


def test_standalone_preview_renders_at_the_loras_clip_skip_and_the_models_prediction(fake_engine, small_lora, tmp_path):
    lora = small_lora(tmp_path / "k.safetensors")
    st = read_safetensors(lora)
    write_safetensors(lora, {k: st.read(k) for k in st.tensors}, {**st.metadata, "ss_clip_skip": "2"})
    model = with_markers(fake_engine.base, "v_pred")
    result = invoke(["preview", str(lora), "--model", str(model), "--strengths", "0,1", "--size", "64", "--steps", "2", "--no-leakage", *fake_engine.engine_args])
    assert result.exit_code == 0, result.output
    argv = gen_calls(fake_engine)[-1]["argv"]
    assert argv[argv.index("--clip_skip") + 1] == "2" and "--v_parameterization" in argv and "--zero_terminal_snr" not in argv


def test_the_training_toml_holds_model_options_and_sd_args_once_each(fake_engine, tmp_path):
    """Hostile string values round-trip; an --sd-arg that is also a profile key replaces it
    (sd-scripts flattens the tables: no key twice)."""
    import tomllib

    from copymachine.engine import Engine
    from copymachine.files import HashCache
    from copymachine.methods import COPY_MACHINE, Request, make_sources, plan
    from copymachine.pipeline import Pipeline
    from copymachine.profiles import gpu_profile
    from copymachine.progress import Reporter
    from copymachine.stages import Settings

    hostile = 'a "b" \'c\'\nd = 1\n[x]'
    recipe = apply_overrides(MEMO, {"model": {"clip_skip": 2}, "sd_args": {"gradient_checkpointing": False, "mode": hostile, "network_args": ["conv_dim=8"]}}, "test")
    settings = Settings(engine=Engine(root=fake_engine.root, python=__import__("sys").executable, commit=None), probe=None, profile=gpu_profile(True, low_vram=True))
    request = Request(method=COPY_MACHINE, base=fake_engine.base, family=SD1, effects=["contrast"], recipe=recipe, sources=make_sources([], []), out=tmp_path / "run", prediction=choose_prediction(inspect_base_model(fake_engine.base), v_pred=True))
    the_plan = plan(request, settings, HashCache(None))
    Pipeline(the_plan, settings, Reporter(), HashCache(None), argv=["test"]).run(dry_run=True)
    config = next((tmp_path / "_cache" / "copy-lora").rglob("*-training.toml"))
    data = tomllib.loads(config.read_text(encoding="utf-8"))
    keys = [k for table in data.values() for k in table]
    assert len(keys) == len(set(keys))
    flat = {k: v for table in data.values() for k, v in table.items()}
    assert flat["mode"] == hostile and flat["gradient_checkpointing"] is False and flat["network_args"] == ["conv_dim=8"]
    assert flat["clip_skip"] == 2 and flat["v_parameterization"] is True and flat["sdpa"] is True


def test_a_weak_edit_of_a_generated_original_is_refused_unless_overruled(fake_engine, tmp_path):
    result = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "run", "--amount", "0.05", "--no-copy-check"))
    assert result.exit_code == EXIT_INPUT, result.output
    line = next(x for x in result.output.splitlines() if "copymachine: error:" in x)
    assert "edit too weak: PSNR" in line and line.endswith("or pass --weak-edit-ok to train on it anyway")
    assert len(trainings(fake_engine)) <= 1  # at most the copy LoRA (it does not need the edit): no effect LoRA
    result = invoke(run_args(fake_engine, fake_engine.base, tmp_path / "run", "--amount", "0.05", "--no-copy-check",
                             "--weak-edit-ok"))
    assert result.exit_code == 0, result.output
