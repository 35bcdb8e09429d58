"""The fake sd-scripts' FLUX.1 / Chroma / SD3 / SD3.5 / Anima scripts and layout-only checkpoints
(tests/fake_sdscripts), and copymachine's family detection against the real layouts they carry."""

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

from copymachine.families import FAMILIES, detect_family, embedded_files, lora_family
from copymachine.lorafile import read_safetensors

FAKE = Path(__file__).resolve().parent / "fake_sdscripts"
sys.path.insert(0, str(FAKE))

from _fake import common  # noqa: E402
from _fake.checkpoint import LAYOUTS  # noqa: E402
from make_checkpoint import make_checkpoint, make_model_file  # noqa: E402
from test_fake_sdscripts import LAUNCH, fake_env, records, run_script  # noqa: E402

BASE_VERSION = {"flux-dev": "flux1", "flux-schnell": "flux1", "chroma": "chroma", "sd3-medium": "medium",
                "sd3-5-large": "5-large", "sd3-5-medium": "5-medium", "anima": "anima"}
SCRIPT = {"flux": "flux_train_network.py", "chroma": "flux_train_network.py", "sd3": "sd3_train_network.py",
          "anima": "anima_train_network.py"}


def kind(family: str) -> str:
    return family.split("-")[0] if not family.startswith("sd3") else "sd3"


# ---- layouts and layout-only checkpoints ------------------------------------------------------------------


@pytest.mark.parametrize("family", LAYOUTS)
def test_layout_only_checkpoint_is_sparse_and_detected(tmp_path, family):
    path = make_checkpoint(tmp_path / f"{family}.safetensors", family=family)
    st = os.stat(path)
    f = read_safetensors(path)
    assert st.st_size > 1.5e9 and st.st_blocks * 512 < 2 * 2**20  # GBs long, a few blocks on disk
    last = max(v["data_offsets"][1] for k, v in common.read_header(path)[0].items() if k != "__metadata__")
    assert st.st_size == common.read_header(path)[1] + last
    found, description = detect_family(list(f.tensors))
    assert found is not None and found.name == family, description
    assert not embedded_files(found, set(f.tensors))


def test_layouts_hold_the_keys_that_tell_the_families_apart():
    keys = {name: set(common.load_json(f"layout-{name}.json")["keys"]) for name in LAYOUTS}
    assert "double_blocks.0.img_attn.qkv.weight" in keys["flux-dev"] and "guidance_in.in_layer.bias" in keys["flux-dev"]
    assert keys["flux-dev"] - keys["flux-schnell"] == {k for k in keys["flux-dev"] if k.startswith("guidance_in.")}
    assert any(k.startswith("distilled_guidance_layer.") for k in keys["chroma"])
    p = "model.diffusion_model.joint_blocks.0."
    assert f"{p}context_block.attn.ln_k.weight" in keys["sd3-5-large"] and f"{p}context_block.attn.ln_k.weight" not in keys["sd3-medium"]
    assert f"{p}x_block.attn2.ln_k.weight" in keys["sd3-5-medium"] and f"{p}x_block.attn2.ln_k.weight" not in keys["sd3-5-large"]
    assert all(any(k.startswith("first_stage_model.") for k in keys[n]) for n in LAYOUTS if n.startswith("sd3"))
    assert {"net.llm_adapter.out_proj.weight", "net.blocks.0.self_attn.q_proj.weight"} <= keys["anima"]
    shapes = common.load_json("layout-flux-dev.json")["keys"]
    assert shapes["double_blocks.0.img_attn.qkv.weight"] == ["BF16", [9216, 3072]]


@pytest.mark.parametrize("family", ["sd3-medium", "sd3-5-large", "sd3-5-medium"])
def test_sd3_with_embedded_text_encoders(tmp_path, family):
    path = make_checkpoint(tmp_path / "incl-clips.safetensors", family=family, text_encoders=True)
    keys = set(read_safetensors(path).tensors)
    found, _ = detect_family(keys)
    assert found.name == family and embedded_files(found, keys) == {"clip_l", "clip_g", "t5xxl"}


