"""The copy check, the strength-sweep preview and `inspect` against the real sd-scripts, on the CPU.

On the random-weight checkpoint nothing copies anything: the copy check must measure that and
stop the run with exit code 7 and its message, as a user sees it. The preview then runs at the
end of a `train --no-copy-check --preview-model`, and standalone on a LoRA written here.
64 px, 2 sampling steps, 3 training steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train_real import draw_original, run_cli

from copymachine.lorafile import read_safetensors, write_safetensors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ws(tmp_path_factory, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    root = tmp_path_factory.mktemp("see real")  # a space in every path
    images = root / "画像 'quoted'"
    images.mkdir()
    original = draw_original(images / "original.png")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    engine = ["--sd-scripts", str(sd_scripts_dir), "--python", str(sd_python), "--tokenizer-cache-dir", str(tokenizer_cache_dir), "--device", "cpu"]
    train = [
        "train", "--effect", "contrast", "--image", str(original), "--base", str(random_sd15),
        "--resolution", "64", "--max-steps", "3", "--cache-dir", str(root / "cache"), "--out", str(root / "runs" / "see run"),
        "--set", "copy_check.steps=2", *engine,
    ]  # fmt: skip
    return {"root": root, "env": env, "engine": engine, "train": train, "model": random_sd15}


def timed(args, env):
    t0 = time.monotonic()
    result = run_cli(args, env)
    return result, time.monotonic() - t0


@pytest.fixture(scope="module")
def copy_check_run(ws):
    """The train run the copy check stops (exit 7): it also leaves the copy machine in the cache,
    which test_train_with_preview_model reuses, whichever test runs first."""
    return timed(ws["train"], ws["env"])


def test_copy_check_reports_no_copy_on_random_weights(ws, copy_check_run):
    result, wall = copy_check_run
    print(f"\n--- what the user sees (exit code {result.returncode}, {wall:.0f} s) ---\n{result.stderr[-2500:]}")
    assert result.returncode == 7, result.stderr[-4000:]
    assert "copymachine: error: the copy LoRA on the base model does not copy yet" in result.stderr  # the copy model in memory
    assert "train the copy LoRA longer" in result.stderr and "--no-copy-check" in result.stderr
    assert "does NOT copy" in result.stderr  # the scores line
    run_dir = ws["root"] / "runs" / "see run"
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    stages = {s["name"]: s for s in manifest["stages"]}
    check = stages["copy-check"]
    assert check["status"] == "done" and check["verdict"]["passed"] is False
    assert check["gate"] == {"min_ssim": 0.8}
    scores = check["outputs"]["scores"]
    assert len(scores["ssim"]) == 4 and scores["mean_ssim"] < 0.8
    assert stages["contrast/effect-lora"]["status"] == "pending"  # stopped before the next training
    assert list(stages).index("copy-check") == list(stages).index("copy-lora") + 1 and "copy-model" not in stages
    # the images and the sheet are in the run folder, at the training size
    for i in range(1, 5):
        assert Image.open(run_dir / "copy-check" / f"copy-{i}.png").size == (64, 64)
    sheet = Image.open(run_dir / "copy-check" / "copy-check.png")
    assert sheet.width > 5 * 128
    data = json.loads((run_dir / "copy-check" / "copy-check.json").read_text(encoding="utf-8"))
    assert [r["seed"] for r in data["images"]] == [1, 2, 3, 4]
    assert data["images"][0]["prompt"] == "1girl"  # {caption}
    assert "2 -" not in data["images"][1]["prompt"]
    print("copy-check SSIM on random weights:", scores["ssim"], "mean", scores["mean_ssim"], "; sheet", sheet.size)

    # a re-run judges again without rendering again: same exit, the stage skipped
    again, wall2 = timed(ws["train"], ws["env"])
    assert again.returncode == 7 and "copy check (memo step 3): up to date, skipped" in again.stderr
    print(f"re-run wall {wall2:.0f} s")


def test_train_with_preview_model(ws, copy_check_run):
    args = ws["train"] + ["--no-copy-check", "--preview-model", str(ws["model"]), "--set", "preview.size=64", "--set", "preview.steps=2", "--set", "preview.seeds=1", "--set", "leakage.steps=2"]
    result, wall = timed(args, ws["env"])
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"\ntrain --preview-model wall {wall:.0f} s")
    run_dir = ws["root"] / "runs" / "see run"
    final = Path(result.stdout.strip().splitlines()[-1])
    assert final == run_dir / "see run-contrast.safetensors"
    sheet_path = run_dir / "see run-contrast-preview.png"
    sheet = Image.open(sheet_path)
    cells = sorted((run_dir / "see run-contrast-preview").glob("*.png"))
    assert [c.name for c in cells] == sorted(f"prompt1-seed1-m{m}.png" for m in ("-1", "-0.5", "0", "0.5", "1"))
    assert all(Image.open(c).size == (64, 64) for c in cells)
    assert sheet.width >= 5 * 128 and sheet.height >= 128
    print(f"train preview sheet {sheet.size}, {len(cells)} cells")
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    stages = {s["name"]: s for s in manifest["stages"]}
    assert "copy-check" not in stages and manifest["run"]["copy_check"].startswith("off")
    assert stages["contrast/preview"]["status"] == "done"
    assert stages["copy-lora"]["status"] == "skipped"  # the copy machine of the first test
    assert "gen_img.py" in stages["contrast/preview"]["commands"][0] and "--network_merge" not in stages["contrast/preview"]["commands"][0]

    md = read_safetensors(final).metadata
    for key in ("method", "effect", "effect_params", "recipe", "original_sha256", "edited_sha256", "sign", "version", "sd_scripts_commit"):
        assert md[f"copymachine.{key}"], key
    # inspect on the real LoRA
    shown = run_cli(["inspect", str(final)], ws["env"])
    assert shown.returncode == 0, shown.stderr
    assert "U-Net 192, text encoder 72" in shown.stdout and "copymachine.effect = contrast" in shown.stdout
    report = json.loads(run_cli(["inspect", str(final), "--json"], ws["env"]).stdout)
    assert {b["block"] for b in report["blocks"]} >= {"TE", "IN01", "MID", "OUT11"}
    assert report["ss"]["ss_network_dim"] == "8"
    print(shown.stdout[:1500])


def small_lora(path: Path) -> Path:
    """A rank-4 LoRA on the text encoder's MLPs and two cross-attention keys, strong enough to
    change a random model's output."""
    rng = np.random.default_rng(0)
    t = {}
    modules = [(f"lora_te_text_model_encoder_layers_{i}_mlp_fc2", 3072, 768, 0.05) for i in range(12)]
    modules += [(f"lora_unet_down_blocks_{b}_attentions_0_transformer_blocks_0_attn2_to_k", 768, ch, 0.2) for b, ch in ((0, 320), (1, 640))]
    for name, n_in, n_out, std in modules:
        t[f"{name}.lora_down.weight"] = (rng.standard_normal((4, n_in)) * std).astype(np.float16)
        t[f"{name}.lora_up.weight"] = (rng.standard_normal((n_out, 4)) * std).astype(np.float16)
        t[f"{name}.alpha"] = np.array(4, dtype=np.float16)
    write_safetensors(path, t, {"ss_base_model_version": "sd_v1", "ss_network_module": "networks.lora"})
    return path


