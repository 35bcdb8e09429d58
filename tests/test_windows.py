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
    assert "copymachine: error: stage 'contrast: effect LoRA' (train_network.py) produced NaN loss" in stderr
    assert "█" in stderr and "学習ステップ数" in stderr  # the log's tail, as sd-scripts wrote it
    assert "Traceback" not in stderr