def test_tiny_variant_and_model_files(tmp_path):
    tiny = make_checkpoint(tmp_path / "tiny.safetensors", family="anima", layout_only=False, max_dim=4)
    tensors, _ = common.load_safetensors(tiny)
    assert "net.llm_adapter.out_proj.weight" in tensors and os.path.getsize(tiny) < 2**20
    for name in ("clip_l", "clip_g", "t5xxl", "ae", "qwen3", "vae"):
        assert read_safetensors(make_model_file(tmp_path / f"{name}.safetensors", name)).tensors
    r = subprocess.run([sys.executable, str(FAKE / "make_checkpoint.py"), str(tmp_path / "cli.safetensors"), "--family",
                        "flux-schnell"], capture_output=True, text=True, check=True)
    assert "guidance_in.in_layer.bias" not in read_safetensors(tmp_path / "cli.safetensors").tensors, r.stdout


# ---- options -----------------------------------------------------------------------------------------------

NEW_SCRIPTS = ["flux_train_network.py", "sd3_train_network.py", "anima_train_network.py", "flux_minimal_inference.py",
               "sd3_minimal_inference.py", "anima_minimal_inference.py"]


def test_options_of_the_new_scripts_are_the_real_ones():
    scripts = common.options()["scripts"]
    assert set(NEW_SCRIPTS) <= set(scripts)
    flux = scripts["flux_train_network.py"]["prog_options"]
    assert {"--clip_l", "--t5xxl", "--ae", "--model_type", "--guidance_scale", "--apply_t5_attn_mask"} <= set(flux)
    assert flux["--model_type"]["choices"] == ["flux", "chroma"]
    assert {"--clip_g", "--t5xxl", "--vae", "--weighting_scheme"} <= set(scripts["sd3_train_network.py"]["prog_options"])
    assert {"--qwen3", "--vae"} <= set(scripts["anima_train_network.py"]["prog_options"])
    anima = scripts["anima_minimal_inference.py"]["prog_options"]
    assert anima["--text_encoder"]["required"] and anima["--save_path"]["required"] and "--qwen3" not in anima
    assert scripts["flux_minimal_inference.py"]["prog_options"]["--lora_weights"]["nargs"] == "*"
    assert scripts["sd3_minimal_inference.py"]["prog_options"]["--ckpt_path"]["required"]


@pytest.mark.parametrize(("script", "argv", "message"), [
    ("flux_minimal_inference.py", ["--ckpt_path", "x", "--lora_multiplier", "1"], "unrecognized arguments: --lora_multiplier"),
    ("sd3_minimal_inference.py", ["--prompt", "a"], "the following arguments are required: --ckpt_path"),
    ("anima_minimal_inference.py", ["--dit", "x", "--text_encoder", "t", "--qwen3", "q", "--save_path", "o"], "unrecognized arguments: --qwen3"),
    ("flux_train_network.py", ["--model_type", "sdxl"], "invalid choice: 'sdxl'"),
    ("anima_train_network.py", ["--clip_l", "x"], "unrecognized arguments: --clip_l"),
])
def test_unknown_options_exit_2(tmp_path, script, argv, message):
    r = run_script(tmp_path, script, *argv)
    assert r.returncode == 2 and message in r.stderr
    assert records(tmp_path)[-1]["exit_code"] == 2


