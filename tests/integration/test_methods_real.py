"""Difference extraction, several images (both combine routes), style absorb and a tool command,
against the real sd-scripts on the CPU (64 px, 3 steps per training)."""

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
def ws(tmp_path_factory, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    root = tmp_path_factory.mktemp("methods real")
    first = draw_original(root / "first.png")
    second = root / "second.png"
    Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(90).save(second)
    engine = ["--sd-scripts", str(sd_scripts_dir), "--python", str(sd_python), "--device", "cpu", "--tokenizer-cache-dir", str(tokenizer_cache_dir)]
    common = ["--base", str(random_sd15), "--resolution", "64", "--max-steps", "3", "--cache-dir", str(root / "cache"), "--no-copy-check", *engine]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return {"root": root, "first": first, "second": second, "common": common, "engine": engine, "env": env}


def _cli(ws, args):
    t0 = time.monotonic()
    result = run_cli(args, ws["env"], timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    result.wall = time.monotonic() - t0
    return result


def _report(label: str, result, run_dir: Path) -> None:
    """Wall time and, per stage that ran, its duration and peak RAM (the closing note's figures)."""
    ran = [(n, s) for n, s in _manifest(run_dir).items() if s["status"] == "done" and s.get("duration_s", 0) >= 0.5]
    print(f"\n{label}: wall {result.wall:.0f} s; " + ", ".join(f"{n} {s['duration_s']:.0f}s/{s.get('peak_memory_gib') or 0:.1f}GiB" for n, s in ran))


def _manifest(run_dir: Path) -> dict:
    data = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    return {s["name"]: s for s in data["stages"]}


def dense(path: Path) -> dict[str, np.ndarray]:
    """Each module's weight delta up @ down x alpha / rank, as a 2-D matrix."""
    st = read_safetensors(path)
    out = {}
    for key in st.tensors:
        if not key.endswith(".lora_down.weight"):
            continue
        module = key[: -len(".lora_down.weight")]
        down = st.read(key).astype(np.float64)
        up = st.read(f"{module}.lora_up.weight").astype(np.float64)
        rank = down.shape[0]
        alpha = float(st.read(f"{module}.alpha").reshape(-1)[0]) if f"{module}.alpha" in st.tensors else rank
        out[module] = (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)) * (alpha / rank)
    return out


def truncate(matrix: np.ndarray, rank: int) -> np.ndarray:
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def cosines(merged: Path, a: Path, b: Path, layers: int = 5) -> list[float]:
    """Cosine between the merged LoRA's delta and rank-8 (B - A) on the largest changed layers."""
    da, db, dm = dense(a), dense(b), dense(merged)
    candidates = []
    for module in set(da) & set(db) & set(dm):
        diff = db[module] - da[module]
        if np.linalg.norm(diff) > 1e-6:
            candidates.append((diff.size, module, diff))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    assert len(candidates) >= layers, "too few layers changed between A and B"
    out = []
    for _, module, diff in candidates[:layers]:
        target = truncate(diff, 8).ravel()
        got = dm[module].ravel()
        out.append(float(target @ got / (np.linalg.norm(target) * np.linalg.norm(got))))
    return out


@pytest.fixture(scope="module")
def diff_run(ws):
    """The difference extraction of the first image's contrast edit; its LoRA is the resize
    test's input, whichever test runs first."""
    edited = ws["root"] / "first-contrast.png"
    ImageEnhance.Contrast(Image.open(ws["first"])).enhance(1.8).save(edited)
    run_dir = ws["root"] / "runs" / "diff"
    base_args = ["diff", "--image", str(ws["first"]), "--edited", str(edited), "--out", str(run_dir), *ws["common"]]
    result = _cli(ws, base_args)
    return base_args, run_dir, result


def test_difference_extraction_and_its_sign(ws, diff_run):
    base_args, run_dir, result = diff_run
    _report("diff", result, run_dir)
    final = Path(result.stdout.strip().splitlines()[-1])
    summary = validate_lora(final, expected_rank=8)
    assert max(summary.ranks) == 8
    stages = _manifest(run_dir)
    assert [n for n in stages] == ["original", "custom/edit", "captions", "lora-a", "custom/lora-b", "custom/svd-merge", "custom/final"]
    a = Path(stages["lora-a"]["outputs"]["lora"]["path"])
    b = Path(stages["custom/lora-b"]["outputs"]["lora"]["path"])
    assert "svd_merge_lora.py" in stages["custom/svd-merge"]["commands"][0] and "--ratios -1.0 1.0" in stages["custom/svd-merge"]["commands"][0]
    edit_cos = cosines(final, a, b)
    assert min(edit_cos) > 0.95, edit_cos

    # the memo's orientation: only the merge and the final file are redone
    result = _cli(ws, base_args + ["--sign", "memo", "--name", "memo-sign"])
    _report("diff --sign memo", result, run_dir)
    memo_final = Path(result.stdout.strip().splitlines()[-1])
    stages = _manifest(run_dir)
    assert stages["lora-a"]["status"] == "skipped" and stages["custom/lora-b"]["status"] == "skipped"
    assert stages["custom/svd-merge"]["status"] == "done"
    memo_cos = cosines(memo_final, a, b)
    assert max(memo_cos) < -0.95, memo_cos
    assert read_safetensors(memo_final).metadata["copymachine.sign"].startswith("positive strength = less")
    print(f"\ncosines B-A: {edit_cos}\ncosines memo: {memo_cos}")


def test_two_images_combined_by_both_routes(ws):
    images = ["--image", str(ws["first"]), "--image", str(ws["second"])]
    run_dir = ws["root"] / "runs" / "two"
    result = _cli(ws, ["train", "--effect", "contrast", *images, "--out", str(run_dir), *ws["common"]])
    _report("train, two images, memo route", result, run_dir)
    memo_route = Path(result.stdout.strip().splitlines()[-1])
    stages = _manifest(run_dir)
    for name in ("first/copy-lora", "second/copy-lora", "first/contrast/effect-lora", "second/contrast/effect-lora", "contrast/processed-model", "contrast/extract", "contrast/resize"):
        assert stages[name]["status"] == "done", name
    assert "extract_lora_from_models.py" in stages["contrast/extract"]["commands"][0]
    assert max(validate_lora(memo_route, expected_rank=8).ranks) == 8

    result = _cli(ws, ["train", "--effect", "contrast", *images, "--out", str(run_dir), "--combine", "svd", "--name", "svd-route", *ws["common"]])
    _report("train, two images, --combine svd", result, run_dir)
    svd_route = Path(result.stdout.strip().splitlines()[-1])
    stages = _manifest(run_dir)
    assert stages["first/contrast/effect-lora"]["status"] == "skipped" and stages["contrast/svd-merge"]["status"] == "done"
    assert max(validate_lora(svd_route, expected_rank=8).ranks) == 8


def test_resize_tool_and_style_absorb(ws, diff_run):
    diff_final = Path(diff_run[2].stdout.strip().splitlines()[-1])
    style = ws["root"] / "style r4.safetensors"
    result = _cli(ws, ["resize", str(diff_final), "--rank", "4", "--out", str(style), *ws["engine"]])
    assert Path(result.stdout.strip()) == style
    print(f"\ncopymachine resize --rank 4: wall {result.wall:.0f} s")
    assert max(validate_lora(style, expected_rank=4).ranks) == 4
    run_dir = ws["root"] / "runs" / "absorb"
    result = _cli(ws, ["train", "--effect", "contrast", "--image", str(ws["first"]), "--out", str(run_dir), "--absorb", f"{style}:0.5", "--rank", "0", *ws["common"]])
    _report("train --absorb", result, run_dir)
    stages = _manifest(run_dir)
    # in memory (the default): no absorbed model; the style is every training's first --base_weights
    assert "absorbed-model" not in stages and "copy-model" not in stages
    copy, effect = stages["copy-lora"], stages["contrast/effect-lora"]
    assert copy["inputs"]["weights000"]["path"] == str(style.resolve()) and copy["params"]["base_weights_multipliers"] == [0.5]
    assert effect["params"]["base_weights_multipliers"] == [0.5, 1.0] and effect["argv"][0][-4].endswith("base_weights_launcher.py")
    final = Path(result.stdout.strip().splitlines()[-1])
    assert validate_lora(final).ranks == [64]
    assert json.loads(read_safetensors(final).metadata["copymachine.absorbed"]) == [[style.name, 0.5]]
