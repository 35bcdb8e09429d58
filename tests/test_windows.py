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


# --- RAM: pre-flight's source on each system --------------------------------------------------

GB = 10**9


@pytest.fixture
def no_psutil(monkeypatch):
    """psutil is not a dependency of copymachine: the system's own source is what most users get."""
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` raises ImportError


def test_ram_on_windows_comes_from_global_memory_status(no_psutil, monkeypatch):
    from copymachine import preflight

    assert ctypes_size() == 64  # the size Windows checks in dwLength
    calls = []

    def status():
        calls.append(1)
        # 16 GB of RAM and a 4 GB page file: the "page file" total is the commit limit, RAM + page files
        return {"dwLength": 64, "dwMemoryLoad": 40, "ullTotalPhys": 16 * GB, "ullAvailPhys": 9 * GB, "ullTotalPageFile": 20 * GB,
                "ullAvailPageFile": 11 * GB, "ullTotalVirtual": 128 * GB, "ullAvailVirtual": 127 * GB, "ullAvailExtendedVirtual": 0}  # fmt: skip

    monkeypatch.setattr(preflight, "global_memory_status", status)
    mem = preflight.memory_bytes("win32")
    assert calls == [1]
    assert mem == {"total": 16 * GB, "available": 9 * GB, "swap": 4 * GB}
    assert preflight.ram_and_swap(mem) == 20 * GB  # what the merge check compares with: known, so it is made
    # no page file: the commit limit can read a little under the RAM; the swap is 0, never negative
    monkeypatch.setattr(preflight, "global_memory_status", lambda: {**status(), "ullTotalPageFile": 16 * GB - 4096})
    assert preflight.memory_bytes("win32")["swap"] == 0
    # the call failing: unknown (the check says so), not a crash
    monkeypatch.setattr(preflight, "global_memory_status", lambda: (_ for _ in ()).throw(OSError("GlobalMemoryStatusEx failed")))
    assert preflight.memory_bytes("win32") == {"total": None, "available": None, "swap": None}


def ctypes_size() -> int:
    import ctypes

    from copymachine import preflight

    return ctypes.sizeof(preflight._MEMORYSTATUSEX)


def test_ram_on_macos_comes_from_sysctl_and_vm_stat(no_psutil, monkeypatch):
    from copymachine import preflight

    outputs = {
        "sysctl": "17179869184\ntotal = 2048.00M  used = 1085.25M  free = 962.75M  (encrypted)\n",
        "vm_stat": "Mach Virtual Memory Statistics: (page size of 16384 bytes)\nPages free:                               12000.\n"
                   "Pages active:                            300000.\nPages inactive:                          200000.\n"
                   "Pages speculative:                         8000.\nPages wired down:                        150000.\n",
    }  # fmt: skip
    monkeypatch.setattr(preflight, "_command_text", lambda argv: outputs[argv[0]])
    assert preflight.memory_bytes("darwin") == {"total": 16 * 2**30, "available": 16384 * 220000, "swap": 2048 * 2**20}


def test_ram_on_linux_and_from_psutil(no_psutil, monkeypatch):
    from types import SimpleNamespace

    from copymachine import preflight

    linux = preflight.memory_bytes("linux")
    assert linux["total"] and linux["available"] and linux["swap"] is not None  # this machine's /proc/meminfo
    fake = SimpleNamespace(virtual_memory=lambda: SimpleNamespace(total=8 * GB, available=5 * GB), swap_memory=lambda: SimpleNamespace(total=2 * GB))
    monkeypatch.setitem(sys.modules, "psutil", fake)
    assert preflight.memory_bytes("win32") == {"total": 8 * GB, "available": 5 * GB, "swap": 2 * GB}  # psutil first, where it is installed