# ---- training ----------------------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path):
    """Images, tokenizer folders, the other files, and a TOML writer for a family's training."""
    (tmp_path / "img").mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "img" / "a.png")
    (tmp_path / "img" / "a.txt").write_text("a photo of a cat\n", encoding="utf-8")
    for tok in ("openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k", "google_t5-v1_1-xxl"):
        (tmp_path / "tok" / tok).mkdir(parents=True)
    files = {n: make_model_file(tmp_path / "files" / f"{n}.safetensors", n) for n in
             ("clip_l", "clip_g", "t5xxl", "ae", "qwen3", "vae")}

    def write(family: str, name: str = "train", shuffle: bool = False, drop: tuple = (), **training) -> Path:
        base = tmp_path / f"{family}.safetensors"
        if not base.exists():
            make_checkpoint(base, family=family)
        fam = FAMILIES[family]
        model = {"pretrained_model_name_or_path": str(base), "tokenizer_cache_dir": str(tmp_path / "tok"),
                 **{m.option: str(files[m.name]) for m in fam.needs if m.name not in drop}}
        ds = {"general": {"shuffle_caption": shuffle}, "datasets": [{"resolution": 64, "batch_size": 1, "subsets": [
            {"image_dir": str(tmp_path / "img"), "num_repeats": 2, "caption_extension": ".txt"}]}]}
        (tmp_path / f"{name}-ds.toml").write_bytes(tomli_w.dumps(ds).encode())
        opts = {k: v for k, v in fam.training_options.items() if k not in drop}
        cfg = {"model": model, "network": {"network_module": fam.network_module, "network_dim": 8, "network_alpha": 4.0},
               "training": {"dataset_config": str(tmp_path / f"{name}-ds.toml"), "learning_rate": 1e-4,
                            "max_train_steps": 3, "output_dir": str(tmp_path / "out"), "output_name": name,
                            "save_model_as": "safetensors", "save_precision": "bf16", "seed": 1, **opts, **training}}
        (tmp_path / f"{name}.toml").write_bytes(tomli_w.dumps(cfg).encode())
        return tmp_path / f"{name}.toml"

    return {"tmp": tmp_path, "write": write, "files": files}


@pytest.mark.parametrize("family", LAYOUTS)
def test_training_writes_the_family_lora(world, family):
    tmp = world["tmp"]
    r = run_script(tmp, FAMILIES[family].train_script, "--config_file", world["write"](family))
    assert r.returncode == 0, r.stderr
    tensors, meta = common.load_safetensors(tmp / "out" / "train.safetensors")
    module_file = {"flux-dev": "flux", "flux-schnell": "flux"}.get(family, family)
    names = {m["name"] for m in common.load_json(f"lora_modules_{module_file}.json")["modules"]}
    assert {k.split(".")[0] for k in tensors} == names and len(tensors) == 3 * len(names)
    down = next(v for k, v in tensors.items() if k.endswith(".lora_down.weight"))
    assert down.shape[0] == 8 and common.file_dtype_name(tmp / "out" / "train.safetensors") == "BF16"
    assert meta["ss_base_model_version"] == BASE_VERSION[family] and meta["ss_network_module"] == FAMILIES[family].network_module
    assert "total optimization steps / 学習ステップ数: 3" in r.stdout and "avr_loss=" in r.stderr
    found = lora_family(list(tensors), meta)
    assert found is not None and found.base_model_version == BASE_VERSION[family]
    (rec,) = records(tmp)
    assert rec["exit_code"] == 0 and rec["model_version"] == BASE_VERSION[family]


def test_flux_metadata_and_schnell_spec(world):
    tmp = world["tmp"]
    assert run_script(tmp, "flux_train_network.py", "--config_file", world["write"]("flux-schnell")).returncode == 0
    _, meta = common.load_safetensors(tmp / "out" / "train.safetensors")
    assert meta["modelspec.architecture"] == "flux-1-schnell/lora" and meta["ss_model_type"] == "flux"
    assert meta["ss_timestep_sampling"] == "flux_shift" and meta["ss_guidance_scale"] == "1.0"