def test_standalone_preview(ws):
    folder = ws["root"] / "ローラ folder"
    folder.mkdir()
    lora = small_lora(folder / "my lora.safetensors")
    args = ["preview", str(lora), "--model", str(ws["model"]), "--strengths", "-1,0,1", "--prompt", "a cat", "--seed", "3", "--size", "64", "--steps", "2", *ws["engine"]]
    result, wall = timed(args, ws["env"])
    assert result.returncode == 0, result.stderr[-4000:]
    sheet_path = Path(result.stdout.strip().splitlines()[-1])
    assert sheet_path == folder / "my lora-preview.png"
    cells = {m: np.asarray(Image.open(folder / "my lora-preview" / f"prompt1-seed3-m{m}.png"), np.int16) for m in ("-1", "0", "1")}
    assert np.abs(cells["1"] - cells["0"]).mean() > 0.5 and np.abs(cells["-1"] - cells["0"]).mean() > 0.5
    assert sorted(p.name for p in folder.iterdir()) == [".copymachine", ".stages", "my lora-preview", "my lora-preview.png", "my lora.safetensors"]
    print(f"\nstandalone preview wall {wall:.0f} s, sheet {Image.open(sheet_path).size}")
    again, _wall2 = timed(args, ws["env"])
    assert again.returncode == 0 and "up to date, skipped" in again.stderr
