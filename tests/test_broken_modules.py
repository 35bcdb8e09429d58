"""copymachine starts where a compiled module is broken (numpy 2 beside an opencv built for numpy 1:
`import cv2` fails). A stub `cv2` package first on PYTHONPATH fails to import exactly so; the
commands run in a subprocess, as a user would start them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from copymachine.lorafile import write_safetensors

CV2_ERROR = "numpy.core.multiarray failed to import"


def broken(tmp_path: Path, module: str, error: str = CV2_ERROR) -> dict[str, str]:
    stubs = tmp_path / "stubs"
    (stubs / module).mkdir(parents=True)
    (stubs / module / "__init__.py").write_text(f"raise ImportError({error!r})\n", encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(stubs)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for name in ("SD_SCRIPTS", "SD_SCRIPTS_PYTHON", "COPYMACHINE_CACHE"):
        env.pop(name, None)
    return env


def copymachine(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "copymachine", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def small_lora(path: Path) -> Path:
    rng = np.random.default_rng(0)
    module = "lora_unet_down_blocks_0_attentions_0_proj_in"
    write_safetensors(path, {
        f"{module}.lora_down.weight": rng.standard_normal((4, 8)).astype(np.float32),
        f"{module}.lora_up.weight": rng.standard_normal((8, 4)).astype(np.float32),
        f"{module}.alpha": np.array(4.0, dtype=np.float32),
    })
    return path


@pytest.mark.parametrize("module", ["cv2", "numpy"])
def test_help_starts(tmp_path, module):
    result = copymachine(broken(tmp_path, module), "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "doctor" in result.stdout and "Traceback" not in result.stderr


def test_inspect_reads_a_lora_without_cv2(tmp_path):
    lora = small_lora(tmp_path / "one.safetensors")
    result = copymachine(broken(tmp_path, "cv2"), "inspect", str(lora), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rank" in result.stdout.lower() and "Traceback" not in result.stderr


def test_doctor_names_the_broken_module_and_the_fix(fake_engine, tmp_path):
    env = broken(tmp_path, "cv2")
    result = copymachine(env, "doctor", "--sd-scripts", str(fake_engine.root), "--python", sys.executable, "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    own = [line for line in result.stdout.splitlines() if line.split()[1:2] == ["copymachine"]]
    assert own == [f"  FAIL  copymachine   cv2 fails to import in copymachine's Python ({sys.executable}): ImportError: {CV2_ERROR}; "
                   "opencv and numpy do not fit: pip install 'numpy<2' in that venv, or an opencv built for numpy 2 (opencv-python>=4.10)"]
    assert result.stdout.splitlines()[-1].startswith("not ready:")


def test_an_effect_that_needs_cv2_ends_in_one_line(tmp_path, scene_path):
    env = broken(tmp_path, "cv2")
    result = copymachine(env, "edit", "outline", str(scene_path), str(tmp_path / "edited.png"), cwd=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"copymachine: error: cv2 fails to import in copymachine's Python ({sys.executable}): ImportError: {CV2_ERROR}; "
        "opencv and numpy do not fit: pip install 'numpy<2' in that venv, or an opencv built for numpy 2 (opencv-python>=4.10)"
    ]
    assert not (tmp_path / "edited.png").exists()


def test_import_fix_hints():
    from copymachine.heavy import import_fix

    assert "numpy<2" in import_fix("cv2", "ImportError: numpy.core.multiarray failed to import")
    assert import_fix("voluptuous", "ModuleNotFoundError: No module named 'voluptuous'") == "pip install voluptuous in that venv"
    assert "pip install -e ." in import_fix("library", "ModuleNotFoundError: No module named 'library'")
    assert "opencv-python-headless" in import_fix("cv2", "ImportError: libGL.so.1: cannot open shared object file")
