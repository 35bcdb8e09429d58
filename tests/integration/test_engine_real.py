"""`copymachine doctor` against the real sd-scripts: the probe imports its modules, and copymachine
learns the version and what it can do (each script's --help once per checkout, then cached)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from copymachine import capabilities
from copymachine.engine import Engine, read_git_commit

pytestmark = pytest.mark.integration

# gen_img.py's per-prompt --f came with v0.9.0 (commit 153764a6)
WITHOUT_F = ("v0.8.7",)


def doctor(sd_scripts_dir, sd_python, tmp_path, cache):
    env = dict(os.environ, HF_HUB_OFFLINE="1", COPYMACHINE_ENGINE_CACHE=str(cache))
    t0 = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "copymachine", "doctor", "--sd-scripts", str(sd_scripts_dir), "--python", str(sd_python), "--out", str(tmp_path / "runs")],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    rows = {}
    for line in result.stdout.splitlines()[1:-1]:
        status, what, text = line.split(None, 2)
        rows.setdefault(what, f"{status} {text}")
    return result, rows, time.monotonic() - t0


def test_doctor_knows_the_engine(sd_scripts_dir, sd_python, tmp_path):
    cache = tmp_path / "engines"
    result, rows, first = doctor(sd_scripts_dir, sd_python, tmp_path, cache)
    assert "Traceback" not in result.stderr, result.stderr
    assert rows["packages"].startswith("ok everything sd-scripts imports is there"), result.stdout
    engine = Engine(root=sd_scripts_dir, python=str(sd_python), commit=read_git_commit(sd_scripts_dir))
    version, known = capabilities.name_version(engine)
    assert rows["engine"].split(" ", 1)[1].startswith(version), result.stdout
    naming = "no per-prompt --f: renders with --sequential_file_name" if version.split(" ")[0] in WITHOUT_F else "per-prompt file names (--f)"
    assert naming in rows["engine"], result.stdout
    assert rows["engine"].startswith("ok ") == known
    _, again, second = doctor(sd_scripts_dir, sd_python, tmp_path, cache)
    assert again["engine"] == rows["engine"]
    print(f"\n[engine] {version}: doctor {first:.1f} s (learns each script's --help), again {second:.1f} s (cached)")