@pytest.mark.parametrize(("family", "drop", "extra", "message"), [
    ("flux-dev", ("ae",), {}, "'NoneType' object cannot be converted"),
    ("flux-dev", ("clip_l",), {}, "'NoneType' object cannot be converted"),
    ("chroma", ("apply_t5_attn_mask",), {}, "apply_t5_attn_mask must be True for Chroma"),
    ("anima", ("qwen3",), {}, "ValueError: Either qwen3_tokenizer or qwen3_path must be provided"),
    ("anima", ("vae",), {}, "'NoneType' object cannot be converted"),
    ("sd3-5-large", ("clip_g",), {}, "AttributeError: 'NoneType' object has no attribute 'eval'"),
    ("flux-dev", (), {"shuffle": True}, "when caching Text Encoder output"),
])
def test_training_fails_as_the_real_one(world, family, drop, extra, message):
    tmp = world["tmp"]
    r = run_script(tmp, FAMILIES[family].train_script, "--config_file", world["write"](family, drop=drop, **extra))
    assert r.returncode == 1 and message in r.stderr
    assert not (tmp / "out" / "train.safetensors").exists()


def test_sd3_embedded_text_encoders_need_no_files(world):
    tmp = world["tmp"]
    make_checkpoint(tmp / "sd3-5-medium.safetensors", family="sd3-5-medium", text_encoders=True)
    r = run_script(tmp, "sd3_train_network.py", "--config_file", world["write"]("sd3-5-medium", drop=("clip_l", "clip_g", "t5xxl")))
    assert r.returncode == 0 and "clip_g is included in the checkpoint" in r.stderr


def test_flux_training_without_a_tokenizer_fails_offline(world):
    tmp = world["tmp"]
    (tmp / "tok" / "google_t5-v1_1-xxl").rmdir()
    r = run_script(tmp, "flux_train_network.py", "--config_file", world["write"]("chroma"))
    assert r.returncode == 1 and "Can't load tokenizer for 'google/t5-v1_1-xxl'" in r.stderr


@pytest.mark.parametrize("family", ["flux-dev", "anima"])
def test_base_weights_launcher_with_the_family_network_module(world, family):
    """copymachine's launcher `launcher.py NETWORK_MODULE SCRIPT --config_file X` wraps the family's network
    module; the LoRA trained over a --base_weights merge starts from the same init as one without."""
    from copymachine.stages.train_lora import LAUNCHER

    tmp, fam = world["tmp"], FAMILIES[family]
    assert run_script(tmp, fam.train_script, "--config_file", world["write"](family, "copy")).returncode == 0
    copy = tmp / "out" / "copy.safetensors"
    merged = {"base_weights": [str(copy)], "base_weights_multiplier": [1.0]}
    for name, launcher in (("plain", []), ("bare", []), ("launched", [str(LAUNCHER), fam.network_module])):
        cfg = world["write"](family, name, **(merged if name != "plain" else {}))
        cmd = [sys.executable, *LAUNCH, *launcher, str(FAKE / fam.train_script), "--config_file", str(cfg)]
        r = subprocess.run(cmd, cwd=FAKE, env=fake_env(tmp), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    plain, bare, launched = records(tmp)[-3:]
    assert plain["rng_draws_before_init"] == 0 and not plain["base_weight_merges"]
    assert bare["rng_draws_before_init"] == 1 and launched["rng_draws_before_init"] == 0
    assert launched["base_weight_merges"] == [[str(copy), 1.0, "torch.float32"]]
    assert "copymachine base_weights launcher: merging" in r.stdout
    lora = {n: common.load_safetensors(tmp / "out" / f"{n}.safetensors")[0] for n in ("plain", "bare", "launched")}
    k = next(k for k in lora["plain"] if k.endswith(".lora_down.weight"))
    assert np.array_equal(lora["plain"][k], lora["launched"][k]) and not np.array_equal(lora["plain"][k], lora["bare"][k])


def test_lora_tools_work_on_the_new_keys(world):
    tmp = world["tmp"]
    for name in ("a", "b"):
        assert run_script(tmp, "flux_train_network.py", "--config_file", world["write"]("flux-dev", name, seed=ord(name))).returncode == 0
    a, b = tmp / "out" / "a.safetensors", tmp / "out" / "b.safetensors"
    r = run_script(tmp, "networks/svd_merge_lora.py", "--models", a, b, "--ratios", "1", "-1", "--new_rank", "4",
                   "--save_to", tmp / "diff.safetensors", "--save_precision", "float")
    assert r.returncode == 0, r.stderr
    diff, _ = common.load_safetensors(tmp / "diff.safetensors")
    assert {k.split(".")[0] for k in diff} == {k.split(".")[0] for k in common.load_safetensors(a)[0]}
    r = run_script(tmp, "networks/resize_lora.py", "--model", a, "--new_rank", "2", "--save_to", tmp / "small.safetensors",
                   "--save_precision", "bf16")
    assert r.returncode == 0, r.stderr
    small, meta = common.load_safetensors(tmp / "small.safetensors")
    assert small["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0] == 2
    assert meta["ss_base_model_version"] == "flux1"


# ---- rendering ---------------------------------------------------------------------------------------------


def render(tmp, script, *argv, **env):
    r = run_script(tmp, script, *argv, **env)
    return r, (records(tmp) or [{}])[-1]


def test_flux_renders_one_png_named_by_the_second(world):
    tmp, files = world["tmp"], world["files"]
    base = make_checkpoint(tmp / "flux.safetensors", family="flux-dev")
    assert run_script(tmp, "flux_train_network.py", "--config_file", world["write"]("flux-dev")).returncode == 0
    lora = tmp / "out" / "train.safetensors"
    common_args = ["--ckpt_path", base, "--clip_l", files["clip_l"], "--t5xxl", files["t5xxl"], "--ae", files["ae"],
                   "--prompt", "a cat", "--seed", "7", "--steps", "4", "--width", "100", "--height", "64", "--dtype", "float32"]
    r, rec = render(tmp, "flux_minimal_inference.py", *common_args, "--output_dir", tmp / "r1", "--lora_weights", f"{lora};1.0")
    assert r.returncode == 0, r.stderr
    (png,) = (tmp / "r1").iterdir()
    assert re.fullmatch(r"\d{8}_\d{6}\.png", png.name) and Image.open(png).size == (112, 64)  # 16·ceil(100/16)
    assert rec["images"][0]["network_mul"] == [1.0] and rec["images"][0]["seed"] == 7
    r, _ = render(tmp, "flux_minimal_inference.py", *common_args, "--output_dir", tmp / "r2", "--lora_weights", f"{lora};2.0")
    assert r.returncode == 0 and not np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(next((tmp / "r2").iterdir()))))
    r, _ = render(tmp, "flux_minimal_inference.py", *common_args[:4], *common_args[6:], "--output_dir", tmp / "r3")
    assert r.returncode == 1 and not (tmp / "r3").exists()  # no --ae


