"""On Anima, does sd-scripts' in-memory merge (--base_weights) give the same network as training on the model?

sd-scripts has no merge script for Anima, so there is no merged-file route to compare with (as there is for SD1.5,
test_copy_model_routes_real.py). What can be compared: merged in memory, a LoRA whose every weight delta is zero
(lora_up = 0) must leave the training exactly as it is without --base_weights. Through copymachine's launcher
(copymachine/sd_side/base_weights_launcher.py, wrapping networks.lora_anima) the two LoRAs must be bit-identical;
plain --base_weights is run too and its largest difference printed, which says whether the launcher's corrections
(class-level target lists, the RNG draw of the merged network, the float32 merge) matter on this family.
CPU, fp32, 64 px, 3 steps, rank 4: three trainings of ~70 s and ~12 GB each.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from test_anima_real import train_args, write_dataset

pytestmark = pytest.mark.integration
LAUNCHER = Path(__file__).resolve().parents[2] / "copymachine" / "sd_side" / "base_weights_launcher.py"


def _train(cmd: list[str], cwd: Path, env: dict, out: Path) -> dict[str, np.ndarray]:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return load_file(str(out / "anima_lora.safetensors"))


def _largest_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    if set(a) != set(b):
        return float("inf")
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)


def test_a_zero_lora_merged_in_memory_changes_nothing(tmp_path, sd_python, sd_scripts_dir, sd_env, random_anima):
    dataset = write_dataset(tmp_path)
    plain = _train(train_args(sd_python, random_anima, dataset, tmp_path / "a"), sd_scripts_dir, sd_env, tmp_path / "a")
    zero = {k: (np.zeros_like(v) if ".lora_up." in k else v) for k, v in plain.items()}
    save_file(zero, str(tmp_path / "zero.safetensors"))
    extra = ["--base_weights", str(tmp_path / "zero.safetensors"), "--base_weights_multiplier", "1.0"]
    cmd = train_args(sd_python, random_anima, dataset, tmp_path / "b") + extra
    launched = _train([cmd[0], str(LAUNCHER), "networks.lora_anima", *cmd[1:]], sd_scripts_dir, sd_env, tmp_path / "b")
    bare = _train(train_args(sd_python, random_anima, dataset, tmp_path / "c") + extra, sd_scripts_dir, sd_env,
                  tmp_path / "c")
    print(f"\nAnima, zero LoRA in memory: through the launcher max |diff| {_largest_difference(plain, launched)}; "
          f"plain --base_weights {_largest_difference(plain, bare)} ({len(bare)} vs {len(plain)} tensors)")
    assert _largest_difference(plain, launched) == 0.0
