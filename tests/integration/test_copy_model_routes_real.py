"""The copy model in memory against the real sd-scripts: both routes give the same effect LoRA.

`copymachine train --copy-model file` writes the copy model with merge_lora.py and trains the
effect LoRA on it (the memo's route); `--copy-model memory` (the default) trains it on the base
model with the copy LoRA as `--base_weights`, through copymachine's launcher. Same inputs, same
seed, 64 px, 3 steps, CPU:

- fp32: the two effect LoRAs are bit-identical (every tensor, max |difference| 0.0);
- without the launcher, plain `--base_weights` trains 36 more U-Net modules (sd-scripts' in-place
  `+=` on LoRANetwork.UNET_TARGET_REPLACE_MODULE) from another random init: the launcher matters;
- bf16 mixed precision (the GPU profile's options forced onto the CPU): the largest per-tensor
  difference is printed and must stay within bf16 rounding.

Prints wall time, peak RAM and bytes written per route (the figures of docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from realkit import draw_original, run_cli
from safetensors.numpy import load_file

from copymachine.engine import locate
from copymachine.files import HashCache
from copymachine.methods import COPY_MACHINE, Request, make_sources, plan
from copymachine.models import SD1
from copymachine.pipeline import Pipeline
from copymachine.profiles import Profile
from copymachine.progress import Reporter
from copymachine.recipe import MEMO, apply_overrides
from copymachine.stages import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ws(tmp_path_factory, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    root = tmp_path_factory.mktemp("copy model routes")
    original = draw_original(root / "original.png")
    edited = root / "edited.png"
    ImageEnhance.Contrast(Image.open(original)).enhance(1.6).save(edited)
    common = [
        "train", "--effect", "custom", "--image", str(original), "--edited", str(edited),
        "--base", str(random_sd15), "--sd-scripts", str(sd_scripts_dir), "--python", str(sd_python),
        "--tokenizer-cache-dir", str(tokenizer_cache_dir), "--offline", "--resolution", "64", "--max-steps", "3",
        "--device", "cpu", "--no-copy-check", "--rank", "0",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return {"root": root, "original": original, "edited": edited, "common": common, "env": env, "base": random_sd15, "sd": sd_scripts_dir, "python": sd_python, "tok": tokenizer_cache_dir}


def tensors(path: Path) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in load_file(str(path)).items()}


def effect_lora(run_dir: Path) -> Path:
    return run_dir / "custom" / "effect-lora.safetensors"


def stage_figures(run_dir: Path) -> dict[str, tuple[float, float]]:
    stages = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["stages"]
    return {s["name"]: (s.get("duration_s") or 0.0, s.get("peak_memory_gib") or 0.0) for s in stages if s["status"] == "done"}


def written_bytes(*folders: Path) -> int:
    return sum(p.stat().st_size for folder in folders for p in folder.rglob("*.safetensors") if ".partial" not in p.parts)


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def test_both_routes_train_the_same_effect_lora_in_fp32(ws, capsys):
    figures = {}
    for route in ("file", "memory"):
        cache = ws["root"] / f"cache-{route}"  # each route trains its own copy LoRA: its cost counts
        out = ws["root"] / f"run-{route}"
        started = time.monotonic()
        result = run_cli([*ws["common"], "--copy-model", route, "--out", str(out), "--cache-dir", str(cache)], ws["env"])
        assert result.returncode == 0, result.stderr[-3000:]
        wall = time.monotonic() - started
        stages = stage_figures(out)
        figures[route] = (wall, max(m for _, m in stages.values()), written_bytes(out, cache), stages)
    a, b = tensors(effect_lora(ws["root"] / "run-file")), tensors(effect_lora(ws["root"] / "run-memory"))
    assert len(a) == len(b) == 792  # 264 modules x (down, up, alpha)
    diff = max_difference(a, b)
    assert not list((ws["root"] / "cache-memory").rglob("copy-model.safetensors"))  # nothing of 4 GB written
    assert list((ws["root"] / "cache-file").rglob("copy-model.safetensors"))
    with capsys.disabled():
        print(f"\n[copy model routes, fp32] effect LoRA max |file - memory| = {diff!r} over {len(a)} tensors")
        for route, (wall, peak, nbytes, stages) in figures.items():
            per_stage = ", ".join(f"{name} {d:.1f} s / {m:.1f} GiB" for name, (d, m) in stages.items() if d >= 1)
            print(f"[copy model routes, fp32] {route}: {wall:.1f} s, peak {peak:.1f} GiB, {nbytes / 1e9:.2f} GB of models written ({per_stage})")
    assert diff == 0.0


def test_plain_base_weights_without_the_launcher_differ(ws, capsys):
    """What the launcher undoes: sd-scripts' own --base_weights, run on the memory route's config."""
    run_dir = ws["root"] / "run-memory"
    if not effect_lora(run_dir).is_file():
        result = run_cli([*ws["common"], "--copy-model", "memory", "--out", str(run_dir), "--cache-dir", str(ws["root"] / "cache-memory")], ws["env"])
        assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    record = next(s for s in manifest["stages"] if s["name"] == "custom/effect-lora")
    argv = record["argv"][0]  # ("commands" holds the same as copy-pasteable lines)
    assert argv[-4].endswith("base_weights_launcher.py") and argv[-3].endswith("train_network.py")
    plain = ws["root"] / "plain"
    config = Path(argv[-1]).read_text(encoding="utf-8")
    import tomli_w
    import tomllib

    data = tomllib.loads(config)
    data["output"]["output_dir"] = str(plain)
    plain.mkdir()
    (plain / "training.toml").write_text(tomli_w.dumps(data), encoding="utf-8")
    command = [*argv[:-4], argv[-3], "--config_file", str(plain / "training.toml")]  # no launcher
    env = dict(ws["env"], PYTHONPATH=str(ws["sd"]))
    proc = subprocess.run(command, cwd=ws["sd"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    without = tensors(plain / "effect-lora.safetensors")
    with_launcher = tensors(effect_lora(run_dir))
    extra = sorted({k.split(".")[0] for k in without} - {k.split(".")[0] for k in with_launcher})
    with capsys.disabled():
        print(f"\n[copy model routes] plain --base_weights: {len(without)} tensors ({len(extra)} more modules: "
              f"{sum('time_emb_proj' in m for m in extra)} time_emb_proj, {sum('conv_shortcut' in m for m in extra)} conv_shortcut) vs {len(with_launcher)} with the launcher")
    assert len(extra) == 36 and len(without) == 900
    shared = sorted(set(without) & set(with_launcher))
    assert max(float(np.max(np.abs(without[k] - with_launcher[k]))) for k in shared) > 0  # another init too


def api_run(ws, route: str, out: Path, cache: Path, profile: Profile) -> Path:
    recipe = apply_overrides(MEMO, {"merge": {"copy_model": route}}, "test")
    request = Request(
        method=COPY_MACHINE, base=ws["base"], family=SD1, effects=["custom"], recipe=recipe,
        sources=make_sources([ws["original"]], [ws["edited"]]), out=out, cache_dir=cache,
        resolution=64, max_steps=3, copy_check=False,
    )  # fmt: skip
    settings = Settings(engine=locate(ws["sd"], str(ws["python"])), probe=None, profile=profile, tokenizer_cache_dir=ws["tok"], offline=True)
    hashes = HashCache(cache / "hashes.json")
    Pipeline(plan(request, settings, hashes), settings, Reporter(live=False), hashes).run()
    return effect_lora(out)


def test_both_routes_agree_within_bf16_rounding(ws, capsys):
    """The GPU profile's training options (bf16 mixed precision, sdpa, cached latents) on the CPU."""
    profile = Profile(name="cpu-bf16", device="cpu", mixed_precision="bf16", training_options={"max_data_loader_n_workers": 0, "sdpa": True, "cache_latents": True})
    cache = ws["root"] / "cache-bf16"  # one copy LoRA, shared by both routes
    loras = {route: tensors(api_run(ws, route, ws["root"] / f"bf16-{route}", cache, profile)) for route in ("file", "memory")}
    diff = max_difference(loras["file"], loras["memory"])
    scale = max(float(np.max(np.abs(v))) for v in loras["file"].values())
    with capsys.disabled():
        print(f"\n[copy model routes, bf16] effect LoRA max |file - memory| = {diff!r} (largest value {scale:.4g}) over {len(loras['file'])} tensors")
    assert diff <= 2.0**-7 * scale  # one bf16 step of the largest value