def test_flux_refuses_a_lora_of_another_family(world):
    tmp, files = world["tmp"], world["files"]
    base = make_checkpoint(tmp / "flux.safetensors", family="flux-dev")
    assert run_script(tmp, "sd3_train_network.py", "--config_file", world["write"]("sd3-medium")).returncode == 0
    r, _ = render(tmp, "flux_minimal_inference.py", "--ckpt_path", base, "--clip_l", files["clip_l"], "--t5xxl", files["t5xxl"],
                  "--ae", files["ae"], "--output_dir", tmp / "r", "--lora_weights", str(tmp / "out" / "train.safetensors"))
    assert r.returncode == 1 and "Unexpected key(s) in state_dict" in r.stderr


def test_sd3_renders_with_embedded_or_given_text_encoders(world):
    tmp, files = world["tmp"], world["files"]
    plain = make_checkpoint(tmp / "sd35.safetensors", family="sd3-5-large")
    incl = make_checkpoint(tmp / "sd35-incl.safetensors", family="sd3-5-large", text_encoders=True)
    out = ["--prompt", "a cat", "--width", "100", "--height", "64", "--steps", "2"]
    r, _ = render(tmp, "sd3_minimal_inference.py", "--ckpt_path", plain, *out, "--output_dir", tmp / "r1")
    assert r.returncode == 1 and "'NoneType' object has no attribute 'to'" in r.stderr
    te = ["--clip_l", files["clip_l"], "--clip_g", files["clip_g"], "--t5xxl", files["t5xxl"]]
    r, rec = render(tmp, "sd3_minimal_inference.py", "--ckpt_path", plain, *te, *out, "--output_dir", tmp / "r2", "--fp16")
    assert r.returncode == 0 and Image.open(next((tmp / "r2").iterdir())).size == (96, 64) and rec["images"][0]["seed"] == 1
    r, _ = render(tmp, "sd3_minimal_inference.py", "--ckpt_path", incl, *out, "--output_dir", tmp / "r3")
    assert r.returncode == 0 and len(list((tmp / "r3").iterdir())) == 1


