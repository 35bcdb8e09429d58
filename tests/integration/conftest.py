"""Integration tests: the real sd-scripts, in its own Python, on fixtures built once outside the repo.

Everything under tests/integration is marked ``integration`` (``make test-integration``; the fast
suite deselects it). When sd-scripts, its Python or one of the modules it needs is missing, every
test here skips and says what is missing; when they are present, failures fail.

Environment:
  SD_SCRIPTS               sd-scripts checkout (default: <repo>/vendor/sd-scripts)
  SD_SCRIPTS_PYTHON        its Python (default: <SD_SCRIPTS>/venv/bin/python)
  COPYMACHINE_TEST_CACHE   fixture cache (default: ~/.cache/copymachine-integration)

The suite peaks at ~13 GB (merge, extract): run one integration suite at a time on a machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUILD_FIXTURES = HERE / "build_fixtures.py"
REQUIRED_MODULES = ("torch", "torchvision", "accelerate", "transformers", "diffusers", "library")


@pytest.hookimpl(tryfirst=True)  # before -m "not integration" deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _offline_hub():
    """No test may reach the Hugging Face hub: sd-scripts must find everything locally."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = old


@pytest.fixture(scope="session")
def sd_scripts_dir() -> Path:
    d = Path(os.environ.get("SD_SCRIPTS") or REPO / "vendor" / "sd-scripts").expanduser()
    if not (d / "train_network.py").is_file():
        pytest.skip(f"sd-scripts not found at {d} (no train_network.py); run `make sd-scripts` or set SD_SCRIPTS")
    return d.resolve()


@pytest.fixture(scope="session")
def sd_python(sd_scripts_dir: Path) -> Path:
    p = Path(os.environ.get("SD_SCRIPTS_PYTHON") or sd_scripts_dir / "venv" / "bin" / "python").expanduser()
    if not p.exists():
        pytest.skip(f"sd-scripts' Python not found at {p}; run `make sd-scripts` or set SD_SCRIPTS_PYTHON")
    probe = (
        "import importlib.util, sys\n"
        f"missing = [m for m in {REQUIRED_MODULES!r} if importlib.util.find_spec(m) is None]\n"
        "print(','.join(missing))\n"
    )
    r = subprocess.run([str(p), "-c", probe], cwd=sd_scripts_dir, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"sd-scripts' Python {p} does not run: {r.stderr.strip()[-300:]}")
    missing = [m for m in r.stdout.strip().split(",") if m]
    if missing:
        pytest.skip(f"sd-scripts' Python {p} lacks module(s): {', '.join(missing)}")
    return p


@pytest.fixture(scope="session")
def fixture_cache() -> Path:
    d = Path(os.environ.get("COPYMACHINE_TEST_CACHE") or Path.home() / ".cache" / "copymachine-integration").expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d.resolve()


def _build(sd_python: Path, sd_scripts_dir: Path, cache: Path, *extra: str) -> None:
    cmd = [str(sd_python), str(BUILD_FIXTURES), "--sd-scripts", str(sd_scripts_dir), "--out", str(cache), *extra]
    r = subprocess.run(cmd, cwd=sd_scripts_dir, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        pytest.fail(f"building fixtures failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")


@pytest.fixture(scope="session")
def tokenizer_cache_dir(sd_python: Path, sd_scripts_dir: Path, fixture_cache: Path) -> Path:
    d = fixture_cache / "tokenizers"
    if not (d / "openai_clip-vit-large-patch14" / "vocab.json").is_file():
        _build(sd_python, sd_scripts_dir, fixture_cache, "--tokenizers-only")
    return d


@pytest.fixture(scope="session")
def random_sd15(sd_python: Path, sd_scripts_dir: Path, fixture_cache: Path, tokenizer_cache_dir: Path) -> Path:
    # build_fixtures.py checks the file (header, size, marker) and skips it when valid
    _build(sd_python, sd_scripts_dir, fixture_cache)
    return fixture_cache / "sd15-random.safetensors"


@pytest.fixture(scope="session")
def random_sdxl(sd_python: Path, sd_scripts_dir: Path, fixture_cache: Path, tokenizer_cache_dir: Path) -> Path:
    """A random-weight SDXL-shaped checkpoint (6.9 GB; building it peaks at 14.8 GB RAM)."""
    _build(sd_python, sd_scripts_dir, fixture_cache, "--sdxl")
    return fixture_cache / "sdxl-random.safetensors"


@pytest.fixture(scope="session")
def random_anima(sd_python: Path, sd_scripts_dir: Path, fixture_cache: Path) -> dict[str, Path]:
    """Random-weight Anima files {"dit", "qwen3", "vae"}: paths (bf16, 4.2 + 1.2 + 0.25 GB; building peaks at
    ~11 GB RAM). The tokenizers are sd-scripts' own configs/qwen3_06b and configs/t5_old."""
    _build(sd_python, sd_scripts_dir, fixture_cache, "--anima")
    d = fixture_cache / "anima"
    return {"dit": d / "anima-dit-random.safetensors", "qwen3": d / "qwen3-06b-random.safetensors",
            "vae": d / "qwen-image-vae-random.safetensors"}


@pytest.fixture(scope="session")
def sd_env(sd_scripts_dir: Path) -> dict:
    """Environment for running sd-scripts: offline hub, its root importable, wide Rich console."""
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(sd_scripts_dir) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("COLUMNS", "200")
    return env


@pytest.fixture(scope="session")
def run_sd(sd_python: Path, sd_scripts_dir: Path, sd_env: dict):
    """run_sd(code, *args) runs a snippet inside sd-scripts' Python (cwd = its root)."""

    def run(code: str, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
        cmd = [str(sd_python), "-c", code, *args]
        return subprocess.run(cmd, cwd=sd_scripts_dir, capture_output=True, text=True, env=sd_env, timeout=timeout)

    return run
