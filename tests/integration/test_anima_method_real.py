"""The copy-machine method and the difference extraction on Anima, end to end through copymachine and the real
sd-scripts on the CPU: random-weight Anima files (conftest `random_anima`), 64 px, 3 steps per training, the
renders (copy check, leakage, strength sweep) through anima_minimal_inference.py at 2 steps.

Random weights copy nothing, so the copy check's bar is set to 0 here: what is tested is that every stage runs
on this family with its own trainer, LoRA module and renderer, and what the files hold. The wall time and the peak
RAM of each stage are printed (-s) for the closing note.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from PIL import Image, ImageOps
from realkit import draw_original, run_cli

from copymachine.lorafile import read_safetensors, validate_lora

pytestmark = pytest.mark.integration

# the renders' recipe kept small: one copy-check image, one leakage prompt at one strength, a two-cell sweep
SMALL = ["copy_check.min_ssim=0", "copy_check.images=1", "copy_check.steps=2", "leakage.prompts=a red car",
         "leakage.strengths=1", "leakage.steps=2", "preview.strengths=-1,1", "preview.seeds=1", "preview.size=64",
         "preview.steps=2"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, sd_scripts_dir, sd_python, random_anima):
    root = tmp_path_factory.mktemp("anima method")
    original = draw_original(root / "face.png")
    edited = root / "face-edit.png"
    ImageOps.posterize(Image.open(original).convert("RGB"), 2).save(edited)
    files = ["--model-file", f"qwen3={random_anima['qwen3']}", "--model-file", f"vae={random_anima['vae']}"]
    common = ["--base", str(random_anima["dit"]), *files, "--image", str(original), "--edited", str(edited),
              "--effect", "custom", "--resolution", "64", "--max-steps", "3", "--preview-model",
              str(random_anima["dit"]), "--cache-dir", str(root / "cache"), "--sd-scripts", str(sd_scripts_dir),
              "--python", str(sd_python), "--device", "cpu", "--offline", "--edit-in-place", "--weak-edit-ok",
              *[a for s in SMALL for a in ("--set", s)]]
    return {"root": root, "common": common, "env": dict(os.environ, HF_HUB_OFFLINE="1")}


def _run(ws, *args: str) -> dict:
    t0 = time.monotonic()
    result = run_cli(list(args) + ws["common"], ws["env"], timeout=5400)
    assert result.returncode == 0, result.stderr[-5000:]
    out = args[args.index("--out") + 1]
    manifest = json.loads((ws["root"] / out / "manifest.json").read_text(encoding="utf-8"))
    stages = {s["name"]: s for s in manifest["stages"]}
    ran = [f"{n} {s.get('duration_s', 0):.0f}s/{s.get('peak_memory_gib') or 0:.1f}GiB" for n, s in stages.items()
           if s["status"] == "done" and s.get("duration_s", 0) >= 0.5]
    print(f"\n{args[0]} on Anima: wall {time.monotonic() - t0:.0f} s; " + ", ".join(ran))
    return {"manifest": manifest, "stages": stages, "stderr": result.stderr, "stdout": result.stdout}


def _anima_lora(path, rank: int) -> None:
    st = read_safetensors(path)
    downs = [k for k in st.tensors if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith("lora_unet_") for k in downs)
    assert any(k.startswith("lora_unet_blocks_") for k in downs)
    validate_lora(path, "final LoRA", expected_rank=rank)


def test_copy_machine_on_anima(ws):
    run = _run(ws, "train", "--out", str(ws["root"] / "train"))
    stages = run["stages"]
    train = ws["root"] / "train"
    assert run["manifest"]["run"]["family"] == "anima"
    final = train / "train-custom.safetensors"
    _anima_lora(final, 8)  # resized from the memo's 64 to 8
    assert read_safetensors(final).metadata["ss_base_model_version"] == "anima"
    assert {"copy-lora", "copy-check", "custom/effect-lora", "custom/resize", "custom/final", "custom/leakage",
            "custom/preview"} <= set(stages), sorted(stages)
    assert (train / "copy-check" / "copy-check.json").is_file() and (train / "train-custom-preview.png").is_file()
    assert "anima_train_network.py" in run["stdout"] + run["stderr"]


def test_difference_extraction_on_anima(ws):
    run = _run(ws, "diff", "--out", str(ws["root"] / "diff"))
    final = ws["root"] / "diff" / "diff-custom.safetensors"
    _anima_lora(final, 8)  # svd_merge_lora.py's B - A at the memo's rank 8
    assert "custom/svd-merge" in run["stages"], sorted(run["stages"])
