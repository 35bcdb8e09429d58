"""`<run>/manifest.json`: the run and every stage — inputs (sha256, parameters), commands,
sd-scripts commit, durations, outputs. Rewritten atomically after each stage."""

from __future__ import annotations

import threading
from typing import Any

from copymachine import __version__
from copymachine.files import atomic_write_json
from copymachine.plan import Plan, Stage
from copymachine.stages import Settings
from copymachine.stamps import now

# what a stage's stamp tells the manifest about its run
STAMP_FIELDS = ("inputs", "outputs", "commands", "argv", "configs", "log", "started", "finished", "duration_s",
                "peak_memory_gib", "sd_scripts_commit")


def _record(stage: Stage) -> dict[str, Any]:
    """A stage as the manifest lists it before it runs."""
    record = {"name": stage.name, "kind": stage.kind, "title": stage.title, "status": "pending", "key": stage.key,
              "shared": stage.shared, "workdir": str(stage.workdir), "params": stage.params,
              "inputs": {n: {"path": str(r.path)} | ({"from": f"{r.producer}:{r.output}"} if r.producer else {})
                         for n, r in stage.inputs.items()},
              "outputs": {n: {"path": str(p)} for n, p in stage.outputs.items()}}
    if stage.gate:
        record["gate"] = stage.gate
    return record


class Manifest:
    """The run's manifest: stages finish on worker threads, so every change and write holds one lock."""

    def __init__(self, plan: Plan, settings: Settings, argv: list[str]):
        self.path = plan.manifest_path
        engine = settings.engine
        self.data: dict[str, Any] = {
            "copymachine": __version__,
            "command": argv,
            "updated": now(),
            "run": plan.info.as_dict(),
            "sd_scripts": {
                "path": str(engine.root) if engine else None,
                "commit": engine.commit if engine else None,
                "pinned": engine.pinned if engine else None,
                "python": engine.python if engine else None,
                "python_found": engine.python_reason if engine else None,
            },
            "device": settings.device,
            "mixed_precision": settings.mixed_precision,
            "mixed_precision_why": settings.profile.why or None,
            "finals": {k: str(v) for k, v in plan.finals.items()},
            "stages": [],
        }
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        for stage in plan.stages:
            self._records[stage.name] = _record(stage)
            self.data["stages"].append(self._records[stage.name])

    def update(self, stage: Stage, status: str, stamp: dict[str, Any] | None = None, **extra: Any) -> None:
        with self._lock:
            record = self._records[stage.name]
            facts = stamp or {}
            record.update({f: facts[f] for f in STAMP_FIELDS if f in facts}, status=status)
            record.update(extra)
            self.save()

    def record(self, stage: Stage) -> dict[str, Any]:
        return self._records[stage.name]

    def save(self) -> None:
        with self._lock:
            self.data["updated"] = now()
            atomic_write_json(self.path, self.data)
