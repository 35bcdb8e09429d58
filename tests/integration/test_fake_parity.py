"""The fake's data (tests/fake_sdscripts/options.json and data/) still matches the sd-scripts checkout in use."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

FAKE = Path(__file__).resolve().parents[1] / "fake_sdscripts"


def _dump(sd_python, sd_scripts_dir, sd_env, script, out):
    r = subprocess.run([str(sd_python), str(FAKE / script), "--sd-scripts", str(sd_scripts_dir), "--out", str(out)],
                       cwd=sd_scripts_dir, env=sd_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_options_json_matches_the_scripts(sd_python, sd_scripts_dir, sd_env, tmp_path):
    _dump(sd_python, sd_scripts_dir, sd_env, "dump_options.py", tmp_path / "options.json")
    live = json.loads((tmp_path / "options.json").read_text())
    committed = json.loads((FAKE / "options.json").read_text())
    assert live["scripts"] == committed["scripts"] and live["dataset_schema"] == committed["dataset_schema"], (
        f"options.json was dumped from {committed['sd_scripts_commit']}, the checkout is {live['sd_scripts_commit']}: "
        "rerun tests/fake_sdscripts/dump_options.py"
    )


def test_key_and_module_lists_match_the_scripts(sd_python, sd_scripts_dir, sd_env, tmp_path):
    """Every file in data/: SD1/2/XL's from dump_modules.py, the DiT families' from dump_layouts.py."""
    for script in ("dump_modules.py", "dump_layouts.py"):
        _dump(sd_python, sd_scripts_dir, sd_env, script, tmp_path)
    for f in sorted((FAKE / "data").glob("*.json")):
        live, committed = json.loads((tmp_path / f.name).read_text()), json.loads(f.read_text())
        live.pop("_about"), committed.pop("_about")
        assert live == committed, f"{f.name} differs: rerun tests/fake_sdscripts/dump_modules.py or dump_layouts.py"
