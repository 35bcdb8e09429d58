"""How this machine runs sd-scripts (the engine, the device profile, the GPUs), and which GPU a child sees."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copymachine.errors import EngineError
from copymachine.profiles import CPU, Profile

if TYPE_CHECKING:
    from copymachine.capabilities import Capabilities
    from copymachine.engine import Engine, Probe


def visible_device(index: int, inherited: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for a child that is to use the `index`-th GPU this process sees. The user's own mask (or
    Slurm's, Ray's) lists the physical GPUs, indices or UUIDs (GPU-..., MIG-...), and index 0 is its first entry: with
    CUDA_VISIBLE_DEVICES=2,3, GPU 1 is "3". CUDA ignores the entries from the first invalid one on (an empty one
    included), so only those before it count. Unset: the index itself. Set but empty (no GPU visible): kept empty."""
    if inherited is None:
        return str(index)
    if not inherited.strip():
        return inherited
    entries: list[str] = []
    for entry in inherited.split(","):
        entry = entry.strip()
        if not entry or (entry.lstrip("-").isdigit() and int(entry) < 0):
            break
        entries.append(entry)
    if index >= len(entries):
        listed = f"CUDA_VISIBLE_DEVICES={inherited!r} lists {len(entries)}"
        raise EngineError(f"internal: GPU {index} asked for, but {listed}")
    return entries[index]


@dataclass
class Settings:
    """How this machine runs sd-scripts: the engine, the device profile, the GPUs.
    Only what changes results (precision, the profile's training options) enters stage keys."""

    engine: Engine | None
    probe: Probe | None
    profile: Profile = CPU
    tokenizer_cache_dir: Path | None = None
    offline: bool = False
    gpus: int = 0  # CUDA devices; with several, each parallel job gets its own
    pinned_gpu: int | None = None  # every sd-scripts call on this CUDA device (a queue's job slot)
    capabilities: Capabilities | None = None  # what this sd-scripts can do (copymachine.capabilities)

    @property
    def mixed_precision(self) -> str:
        return self.profile.mixed_precision

    @property
    def device(self) -> str:
        return self.profile.device

    @property
    def training_options(self) -> dict[str, Any]:
        return self.profile.training_options

