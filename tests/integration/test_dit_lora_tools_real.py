"""The LoRA tools copymachine runs after the trainings, on FLUX.1's and SD3.5's LoRA layouts, with the real
sd-scripts: `svd_merge_lora.py` (the difference B - A) and `resize_lora.py` (the final rank). FLUX.1 and SD3.5
themselves do not fit this machine, but these tools read only the LoRAs: two rank-4 LoRAs with every module name
sd-scripts' lora_flux / lora_sd3 give (tests/fake_sdscripts/data/lora_modules_*.json), each module's sizes cut to
32 x 32 so that the run takes seconds. Checked: the same modules come out, at the asked rank, and each module's merged
delta points as B - A cut to rank 4 does (cosine; svd_merge_lora clamps U and Vh at their 0.99 quantile, which on
matrices this small moves the result by ~9 % in norm: measured min cosine 0.973, mean 0.995)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[1] / "fake_sdscripts" / "data"
SIDE = 32


def _lora(path: Path, family: str, seed: int) -> Path:
    modules = json.loads((DATA / f"lora_modules_{family}.json").read_text(encoding="utf-8"))["modules"]
    rng = np.random.default_rng(seed)
    tensors = {}
    for m in modules:
        tensors[f"{m['name']}.lora_down.weight"] = rng.normal(0, 0.1, (4, SIDE)).astype(np.float32)
        tensors[f"{m['name']}.lora_up.weight"] = rng.normal(0, 0.1, (SIDE, 4)).astype(np.float32)
        tensors[f"{m['name']}.alpha"] = np.array(4.0, np.float32)
    save_file(tensors, str(path), metadata={"ss_network_module": f"networks.lora_{family.split('-')[0][:4]}"})
    return path


def _delta(t: dict[str, np.ndarray], name: str) -> np.ndarray:
    down, up = t[f"{name}.lora_down.weight"].astype(np.float64), t[f"{name}.lora_up.weight"].astype(np.float64)
    alpha = float(t[f"{name}.alpha"]) if f"{name}.alpha" in t else down.shape[0]
    return up @ down * (alpha / down.shape[0])


@pytest.mark.parametrize("family", ["flux", "sd3-5-large"])
def test_svd_merge_and_resize_on_the_family_layout(tmp_path, sd_python, sd_scripts_dir, sd_env, family):
    a, b = _lora(tmp_path / "a.safetensors", family, 1), _lora(tmp_path / "b.safetensors", family, 2)
    merged, resized = tmp_path / "diff.safetensors", tmp_path / "r2.safetensors"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(sd_python), *args], cwd=sd_scripts_dir, env=sd_env, capture_output=True, text=True,
                              timeout=1200)

    r = run("networks/svd_merge_lora.py", "--models", str(a), str(b), "--ratios", "-1", "1", "--new_rank", "4",
            "--save_precision", "float", "--precision", "float", "--save_to", str(merged), "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("networks/resize_lora.py", "--model", str(merged), "--new_rank", "2", "--save_to", str(resized),
            "--save_precision", "fp16", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    ta, tb, tm, tr = (load_file(str(p)) for p in (a, b, merged, resized))
    names = sorted(k[: -len(".lora_down.weight")] for k in ta if k.endswith(".lora_down.weight"))
    assert sorted(k[: -len(".lora_down.weight")] for k in tm if k.endswith(".lora_down.weight")) == names
    assert {tr[f"{n}.lora_down.weight"].shape[0] for n in names} == {2}
    cosines = []
    for name in names:
        u, s, vh = np.linalg.svd(_delta(tb, name) - _delta(ta, name))
        want, got = (u[:, :4] * s[:4]) @ vh[:4], _delta(tm, name)
        cosines.append(float((want * got).sum() / np.linalg.norm(want) / np.linalg.norm(got)))
    print(f"\n{family}: {len(names)} modules; svd_merge_lora vs B - A at rank 4: cosine min {min(cosines):.3f}, "
          f"mean {np.mean(cosines):.3f}")
    assert min(cosines) > 0.95  # the sign is B - A's, the direction kept
