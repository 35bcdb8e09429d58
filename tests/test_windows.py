"""What copymachine does differently on Windows, tested where Windows cannot run: the decision
our code makes, with the Windows call behind a seam (RAM, long paths), or the Windows condition
made here (a redirected stdout in a legacy code page)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fake_sdscripts"


# --- encoding: a redirected stdout in cp1252 (Western Windows) or cp932 (Japanese Windows) ------


def _train(fake_engine, folder: Path, out: Path, encoding: str, fail: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING", "COPYMACHINE_FAKE_FAIL")}
    env.update(PYTHONIOENCODING=encoding, PYTHONUTF8="0", PYTHONPATH=str(ROOT))
    if fail:
        env["COPYMACHINE_FAKE_FAIL"] = fail
    argv = [sys.executable, "-m", "copymachine", "train", "--effect", "contrast", "--base", str(fake_engine.base),
            "--image", str(folder / "画像.png"), "--out", str(out), "--cache-dir", str(folder / "キャッシュ"),
            "--max-steps", "3", "--no-copy-check", *fake_engine.engine_args]  # fmt: skip
    return subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)


@pytest.mark.parametrize("encoding", ["cp1252", "cp932"])
def test_output_is_utf8_whatever_the_console_code_page(fake_engine, scene, tmp_path, encoding):
    """A Japanese run folder printed to a redirected stdout, the progress line's "·" and
    sd-scripts' tqdm bar "█" in an error: neither code page can write them all. The run must
    finish (not crash on the last line after all the training), and both streams read as UTF-8."""
    folder = tmp_path / "日本語 フォルダ"
    folder.mkdir()
    scene.image.resize((128, 128)).save(folder / "画像.png")

    done = _train(fake_engine, folder, folder / "出力", encoding)
    stdout, stderr = done.stdout.decode("utf-8"), done.stderr.decode("utf-8")  # strict: raises on anything else
    assert done.returncode == 0, stderr
    assert stdout == f"{folder / '出力' / '出力-contrast.safetensors'}\n"
    assert "step 3/3 · " in stderr
    assert "Traceback" not in stderr

    failed = _train(fake_engine, folder, folder / "失敗", encoding, fail="train_network:nan")
    stderr = failed.stderr.decode("utf-8")
    assert failed.returncode != 0
    assert "copymachine: error: stage 'contrast: effect LoRA (memo step 5)' (train_network.py) produced NaN loss" in stderr
    assert "█" in stderr and "学習ステップ数" in stderr  # the log's tail, as sd-scripts wrote it
    assert "Traceback" not in stderr


# --- RAM: pre-flight's source on each system --------------------------------------------------

GB = 10**9


def test_ram_comes_from_psutil(monkeypatch):
    from types import SimpleNamespace

    import psutil

    from copymachine import preflight

    here = preflight.memory_bytes()
    assert here["total"] and here["available"] and here["swap"] is not None  # this machine's
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(total=8 * GB, available=5 * GB))
    monkeypatch.setattr(psutil, "swap_memory", lambda: SimpleNamespace(total=2 * GB))
    mem = preflight.memory_bytes()
    assert mem == {"total": 8 * GB, "available": 5 * GB, "swap": 2 * GB}
    assert preflight.ram_and_swap(mem) == 10 * GB  # what the merge check compares with


# --- long paths: stems capped in folder names, the longest path checked before any work -------

# a booru-style file name: tags, then the post's MD5 (154 characters with "0.png")
BOORU = ("1girl_solo_long_hair_looking_at_viewer_smile_open_mouth_blue_eyes_blonde_hair_shirt_"
         "white_background_school_uniform__4f3c2a1b9e8d7c6b5a4f3e2d1c0b9a8f")  # fmt: skip
USER_RUNS = r"C:\Users\Hanako\Pictures\copymachine\runs"


@pytest.fixture
def booru(tmp_path):
    """A base model and two booru-named pictures that differ only in their last character."""
    import numpy as np
    from PIL import Image

    from copymachine.lorafile import write_safetensors

    base = tmp_path / "base.safetensors"
    write_safetensors(base, {"model.diffusion_model.input_blocks.0.0.weight": np.zeros(2, np.float16),
                             "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": np.zeros(2, np.float16)})  # fmt: skip
    images = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        path = tmp_path / f"{BOORU}{i}.png"
        Image.new("RGB", (512, 512), colour).save(path)
        images.append(path)
    sd = tmp_path / "sd-scripts"
    (sd / "networks").mkdir(parents=True)
    (sd / "train_network.py").write_text("", encoding="utf-8")
    return {"base": base, "images": images, "sd": sd}


def windows_plan(booru, images: int, run: str | None = None, effects=("contrast", "posterize")):
    """The plan of a copy-machine run as Windows would have it: its run folder under the user's
    Pictures (the default name, from the first picture) and the cache beside it."""
    from pathlib import PureWindowsPath

    from copymachine.engine import Engine
    from copymachine.files import HashCache
    from copymachine.methods import COPY_MACHINE, Folders, Request, make_sources, plan, run_folder
    from copymachine.models import SD1
    from copymachine.recipe import MEMO
    from copymachine.stages import Settings

    request = Request(method=COPY_MACHINE, base=booru["base"], family=SD1, effects=list(effects), recipe=MEMO,
                      sources=make_sources(booru["images"][:images], []))  # fmt: skip
    run_dir = PureWindowsPath(run) if run else PureWindowsPath(USER_RUNS) / run_folder(request).name
    settings = Settings(engine=Engine(root=booru["sd"], python="python3", commit=None), probe=None)
    return request, plan(request, settings, HashCache(None), Folders(run=run_dir, cache=run_dir.parent / "_cache"))


def test_picture_names_are_capped_in_folder_names_and_whole_in_the_manifest(booru):
    from copymachine.files import FOLDER_STEM_MAX, folder_stem

    request, p = windows_plan(booru, images=2)
    ids = [s.id for s in request.sources]
    assert all(len(i) == FOLDER_STEM_MAX for i in ids) and ids[0] != ids[1]  # same first characters, different hashes
    assert all(i.startswith(BOORU[: FOLDER_STEM_MAX - 9] + "-") for i in ids)
    assert p.run_dir.name == f"{folder_stem(booru['images'][0].stem)}-and-1"
    assert p.info.images == [str(i) for i in booru["images"]]
    assert p.info.image_folders == {ids[0]: f"{BOORU}0.png", ids[1]: f"{BOORU}1.png"}
    assert folder_stem("short name") == "short name"
    dotted = "x" * (FOLDER_STEM_MAX - 12) + " ..." + "y" * 30  # cut just after " .."
    assert folder_stem(dotted) == "x" * (FOLDER_STEM_MAX - 12) + "-" + folder_stem(dotted)[-8:]  # no trailing space or dot


@pytest.mark.parametrize("images", [1, 2])
def test_a_booru_name_under_the_users_pictures_fits_windows_limit(booru, images, monkeypatch):
    from copymachine import preflight

    monkeypatch.setattr(preflight.paths, "windows_long_paths_enabled", lambda: False)
    _, p = windows_plan(booru, images)
    longest = max(preflight.written_paths(p), key=lambda q: len(str(q)))
    assert str(longest).startswith(USER_RUNS + "\\")
    assert 150 < len(str(longest)) <= preflight.WINDOWS_PATH_LIMIT, longest
    preflight.check_path_lengths(p, platform="win32")  # no error


def test_a_path_past_the_limit_is_refused_up_front_unless_long_paths_are_enabled(booru, monkeypatch):
    from copymachine import preflight
    from copymachine.errors import OutputError

    asked = []
    monkeypatch.setattr(preflight.paths, "windows_long_paths_enabled", lambda: asked.append(1) or False)
    # --out naming the run after the picture's full name, deep in a synced folder
    deep = r"C:\Users\Hanako\OneDrive - Contoso Corporation\Documents\Stable Diffusion\LoRA training\copymachine" + "\\" + BOORU
    _, p = windows_plan(booru, images=2, run=deep)
    with pytest.raises(OutputError) as e:
        preflight.check_path_lengths(p, platform="win32")
    message = e.value.message
    assert message.startswith("this run would write paths of up to ")
    longest = max(preflight.written_paths(p), key=lambda q: len(str(q)))
    assert f"up to {len(str(longest))} characters" in message and str(longest) in message
    assert "LongPathsEnabled -Value 1" in message and r"HKLM:\SYSTEM\CurrentControlSet\Control\FileSystem" in message
    assert "--out C:\\runs\\NAME" in message
    assert asked == [1]
    # long paths enabled: the same run goes ahead; elsewhere than Windows the rule does not apply
    monkeypatch.setattr(preflight.paths, "windows_long_paths_enabled", lambda: True)
    preflight.check_path_lengths(p, platform="win32")
    monkeypatch.setattr(preflight.paths, "windows_long_paths_enabled", lambda: pytest.fail("asked off Windows"))
    preflight.check_path_lengths(p, platform="linux")
    # short paths never ask the registry
    _, short = windows_plan(booru, images=1, run=r"C:\runs\r")
    preflight.check_path_lengths(short, platform="win32")


def test_the_cli_refuses_a_too_long_run_before_any_stage(fake_engine, scene, tmp_path, monkeypatch):
    """Through the command (as on Windows without long paths: the platform and the registry are
    the seams): one line, exit 5, sd-scripts never called, no run folder made."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from copymachine import preflight
    from copymachine.cli import cli
    from copymachine.errors import EXIT_OUTPUT

    monkeypatch.setattr(preflight.paths, "sys", SimpleNamespace(platform="win32"))
    monkeypatch.setattr(preflight.paths, "windows_long_paths_enabled", lambda: False)
    image = tmp_path / f"{BOORU}.png"
    scene.image.resize((128, 128)).save(image)
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    argv = ["train", "--effect", "contrast", "--base", str(fake_engine.base), "--image", str(image), "--max-steps", "3", "--no-copy-check", *fake_engine.engine_args]
    result = CliRunner().invoke(cli, [*argv, "--out", str(deep / BOORU)])
    assert result.exit_code == EXIT_OUTPUT, result.output
    error = result.stderr.splitlines()[-1]
    assert error.startswith("copymachine: error: this run would write paths of up to ") and "LongPathsEnabled" in error
    assert fake_engine.calls() == [] and not (deep / BOORU).exists()
    # the default run folder (the capped stem) in a short folder: it runs
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    from copymachine.files import folder_stem

    run = tmp_path / "runs" / folder_stem(BOORU)
    assert result.stdout == f"{run / folder_stem(BOORU)}-contrast.safetensors\n"
