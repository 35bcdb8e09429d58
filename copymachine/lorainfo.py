"""`copymachine inspect`: what is in a kohya LoRA file, read from its header and tensors (no torch).

A block's weight norm is the Frobenius norm of its weight change (alpha / rank x up @ down), summed over
its modules as the root of the sum of squares; blocks are named as LoRA Block Weight names them.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copymachine.heavy import numpy as np
from copymachine.lorafile import summarize_lora
from copymachine.models import lora_family

if TYPE_CHECKING:
    from numpy import ndarray

# Keys whose values are long JSON documents: summarised in the text report, whole in --json.
LONG_KEYS = ("ss_datasets", "ss_tag_frequency", "ss_dataset_dirs", "ss_bucket_info", "ss_reg_dataset_dirs")

_SD1_BLOCK = re.compile(r"^lora_unet_(down|up)_blocks_(\d+)_(attentions|resnets|downsamplers|upsamplers)_(\d+)_")
_SDXL_BLOCK = re.compile(r"^lora_unet_(input|output)_blocks_(\d+)_")
_PREFIX_BLOCKS = (("lora_te1_", "TE1"), ("lora_te2_", "TE2"), ("lora_te", "TE"), ("lora_unet_mid_block_", "MID"),
                  ("lora_unet_middle_block_", "MID"))


def block_of(module: str) -> str:
    """The block a module belongs to (LoRA Block Weight's names)."""
    for prefix, name in _PREFIX_BLOCKS:
        if module.startswith(prefix):
            return name
    m = _SD1_BLOCK.match(module)
    if m:
        side, block, part, index = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        if side == "down":
            return f"IN{3 * block + (3 if part == 'downsamplers' else index + 1):02d}"
        return f"OUT{3 * block + (2 if part == 'upsamplers' else index):02d}"
    m = _SDXL_BLOCK.match(module)
    if m:
        return f"{'IN' if m.group(1) == 'input' else 'OUT'}{int(m.group(2)):02d}"
    return "other"


def _block_order(name: str) -> tuple[int, int]:
    order = {"TE": 0, "TE1": 0, "TE2": 1, "MID": 3, "other": 5}
    if name in order:
        return order[name], 0
    if name.startswith("IN"):
        return 2, int(name[2:])
    return 4, int(name[3:])


def delta_norm(down: ndarray, up: ndarray, alpha: float) -> float:
    """||alpha/rank * up @ down||_F without forming the product (rank x rank matrices only)."""
    rank = down.shape[0]
    d = down.reshape(rank, -1).astype(np.float64)
    u = up.reshape(up.shape[0], rank).astype(np.float64)
    squared = float(np.sum((u.T @ u) * (d @ d.T)))
    return abs(alpha / rank) * math.sqrt(max(squared, 0.0))


def lora_report(path: Path) -> dict[str, Any]:
    summary = summarize_lora(path)
    md = summary.metadata
    family = lora_family(list(summary.modules), md)
    blocks: dict[str, dict[str, float]] = {}
    for name, info in summary.modules.items():
        down, up = (summary.file.read(f"{name}.lora_{part}.weight") for part in ("down", "up"))
        norm = delta_norm(down, up, info["alpha"])
        b = blocks.setdefault(block_of(name), {"modules": 0, "sq": 0.0})
        b["modules"] += 1
        b["sq"] += norm * norm
    ranks = Counter(m["rank"] for m in summary.modules.values())
    alphas = Counter(m["alpha"] for m in summary.modules.values())
    return {
        "file": str(path), "size_bytes": Path(path).stat().st_size, "modules": len(summary.modules),
        "unet_modules": summary.unet_modules, "text_encoder_modules": summary.text_encoder_modules,
        "ranks": {str(r): n for r, n in sorted(ranks.items())},
        "alphas": {f"{a:g}": n for a, n in sorted(alphas.items())},
        "dtypes": sorted({m["dtype"] for m in summary.modules.values()}),
        "base_model": {"version": md.get("ss_base_model_version"), "family": family.label if family else None,
                       "from": "metadata" if md.get("ss_base_model_version") else "module names"},
        "blocks": [
            {"block": name, "modules": int(b["modules"]), "norm": round(math.sqrt(b["sq"]), 6)}
            for name, b in sorted(blocks.items(), key=lambda kv: _block_order(kv[0]))
        ],
        "copymachine": {k: v for k, v in sorted(md.items()) if k.startswith("copymachine.")},
        "ss": {k: v for k, v in sorted(md.items()) if k.startswith("ss_")},
        "other_metadata": {k: v for k, v in sorted(md.items()) if not k.startswith(("ss_", "copymachine."))},
    }


def _short(key: str, value: str, width: int = 100) -> str:
    if key in LONG_KEYS:
        try:
            parsed = json.loads(value)
            return f"({type(parsed).__name__} of {len(parsed)}; --json shows it whole)"
        except ValueError:
            pass
    value = value.replace("\n", " ")
    return value if len(value) <= width else value[: width - 3] + "..."


def format_report(r: dict[str, Any]) -> str:
    base = r["base_model"]
    source = f" ({base['version']})" if base["version"] else f" (from {base['from']})"
    lines = [
        f"{r['file']}  ({r['size_bytes'] / 1e6:.1f} MB)",
        f"base model  {base['family'] or 'unknown'}{source}",
        f"modules     {r['modules']}: U-Net {r['unet_modules']}, text encoder {r['text_encoder_modules']}",
        "rank        " + ", ".join(f"{k} ({n} modules)" for k, n in r["ranks"].items()),
        "alpha       " + ", ".join(f"{k} ({n} modules)" for k, n in r["alphas"].items()),
        f"dtype       {', '.join(r['dtypes'])}",
        "",
        "block weight norms (||alpha/rank * up @ down||, per block)",
    ]
    top = max((b["norm"] for b in r["blocks"]), default=0.0) or 1.0
    for b in r["blocks"]:
        bar = "#" * round(30 * b["norm"] / top)
        lines.append(f"  {b['block']:<6} {b['norm']:>10.4f}  {b['modules']:>3} modules  {bar}")
    leakage = r["copymachine"].get("copymachine.leakage")
    if leakage:
        lines += ["", f"leakage     {leakage_text(leakage)}"]
    for title, key in (("copymachine metadata", "copymachine"), ("sd-scripts training metadata (ss_*)", "ss"),
                       ("other metadata", "other_metadata")):
        items = r[key]
        lines += ["", f"{title}" + ("" if items else ": none")]
        lines += [f"  {k} = {_short(k, v)}" for k, v in items.items()]
    return "\n".join(lines)


def leakage_text(value: str) -> str:
    """`copymachine.leakage` (copymachine/stages/leakage.py) in words."""
    try:
        data = json.loads(value)
        gains = ", ".join(f"{float(s):g}: {g:+.3f}" for s, g in data["ssim_gain"].items())
        at = data.get("leaks_at")
        verdict = f"LEAKS from strength {at:g}" if at is not None else "no leakage at these strengths"
        return (f"SSIM gain towards the training image on unrelated prompts ({data.get('model', '?')}): {gains} "
                f"(threshold {data['threshold']:g}) -> {verdict}")
    except (ValueError, KeyError, TypeError, AttributeError):
        return _short("copymachine.leakage", value)
