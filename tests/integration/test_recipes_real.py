"""Issue 34, the fast recipe, against the real sd-scripts at the pinned commit, on the CPU at 64 px: every fast option
(batch 2, dim 16 then 4, lr 5e-4 then 1e-4, cosine, min_snr_gamma 5, no warmup, the effect LoRA saved at fp16, no
resize) is accepted. 2 training steps a LoRA, random weights.

--copy-stop-at's segments (the cosine kept over the whole training as torch's CosineAnnealingLR, resumed from the
saved state) are not run here any more: the copy stop scores renders as the copy check does, refusing a blank one,
and the random SD1.5 renders black at 64 px on some machines, not on others (test_train_state_real.py asserts that
stop on a fixture made to render black). The segments' options are tested against the fake (tests/test_recipe.py).
"""

from __future__ import annotations

import json
import os

import pytest
from realkit import draw_original, run_cli

from copymachine.lorafile import read_safetensors, validate_lora

pytestmark = pytest.mark.integration


def test_the_real_scripts_accept_every_fast_option(tmp_path_factory, sd_scripts_dir, sd_python, random_sd15, tokenizer_cache_dir):
    root = tmp_path_factory.mktemp("fast recipe real")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    out = root / "run"
    args = [
        "train", "--recipe", "fast", "--effect", "contrast", "--base", str(random_sd15), "--out", str(out),
        "--image", str(draw_original(root / "original.png")), "--cache-dir", str(root / "cache"),
        "--resolution", "64", "--max-steps", "2", "--no-copy-check",
        "--sd-scripts", str(sd_scripts_dir), "--python", str(sd_python), "--tokenizer-cache-dir", str(tokenizer_cache_dir),
        "--device", "cpu",
    ]  # fmt: skip
    result = run_cli(args, env, timeout=1800)
    print(result.stderr[-3000:])
    assert result.returncode == 0, result.stderr[-4000:]
    copy_lora = next((root / "cache" / "copy-lora").rglob("copy-lora.safetensors"))
    md = read_safetensors(copy_lora).metadata
    assert (md["ss_network_dim"], md["ss_network_alpha"], md["ss_lr_scheduler"]) == ("16", "16.0", "cosine"), md
    assert md["ss_min_snr_gamma"] == "5.0" and float(md["ss_learning_rate"]) == 5e-4
    datasets = json.loads(md["ss_datasets"])
    assert datasets[0]["batch_size_per_device"] == 2, datasets
    configs = list((root / "cache" / "copy-lora").rglob("copy-lora-training.toml"))
    assert 'lr_scheduler = "cosine"' in configs[0].read_text(encoding="utf-8")
    final = out / "run-contrast.safetensors"
    final_md = read_safetensors(final).metadata
    assert (final_md["ss_network_dim"], final_md["ss_min_snr_gamma"], final_md["ss_lr_scheduler"]) == ("4", "5.0", "cosine")
    assert json.loads(final_md["copymachine.recipe"])["name"] == "fast"
    assert validate_lora(final, expected_rank=4).ranks == [4]  # no resize: the trained rank 4 kept, saved at fp16
