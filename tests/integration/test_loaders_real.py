"""copymachine's final LoRA in diffusers' own loader (a separate venv with diffusers, peft and torch:
COPYMACHINE_DIFFUSERS_PYTHONS, a list of Pythons separated by the path separator; skipped without).

diffusers 0.32's loader scales the whole U-Net by the wrong alpha/rank when a LoRA has mixed ranks
(resize_lora.py gives a module that got no gradient rank 1): the final LoRA is therefore of one
rank (copymachine.lorafile.write_uniform_rank); this measures that every key is applied with the
exact strength at +1 and -1, in each diffusers given.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("diffusers_loader.py")


def pythons() -> list[str]:
    return [p for p in os.environ.get("COPYMACHINE_DIFFUSERS_PYTHONS", "").split(os.pathsep) if p]


@pytest.mark.parametrize("python", pythons() or [pytest.param(None, marks=pytest.mark.skip(reason="set COPYMACHINE_DIFFUSERS_PYTHONS to Pythons with diffusers + peft + torch"))])
def test_diffusers_applies_the_final_lora_exactly(python, tmp_path):
    result = subprocess.run([python, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=1800, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by = {(r["variant"], r["strength"]): r for r in rows}
    for strength in (1.0, -1.0):
        padded = by[("padded", strength)]
        assert padded["applied"] == padded["modules"] - 2  # every module with a delta (the 2 empty ones have none)
        assert padded["unet_ratio"] == pytest.approx([1.0, 1.0], abs=1e-5) and padded["te_ratio"] == pytest.approx([1.0, 1.0], abs=1e-5)
        assert padded["max_rel_error"] < 1e-4 and not padded["warnings"]
    for r in rows:
        print(f"\n[diffusers {r['diffusers']}] {r['variant']} at {r['strength']:+g}: applied {r['applied']}, U-Net x{r['unet_ratio'][0]:.3f}..{r['unet_ratio'][1]:.3f}, "
              f"TE x{r['te_ratio'][0]:.3f}..{r['te_ratio'][1]:.3f}, warnings {len(r['warnings'])}")
