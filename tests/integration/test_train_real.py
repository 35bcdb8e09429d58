"""`copymachine train` against the real sd-scripts at the pinned commit, on the CPU.

64 px, 3 steps per training, a random-weight SD1.5-shaped checkpoint and an offline tokenizer
(see conftest.py). Checks the final LoRA (kohya keys, rank 8, finite values, ss_* and
copymachine metadata), the run folder and manifest, that a re-run trains nothing, that a
second effect reuses the cached copy machine, and the generated-original stage.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from realkit import draw_original, run_cli

from copymachine.lorafile import read_safetensors, validate_lora

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    root = tmp_path_factory.mktemp("train real")  # a space in every path
    images = root / "画像"
    images.mkdir()
    original = draw_original(images / "original.png")
    edited = images / "edited (contrast).png"
    ImageEnhance.Contrast(Image.open(original)).enhance(1.6).save(edited)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    common = [
        "--base",
        str(random_sd15),
        "--sd-scripts",
        str(sd_scripts_dir),
        "--python",
        str(sd_python),
        "--tokenizer-cache-dir",
        str(tokenizer_cache_dir),
        "--resolution",
        "64",
        "--max-steps",
        "3",
        "--cache-dir",
        str(root / "cache"),
        "--device",
        "cpu",
        # random weights copy nothing: the copy check would stop every run (test_see_real.py
        # runs it and sees it fail)
        "--no-copy-check",
    ]
    return {"root": root, "original": original, "edited": edited, "env": env, "common": common}


def custom_args(ws) -> list[str]:
    return ["train", "--effect", "custom", "--image", str(ws["original"]), "--edited", str(ws["edited"]), "--out", str(ws["root"] / "runs" / "custom run"), *ws["common"]]


def check_final_lora(path: Path) -> dict[str, str]:
    summary = validate_lora(path, expected_rank=8)  # kohya keys, finite values
    # resize_lora.py gives rank 1 to modules whose weights are all zero (after 3 steps, many)
    assert max(summary.ranks) == 8 and set(summary.ranks) <= {1, 8}
    assert summary.unet_modules == 192 and summary.text_encoder_modules == 72
    st = read_safetensors(path)
    for key in st.tensors:
        assert key.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
        assert key.startswith(("lora_unet_", "lora_te_"))
    md = st.metadata
    assert md["ss_network_module"] == "networks.lora"
    assert md["ss_base_model_version"] == "sd_v1"
    assert md["ss_network_dim"] == "8"
    assert "resized from 64 to 8" in md.get("ss_training_comment", "")
    assert md["copymachine.method"] == "copy-machine"
    assert md["copymachine.sign"].startswith("positive")
    return md


@pytest.fixture(scope="module")
def custom_run(workspace):
    """The first run of the custom edit: the run folder and the cached copy machine that the
    re-run, the dry run and the second effect find, whichever test runs first."""
    t0 = time.monotonic()
    result = run_cli(custom_args(workspace), workspace["env"])
    return result, time.monotonic() - t0


def test_custom_edit_end_to_end(workspace, custom_run):
    ws = workspace
    result, wall = custom_run
    assert result.returncode == 0, result.stderr[-4000:]
    final = Path(result.stdout.strip().splitlines()[-1])
    assert final.name == "custom run-custom.safetensors" and final.is_file()
    md = check_final_lora(final)
    assert md["copymachine.effect"] == "custom"

    run_dir = ws["root"] / "runs" / "custom run"
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    stages = {s["name"]: s for s in manifest["stages"]}
    # the copy model in memory (the default): no copy-model stage, the effect LoRA through the launcher
    assert list(stages) == ["original", "custom/edit", "captions", "copy-lora", "custom/effect-lora", "custom/resize", "custom/final"]
    for s in stages.values():
        assert s["status"] == "done", s
        for out in s["outputs"].values():
            assert Path(out["path"]).is_file() and len(out["sha256"]) == 64
        assert s["duration_s"] >= 0
    assert stages["copy-lora"]["sd_scripts_commit"] == manifest["sd_scripts"]["commit"]
    assert "accelerate.commands.launch" in stages["copy-lora"]["commands"][0]
    assert stages["custom/effect-lora"]["argv"][0][-4].endswith("base_weights_launcher.py")
    assert "copymachine base_weights launcher: merging" in Path(stages["custom/effect-lora"]["log"]).read_text(encoding="utf-8")
    assert "resize_lora.py" in stages["custom/resize"]["commands"][0]
    for name in ("copy-lora", "custom/effect-lora", "custom/resize"):
        assert Path(stages[name]["log"]).is_file()
    # identical captions for both images
    assert (run_dir / "captions" / "original.txt").read_bytes() == (run_dir / "captions" / "edited.txt").read_bytes()
    # stage log lines and live progress reached the user
    assert "[4/7] copy LoRA" in result.stderr and "step 3/3" in result.stderr
    print(f"\nfirst run wall {wall:.1f} s; stages: " + ", ".join(f"{n} {s['duration_s']:.1f}s/{s.get('peak_memory_gib') or 0:.1f}GiB" for n, s in stages.items()))


def test_rerun_trains_nothing(workspace, custom_run):
    ws = workspace
    assert custom_run[0].returncode == 0, custom_run[0].stderr[-4000:]
    t0 = time.monotonic()
    result = run_cli(custom_args(ws), ws["env"])
    wall = time.monotonic() - t0
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("up to date, skipped") == 7
    manifest = json.loads((ws["root"] / "runs" / "custom run" / "manifest.json").read_text(encoding="utf-8"))
    assert {s["status"] for s in manifest["stages"]} == {"skipped"}
    assert wall < 60, f"a re-run took {wall:.1f} s"
    print(f"\nre-run wall {wall:.1f} s")


def test_dry_run_prints_commands(workspace, custom_run):
    ws = workspace
    args = custom_args(ws)
    args[args.index("--out") + 1] = str(ws["root"] / "runs" / "dry")
    result = run_cli(args + ["--dry-run"], ws["env"])
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    assert "# [4/7] copy LoRA (memo step 2): up to date" in out  # the cached copy machine is found
    assert "train_network.py" in out and "resize_lora.py" in out
    assert not (ws["root"] / "runs" / "dry" / "dry-custom.safetensors").exists()


def test_second_effect_reuses_the_copy_machine(workspace, custom_run):
    ws = workspace
    from copymachine import effects

    if "outline" not in effects.names():
        pytest.skip("built-in effects not available")
    args = ["train", "--effect", "outline", "--image", str(ws["original"]), "--out", str(ws["root"] / "runs" / "outline run"), *ws["common"]]
    result = run_cli(args, ws["env"])
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((ws["root"] / "runs" / "outline run" / "manifest.json").read_text(encoding="utf-8"))
    status = {s["name"]: s["status"] for s in manifest["stages"]}
    assert status["copy-lora"] == "skipped" and "copy-model" not in status
    assert status["outline/effect-lora"] == "done" and status["outline/final"] == "done"
    md = check_final_lora(Path(result.stdout.strip().splitlines()[-1]))
    assert md["copymachine.effect"] == "outline"


def test_generated_original(workspace, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    """Stage 1 without --image: gen_img.py makes the original (2 sampling steps)."""
    from copymachine.cli.common import make_settings
    from copymachine.files import HashCache
    from copymachine.methods import COPY_MACHINE, Request, make_sources, plan
    from copymachine.models import inspect_base_model
    from copymachine.pipeline import Pipeline
    from copymachine.progress import Reporter
    from copymachine.recipe import MEMO, apply_overrides

    ws = workspace
    reporter = Reporter()
    settings = make_settings(sd_scripts_dir, str(sd_python), "cpu", tokenizer_cache_dir, True, reporter)
    recipe = apply_overrides(MEMO, {"generate": {"width": 64, "height": 64, "steps": 2}}, "test")
    request = Request(
        method=COPY_MACHINE,
        base=random_sd15,
        family=inspect_base_model(random_sd15).family,
        effects=["contrast"],
        recipe=recipe,
        sources=make_sources([], []),
        out=ws["root"] / "runs" / "generated",
        cache_dir=ws["root"] / "cache",
    )
    hashes = HashCache(None)
    the_plan = plan(request, settings, hashes)
    the_plan.stages = the_plan.stages[:2]  # generate + import
    Pipeline(the_plan, settings, reporter, hashes, argv=["test"]).run()
    image = Image.open(the_plan.stage("original").outputs["image"])
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.asarray(image).std() > 0  # random weights give colour noise, not a blank
    assert "--d 1" in the_plan.stage("generate").outputs["prompt"].read_text(encoding="utf-8")
