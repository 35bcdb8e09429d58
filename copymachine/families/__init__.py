"""The base-model families, one module each (its Family objects, `detect`, `lora_family`, `LORA_VERSIONS`, listed
in MODULES); which one a checkpoint or a LoRA is; the user's other files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from copymachine.errors import InputError
from copymachine.families import anima, flux, sd, sd3
from copymachine.families.base import GEN_IMG, Family, ModelFile

MODULES = (sd, flux, sd3, anima)
FAMILIES: dict[str, Family] = {f.name: f for m in MODULES for f in m.FAMILIES}
_LORA_VERSIONS: dict[str, Family] = {v: f for m in MODULES for v, f in m.LORA_VERSIONS.items()}
SD1, SD2, SDXL = sd.SD1, sd.SD2, sd.SDXL
__all__ = ["FAMILIES", "GEN_IMG", "SD1", "SD2", "SDXL", "Family", "ModelFile", "detect_family", "embedded_files",
           "lora_family", "parse_model_files", "with_files"]

# What else a checkpoint's keys may say, for the message when no family module knows it.
_OTHER = [
    ("transformer_blocks.0.", "a diffusers transformer (sd-scripts trains single-file checkpoints)"),
    ("lora_unet_", "a LoRA, not a base model"),
    ("lora_te", "a LoRA, not a base model"),
]


def detect_family(keys: list[str] | set[str]) -> tuple[Family | None, str]:
    """Return (family, description) from checkpoint keys; family None when not recognised."""
    keyset = set(keys)
    for found in (module.detect(keyset) for module in MODULES):
        if found is not None:
            return found
    for prefix, what in _OTHER:
        if any(k.startswith(prefix) for k in keyset):
            return None, what
    sample = ", ".join(sorted(keyset)[:3]) or "no tensors"
    return None, f"an unknown architecture (first keys: {sample})"


def lora_family(keys: list[str], metadata: dict[str, str]) -> Family | None:
    """A LoRA's base family: from sd-scripts' metadata (ss_base_model_version), else from its key prefixes."""
    by_version = _LORA_VERSIONS.get(metadata.get("ss_base_model_version", ""))
    return by_version or next((f for m in MODULES if (f := m.lora_family(keys, metadata)) is not None), None)


def parse_model_files(items: tuple[str, ...]) -> dict[str, Path]:
    """--model-file NAME=FILE, each name once."""
    files: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip().lower()
        if not sep or not name or not path:
            raise InputError(f"--model-file {item}: give NAME=FILE (t5xxl=/models/t5xxl_fp16.safetensors)")
        if name in files:
            raise InputError(f"--model-file {name} is given twice")
        files[name] = Path(path)
    return files


def embedded_files(family: Family, keys: set[str]) -> frozenset[str]:
    """The names of the family's other files that the checkpoint (its `keys`) holds itself."""
    return frozenset(m.name for m in family.needs
                     if m.embedded_prefix and any(k.startswith(m.embedded_prefix) for k in keys))


def with_files(family: Family, given: dict[str, Path], embedded: frozenset[str] = frozenset(),
               where: str = "--model-file") -> Family:
    """The family with the user's other files (`given`, from --model-file NAME=FILE): each one it needs is given or
    in the checkpoint (`embedded`); each given one exists and is one it takes."""
    names = {m.name: m for m in family.needs}
    for name, path in given.items():
        if name not in names:
            takes = ", ".join(names) or "none"
            raise InputError(f"{where} {name}=…: {family.label} takes no {name} file (it takes: {takes})")
        if not Path(path).is_file():
            raise InputError(f"{where} {name}: no such file: {path}")
    missing = [m for m in family.needs if m.name not in given and m.name not in embedded]
    if missing:
        asks = " ".join(f"{where} {m.name}=FILE" for m in missing)
        what = "; ".join(f"{m.name}: {m.label}" for m in missing)
        raise InputError(f"{family.label} needs its other files beside the checkpoint: give {asks} ({what})")
    files = tuple((m.name, str(Path(given[m.name]).resolve())) for m in family.needs if m.name in given)
    return dataclasses.replace(family, files=files)
