"""`copymachine train / diff / merge / svd-merge / extract / resize` end to end through click's
CliRunner, with the recording fake of sd-scripts standing in for the real engine (subprocesses,
real argument lists, real config files; the fake rejects any option the pinned scripts reject)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

from copymachine.cli import cli
from copymachine.errors import EXIT_ENGINE, EXIT_INPUT
from copymachine.lorafile import read_safetensors, validate_lora


@pytest.fixture
def images(tmp_path, scene):
    folder = tmp_path / "画像 'quoted' 100%"
    folder.mkdir()
    small = scene.image.resize((128, 128), Image.Resampling.LANCZOS)
    original = folder / "original.png"
    small.save(original)
    edited = folder / "edited.png"
    ImageEnhance.Contrast(small).enhance(1.6).save(edited)
    second = folder / "second.png"
    small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(second)
    return {"original": original, "edited": edited, "second": second, "folder": folder}


def invoke(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def train_args(fake_engine, images, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--base",
        str(fake_engine.base),
        "--image",
        str(images["original"]),
        "--out",
        str(out),
        "--resolution",
        "64",
        "--max-steps",
        "3",
        "--no-copy-check",
        *fake_engine.engine_args,
        *extra,
    ]


def manifest(run_dir: Path) -> dict[str, dict]:
    data = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    return {s["name"]: s for s in data["stages"]}


def test_train_custom_edit_end_to_end_then_resume(fake_engine, images, tmp_path):
    out = tmp_path / "runs" / 'my "run"'
    args = train_args(fake_engine, images, out, "--edited", str(images["edited"]))
    result = invoke(args)
    assert result.exit_code == 0, result.output
    final = out / 'my "run"-custom.safetensors'
    assert result.stdout.strip().splitlines()[-1] == str(final)
    summary = validate_lora(final, expected_rank=8)
    assert summary.ranks == [8] and summary.unet_modules == 192 and summary.text_encoder_modules == 72
    assert read_safetensors(final).metadata["copymachine.effect"] == "custom"

    scripts = fake_engine.scripts()
    assert scripts == ["train_network.py", "train_network.py", "resize_lora.py"]  # no copy-model file (memory route)
    copy_call, effect_call = [c for c in fake_engine.calls() if c["script"].endswith("train_network.py")]
    # what sd-scripts was given: the memo's numbers, the right types, one image with its caption
    cfg = copy_call["config"]
    assert cfg["network_dim"] == 64 and cfg["network_alpha"] == 32.0 and cfg["optimizer_type"] == "AdamW"
    assert cfg["lr_scheduler"] == "constant_with_warmup" and cfg["resolution"] == "64,64"
    assert cfg["max_train_steps"] == 3 and copy_call["steps"] == 3
    assert cfg["pretrained_model_name_or_path"] == str(fake_engine.base.resolve())
    # the effect LoRA: the base model with the copy LoRA merged in memory, through the launcher
    assert effect_call["config"]["pretrained_model_name_or_path"] == str(fake_engine.base.resolve())
    assert effect_call["config"]["base_weights"] == [manifest(out)["copy-lora"]["outputs"]["lora"]["path"]]
    assert effect_call["config"]["base_weights_multiplier"] == [1.0]
    assert effect_call["launcher"]["options"]["training_script"].endswith("base_weights_launcher.py")
    # the launcher undid what building the merge's network does to the trained one
    assert effect_call["unet_target_modules"] == ["Transformer2DModel"] and effect_call["rng_draws_before_init"] == 0
    assert effect_call["base_weight_merges"] == [[effect_call["config"]["base_weights"][0], 1.0, "torch.float32"]]
    assert copy_call["dataset_config"]["datasets"][0]["subsets"][0]["num_repeats"] == 512
    assert copy_call["num_train_images"] == 512  # one image x 512 repeats, as sd-scripts counts
    # identical captions reached both trainings
    captions = [Path(c["dataset_config"]["datasets"][0]["subsets"][0]["image_dir"]) / "image.txt" for c in (copy_call, effect_call)]
    assert captions[0].read_text(encoding="utf-8") == captions[1].read_text(encoding="utf-8")

    stages = manifest(out)
    assert all(s["status"] == "done" for s in stages.values())
    assert stages["copy-lora"]["outputs"]["lora"]["ranks"] == [64]
    assert "step 3/3" in result.output

    # the same command again trains nothing
    before = len(fake_engine.calls())
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert len(fake_engine.calls()) == before
    assert result.output.count("up to date, skipped") == len(stages)

    # a changed parameter re-runs that stage and what depends on it
    result = invoke(args + ["--rank", "4"])
    assert result.exit_code == 0, result.output
    assert fake_engine.scripts()[before:] == ["resize_lora.py"]
    assert validate_lora(final).ranks == [4]


def test_another_sd_scripts_computes_anew(fake_engine, images, tmp_path):
    """The engine (its commit, or a hash of its tree) is an input of every stage sd-scripts
    computes: another checkout retrains; the stages copymachine computes itself keep their keys."""
    first = fake_engine.tree_copy(tmp_path / "sd-a", commit="1" * 40)
    second = fake_engine.tree_copy(tmp_path / "sd-b", commit="2" * 40)
    out = tmp_path / "run"

    def run(root):
        args = train_args(fake_engine, images, out, "--effect", "contrast")
        args[args.index("--sd-scripts") + 1] = str(root)
        result = invoke(args)
        assert result.exit_code == 0, result.output
        return {name: s["key"] for name, s in manifest(out).items()}

    keys_a = run(first)
    calls = len(fake_engine.calls())
    assert run(first) == keys_a and len(fake_engine.calls()) == calls  # same engine: all reused
    keys_b = run(second)
    assert fake_engine.scripts()[calls:] == ["train_network.py", "train_network.py", "resize_lora.py"]  # copy LoRA, effect LoRA (copy model in memory), resize
    sd_scripts_stages = {"copy-lora", "contrast/effect-lora", "contrast/resize"}
    assert sd_scripts_stages <= set(keys_a)
    for name in keys_a:
        assert (keys_a[name] != keys_b[name]) == (name in sd_scripts_stages or name == "contrast/final"), name


def test_two_effects_train_the_copy_machine_once(fake_engine, images, tmp_path):
    out = tmp_path / "run"
    result = invoke(train_args(fake_engine, images, out, "--effect", "outline", "--effect", "contrast"))
    assert result.exit_code == 0, result.output
    assert fake_engine.scripts().count("merge_lora.py") == 0  # the copy model stays in memory
    assert fake_engine.scripts().count("train_network.py") == 3
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["run-contrast.safetensors", "run-outline.safetensors"]
    # another run of another effect of the same image finds the copy machine in the cache
    result = invoke(train_args(fake_engine, images, tmp_path / "run2", "--effect", "flat"))
    assert result.exit_code == 0, result.output
    assert fake_engine.scripts().count("train_network.py") == 4  # only flat's effect LoRA
    flat = [c for c in fake_engine.calls() if c["script"].endswith("train_network.py")][-1]
    assert flat["config"]["network_dim"] == 128  # the memo's retrain of flat


def test_difference_extraction_sign(fake_engine, images, tmp_path):
    out = tmp_path / "diff"
    base = ["diff", "--base", str(fake_engine.base), "--image", str(images["original"]), "--edited", str(images["edited"]), "--out", str(out), "--resolution", "64", "--max-steps", "3", "--no-copy-check", *fake_engine.engine_args]
    result = invoke(base)
    assert result.exit_code == 0, result.output
    svd = next(c for c in fake_engine.calls() if c["script"].endswith("svd_merge_lora.py"))
    a, b = svd["args"]["models"]
    assert a.endswith("lora-a.safetensors") and b.endswith("lora-b.safetensors")
    assert svd["args"]["ratios"] == [-1.0, 1.0] and svd["args"]["new_rank"] == 8
    final = Path(result.stdout.strip().splitlines()[-1])

    def delta(path, module="lora_unet_mid_block_attentions_0_proj_in"):
        st = read_safetensors(path)
        down, up = st.read(f"{module}.lora_down.weight"), st.read(f"{module}.lora_up.weight")
        alpha = float(st.read(f"{module}.alpha").reshape(-1)[0])
        return (up.astype(np.float64).reshape(up.shape[0], -1) @ down.astype(np.float64).reshape(down.shape[0], -1)) * alpha / down.shape[0]

    u, sv, vh = np.linalg.svd(delta(b) - delta(a), full_matrices=False)
    target = (u[:, :8] * sv[:8]) @ vh[:8]  # the rank-8 truncation of B - A
    got = delta(final)
    cos = float((target.ravel() @ got.ravel()) / (np.linalg.norm(target) * np.linalg.norm(got)))
    assert cos > 0.95
    result = invoke(base + ["--sign", "memo", "--name", "memo"])
    assert result.exit_code == 0, result.output
    memo = delta(out / "memo.safetensors")
    assert float((target.ravel() @ memo.ravel()) / (np.linalg.norm(target) * np.linalg.norm(memo))) < -0.95


def test_two_images_by_the_memo_route_and_svd(fake_engine, images, tmp_path):
    out = tmp_path / "two"
    args = train_args(fake_engine, images, out, "--image", str(images["second"]), "--effect", "contrast")
    result = invoke(args)
    assert result.exit_code == 0, result.output
    scripts = fake_engine.scripts()
    assert scripts.count("train_network.py") == 4 and "extract_lora_from_models.py" in scripts
    processed = [c for c in fake_engine.calls() if c["script"].endswith("merge_lora.py")][-1]
    assert processed["args"]["ratios"] == [0.5, 0.5]
    before = len(scripts)
    result = invoke(args + ["--combine", "svd", "--name", "svd"])
    assert result.exit_code == 0, result.output
    assert fake_engine.scripts()[before:] == ["svd_merge_lora.py"]
    assert validate_lora(out / "svd.safetensors").ranks == [8]


def test_dry_run_prints_commands_and_runs_nothing(fake_engine, images, tmp_path):
    result = invoke(train_args(fake_engine, images, tmp_path / "dry", "--effect", "outline", "--dry-run"))
    assert result.exit_code == 0, result.output
    assert fake_engine.calls() == []
    assert result.stdout.count("accelerate.commands.launch") == 2
    assert "merge_lora.py" not in result.stdout and "resize_lora.py" in result.stdout
    assert "base_weights_launcher.py" in result.stdout and "merged in memory" in result.stdout
    result = invoke(train_args(fake_engine, images, tmp_path / "dry-file", "--effect", "outline", "--dry-run", "--copy-model", "file"))
    assert result.exit_code == 0, result.output
    assert "merge_lora.py" in result.stdout and "base_weights_launcher.py" not in result.stdout
    assert not (tmp_path / "dry" / "dry-outline.safetensors").exists()


@pytest.mark.parametrize(
    "mode, message",
    [
        ("no-output", "exited 0 but wrote no copy-lora.safetensors"),
        ("nan", "NaN loss"),
        ("oom", "ran out of memory"),
        ("exit1", "failed with exit code 1: RuntimeError: copymachine fake: injected failure (exit1). Log: "),
    ],
)
def test_sd_scripts_failures_become_one_clear_message(fake_engine, images, tmp_path, monkeypatch, mode, message):
    monkeypatch.setenv("COPYMACHINE_FAKE_FAIL", f"train_network:{mode}")
    out = tmp_path / "fail"
    result = invoke(train_args(fake_engine, images, out, "--effect", "contrast"))
    assert result.exit_code == EXIT_ENGINE
    lines = [line for line in result.stderr.splitlines() if line.startswith("copymachine: error:")]
    assert len(lines) == 1 and message in lines[0] and "copy LoRA" in lines[0]
    assert str(out / "logs" / "copy-lora.log") in lines[0]
    assert "  | " in result.stderr  # the log's last lines
    assert "Traceback" not in result.stderr.split("copymachine: error:")[0].split("\n")[-1]
    assert not list((tmp_path / "_cache").rglob("copy-lora.safetensors"))
    assert manifest(out)["copy-lora"]["status"] == "failed"
    # the next run, without the fault, finishes
    monkeypatch.delenv("COPYMACHINE_FAKE_FAIL")
    result = invoke(train_args(fake_engine, images, out, "--effect", "contrast"))
    assert result.exit_code == 0, result.output


def test_misaligned_custom_edit_is_refused_before_training(fake_engine, images, tmp_path):
    shifted = tmp_path / "shifted.png"
    im = Image.open(images["edited"])
    Image.fromarray(np.roll(np.asarray(im), (5, 4), axis=(0, 1))).save(shifted)
    result = invoke(train_args(fake_engine, images, tmp_path / "r", "--edited", str(shifted)))
    assert result.exit_code == EXIT_INPUT
    assert "your edit cannot be used" in result.stderr
    assert fake_engine.calls() == []


def test_a_thick_built_in_outline_trains_with_a_note(fake_engine, images, tmp_path):
    """outline width 3 reads as ~5 px of movement at 128 px (thick lines pull the fit); a built-in
    effect moves no pixel, so its own check must not refuse it."""
    out = tmp_path / "r"
    result = invoke(train_args(fake_engine, images, out, "--effect", "outline", "--set", "outline.width=3"))
    assert result.exit_code == 0, result.output
    assert "note: the outline edit: the alignment fit reads the corners as moving" in result.stderr
    assert "out of alignment" not in result.output
    check = json.loads((out / "outline" / "check.json").read_text(encoding="utf-8"))
    assert check["verdict"] == "ok" and check["corner_shift_px"] > 3 and len(check["notes"]) == 1


def test_a_custom_edit_declared_in_place(fake_engine, images, tmp_path):
    from copymachine.effects import apply_effect

    inked = tmp_path / "inked.png"
    apply_effect("outline", Image.open(images["original"]).convert("RGB"), {"width": 3}).save(inked)
    result = invoke(train_args(fake_engine, images, tmp_path / "r", "--edited", str(inked)))
    assert result.exit_code == EXIT_INPUT
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("copymachine: error:")]
    assert "your edit cannot be used" in error and "out of alignment" in error
    assert error.endswith("pass --edit-in-place to use it")
    assert fake_engine.calls() == []
    result = invoke(train_args(fake_engine, images, tmp_path / "r", "--edited", str(inked), "--edit-in-place"))
    assert result.exit_code == 0, result.output
    assert "note: your edit: the alignment fit reads the corners as moving" in result.stderr
    assert manifest(tmp_path / "r")["custom/edit"]["params"]["in_place"] is True


def test_tool_commands(fake_engine, images, tmp_path):
    result = invoke(train_args(fake_engine, images, tmp_path / "r", "--effect", "contrast", "--rank", "0"))
    assert result.exit_code == 0, result.output
    lora = Path(result.stdout.strip().splitlines()[-1])
    eng = fake_engine.engine_args

    resized = tmp_path / "tools" / "r4.safetensors"
    result = invoke(["resize", str(lora), "--rank", "4", "--out", str(resized), *eng])
    assert result.exit_code == 0, result.output
    assert validate_lora(resized).ranks == [4]
    result = invoke(["resize", str(lora), "--rank", "128", "--out", str(resized), *eng])
    assert result.exit_code == EXIT_INPUT and "above the LoRA's rank 64" in result.stderr

    merged = tmp_path / "tools" / "merged.safetensors"
    result = invoke(["merge", "--base", str(fake_engine.base), "--lora", f"{resized}:0.5", "--out", str(merged), *eng])
    assert result.exit_code == 0, result.output
    assert "merge: base model.safetensors + (0.5 x r4.safetensors)" in result.stderr
    assert read_safetensors(merged).keys() == read_safetensors(fake_engine.base).keys()

    extracted = tmp_path / "tools" / "extracted.safetensors"
    result = invoke(["extract", "--base", str(fake_engine.base), "--tuned", str(merged), "--dim", "4", "--out", str(extracted), *eng])
    assert result.exit_code == 0, result.output
    assert max(validate_lora(extracted).ranks) <= 4

    diff = tmp_path / "tools" / "diff.safetensors"
    result = invoke(["svd-merge", "--lora", f"{lora}:1", "--lora", f"{resized}:-1", "--rank", "2", "--out", str(diff), *eng])
    assert result.exit_code == 0, result.output
    assert "result = 1 x " in result.stderr and "- 1 x r4.safetensors" in result.stderr
    assert validate_lora(diff).ranks == [2]

    # re-running a tool with unchanged inputs does nothing; a LoRA of another family is refused
    before = len(fake_engine.calls())
    assert invoke(["svd-merge", "--lora", f"{lora}:1", "--lora", f"{resized}:-1", "--rank", "2", "--out", str(diff), *eng]).exit_code == 0
    assert len(fake_engine.calls()) == before
    xl = Path(fake_engine.make_checkpoint(tmp_path / "xl.safetensors", family="sdxl"))
    result = invoke(["merge", "--base", str(xl), "--lora", str(resized), "--out", str(tmp_path / "x.safetensors"), *eng])
    assert result.exit_code == EXIT_INPUT and "is a Stable Diffusion 1.x LoRA, but the others are SDXL" in result.stderr


def test_a_killed_merge_is_named_as_out_of_memory(fake_engine, images, tmp_path, monkeypatch):
    # the kernel's OOM killer ends sd-scripts with SIGKILL (seen here: sdxl_merge_lora.py, exit -9)
    monkeypatch.setenv("COPYMACHINE_FAKE_FAIL", "merge_lora:die-mid-write")
    result = invoke(train_args(fake_engine, images, tmp_path / "oom", "--effect", "contrast", "--copy-model", "file"))
    assert result.exit_code == EXIT_ENGINE
    line = next(x for x in result.stderr.splitlines() if x.startswith("copymachine: error:"))
    assert "copy model" in line and "was killed by SIGKILL" in line and "out-of-memory killer" in line
    assert not list((tmp_path / "_cache" / "copy-model").rglob("*.safetensors"))


@pytest.mark.parametrize("leaky", [False, True], ids=["clean", "leaky"])
def test_leakage_is_measured_printed_drawn_and_stored(fake_engine, images, tmp_path, monkeypatch, leaky):
    """With --preview-model the final LoRA renders the recipe's unrelated prompts at 0, 1, 2, 3 and
    is scored against the training image. The fake's leaky mode blends the training image in by
    (strength - 1) / 2: no gain at 1, a large one from 2. Without it the pictures are noise: ~0."""
    if leaky:
        monkeypatch.setenv("COPYMACHINE_FAKE_LEAK", str(images["original"]))
    other = fake_engine.make_checkpoint(tmp_path / "other model.safetensors", family="sd15", seed=1)
    out = tmp_path / "run"
    result = invoke(train_args(fake_engine, images, out, "--effect", "contrast", "--preview-model", str(other), "--set", "preview.size=64"))
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "contrast" / "leakage" / "leakage.json").read_text(encoding="utf-8"))
    gains = scores["ssim_gain"]
    assert list(gains) == ["1", "2", "3"] and scores["size"] == [64, 64] and scores["threshold"] == 0.1
    assert len(scores["images"]) == 3 * 4 and len(scores["prompts"]) == 3
    gen = [c for c in fake_engine.calls() if c["script"] == "gen_img.py"]
    leak_call = next(c for c in gen if any("leak-prompt" in i["file"] for i in c["images"]))
    assert sorted({i["network_mul"][0] for i in leak_call["images"]}) == [0.0, 1.0, 2.0, 3.0]
    if leaky:
        assert abs(gains["1"]) < 0.05 and gains["2"] > 0.2 and gains["3"] > 0.8 and scores["leaks_at"] == 2.0
        assert "-> leaks from strength 2" in result.output
    else:
        assert all(abs(g) < 0.05 for g in gains.values()) and scores["leaks_at"] is None
        assert "-> no leakage up to strength 3" in result.output
    assert "run-contrast.safetensors: leakage (SSIM to the training image" in result.output  # printed at the end
    final = out / "run-contrast.safetensors"
    stored = json.loads(read_safetensors(final).metadata["copymachine.leakage"])
    assert stored["ssim_gain"] == gains and stored["leaks_at"] == scores["leaks_at"] and stored["model"] == "other model.safetensors"
    shown = invoke(["inspect", str(final)])
    assert shown.exit_code == 0
    line = next(x for x in shown.output.splitlines() if x.startswith("leakage "))
    assert ("LEAKS from strength 2" if leaky else "no leakage at these strengths") in line
    assert (out / "run-contrast-preview.png").is_file()
    manifest_ = manifest(out)
    assert manifest_["contrast/leakage"]["verdict"]["leaks_at"] == scores["leaks_at"]


def test_preview_command_measures_leakage_with_the_training_image(fake_engine, images, tmp_path, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_LEAK", str(images["original"]))
    out = tmp_path / "run"
    assert invoke(train_args(fake_engine, images, out, "--effect", "contrast")).exit_code == 0
    other = fake_engine.make_checkpoint(tmp_path / "other.safetensors", family="sd15", seed=1)
    final = out / "run-contrast.safetensors"
    args = ["preview", str(final), "--model", str(other), "--size", "64", "--strengths", "0,1", *fake_engine.engine_args]
    result = invoke(args)  # original.png beside the LoRA has the recorded sha256: found by itself
    assert result.exit_code == 0, result.output
    assert "run-contrast.safetensors: leakage (" in result.output and "-> leaks from strength 2" in result.output
    assert (out / "run-contrast-preview" / "leakage.json").is_file()
    result = invoke([*args, "--no-leakage"])
    assert result.exit_code == 0 and "leakage (" not in result.output
    help_text = " ".join(invoke(["preview", "--help"]).output.split())
    assert "Leakage" in help_text and "SSIM to the training image" in help_text


def test_dry_run_then_the_same_command_dry_then_real(fake_engine, images, tmp_path):
    """A dry run leaves a folder the same command accepts, dry or real (its manifest marked as a dry run)."""
    out = tmp_path / "run"
    args = train_args(fake_engine, images, out, "--effect", "contrast")
    for _ in range(2):
        result = invoke(args + ["--dry-run"])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["dry_run"] is True
    assert fake_engine.calls() == []
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "dry_run" not in json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert all(s["status"] == "done" for s in manifest(out).values())
    # a dry run after the real one leaves its manifest as it is
    result = invoke(args + ["--dry-run"])
    assert result.exit_code == 0, result.output
    assert all(s["status"] == "done" for s in manifest(out).values())


def test_dry_run_checks_the_python_and_sd_args_before_any_work(fake_engine, images, tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    args = train_args(fake_engine, images, tmp_path / "run", "--effect", "contrast", "--dry-run")
    result = invoke([str(missing) if a == sys.executable else a for a in args])
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("copymachine: error:")]
    assert errors == [f"copymachine: error: the Python for sd-scripts was not found: {missing} (set --python or "
                      "$SD_SCRIPTS_PYTHON)"], result.stderr
    assert not (tmp_path / "run").exists()
    result = invoke(train_args(fake_engine, images, tmp_path / "run", "--effect", "contrast", "--dry-run",
                               "--sd-arg", "no_such_option=1"))
    assert result.exit_code == EXIT_INPUT
    errors = [line for line in result.stderr.splitlines() if line.startswith("copymachine: error:")]
    assert len(errors) == 1 and "--sd-arg no_such_option: train_network.py" in errors[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_a_too_weak_edit_stops_the_dry_run_and_the_run_unless_overruled(fake_engine, images, tmp_path):
    weak = tmp_path / "weak.png"
    pixels = np.asarray(Image.open(images["original"]).convert("RGB")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(weak)
    for extra in (["--dry-run"], []):
        result = invoke(train_args(fake_engine, images, tmp_path / "run", "--edited", str(weak), *extra))
        assert result.exit_code == EXIT_INPUT
        errors = [line for line in result.stderr.splitlines() if line.startswith("copymachine: error:")]
        assert len(errors) == 1 and "edit too weak: PSNR" in errors[0] and "of pixels changed" in errors[0]
        assert errors[0].endswith("or pass --weak-edit-ok to train on it anyway")
    assert fake_engine.calls() == []
    result = invoke(train_args(fake_engine, images, tmp_path / "run", "--edited", str(weak), "--dry-run",
                               "--weak-edit-ok"))
    assert result.exit_code == 0, result.output


def test_a_cpu_run_says_so_with_an_estimate_and_the_smoke_test_flags(fake_engine, images, tmp_path):
    args = train_args(fake_engine, images, tmp_path / "run", "--effect", "contrast", "--dry-run")
    result = invoke([a for a in args if a not in ("--resolution", "64", "--max-steps", "3")])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stderr.splitlines() if "trains on the CPU" in line)
    assert "copy LoRA (memo step 2) 3,072 steps at 512x512" in line and "an estimate" in line and "days" in line
    assert line.endswith("To test the set-up quickly: --resolution 64 --max-steps 3 --no-copy-check")