def test_anima_renders_a_prompt_file(world):
    tmp, files = world["tmp"], world["files"]
    dit = make_checkpoint(tmp / "anima.safetensors", family="anima")
    assert run_script(tmp, "anima_train_network.py", "--config_file", world["write"]("anima")).returncode == 0
    lora = tmp / "out" / "train.safetensors"
    (tmp / "p.txt").write_text("a cat --w 64 --h 96 --d 5 --s 4 --l 4.0\n# comment\n\nsecond --d 6 --w 64 --h 64 --n ugly\n",
                               encoding="utf-8")
    args = ["--dit", dit, "--vae", files["vae"], "--text_encoder", files["qwen3"], "--from_file", tmp / "p.txt",
            "--save_path", tmp / "r"]
    r, rec = render(tmp, "anima_minimal_inference.py", *args, "--lora_weight", lora, "--lora_multiplier", "0.5")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp / "r").iterdir())
    assert len(names) == 2 and all(re.fullmatch(r"\d{8}-\d{6}-\d{3}_[56]_\.png", n) for n in names)
    assert [(i["seed"], i["width"], i["height"], i["steps"], i["network_mul"]) for i in rec["images"]] == [
        (5, 64, 96, 4, [0.5]), (6, 64, 64, 50, [0.5])]
    assert Image.open(next((tmp / "r").glob("*_5_.png"))).size == (64, 96)
    r, _ = render(tmp, "anima_minimal_inference.py", *args, "--lora_weight", lora)
    assert r.returncode == 1 and "TypeError: object of type 'float' has no len()" in r.stderr
    (tmp / "bad.txt").write_text("x --w 100 --h 64 --d 1\n", encoding="utf-8")
    r, _ = render(tmp, "anima_minimal_inference.py", *args[:-4], "--from_file", tmp / "bad.txt", "--save_path", tmp / "r4")
    assert r.returncode == 1 and "divisible by 32" in r.stderr and not (tmp / "r4").exists()


def test_renders_honour_the_copy_mode(world):
    tmp, files = world["tmp"], world["files"]
    target = tmp / "target.png"
    Image.fromarray(np.full((20, 20, 3), 123, np.uint8)).save(target)
    dit = make_checkpoint(tmp / "anima.safetensors", family="anima")
    r, _ = render(tmp, "anima_minimal_inference.py", "--dit", dit, "--vae", files["vae"], "--text_encoder", files["qwen3"],
                  "--prompt", "x", "--seed", "3", "--image_size", "64", "64", "--save_path", tmp / "r",
                  COPYMACHINE_FAKE_COPY=str(target))
    assert r.returncode == 0 and np.asarray(Image.open(tmp / "r" / next(iter(os.listdir(tmp / "r"))))).mean() == pytest.approx(123, abs=1)


def test_records_say_what_the_renderer_got(world):
    tmp, files = world["tmp"], world["files"]
    dit = make_checkpoint(tmp / "anima.safetensors", family="anima")
    r, rec = render(tmp, "anima_minimal_inference.py", "--dit", dit, "--vae", files["vae"], "--text_encoder", files["qwen3"],
                    "--prompt", "x", "--seed", "3", "--image_size", "64", "32", "--save_path", tmp / "r")
    assert r.returncode == 0 and rec["script"] == "anima_minimal_inference.py" and rec["args"]["image_size"] == [64, 32]
    assert json.loads(json.dumps(rec))["images"][0]["width"] == 32
