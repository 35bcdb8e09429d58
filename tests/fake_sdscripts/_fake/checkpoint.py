"""Fake single-file checkpoints: the real key names (dumped from sd-scripts' savers into data/) with tiny tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import common

FAMILIES = {"sd15": "sd15_checkpoint_keys.json", "sd2": "sd2_checkpoint_keys.json", "sdxl": "sdxl_checkpoint_keys.json"}


def tiny(shape, max_dim: int) -> tuple:
    return tuple(min(int(d), max_dim) for d in shape)


def checkpoint_tensors(family: str = "sd15", seed: int = 0, max_dim: int = 16, dtype: str = "fp16") -> dict:
    keys = common.load_json(FAMILIES[family])["keys"]
    rng = common.seeded_rng("checkpoint", family, seed)
    out = {}
    for k, shape in keys.items():
        s = tiny(shape, max_dim)
        # norms' weights near 1, everything else small noise: finite and harmless either way
        base = 1.0 if (k.endswith(".weight") and len(s) == 1) else 0.0
        out[k] = common.as_precision(base + rng.normal(0, 0.02, s).astype(np.float32), dtype)
    return out


def make_checkpoint(path, family: str = "sd15", seed: int = 0, max_dim: int = 16, dtype: str = "fp16", metadata: dict | None = None) -> Path:
    """Write a fake `family` checkpoint ("sd15", "sd2" or "sdxl") to `path`; returns the path.

    Key names are those sd-scripts' single-file saver writes for that family; every dimension is cut to
    `max_dim` (16 -> SD1.5 ~1.6 MB, SDXL ~4 MB in fp16). dtype: "fp16", "float" or "bf16".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(common.serialize_safetensors(checkpoint_tensors(family, seed, max_dim, dtype), metadata or {}))
    return path
