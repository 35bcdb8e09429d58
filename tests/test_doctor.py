"""`copymachine doctor` against the fake sd-scripts: what it prints and when it exits non-zero."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from copymachine import preflight
from copymachine.cli import cli
from copymachine.cli import doctor as doctor_module
from copymachine.engine import PINNED_COMMIT
from copymachine.errors import EXIT_ENVIRONMENT, EXIT_OUTPUT

GB = 1024**3


@pytest.fixture
def roomy(monkeypatch):
    """A machine with enough RAM and disk, whatever runs the tests."""
    monkeypatch.setattr(preflight.memory, "memory_bytes", lambda: {"total": 32 * GB, "available": 24 * GB, "swap": 0})
    monkeypatch.setattr(doctor_module, "free_bytes", lambda path: 100 * GB)


def doctor(fake_engine, tmp_path, *extra, sd_scripts=None):
    args = ["doctor", "--sd-scripts", str(sd_scripts or fake_engine.root), "--python", sys.executable, "--out", str(tmp_path / "runs"), *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def rows(result) -> dict[str, str]:
    out = {}
    for line in result.stdout.splitlines()[1:-1]:
        status, what = line.split()[:2]
        out.setdefault(what, f"{status} {line.split(None, 2)[2]}")
    return out


def test_ready_machine(fake_engine, tmp_path, roomy):
    result = doctor(fake_engine, tmp_path, "--tokenizer-cache-dir", str(fake_engine.tokenizers))
    assert result.exit_code == 0, result.output
    r = rows(result)
    assert r["sd-scripts"].startswith(f"warn {fake_engine.root} is not a git checkout")
    assert r["python"] == f"ok {sys.executable} (Python {sys.version.split()[0]}; given by --python)"
    assert r["packages"].startswith("ok everything sd-scripts imports is there")
    assert r["GPU"].startswith("warn torch 0.0+fake sees no CUDA GPU")
    assert r["RAM"].startswith("ok 32.0 GB (24.0 GB available")
    # the copy model stays in memory: a one-image run writes LoRAs, not a 4.3 GB model
    assert r["disk"].startswith(f"ok run folders {tmp_path / 'runs'} + cache {tmp_path / 'runs' / '_cache'}: 100.0 GB free; a one-image SD1.5 run writes ~") and r["disk"].endswith(" MB there")
    assert "training SD1.5 with the copy model in memory peaks at ~6.8 GB" in r["RAM"] and "--copy-model file merges into the checkpoint at float, ~13.4 GB" in r["RAM"]
    assert r["write"].startswith("ok access") and r["tokenizer"].startswith("ok ")
    assert r["engine"].startswith("warn a folder without .git (tree ")
    assert "not a release copymachine knows: per-prompt file names (--f); options: train_network.py 19" in r["engine"]
    assert r["training"] == (
        "ok size Stable Diffusion 1.x trains at about 512x512 px by default (its native size; e.g. a 2048x1536 picture at 576x448), "
        "the picture's aspect kept, sides multiples of 64; a generated original at its own size; --resolution N trains at about NxN px"
    )
    assert result.stdout.splitlines()[-1] == "ready (3 warning(s))"


def test_pinned_checkout_and_gpu(fake_engine, tmp_path, roomy, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "1")
    root = fake_engine.tree_copy(tmp_path / "sd-scripts", commit=PINNED_COMMIT)
    result = doctor(fake_engine, tmp_path, sd_scripts=root)
    assert result.exit_code == 0, result.output
    r = rows(result)
    assert r["sd-scripts"] == f"ok {root} (commit {PINNED_COMMIT[:8]}, the pinned one)"
    assert r["GPU"] == "ok torch 0.0+fake sees Fake GPU, 70.0 GB of 80.0 GB VRAM free; trains in bf16 (compute capability 8.6 >= 8.0: native bf16)"
    assert r["engine"].startswith("ok v0.10.1+5 (pinned): per-prompt file names (--f); options: ") and r["engine"].endswith("; tested")


def test_sd_scripts_missing(fake_engine, tmp_path, roomy):
    result = doctor(fake_engine, tmp_path, sd_scripts=tmp_path / "nowhere")
    assert result.exit_code == EXIT_ENVIRONMENT
    assert rows(result)["sd-scripts"].startswith("FAIL sd-scripts not found at")
    assert result.stdout.splitlines()[-1] == "not ready: 1 problem(s) would stop a run (sd-scripts)"


def test_python_lacking_a_dependency(fake_engine, tmp_path, roomy):
    root = fake_engine.tree_copy(tmp_path / "sd-scripts", without="voluptuous")
    result = doctor(fake_engine, tmp_path, sd_scripts=root)
    assert result.exit_code == EXIT_ENVIRONMENT
    assert "lacks voluptuous" in rows(result)["packages"]


def test_python_with_a_module_that_fails_to_import(fake_engine, tmp_path, roomy):
    """The probe imports each module: one that is found but fails (here a stub cv2 raising what
    numpy 2 makes an opencv built for numpy 1 raise) is named with the error and the fix."""
    root = fake_engine.tree_copy(tmp_path / "sd-scripts")
    (root / "cv2").mkdir()
    (root / "cv2" / "__init__.py").write_text("raise ImportError('numpy.core.multiarray failed to import')\n", encoding="utf-8")
    result = doctor(fake_engine, tmp_path, sd_scripts=root)
    assert result.exit_code == EXIT_ENVIRONMENT
    assert rows(result)["packages"] == (f"FAIL cv2 fails to import in the Python for sd-scripts ({sys.executable}): ImportError: numpy.core.multiarray "
                                        "failed to import; opencv and numpy do not fit: pip install 'numpy<2' in that venv, or an opencv built for numpy 2 (opencv-python>=4.10)")  # fmt: skip
    assert result.stdout.splitlines()[-1] == "not ready: 1 problem(s) would stop a run (packages)"


def test_too_little_disk_and_ram(fake_engine, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight.memory, "memory_bytes", lambda: {"total": 5 * GB, "available": 4 * GB, "swap": 1 * GB})
    monkeypatch.setattr(doctor_module, "free_bytes", lambda path: 0.2 * GB)
    result = doctor(fake_engine, tmp_path)
    assert result.exit_code == EXIT_ENVIRONMENT  # the first blocking problem: RAM
    r = rows(result)
    assert r["RAM"].startswith("FAIL 5.0 GB") and r["RAM"].endswith("not enough for training on the CPU (a GPU holds the model in VRAM and needs less)")
    assert r["disk"].startswith("FAIL ") and "205 MB free" in r["disk"]


def test_ram_for_the_default_route_but_not_for_a_merge_is_a_warning(fake_engine, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight.memory, "memory_bytes", lambda: {"total": 12 * GB, "available": 11 * GB, "swap": 0})
    monkeypatch.setattr(doctor_module, "free_bytes", lambda path: 100 * GB)
    r = rows(doctor(fake_engine, tmp_path))
    assert r["RAM"].startswith("warn 12.0 GB") and r["RAM"].endswith("enough for the default route, not for --copy-model file (a merge into the checkpoint)")


def test_run_folder_not_writable(fake_engine, tmp_path, roomy):
    a_file = tmp_path / "a file"
    a_file.write_text("x", encoding="utf-8")
    result = CliRunner().invoke(cli, ["doctor", "--sd-scripts", str(fake_engine.root), "--python", sys.executable, "--out", str(a_file / "runs"), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == EXIT_OUTPUT
    assert any(line.startswith("  FAIL  write access  cannot create the run folders") for line in result.stdout.splitlines()), result.stdout


def test_sdxl_at_float_fits_24_gb_in_memory_and_the_file_route_is_named(fake_engine, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight.memory, "memory_bytes", lambda: {"total": 24 * GB, "available": 23 * GB, "swap": 0})
    monkeypatch.setattr(doctor_module, "free_bytes", lambda path: 100 * GB)
    xl = fake_engine.make_checkpoint(tmp_path / "xl.safetensors", family="sdxl")
    r = rows(doctor(fake_engine, tmp_path, "--base", str(xl)))
    assert r["RAM"].startswith("warn 24.0 GB") and "training SDXL with the copy model in memory peaks at ~22.6 GB" in r["RAM"]
    assert "SDXL trains at about 1024x1024 px by default (its native size; e.g. a 2048x1536 picture at 1152x896)" in r["training"]
    assert r["RAM"].endswith("too little for --copy-model file at float; at fp16 it peaks at ~22.7 GB (--set merge.precision=fp16 --set merge.save_precision=fp16)")
