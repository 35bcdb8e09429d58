"""The training size, EXIF orientation and the copy check's sampler against the real sd-scripts
at the pinned commit, on the CPU.

- A 2048x1536 picture with no --resolution: the dry run plans SD1.5's native area, 576x448
  (the configs sd-scripts would read say so); too slow to train for real on a CPU.
- A phone photo stored 256x192 with EXIF orientation 6 (192x256 upright) at --resolution 256:
  the copy LoRA trains at 192x320 (sd-scripts' own record of its dataset says so), not at the
  stored size's 320x192; then the copy check renders with `euler` at that size and scores luma
  SSIM at 256 px on the long side. On random weights nothing copies: the run stops there (exit 7).
"""

from __future__ import annotations

import json
import os

import pytest
import tomllib
from PIL import Image
from realkit import draw_original, run_cli

from copymachine.lorafile import read_safetensors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ws(tmp_path_factory, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    root = tmp_path_factory.mktemp("picture real")  # a space in every path
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    engine = ["--sd-scripts", str(sd_scripts_dir), "--python", str(sd_python), "--tokenizer-cache-dir", str(tokenizer_cache_dir), "--offline", "--device", "cpu"]
    common = ["train", "--effect", "contrast", "--base", str(random_sd15), "--cache-dir", str(root / "cache"), *engine]
    return {"root": root, "env": env, "common": common}


def test_a_large_picture_plans_the_native_area(ws):
    big = ws["root"] / "download.png"
    draw_original(ws["root"] / "square.png", 512)
    Image.open(ws["root"] / "square.png").resize((2048, 1536)).save(big)
    out = ws["root"] / "runs" / "big"
    result = run_cli([*ws["common"], "--image", str(big), "--out", str(out), "--dry-run"], ws["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "note: download.png is 2048x1536 px, far from the native 512x512 px area of Stable Diffusion 1.x: it trains on a copy resized to 576x448" in result.stderr
    assert "# training size of original: 576x448 (picture 2048x1536 px; the native 512x512 px area" in result.stdout
    configs = sorted((ws["root"] / "cache").rglob("*copy-lora-training.toml"))
    assert configs, result.stdout
    assert tomllib.loads(configs[0].read_text(encoding="utf-8"))["dataset"]["resolution"] == "576,448"
    datasets = sorted((ws["root"] / "cache").rglob("*copy-lora-dataset.toml"))
    assert tomllib.loads(datasets[0].read_text(encoding="utf-8"))["datasets"][0]["resolution"] == [576, 448]


def test_an_exif_rotated_photo_trains_upright_on_the_real_sd_scripts(ws):
    photo = ws["root"] / "phone photo.jpg"
    upright = Image.open(draw_original(ws["root"] / "drawn.png", 256)).resize((192, 256))
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns it 90° clockwise: the stored pixels are the upright ones turned back
    upright.transpose(Image.Transpose.ROTATE_90).save(photo, exif=exif, quality=95)
    with Image.open(photo) as im:
        assert im.size == (256, 192)
    out = ws["root"] / "runs" / "phone"
    args = [*ws["common"], "--image", str(photo), "--out", str(out), "--resolution", "256", "--max-steps", "3",
            "--set", "copy_check.steps=2", "--set", "copy_check.images=2"]  # fmt: skip
    result = run_cli(args, ws["env"], timeout=1500)
    print(result.stderr[-2500:])
    assert result.returncode == 7, result.stderr[-4000:]  # random weights do not copy
    assert "note: image phone photo.jpg: EXIF orientation 6: turned upright (192x256 px; stored as 256x192)" in result.stderr
    with Image.open(out / "original.png") as im:
        assert im.size == (192, 256)
        # upright: the drawing's sky band is at the top
        assert abs(im.getpixel((96, 10))[2] - 235) < 30
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["run"]["training_size"]["original"] == {"size": [192, 320], "picture": [192, 256], "why": "--resolution 256: about 256x256 px, aspect kept, sides multiples of 64"}
    # sd-scripts' own record of what it trained on
    lora = next((ws["root"] / "cache").rglob("copy-lora.safetensors"))
    md = read_safetensors(lora).metadata
    assert json.loads(md["ss_datasets"])[0]["resolution"] == [192, 320]  # (width, height) of its dataset
    assert md["modelspec.resolution"] == "192x320"
    # the copy check: rendered by gen_img.py with euler at the training size, scored as luma at 256 px
    scores = json.loads((out / "copy-check" / "copy-check.json").read_text(encoding="utf-8"))
    assert scores["sampler"] == "euler" and scores["size"] == [192, 320] and scores["ssim_of"] == "luma at 154x256"
    for i in (1, 2):
        with Image.open(out / "copy-check" / f"copy-{i}.png") as im:
            assert im.size == (192, 320)
    print("copy check on random weights (luma SSIM at 154x256):", [r["ssim"] for r in scores["images"]])
