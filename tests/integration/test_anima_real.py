"""sd-scripts' anima_train_network.py on the CPU: 3 steps, 64 px, rank 4, on random-weight Anima files.

Runs sd-scripts directly (not through copymachine). Measured: ~45-70 s and ~12 GB peak RSS
(fp32 DiT, 2B parameters), after building the fixtures once (~3 min, ~11 GB peak, 5.6 GB on disk).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from build_fixtures import read_safetensors_header
from realkit import draw_original

pytestmark = pytest.mark.integration


def train_args(python: Path, anima: dict[str, Path], dataset: Path, out: Path) -> list[str]:
    return [
        str(python), "anima_train_network.py",
        "--pretrained_model_name_or_path", str(anima["dit"]), "--qwen3", str(anima["qwen3"]), "--vae", str(anima["vae"]),
        "--dataset_config", str(dataset), "--output_dir", str(out), "--output_name", "anima_lora",
        "--save_model_as", "safetensors", "--network_module", "networks.lora_anima",
        "--network_dim", "4", "--network_alpha", "4", "--network_train_unet_only",
        "--learning_rate", "1e-4", "--optimizer_type", "AdamW", "--lr_scheduler", "constant",
        "--max_train_steps", "3", "--mixed_precision", "no", "--seed", "0",
        "--cache_latents", "--cache_text_encoder_outputs", "--max_data_loader_n_workers", "0",
    ]  # fmt: skip


def write_dataset(tmp_path: Path) -> Path:
    """One 64 px drawn image and its caption, and the dataset TOML over them."""
    images = tmp_path / "img"
    images.mkdir()
    draw_original(images / "cat.png", size=64)
    (images / "cat.txt").write_text("a photo of a cat\n")
    dataset = tmp_path / "dataset.toml"
    dataset.write_text(
        '[general]\ncaption_extension = ".txt"\nresolution = [64, 64]\nenable_bucket = false\n\n'
        f"[[datasets]]\nbatch_size = 1\n\n  [[datasets.subsets]]\n  image_dir = {str(images)!r}\n  num_repeats = 1\n"
    )
    return dataset


def test_anima_lora_trains_on_cpu(tmp_path, sd_python, sd_scripts_dir, sd_env, random_anima):
    dataset = write_dataset(tmp_path)
    out = tmp_path / "out"
    cmd = train_args(sd_python, random_anima, dataset, out)
    r = subprocess.run(cmd, cwd=sd_scripts_dir, env=sd_env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    keys = set(read_safetensors_header(out / "anima_lora.safetensors")) - {"__metadata__"}
    downs = {k for k in keys if k.endswith(".lora_down.weight")}
    ups = {k for k in keys if k.endswith(".lora_up.weight")}
    assert downs and len(downs) == len(ups)
    assert all(k.startswith("lora_unet_blocks_") for k in downs)
