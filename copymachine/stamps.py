"""Stamps: what a stage's run left on disk, and whether the stage is done: its stamp
(`<workdir>/.stages/<stage>.json`, written last) has the stage's key, its outputs the recorded size and
sha256, and its inputs still the sha256 they had when it ran."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from copymachine.files import HashCache, atomic_write_json
from copymachine.plan import Stage
from copymachine.runner import command_line


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def stamp_path(stage: Stage) -> Path:
    return stage.workdir / ".stages" / f"{stage.slug}.json"


def read_stamp(stage: Stage) -> dict[str, Any] | None:
    try:
        return json.loads(stamp_path(stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_stamp(stage: Stage, stamp: dict[str, Any]) -> None:
    atomic_write_json(stamp_path(stage), stamp)


def remove_stamp(stage: Stage) -> None:
    stamp_path(stage).unlink(missing_ok=True)


def sized_stamp(stage: Stage) -> dict[str, Any] | None:
    """The stamp if it has the stage's key and its outputs the recorded sizes (no hashing: pre-flight's estimates)."""
    stamp = read_stamp(stage)
    if not stamp or stamp.get("key") != stage.key:
        return None
    for name, path in stage.outputs.items():
        out = (stamp.get("outputs") or {}).get(name) or {}
        if not path.is_file() or path.stat().st_size != out.get("size"):
            return None
    return stamp


def done_stamp(stage: Stage, hashes: HashCache, check_inputs: bool = True) -> dict[str, Any] | None:
    """The stamp if the stage is done. `check_inputs=False` (dry runs) trusts the key alone for the inputs."""
    stamp = sized_stamp(stage)
    if stamp is None:
        return None
    for name, path in stage.outputs.items():
        if hashes.sha256(path) != stamp["outputs"][name].get("sha256"):
            return None
    for name, ref in stage.inputs.items() if check_inputs else ():
        recorded = (stamp.get("inputs") or {}).get(name, {}).get("sha256")
        if not ref.path.is_file() or hashes.sha256(ref.path) != recorded:
            return None
    return stamp


def new_stamp(stage: Stage, ctx: Any, inputs: dict[str, Any], outputs: dict[str, Any], started: str, seconds: float,
              commit: str | None) -> dict[str, Any]:
    """What a stage's run records; `ctx` is its StageContext."""
    return {"key": stage.key, "name": stage.name, "kind": stage.kind, "params": stage.params, "inputs": inputs,
            "outputs": outputs, "argv": ctx.commands, "commands": [command_line(c) for c in ctx.commands],
            "configs": sorted(str(p) for p in (stage.workdir / "config").glob(f"{stage.slug}-*")),
            "log": str(ctx.log_path), "started": started, "finished": now(), "duration_s": round(seconds, 2),
            "peak_memory_gib": round(ctx.peak_rss / 2**30, 2) if ctx.peak_rss else None, "sd_scripts_commit": commit}
