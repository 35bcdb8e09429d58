"""The recording fake of sd-scripts (tests/fake_sdscripts) behaves like the real scripts where it matters."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from PIL import Image

FAKE = Path(__file__).resolve().parent / "fake_sdscripts"
sys.path.insert(0, str(FAKE))

from _fake import common  # noqa: E402
from make_checkpoint import make_checkpoint  # noqa: E402

LAUNCH = ["-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "1", "--num_processes", "1",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
# the progress-line pattern a wrapper uses (sd-scripts-facts.md §5)
STEPS_RE = re.compile(r"^steps:\s+\d+%\|.*\|\s*(\d+)/(\d+)\s*\[(.*?)<(.*?),\s*([\d.]+)(it/s|s/it)(?:,\s*(.*))?\]")


def fake_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPYMACHINE_FAKE")}
    env["PYTHONPATH"] = str(FAKE)
    env["COPYMACHINE_FAKE_LOG"] = str(tmp_path / "fake-log.jsonl")
    env.update(extra)
    return env


def run_script(tmp_path, script, *args, launch=False, **env):
    """Run a fake script as the runner does (a subprocess; through the fake accelerate launch with launch=True),
    or, when nothing needs a process of its own, in this process with runpy (same code, ~0.2 s faster a call)."""
    argv = [str(a) for a in args]
    if launch or "die-mid-write" in env.get("COPYMACHINE_FAKE_FAIL", ""):
        cmd = [sys.executable, *LAUNCH, str(FAKE / script)] if launch else [sys.executable, str(FAKE / script)]
        return subprocess.run(cmd + argv, cwd=FAKE, env=fake_env(tmp_path, **env), capture_output=True, text=True, timeout=60)
    return run_in_process(tmp_path, script, argv, env)


def run_in_process(tmp_path, script, argv, env):
    import contextlib
    import io
    import runpy
    from types import SimpleNamespace

    saved_env, saved_argv, saved_cwd = dict(os.environ), list(sys.argv), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.environ.clear()
        os.environ.update(fake_env(tmp_path, **env))
        sys.argv = [str(FAKE / script), *argv]
        os.chdir(FAKE)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(FAKE / script), run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def records(tmp_path) -> list[dict]:
    p = tmp_path / "fake-log.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


@pytest.fixture
def setup(tmp_path):
    """A dir with 'ずんだ 画像' (one 32 px PNG + .txt caption), a fake SD1.5 checkpoint, a tokenizer dir, TOMLs."""
    base = make_checkpoint(tmp_path / "base model.safetensors", family="sd15")
    (tmp_path / "tok" / "openai_clip-vit-large-patch14").mkdir(parents=True)
    img = tmp_path / "ずんだ 画像"
    img.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(img / "a.png")
    (img / "a.txt").write_text("a photo of a cat\n", encoding="utf-8")

    def write(name="train", image_dir=img, dataset_extra=None, **training):
        ds = {"general": {"shuffle_caption": True, "keep_tokens": 0},
              "datasets": [{"resolution": 32, "batch_size": 1, **(dataset_extra or {}),
                            "subsets": [{"image_dir": str(image_dir), "num_repeats": 2, "caption_extension": ".txt"}]}]}
        (tmp_path / f"{name}-ds.toml").write_bytes(tomli_w.dumps(ds).encode())
        cfg = {"model": {"pretrained_model_name_or_path": str(base), "tokenizer_cache_dir": str(tmp_path / "tok")},
               "network": {"network_module": "networks.lora", "network_dim": 8, "network_alpha": 4.0},
               "training": {"dataset_config": str(tmp_path / f"{name}-ds.toml"), "optimizer_type": "AdamW", "learning_rate": 1e-4,
                            "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 1, "max_train_steps": 3,
                            "output_dir": str(tmp_path / "out"), "output_name": name, "save_model_as": "safetensors",
                            "save_precision": "fp16", "seed": 1, **training}}
        p = tmp_path / f"{name}.toml"
        p.write_bytes(tomli_w.dumps(cfg).encode())
        return p

    return {"base": base, "img": img, "write": write, "tmp": tmp_path}


# ---- argv ------------------------------------------------------------------------------------------


def test_unknown_option_and_bad_choice_exit_2(tmp_path):
    r = run_script(tmp_path, "networks/resize_lora.py", "--model", "x", "--save_to", "y.safetensors", "--new_dim", "8")
    assert r.returncode == 2 and "unrecognized arguments: --new_dim 8" in r.stderr
    r = run_script(tmp_path, "networks/resize_lora.py", "--save_precision", "fp8", "--save_to", "y.safetensors")
    assert r.returncode == 2 and "invalid choice: 'fp8'" in r.stderr
    assert [x["exit_code"] for x in records(tmp_path)] == [2, 2]


def test_launch_options_checked_and_warning_without_them(tmp_path):
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--no_such_flag", "x.py"], cwd=FAKE,
                       env=fake_env(tmp_path), capture_output=True, text=True)
    assert r.returncode == 2
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", str(FAKE / "networks" / "resize_lora.py"), "--bogus"],
                       cwd=FAKE, env=fake_env(tmp_path), capture_output=True, text=True)
    assert "had defaults used instead" in r.stderr and "`--num_processes` was set to a value of `0`" in r.stderr
    assert r.returncode == 1 and "subprocess.CalledProcessError: Command" in r.stderr and "returned non-zero exit status 2." in r.stderr


# ---- training --------------------------------------------------------------------------------------


def test_training_writes_a_real_shaped_lora_and_records_the_call(setup):
    tmp = setup["tmp"]
    cfg = setup["write"]()
    r = run_script(tmp, "train_network.py", "--config_file", cfg.with_suffix(""), "--learning_rate", "0.0003", launch=True)
    assert r.returncode == 0, r.stderr
    out = tmp / "out" / "train.safetensors"
    tensors, meta = common.load_safetensors(out)
    assert len(tensors) == 3 * (72 + 192)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert tensors[key + ".lora_down.weight"].shape[0] == 8 and tensors[key + ".lora_up.weight"].shape[1] == 8
    assert float(tensors[key + ".alpha"]) == 4.0 and common.file_dtype_name(out) == "F16"
    assert "lora_te_text_model_encoder_layers_11_mlp_fc2.lora_up.weight" in tensors
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "4.0" and meta["ss_learning_rate"] == "0.0003"  # CLI wins
    assert meta["ss_steps"] == "3" and meta["ss_lr_scheduler"] == "constant_with_warmup" and meta["ss_base_model_version"] == "sd_v1"
    assert json.loads(meta["ss_datasets"])[0]["subsets"][0]["num_repeats"] == 2
    assert meta["ss_sd_model_name"] == "base model.safetensors" and meta["modelspec.resolution"] == "512x512"
    assert "total optimization steps / 学習ステップ数: 3" in r.stdout and "num epochs / epoch数: 2" in r.stdout
    lines = [ln for ln in re.split(r"[\r\n]", r.stderr) if ln.startswith("steps:")]
    assert lines[0].startswith("steps:   0%|          | 0/3 [00:00<?, ?it/s]")  # as the real first bar (no rate yet)
    parsed = [STEPS_RE.match(ln) for ln in lines[1:]]
    assert all(parsed) and parsed[-1].group(1) == "3" and "avr_loss=" in parsed[-1].group(7)
    (rec,) = records(tmp)
    assert rec["script"] == "train_network.py" and rec["exit_code"] == 0 and rec["outputs"] == [str(out)]
    assert rec["config"]["network_dim"] == 8 and rec["dataset_config"]["datasets"][0]["resolution"] == 32
    assert rec["args"]["learning_rate"] == 0.0003 and rec["launcher"]["options"]["num_processes"] == 1


def test_training_output_depends_on_the_image(setup):
    tmp = setup["tmp"]
    assert run_script(tmp, "train_network.py", "--config_file", setup["write"]("one")).returncode == 0
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(setup["img"] / "a.png")
    assert run_script(tmp, "train_network.py", "--config_file", setup["write"]("two")).returncode == 0
    a, _ = common.load_safetensors(tmp / "out" / "one.safetensors")
    b, _ = common.load_safetensors(tmp / "out" / "two.safetensors")
    k = "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"
    assert a[k].shape == b[k].shape and not np.array_equal(a[k], b[k])


def test_base_weights_shift_the_trained_network_unless_the_launcher_undoes_it(setup):
    """What sd-scripts' --base_weights does to the network trained after it (code: networks/lora.py
    `target_modules += ...` on the class list, LoRAModule's init drawing from torch's RNG), and
    that copymachine's launcher (copymachine/sd_side/base_weights_launcher.py) undoes both."""
    from copymachine.stages.train_lora import LAUNCHER

    tmp = setup["tmp"]
    assert run_script(tmp, "train_network.py", "--config_file", setup["write"]("copy")).returncode == 0
    copy = tmp / "out" / "copy.safetensors"
    assert run_script(tmp, "train_network.py", "--config_file", setup["write"]("plain"), launch=True).returncode == 0
    merged = {"base_weights": [str(copy)], "base_weights_multiplier": [1.0]}
    for name, launcher in (("bare", []), ("launched", [str(LAUNCHER)])):
        cmd = [sys.executable, *LAUNCH, *launcher, str(FAKE / "train_network.py"), "--config_file", str(setup["write"](name, **merged))]
        r = subprocess.run(cmd, cwd=FAKE, env=fake_env(tmp), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    plain, bare, launched = records(tmp)[-3:]
    assert plain["unet_target_modules"] == ["Transformer2DModel"] and plain["rng_draws_before_init"] == 0
    assert bare["unet_target_modules"] == ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"] and bare["rng_draws_before_init"] == 1
    assert bare["base_weight_merges"] == [[str(copy), 1.0, "weight_dtype"]]
    assert launched["unet_target_modules"] == ["Transformer2DModel"] and launched["rng_draws_before_init"] == 0
    assert launched["base_weight_merges"] == [[str(copy), 1.0, "torch.float32"]]
    lora = {n: common.load_safetensors(tmp / "out" / f"{n}.safetensors")[0] for n in ("plain", "bare", "launched")}
    k = "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"
    assert np.array_equal(lora["plain"][k], lora["launched"][k]) and not np.array_equal(lora["plain"][k], lora["bare"][k])


def test_no_images_exits_0_without_output(setup):
    tmp = setup["tmp"]
    (tmp / "empty").mkdir()
    r = run_script(tmp, "train_network.py", "--config_file", setup["write"](image_dir=tmp / "empty"), launch=True)
    assert r.returncode == 0 and "No data found." in r.stderr
    assert not (tmp / "out" / "train.safetensors").exists()


def test_unknown_dataset_key_and_bad_resolution_and_constant_warmup_fail(setup):
    tmp = setup["tmp"]
    r = run_script(tmp, "train_network.py", "--config_file", setup["write"]("a", dataset_extra={"reslution": 32}))
    assert r.returncode == 1 and "extra keys not allowed @ data['datasets'][0]['reslution']" in r.stderr
    r = run_script(tmp, "train_network.py", "--config_file", setup["write"]("b", resolution=32))
    assert r.returncode == 1 and "AttributeError: 'int' object has no attribute 'split'" in r.stderr
    r = run_script(tmp, "train_network.py", "--config_file", setup["write"]("c", lr_scheduler="constant"))
    assert r.returncode == 1 and "does not require `num_warmup_steps`" in r.stderr
    r = run_script(tmp, "train_network.py", "--config_file", tmp / "missing.toml")
    assert r.returncode == 1 and "not found." in r.stderr


def test_sdxl_training_uses_te1_te2_names(setup):
    tmp = setup["tmp"]
    xl = make_checkpoint(tmp / "xl.safetensors", family="sdxl")
    (tmp / "tok" / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k").mkdir()
    cfg = setup["write"]("xl", pretrained_model_name_or_path=str(xl))
    r = run_script(tmp, "sdxl_train_network.py", "--config_file", cfg, "--pretrained_model_name_or_path", xl)
    assert r.returncode == 0, r.stderr
    t, meta = common.load_safetensors(tmp / "out" / "xl.safetensors")
    assert {k.split("_")[1] for k in t} == {"te1", "te2", "unet"} and meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2.lora_down.weight" in t


# ---- failure injection -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["exit1", "oom", "no-output", "nan", "die-mid-write"])
def test_failure_modes(setup, mode):
    tmp = setup["tmp"]
    r = run_script(tmp, "train_network.py", "--config_file", setup["write"](), launch=True, COPYMACHINE_FAKE_FAIL=f"train_network:{mode}")
    out = tmp / "out" / "train.safetensors"
    if mode in ("exit1", "oom"):
        assert r.returncode == 1 and "Traceback" in r.stderr and not out.exists()
        assert mode != "oom" or "CUDA out of memory" in r.stderr
    elif mode == "no-output":
        assert r.returncode == 0 and not out.exists()
    elif mode == "nan":
        assert r.returncode == 0 and "avr_loss=nan" in r.stderr
        t, _ = common.load_safetensors(out)
        assert all(np.isnan(v).all() for v in t.values())
    else:  # killed while writing: the launcher reports the signal; half a file is left at the path
        assert r.returncode == 1 and "died with <Signals.SIGKILL: 9>" in r.stderr
        with pytest.raises(ValueError):
            common.load_safetensors(out)
    assert records(tmp)[-1]["injected_failure"] == mode


def test_failure_on_nth_call_only(tmp_path):
    lora = _lora_file(tmp_path / "a.safetensors", seed=1)
    env = {"COPYMACHINE_FAKE_FAIL": "resize_lora:exit1:2"}
    codes = [run_script(tmp_path, "networks/resize_lora.py", "--model", lora, "--new_rank", "2", "--save_to", tmp_path / f"r{i}.safetensors", **env).returncode for i in range(3)]
    assert codes == [0, 1, 0]
    assert [r["call"] for r in records(tmp_path)] == [1, 2, 3]


def test_step_seconds_slows_training(setup):
    import time

    t0 = time.time()
    r = run_script(setup["tmp"], "train_network.py", "--config_file", setup["write"](), COPYMACHINE_FAKE_STEP_SECONDS="0.1")
    assert r.returncode == 0 and time.time() - t0 >= 0.3


# ---- LoRA math -------------------------------------------------------------------------------------


def _lora_file(path, seed, rank=4, alpha=2.0, out=6, inp=5):
    rng = np.random.default_rng(seed)
    t = {"lora_unet_x.lora_down.weight": rng.normal(size=(rank, inp)).astype(np.float32),
         "lora_unet_x.lora_up.weight": rng.normal(size=(out, rank)).astype(np.float32),
         "lora_unet_x.alpha": np.array(alpha, np.float32)}
    Path(path).write_bytes(common.serialize_safetensors(t, {"ss_v2": "False", "ss_base_model_version": "sd_v1", "ss_training_comment": "hi"}))
    return path


def _dw(t, name="lora_unet_x"):
    d, u, a = t[name + ".lora_down.weight"], t[name + ".lora_up.weight"], float(t[name + ".alpha"])
    return u @ d * a / d.shape[0]


def test_svd_merge_is_the_signed_difference(tmp_path):
    a, b = (_lora_file(tmp_path / f"{n}.safetensors", seed, out=24, inp=20) for n, seed in (("a", 1), ("b", 2)))
    r = run_script(tmp_path, "networks/svd_merge_lora.py", "--models", a, b, "--ratios", "1", "-1", "--new_rank", "8",
                   "--save_to", tmp_path / "d.safetensors", "--precision", "float")
    assert r.returncode == 0, r.stderr
    d, meta = common.load_safetensors(tmp_path / "d.safetensors")
    ta, _ = common.load_safetensors(a)
    tb, _ = common.load_safetensors(b)
    # rank 8 holds ΔA − ΔB (4 + 4) exactly; only the 0.99-quantile clamp separates the result from it
    got, want = _dw(d).ravel(), (_dw(ta) - _dw(tb)).ravel()
    assert np.corrcoef(got, want)[0, 1] > 0.95
    assert d["lora_unet_x.alpha"].dtype == np.int64 and int(d["lora_unet_x.alpha"]) == 8
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "8" and json.loads(meta["ss_network_args"]) == {"conv_dim": 8, "conv_alpha": 8}


def test_resize_keeps_scale_and_truncates(tmp_path):
    a = _lora_file(tmp_path / "a.safetensors", 3, rank=4, alpha=2.0)
    r = run_script(tmp_path, "networks/resize_lora.py", "--model", a, "--new_rank", "2", "--save_precision", "fp16", "--save_to", tmp_path / "r.safetensors")
    assert r.returncode == 0, r.stderr
    t, meta = common.load_safetensors(tmp_path / "r.safetensors")
    assert float(t["lora_unet_x.alpha"]) == 1.0  # 2.0 / 4 * 2
    assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == "1.0"
    assert meta["ss_training_comment"] == "dimension is resized from 4 to 2; hi"
    ta, _ = common.load_safetensors(a)
    U, S, Vh = np.linalg.svd(_dw(ta))
    best2 = (U[:, :2] * S[:2]) @ Vh[:2]
    assert np.allclose(_dw(t), best2, atol=2e-2 * np.abs(best2).max())


def test_lora_to_lora_merge_is_not_emulated(tmp_path):
    a = _lora_file(tmp_path / "a.safetensors", 4)
    r = run_script(tmp_path, "networks/merge_lora.py", "--models", a, "--ratios", "-0.5", "--save_to", tmp_path / "m.safetensors")
    assert r.returncode == 3 and "not emulated" in r.stderr and not (tmp_path / "m.safetensors").exists()


def test_merge_into_checkpoint_adds_delta_and_extract_recovers_it(setup):
    tmp = setup["tmp"]
    assert run_script(tmp, "train_network.py", "--config_file", setup["write"]()).returncode == 0
    lora = tmp / "out" / "train.safetensors"
    r = run_script(tmp, "networks/merge_lora.py", "--sd_model", setup["base"], "--models", lora, "--ratios", "1",
                   "--save_to", tmp / "merged.safetensors", "--precision", "float", "--save_precision", "float")
    assert r.returncode == 0, r.stderr
    base, _ = common.load_safetensors(setup["base"])
    merged, meta = common.load_safetensors(tmp / "merged.safetensors")
    assert merged.keys() == base.keys() and meta["modelspec.merged_from"] == "base model, train"
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    lt, _ = common.load_safetensors(lora)
    expect = base[key] + _dw(lt, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")
    assert np.allclose(merged[key], expect, atol=1e-3)
    r = run_script(tmp, "networks/extract_lora_from_models.py", "--model_org", setup["base"], "--model_tuned", tmp / "merged.safetensors",
                   "--dim", "8", "--save_to", tmp / "sub dir" / "x.safetensors")
    assert r.returncode == 0, r.stderr
    x, xmeta = common.load_safetensors(tmp / "sub dir" / "x.safetensors")
    assert xmeta["ss_network_dim"] == "8" and xmeta["ss_network_alpha"] == "8.0"
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in x


# ---- gen_img ---------------------------------------------------------------------------------------


def test_gen_img_prompt_lines_and_seed_crash(tmp_path):
    ck = make_checkpoint(tmp_path / "b.safetensors")
    lora = _lora_file(tmp_path / "l.safetensors", 5)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat --d 1 --am 1.0 --f p.png\n# skipped\na cat --d 1 --am -1.0 --f m.png\na dog --w 48 --h 40 --d 9\n", encoding="utf-8")
    r = run_script(tmp_path, "gen_img.py", "--ckpt", ck, "--v1", "--outdir", tmp_path / "g", "--W", "32", "--H", "32", "--from_file", prompts,
                   "--network_module", "networks.lora", "--network_weights", lora)
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert files[1:] == ["m.png", "p.png"] and re.fullmatch(r"im_\d{14}_000_9\.png", files[0])  # real default name
    p, m = (np.asarray(Image.open(tmp_path / "g" / n)) for n in ("p.png", "m.png"))
    assert p.shape == (32, 32, 3) and not np.array_equal(p, m)
    assert Image.open(tmp_path / "g" / files[0]).size == (48, 40)
    one = tmp_path / "one.txt"
    one.write_text("a cat\n")
    r = run_script(tmp_path, "gen_img.py", "--ckpt", ck, "--v1", "--outdir", tmp_path / "g2", "--seed", "3", "--from_file", one)
    assert r.returncode == 1 and "AttributeError: 'tuple' object has no attribute 'seed'" in r.stderr


def test_fake_checkpoints_have_real_key_names_and_stay_small(tmp_path):
    for family, n, probe in (("sd15", 1130, "cond_stage_model.transformer.text_model.final_layer_norm.weight"),
                             ("sd2", 1228, "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"),
                             ("sdxl", 2514, "conditioner.embedders.1.model.text_projection")):
        p = make_checkpoint(tmp_path / f"{family}.safetensors", family=family)
        header, _ = common.read_header(p)
        assert len(header) - ("__metadata__" in header) == n and probe in header
        assert p.stat().st_size < 5_000_000
