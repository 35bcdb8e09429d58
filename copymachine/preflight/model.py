"""Pre-flight of the base model: a safetensors checkpoint of a family copymachine trains; a pickle
(.ckpt) only with --allow-pickle, and then copymachine does not open it (sd-scripts does)."""

from __future__ import annotations

import math
from pathlib import Path

from copymachine.errors import InputError
from copymachine.lorafile import read_safetensors
from copymachine.models import PICKLE_SUFFIXES, SD1, ModelInfo, inspect_base_model
from copymachine.progress import Reporter

# Parameters of a whole checkpoint, for a pickle copymachine does not open (preflight/disk.py says where from).
MODEL_PARAMS = {"sd1": 1_066_000_000, "sd2": 1_300_000_000, "sdxl": 3_470_000_000}


def _looks_like_pickle(path: Path) -> bool:
    """A torch zip (PK\\x03\\x04, torch 1.6 on) or a bare pickle (protocol 2+: 0x80 then the protocol number)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def check_base_model(path: Path, reporter: Reporter, allow_pickle: bool = False) -> ModelInfo:
    """The base model for train/diff. A pickle is refused unless `allow_pickle` (unpickling can run code): then
    copymachine never opens it, hands it to sd-scripts and assumes SD1.x (it cannot read the keys)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
        if not allow_pickle:
            raise InputError(f"base model is a pickle file ({path.suffix}): {path}; loading a pickle can run code "
                             "hidden in it, so copymachine takes .safetensors only: use a .safetensors download or "
                             "convert it, or pass --allow-pickle if you trust this file (sd-scripts then loads it)")
        size = path.stat().st_size
        if size == 0:
            raise InputError(f"base model is empty (0 bytes): {path}")
        if not _looks_like_pickle(path):
            raise InputError(f"base model is not a PyTorch checkpoint (neither a torch zip nor a pickle): {path}")
        reporter.warn(f"--allow-pickle: {path.name} is a pickle; copymachine does not open it, so it cannot check its "
                      f"family or contents: assuming {SD1.label}; sd-scripts loads it with torch (use only files you "
                      "trust)")
        return ModelInfo(path=path, family=SD1, size_bytes=size, tensor_count=0)
    if path.is_file() and path.stat().st_size >= 8 and _looks_like_pickle(path):
        raise InputError(f"base model is a pickle file with a {path.suffix or 'missing'} suffix, not safetensors: "
                         f"{path}; use a .safetensors checkpoint (or, if you trust it, rename it .ckpt and pass "
                         "--allow-pickle)")
    return inspect_base_model(path)


def model_parameters(model: ModelInfo) -> int:
    """The base model's parameter count, from its safetensors header (a pickle: its family's typical count)."""
    if model.tensor_count == 0:
        return MODEL_PARAMS.get(model.family.name, MODEL_PARAMS["sd1"])
    st = read_safetensors(model.path, "base model")
    return sum(math.prod(int(d) for d in info["shape"]) for info in st.tensors.values())

