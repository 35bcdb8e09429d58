"""Bad input: each case ends with one clear line (`copymachine: error: ...`), its documented exit
code, and nothing destroyed; the cases that must work (odd colour modes, odd sizes, odd paths)
work. Every row of docs/troubleshooting.md names its test here (or in the file it names; the
table is in docs/development.md). Runs `copymachine train` through CliRunner with the recording fake of sd-scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from killharness import child_of_lock, cmdline
from PIL import Image, ImageEnhance

from copymachine import preflight
from copymachine.cli import cli
from copymachine.errors import EXIT_BUSY, EXIT_ENGINE, EXIT_ENVIRONMENT, EXIT_INPUT, EXIT_OUTPUT
from copymachine.files import sha256_file
from copymachine.lorafile import validate_lora, write_safetensors
from copymachine.models import SD2


def invoke(args: list[str]):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("copymachine: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def image(tmp_path, scene) -> Path:
    path = tmp_path / "in" / "original.png"
    path.parent.mkdir()
    scene.image.resize((128, 128), Image.Resampling.LANCZOS).save(path)
    return path


def args(fake_engine, image, out, *extra, base=None):
    return ["train", "--effect", "contrast", "--base", base or fake_engine.base, "--image", image, "--out", out,
            "--resolution", "64", "--max-steps", "3", "--no-copy-check", *fake_engine.engine_args, *extra]  # fmt: skip


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (".lock", ".lock.flock")}


# --- the base model ----------------------------------------------------------------------------


def _base_case(tmp_path, fake_engine, case: str) -> Path:
    if case == "missing":
        return tmp_path / "no such model.safetensors"
    if case == "folder":
        (tmp_path / "a folder.safetensors").mkdir()
        return tmp_path / "a folder.safetensors"
    path = tmp_path / "model.safetensors"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        data = fake_engine.base.read_bytes()
        path.write_bytes(data[: len(data) - 1000])
    elif case == "not safetensors":
        path.write_text("this is a text file, not a model\n", encoding="utf-8")
    elif case == "ckpt":
        path = tmp_path / "model.ckpt"
        path.write_bytes(b"PK\x03\x04" + os.urandom(64))  # a torch zip: never opened by copymachine
    elif case == "pickle named safetensors":
        path.write_bytes(b"\x80\x02}q\x00." + os.urandom(64))
    elif case == "FLUX.1 without its files":
        write_safetensors(path, {"double_blocks.0.img_attn.qkv.weight": np.zeros((4, 4), np.float16)})
    elif case == "a LoRA":
        write_safetensors(path, {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": np.zeros((4, 4), np.float16)})
    return path


BASE_CASES = {
    "missing": "base model not found: ",
    "folder": "base model is a folder: ",
    "empty": "base model is empty (0 bytes): ",
    "truncated": "base model is truncated (1000 bytes missing; copy or download it again): ",
    "not safetensors": "base model is not a safetensors file (no valid header): ",
    "ckpt": "base model is a pickle file (.ckpt): ",
    "pickle named safetensors": "base model is a pickle file with a .safetensors suffix, not safetensors: ",
    "FLUX.1 without its files": "FLUX.1 schnell needs its other files beside the checkpoint: give --model-file clip_l=FILE "
                            "--model-file t5xxl=FILE --model-file ae=FILE (clip_l: the CLIP-L text encoder",
    "a LoRA": "base model is not a checkpoint of a family copymachine knows (SD1.x/2.x, SDXL, FLUX.1, SD3/3.5, Anima): "
              "found a LoRA, not a base model: ",
}


@pytest.mark.parametrize("case", list(BASE_CASES))
def test_bad_base_model(fake_engine, image, tmp_path, case):
    base = _base_case(tmp_path, fake_engine, case)
    out = tmp_path / "run"
    result = invoke(args(fake_engine, image, out, base=base))
    assert result.exit_code == EXIT_INPUT
    line = error_line(result)
    assert line.startswith("copymachine: error: " + BASE_CASES[case]), line
    if case == "ckpt":
        assert "loading a pickle can run code" in line and "--allow-pickle" in line
    assert not out.exists() and fake_engine.calls() == []


def test_ckpt_with_allow_pickle_is_handed_to_sd_scripts_unopened(fake_engine, image, tmp_path, monkeypatch):
    import pickle

    def refuse(*a, **k):
        raise AssertionError("copymachine unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    base = _base_case(tmp_path, fake_engine, "ckpt")
    result = invoke(args(fake_engine, image, tmp_path / "run", "--allow-pickle", "--dry-run", "--copy-model", "file", base=base))
    assert result.exit_code == 0, result.output
    assert "--allow-pickle: model.ckpt is a pickle; copymachine does not open it" in result.stderr
    assert "assuming Stable Diffusion 1.x" in result.stderr
    assert f"--sd_model {base}" in result.stdout  # merge_lora.py is given the .ckpt


@pytest.mark.parametrize("family", [SD2], ids=["SD2"])
def test_base_model_of_a_family_not_trained_yet(fake_engine, image, tmp_path, family):
    base = fake_engine.make_checkpoint(tmp_path / f"{family.name}.safetensors", family="sd2")
    result = invoke(args(fake_engine, image, tmp_path / "run", base=base))
    assert result.exit_code == EXIT_INPUT
    assert f"base model is {family.label}, which this version of copymachine does not train yet (supported: Stable Diffusion 1.x, SDXL, FLUX.1 dev" in error_line(result)


# --- images -------------------------------------------------------------------------------------


def _image_case(tmp_path, scene, case: str) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    path = folder / "picture.png"
    if case == "missing":
        return folder / "not there.png"
    if case == "not an image":
        path.write_text("hello", encoding="utf-8")
    elif case == "truncated":
        scene.image.save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "animated":
        path = folder / "picture.gif"
        frames = [scene.image.resize((128, 128)).rotate(a) for a in (0, 10, 20)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif case == "1x1":
        Image.new("RGB", (1, 1), (255, 0, 0)).save(path)
    return path


IMAGE_CASES = {
    "missing": "image not found: ",
    "not an image": "image: {path}: not an image Pillow can read",
    "truncated": "image: {path}: truncated or corrupt image",
    "animated": "image: {path}: has 3 frames (animated); save the one frame you want as a PNG",
    "1x1": "image is 1x1 px: too small to train on (at least 64 px a side; the memo used 512): ",
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_image(fake_engine, scene, tmp_path, case):
    path = _image_case(tmp_path, scene, case)
    out = tmp_path / "run"
    result = invoke(["train", "--effect", "contrast", "--base", fake_engine.base, "--image", path, "--out", out, *fake_engine.engine_args])
    assert result.exit_code == EXIT_INPUT
    line = error_line(result)
    assert line.startswith("copymachine: error: " + IMAGE_CASES[case].format(path=path)), line
    assert not out.exists() and fake_engine.calls() == []


@pytest.mark.slow
def test_a_picture_larger_than_4096_px_trains_at_the_native_area(fake_engine, tmp_path):
    """No size limit: a 4160x3120 picture trains SD1.5 at 576x448 (about 512², aspect kept),
    with one note saying so and how to change it; --resolution is the training size."""
    path = tmp_path / "big.png"  # a picture (not one colour, which the edit's check refuses), smooth and large
    small = np.random.default_rng(0).integers(0, 256, (39, 52, 3), dtype=np.uint8)
    Image.fromarray(small).resize((4160, 3120), Image.Resampling.BICUBIC).save(path)
    result = invoke(["train", "--effect", "contrast", "--base", fake_engine.base, "--image", path, "--out", tmp_path / "run", "--dry-run", *fake_engine.engine_args])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "big.png" in line]
    assert notes == [
        "note: big.png is 4160x3120 px, far from the native 512x512 px area of Stable Diffusion 1.x: it trains on a copy "
        "resized to 576x448 (aspect kept, sides multiples of 64; its edits alike); --resolution N trains at about NxN px instead"
    ]
    assert "steps at 576x448" in result.stdout  # the training size, in the stage listing
    assert "# training size of original: 576x448 (picture 4160x3120 px; the native 512x512 px area of Stable Diffusion 1.x, " in result.stdout
    result = invoke(["train", "--effect", "contrast", "--base", fake_engine.base, "--image", path, "--out", tmp_path / "run2", "--resolution", "1024", "--dry-run", *fake_engine.engine_args])
    assert result.exit_code == 0 and "steps at 1152x896" in result.stdout and "note: big.png" not in result.stderr


def test_an_exif_rotated_photo_trains_upright(fake_engine, scene, tmp_path):
    """A phone photo stored 256x192 with EXIF orientation 6 is 192x256 upright: original.png is
    upright and the LoRAs train at 192x320 at --resolution 256 (the stored size would give 320x192)."""
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    scene.image.resize((256, 192), Image.Resampling.LANCZOS).save(photo, exif=exif, quality=95)
    out = tmp_path / "run"
    result = invoke(["train", "--effect", "contrast", "--base", fake_engine.base, "--image", photo, "--out", out, "--resolution", "256",
                     "--max-steps", "3", "--no-copy-check", *fake_engine.engine_args])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "note: image phone.jpg: EXIF orientation 6: turned upright (192x256 px; stored as 256x192)" in result.stderr
    with Image.open(out / "original.png") as im:
        assert im.size == (192, 256)
    training = [c for c in fake_engine.calls() if c["script"].endswith("train_network.py")]
    assert [c["config"]["resolution"] for c in training] == ["192,320", "192,320"]
    assert training[0]["dataset_config"]["datasets"][0]["resolution"] == [192, 320]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["run"]["training_size"]["original"] == {"size": [192, 320], "picture": [192, 256], "why": "--resolution 256: about 256x256 px, aspect kept, sides multiples of 64"}


def test_image_modes_are_converted_and_train(fake_engine, scene, tmp_path):
    """RGBA, palette, 16-bit and CMYK images work: converted to 8-bit RGB, with a note."""
    folder = tmp_path / "modes"
    folder.mkdir()
    rgb = scene.image.resize((128, 128), Image.Resampling.LANCZOS)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((128, 128)))
    rgba.save(folder / "rgba.png")
    rgb.quantize(64).save(folder / "palette.png")
    grey16 = (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16)
    cv2.imwrite(str(folder / "grey16.png"), grey16)
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    out = tmp_path / "run"
    result = invoke(["train", "--effect", "contrast", "--base", fake_engine.base, "--images", folder, "--out", out, "--combine", "svd",
                     "--resolution", "64", "--max-steps", "3", "--no-copy-check", *fake_engine.engine_args])  # fmt: skip
    assert result.exit_code == 0, result.output
    for note in ("rgba.png: has transparency: composited onto white", "palette.png: a palette image: converted to RGB",
                 "grey16.png: 16-bit: reduced to 8 bits per channel", "cmyk.jpg: CMYK: converted to RGB"):  # fmt: skip
        assert f"note: image {note}" in result.stderr
    for stem in ("rgba", "palette", "grey16", "cmyk"):
        with Image.open(out / stem / "original.png") as im:
            assert im.mode == "RGB" and im.size == (128, 128)
    validate_lora(out / "run-contrast.safetensors", expected_rank=8)


def test_odd_paths_work_and_a_size_not_a_multiple_of_64_is_resized(fake_engine, scene, tmp_path):
    """Spaces, quotes, a backslash, %, a newline and Japanese characters in every path; an
    image of 100x90 px trains on a 512x512 copy (SD1.5's native area), with a note saying so."""
    weird = tmp_path / "a b 'single' \"double\" back\\slash 100% new\nline 日本語"
    weird.mkdir()
    base = weird / "base 'model'.safetensors"
    base.write_bytes(fake_engine.base.read_bytes())
    image = weird / "画像 %d.png"
    scene.image.resize((100, 90), Image.Resampling.LANCZOS).save(image)
    out = weird / "run \\ %s"
    result = invoke(["train", "--effect", "contrast", "--base", base, "--image", image, "--out", out, "--cache-dir", weird / "cache 日本",
                     "--max-steps", "3", "--no-copy-check", *fake_engine.engine_args])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "note: 画像 %d.png is 100x90 px, far from the native 512x512 px area of Stable Diffusion 1.x: it trains on a copy resized to 512x512" in result.stderr
    final = out / "run \\ %s-contrast.safetensors"
    assert result.stdout.endswith(str(final) + "\n")
    validate_lora(final, expected_rank=8)
    training = [c for c in fake_engine.calls() if c["script"].endswith("train_network.py")]
    assert training[0]["config"]["pretrained_model_name_or_path"] == str(base)
    assert training[0]["config"]["resolution"] == "512,512"
    assert Path(training[1]["config"]["output_dir"]) == out / "contrast" / ".partial" / "contrast--effect-lora"


# --- custom edits -------------------------------------------------------------------------------


@pytest.mark.parametrize("case, message", [
    ("another size", "size differs"),
    ("another picture", "not the same picture"),
])  # fmt: skip
def test_custom_edit_that_cannot_be_used(fake_engine, image, tmp_path, case, message):
    edited = tmp_path / "edit.png"
    original = Image.open(image)
    if case == "another size":
        ImageEnhance.Contrast(original).enhance(1.5).resize((64, 64)).save(edited)
    else:
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(edited)
    out = tmp_path / "run"
    result = invoke(["train", "--image", image, "--edited", edited, "--base", fake_engine.base, "--out", out, *fake_engine.engine_args])
    assert result.exit_code == EXIT_INPUT
    line = error_line(result)
    assert line.startswith(f"copymachine: error: your edit cannot be used ({edited}): ") and message in line, line
    assert fake_engine.calls() == []  # refused before any training


# --- sd-scripts ---------------------------------------------------------------------------------


def test_sd_scripts_not_found(fake_engine, image, tmp_path):
    missing = tmp_path / "no sd-scripts"
    result = invoke(["train", "--effect", "contrast", "--base", fake_engine.base, "--image", image, "--out", tmp_path / "run", "--sd-scripts", missing, "--python", sys.executable])
    assert result.exit_code == EXIT_ENVIRONMENT
    assert error_line(result) == f"copymachine: error: sd-scripts not found at {missing} (--sd-scripts): no train_network.py there"


def test_sd_scripts_not_at_the_pinned_commit_warns(fake_engine, image, tmp_path):
    root = fake_engine.tree_copy(tmp_path / "sd-scripts copy", commit="0123456789abcdef0123456789abcdef01234567")
    engine = ["--sd-scripts", root, *fake_engine.engine_args[2:]]
    result = invoke(["train", "--effect", "contrast", "--base", fake_engine.base, "--image", image, "--out", tmp_path / "run", "--dry-run", *engine])
    assert result.exit_code == 0, result.output
    assert f"warning: sd-scripts at {root} is at commit 01234567, not the pinned 48d368fa; copymachine is tested against the pinned one" in result.stderr


def test_sd_scripts_python_lacking_a_dependency(fake_engine, image, tmp_path):
    root = fake_engine.tree_copy(tmp_path / "sd-scripts copy", without="einops")
    engine = ["--sd-scripts", root, *fake_engine.engine_args[2:]]
    result = invoke(["train", "--effect", "contrast", "--base", fake_engine.base, "--image", image, "--out", tmp_path / "run", *engine])
    assert result.exit_code == EXIT_ENVIRONMENT
    assert error_line(result) == (f"copymachine: error: the Python for sd-scripts ({sys.executable}) lacks einops; "
                                  "install sd-scripts' requirements into it: pip install -r requirements.txt (and torch)")  # fmt: skip


def test_sd_scripts_python_with_a_broken_cv2_stops_before_any_stage(fake_engine, image, tmp_path):
    """numpy 2 beside an opencv built for numpy 1: cv2 is there but fails to import (a stub cv2 in
    the sd-scripts tree, which is first on that Python's path)."""
    root = fake_engine.tree_copy(tmp_path / "sd-scripts copy")
    (root / "cv2").mkdir()
    (root / "cv2" / "__init__.py").write_text("raise ImportError('numpy.core.multiarray failed to import')\n", encoding="utf-8")
    engine = ["--sd-scripts", root, *fake_engine.engine_args[2:]]
    result = invoke(["train", "--effect", "contrast", "--base", fake_engine.base, "--image", image, "--out", tmp_path / "run", *engine])
    assert result.exit_code == EXIT_ENVIRONMENT
    assert error_line(result) == (f"copymachine: error: cv2 fails to import in the Python for sd-scripts ({sys.executable}): "
                                  "ImportError: numpy.core.multiarray failed to import; opencv and numpy do not fit: "
                                  "pip install 'numpy<2' in that venv, or an opencv built for numpy 2 (opencv-python>=4.10)")  # fmt: skip
    assert fake_engine.calls() == [] and not (tmp_path / "run").exists()


def test_nan_only_in_the_output_file(fake_engine, image, tmp_path, monkeypatch):
    """resize_lora.py prints no loss: its NaN output is caught when the file is checked."""
    monkeypatch.setenv("COPYMACHINE_FAKE_FAIL", "resize_lora:nan")
    out = tmp_path / "run"
    result = invoke(args(fake_engine, image, out))
    assert result.exit_code == EXIT_ENGINE
    line = error_line(result)
    assert "stage 'contrast: resize to rank 8 (memo step 9)' wrote an unusable lora-r8.safetensors: " in line and "holds NaN or infinite values" in line
    assert f"Log: {out / 'logs' / 'contrast--resize.log'}" in line and "  | " in result.stderr
    assert not (out / "contrast" / "lora-r8.safetensors").exists() and not (out / "run-contrast.safetensors").exists()


# --- the output ---------------------------------------------------------------------------------


@pytest.fixture
def finished_run(fake_engine, image, tmp_path):
    out = tmp_path / "run"
    result = invoke(args(fake_engine, image, out))
    assert result.exit_code == 0, result.output
    return out


def test_run_folder_holding_another_run(fake_engine, finished_run, scene, tmp_path):
    other = tmp_path / "other.png"
    scene.image.resize((128, 128)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    before = snapshot(finished_run)
    result = invoke(args(fake_engine, other, finished_run))
    assert result.exit_code == EXIT_OUTPUT
    assert error_line(result) == f"copymachine: error: run folder {finished_run} holds another run (other images (original.png)); use another --out, or --force to replace its results"
    assert snapshot(finished_run) == before
    # the same command again is a resume, not another run; another effect is a parameter
    result = invoke(args(fake_engine, finished_run.parent / "in" / "original.png", finished_run, "--effect", "flat"))
    assert result.exit_code == 0, result.output
    # --force replaces it
    result = invoke(args(fake_engine, other, finished_run, "--force"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((finished_run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["run"]["images"] == [str(other)]


def test_final_file_not_made_by_this_run(fake_engine, image, finished_run):
    mine = finished_run / "mine.safetensors"
    mine.write_bytes(b"my own file")
    result = invoke(args(fake_engine, image, finished_run, "--name", "mine"))
    assert result.exit_code == EXIT_OUTPUT
    assert error_line(result) == f"copymachine: error: {mine} exists and was not made by this run; use another --name or --out, or --force to replace it"
    assert mine.read_bytes() == b"my own file"


def test_out_is_a_folder_that_is_not_a_run_folder(fake_engine, image, tmp_path):
    out = tmp_path / "holiday photos"
    out.mkdir()
    (out / "beach.jpg").write_bytes(b"...")
    result = invoke(args(fake_engine, image, out))
    assert result.exit_code == EXIT_OUTPUT
    assert error_line(result) == (f"copymachine: error: --out {out} is not empty and is not a copymachine run folder (no manifest.json; "
                                  "it holds 'beach.jpg'); use a new or empty folder, or --force to write into it")  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["beach.jpg"]


def test_a_run_killed_before_its_manifest_resumes(fake_engine, image, tmp_path):
    """Ctrl-C at a run's start leaves only its lock files (filelock keeps `.lock.flock`): the re-run resumes."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("{}", encoding="utf-8")
    (out / ".lock.flock").write_bytes(b"")
    result = invoke(args(fake_engine, image, out))
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()


def test_dry_run_into_a_folder_that_is_not_a_run_folder(fake_engine, image, tmp_path):
    """A dry run writes configs: it passes the same output checks as the run, and writes nothing."""
    out = tmp_path / "holiday photos"
    out.mkdir()
    (out / "beach.jpg").write_bytes(b"...")
    result = invoke(args(fake_engine, image, out, "--dry-run"))
    assert result.exit_code == EXIT_OUTPUT
    assert "is not empty and is not a copymachine run folder" in error_line(result)
    assert sorted(p.name for p in out.iterdir()) == ["beach.jpg"]


def test_out_not_writable(fake_engine, image, tmp_path):
    a_file = tmp_path / "a file"
    a_file.write_text("x", encoding="utf-8")
    result = invoke(args(fake_engine, image, a_file / "run", "--cache-dir", tmp_path / "cache"))
    assert result.exit_code == EXIT_OUTPUT
    assert error_line(result) == f"copymachine: error: cannot create the run folder {a_file / 'run'}: {a_file} is a file, not a folder"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_out_without_write_permission(fake_engine, image, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = invoke(args(fake_engine, image, locked / "run", "--cache-dir", tmp_path / "cache"))
    finally:
        locked.chmod(0o755)
    assert result.exit_code == EXIT_OUTPUT
    assert "cannot write to the run folder" in error_line(result)


def test_not_enough_disk_space(fake_engine, image, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight.disk, "free_bytes", lambda path: 300 * preflight.MB)
    out = tmp_path / "run"
    result = invoke(args(fake_engine, image, out))
    assert result.exit_code == EXIT_OUTPUT
    line = error_line(result)
    assert line.startswith("copymachine: error: not enough disk space at ") and "300 MB free" in line
    assert "--cache-dir" in line and fake_engine.calls() == [] and not (out / "manifest.json").exists()


def test_disk_space_estimate_counts_only_what_is_left(fake_engine, image, tmp_path):
    """The copy model of an SD1.5 checkpoint at float is ~4.3 GB (file route); in memory nothing of
    that size is written; a finished stage needs nothing."""
    from copymachine.files import HashCache
    from copymachine.methods import COPY_MACHINE, Request, make_sources, plan
    from copymachine.models import SD1, ModelInfo
    from copymachine.recipe import MEMO, apply_overrides
    from copymachine.stages import Settings

    model = ModelInfo(path=tmp_path / "x.ckpt", family=SD1, size_bytes=0, tensor_count=0)  # the family's typical size
    memory = Request(method=COPY_MACHINE, base=fake_engine.base, family=SD1, effects=["contrast"], recipe=MEMO, sources=make_sources([image], []), out=tmp_path / "m")
    memory_plan = plan(memory, Settings(engine=None, probe=None), HashCache(None))
    assert sum(n.bytes for n in preflight.estimate_space(memory_plan, model, preflight.model_parameters(model))) < 0.6e9  # LoRAs only
    recipe = apply_overrides(MEMO, {"merge": {"copy_model": "file"}}, "--set")
    request = Request(method=COPY_MACHINE, base=fake_engine.base, family=SD1, effects=["contrast"], recipe=recipe, sources=make_sources([image], []), out=tmp_path / "r")
    the_plan = plan(request, Settings(engine=None, probe=None), HashCache(None))
    needs = {n.folder.parent.name + "/" + n.folder.name[:4]: n.bytes for n in preflight.estimate_space(the_plan, model, preflight.model_parameters(model))}
    total = sum(needs.values())
    assert 4.4e9 < total < 5.5e9, needs
    copy_model = [n for n in preflight.estimate_space(the_plan, model, preflight.model_parameters(model)) if "copy-model" in str(n.folder)]
    assert abs(copy_model[0].bytes - 4.27e9) < 0.1e9


# --- recipe files -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("[copy]\nnetwrk_dim = 32\n", "unknown key copy.netwrk_dim; valid keys in [copy]: network_module, network_dim,"),
    ("[coppy]\nnetwork_dim = 32\n", "unknown recipe section [coppy]; valid sections: "),
])  # fmt: skip
def test_unknown_recipe_keys(fake_engine, image, tmp_path, text, message):
    recipe = tmp_path / "my recipe.toml"
    recipe.write_text(text, encoding="utf-8")
    result = invoke(args(fake_engine, image, tmp_path / "run", "--recipe", recipe))
    assert result.exit_code == EXIT_INPUT
    assert message in error_line(result)


# --- numbers out of range: refused before any work, by the check where the number is defined ---


@pytest.mark.parametrize("extra, message", [
    (["--amount", "50"], "--amount 50.0 must be a number from -2 to 2 (1 = the full edit"),
    (["--amount", "-3"], "--amount -3.0 must be a number from -2 to 2"),
    (["--rank", "100"], "--rank 100 is above the rank the LoRA has before the resize (64): resize_lora.py cannot add rank; give --rank 64 or less, or --rank 0 to keep rank 64"),
    (["--set", "copy.learning_rate=0"], "--set: recipe copy.learning_rate=0.0 must be above 0 and at most 1"),
    (["--set", "effect.network_alpha=-1"], "recipe effect.network_alpha=-1.0 must be above 0"),
    (["--set", "copy.network_dim=5000"], "recipe copy.network_dim=5000 must be from 1 to 1024"),
    (["--set", "copy.learning_rate=nan"], "recipe copy.learning_rate=nan must be a finite number"),
    (["--set", "preview.sampler=euler-a"], "recipe preview.sampler='euler-a' must be one of ddim, pndm"),
    (["--set", "copy_check.scale=0"], "recipe copy_check.scale=0.0 must be above 0 and at most 50"),
    (["--set", "generate.seed=-1"], "recipe generate.seed=-1 must be from 0 to 4294967295"),
    (["--set", "merge.ratio=3"], "recipe merge.ratio=3.0 must be above 0 and at most 2"),
    (["--set", "preview.strengths=-1,0,50"], "recipe preview.strengths: 50 must be from -10 to 10"),
    (["--set", "svd.precision=fp16"], "recipe svd.precision='fp16' must be one of float (svd_merge_lora.py's SVD needs fp32)"),
    (["--set", "contrast.factor=99"], "contrast: factor=99: must be"),
    (["--absorb", "STYLE:nan"], "ratio nan must be a finite number"),
])  # fmt: skip
def test_numbers_out_of_range(fake_engine, image, tmp_path, extra, message, small_lora):
    out = tmp_path / "run"
    extra = [str(small_lora(tmp_path / "style.safetensors")) + e[5:] if e.startswith("STYLE") else e for e in extra]
    result = invoke(args(fake_engine, image, out, *extra))
    assert result.exit_code == EXIT_INPUT, result.output
    assert message in error_line(result)
    assert fake_engine.calls() == [] and not out.exists()


def test_rank_of_the_trained_lora_says_what_the_file_keeps(fake_engine, image, tmp_path):
    """--rank 64 on a dim-64 training (or --rank 0): no resize, and the run says which rank and
    precision the final LoRA has."""
    result = invoke(args(fake_engine, image, tmp_path / "run", "--rank", "64", "--dry-run"))
    assert result.exit_code == 0, result.output
    assert "note: contrast: the final LoRA keeps rank 64 and the trained precision (float); resize_lora.py (and its fp16) runs only below rank 64" in result.output
    assert "resize_lora.py" not in result.output.replace("resize_lora.py (and", "")


def test_rank_above_what_a_difference_can_hold(fake_engine, image, tmp_path):
    cmd = args(fake_engine, image, tmp_path / "run", "--rank", "200")
    cmd[0] = "diff"
    result = invoke(cmd)
    assert result.exit_code == EXIT_INPUT
    assert "--rank 200 is above what 2 LoRA(s) of rank 64 can hold together (128)" in error_line(result)


# --- two runs at once ---------------------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_on_the_same_cache(fake_engine, image, tmp_path):
    """The second run on a cache entry another run is building says who holds it (--no-wait,
    exit 6), or waits for it and then finds the copy machine done."""
    cache = tmp_path / "cache"
    first = args(fake_engine, image, tmp_path / "first", "--cache-dir", cache)
    env = dict(os.environ, COPYMACHINE_FAKE_STEP_SECONDS="3")  # the copy LoRA trains for 9 s: the second run starts (its probe imports what sd-scripts imports) within that
    proc = subprocess.Popen([sys.executable, "-m", "copymachine", *map(str, first)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        child = child_of_lock(tmp_path / "first", proc.pid)
        if child and "train_network.py" in cmdline(child):
            break
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("the first run did not start training")
    second = args(fake_engine, image, tmp_path / "second", "--cache-dir", cache)
    result = invoke(second + ["--no-wait"])
    assert result.exit_code == EXIT_BUSY
    line = error_line(result)
    # (the copy LoRA's entry, or the copy model's when the first run got there meanwhile)
    assert line.startswith(f"copymachine: error: cache entry {cache / 'copy-'}") and f"is in use by copymachine pid {proc.pid} on " in line
    assert line.endswith("; wait for it to finish, or use another --out / --cache-dir")
    waiting = subprocess.run([sys.executable, "-m", "copymachine", *map(str, second)], capture_output=True, text=True, encoding="utf-8", timeout=60)
    proc.terminate()  # the first run's own effect LoRA is not needed here (SIGTERM: it stops cleanly)
    assert proc.wait(timeout=60) in (0, 130)
    assert waiting.returncode == 0, waiting.stderr
    assert "waiting for another run building copy " in waiting.stderr
    assert "copy LoRA (memo step 2): up to date, skipped" in waiting.stderr


def test_tool_output_path_holding_another_file(fake_engine, small_lora, tmp_path):
    """`copymachine resize/merge/extract/svd-merge --out FILE` replaces only what it made, unless --force."""
    lora = small_lora(tmp_path / "in.safetensors")
    out = tmp_path / "mine.safetensors"
    out.write_bytes(b"my own file")
    command = ["resize", lora, "--rank", "2", "--out", out, *fake_engine.engine_args]
    result = invoke(command)
    assert result.exit_code == EXIT_OUTPUT
    assert error_line(result) == f"copymachine: error: {out} exists and was not made by copymachine resize; use another --out, or --force to replace it"
    assert out.read_bytes() == b"my own file"
    assert invoke(command + ["--force"]).exit_code == 0
    assert invoke(command[:2] + ["--rank", "3"] + command[4:]).exit_code == 0  # its own output: replaced without --force
    validate_lora(out, expected_rank=3)


def test_tool_ratio_out_of_range(fake_engine, small_lora, tmp_path):
    lora = small_lora(tmp_path / "a.safetensors")
    out = tmp_path / "out" / "d.safetensors"
    result = invoke(["svd-merge", "--lora", f"{lora}:50", "--rank", "2", "--out", out, *fake_engine.engine_args])
    assert result.exit_code == EXIT_INPUT
    assert f"{lora}:50: ratio 50 must be from -10 to 10" in error_line(result)
    assert not out.exists() and fake_engine.calls() == []
