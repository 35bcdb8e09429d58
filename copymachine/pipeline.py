"""Running a plan: skip what is done, run the rest, write every output atomically, keep the
manifest true to what is on disk.

A stage is done when its stamp (`<workdir>/.stages/<stage>.json`, written last, after every
output was renamed into place) has the stage's key, its outputs are there with the recorded
size and sha256, and its inputs still have the sha256 they had when it ran. A run killed at any
moment therefore resumes at the first stage that is not done, and a changed parameter re-runs
that stage and what depends on it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from copymachine import __version__
from copymachine.errors import CheckFailed, CopymachineError, EngineError
from copymachine.files import HashCache, atomic_write_json, move_into_place, remove_stale_temps
from copymachine.locks import FolderLock
from copymachine.plan import Plan, Stage
from copymachine.progress import Reporter
from copymachine.runner import command_line, log_tail
from copymachine.stages import Settings, StageContext, kinds, reset_scratch


def stamp_path(stage: Stage) -> Path:
    return stage.workdir / ".stages" / f"{stage.slug}.json"


def read_stamp(stage: Stage) -> dict[str, Any] | None:
    try:
        return json.loads(stamp_path(stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Manifest:
    """`<run>/manifest.json`: the run and every stage — inputs (sha256, parameters), commands,
    sd-scripts commit, durations, outputs. Rewritten atomically after each stage."""

    def __init__(self, plan: Plan, settings: Settings, argv: list[str]):
        self.path = plan.manifest_path
        engine = settings.engine
        self.data: dict[str, Any] = {
            "copymachine": __version__,
            "command": argv,
            "updated": _now(),
            "run": plan.info,
            "sd_scripts": {
                "path": str(engine.root) if engine else None,
                "commit": engine.commit if engine else None,
                "pinned": engine.pinned if engine else None,
                "python": engine.python if engine else None,
            },
            "device": settings.device,
            "mixed_precision": settings.mixed_precision,
            "finals": {k: str(v) for k, v in plan.finals.items()},
            "stages": [],
        }
        self._records: dict[str, dict[str, Any]] = {}
        for stage in plan.stages:
            record = {
                "name": stage.name,
                "kind": stage.kind,
                "title": stage.title,
                "status": "pending",
                "key": stage.key,
                "shared": stage.shared,
                "workdir": str(stage.workdir),
                "params": stage.params,
                "inputs": {n: _ref(r) for n, r in stage.inputs.items()},
                "outputs": {n: {"path": str(p)} for n, p in stage.outputs.items()},
            }
            if stage.gate:
                record["gate"] = stage.gate
            self._records[stage.name] = record
            self.data["stages"].append(record)

    def update(self, stage: Stage, status: str, stamp: dict[str, Any] | None = None) -> None:
        record = self._records[stage.name]
        record["status"] = status
        if stamp:
            for field in ("inputs", "outputs", "commands", "argv", "configs", "log", "started", "finished", "duration_s", "sd_scripts_commit"):
                if field in stamp:
                    record[field] = stamp[field]

    def record(self, stage: Stage) -> dict[str, Any]:
        return self._records[stage.name]

    def save(self) -> None:
        self.data["updated"] = _now()
        atomic_write_json(self.path, self.data)


def _ref(ref) -> dict[str, Any]:
    d: dict[str, Any] = {"path": str(ref.path)}
    if ref.producer:
        d["from"] = f"{ref.producer}:{ref.output}"
    return d


def _validated(kind, stage: Stage, name: str, path: Path, ctx: StageContext, log_path: Path) -> dict[str, Any]:
    """A stage's output that does not validate (NaN weights, wrong rank, truncated) is the
    stage's failure, reported like the engine's own: stage, log, the log's last lines."""
    try:
        return kind.validate(stage, name, path, ctx)
    except CopymachineError as e:
        if not kind.needs_engine:
            raise
        raise EngineError(f"stage '{stage.title}' wrote an unusable {path.name}: {e.message}. Log: {log_path}", details=log_tail(log_path)) from None


def _remove_if_empty(folder: Path) -> None:
    """.partial/, when no other stage is under way there."""
    try:
        folder.rmdir()
    except OSError:
        pass


def _tidy(stage: Stage) -> None:
    """What a run killed in this stage left behind (its lock is held): its scratch folder, a
    .partial folder emptied but not removed, temporary files of interrupted writes."""
    scratch = stage.workdir / ".partial" / stage.slug
    if scratch.exists():
        shutil.rmtree(scratch, ignore_errors=True)
    _remove_if_empty(scratch.parent)
    for folder in (stage.workdir, stage.workdir / ".stages", stage.workdir / "config"):
        remove_stale_temps(folder)


class Pipeline:
    def __init__(self, plan: Plan, settings: Settings, reporter: Reporter, hashes: HashCache, argv: list[str] | None = None):
        self.plan = plan
        self.settings = settings
        self.reporter = reporter
        self.hashes = hashes
        self.manifest = Manifest(plan, settings, argv or sys.argv)
        self._locks: list[FolderLock] = []

    # --- what is done -------------------------------------------------------------------

    def done_stamp(self, stage: Stage, check_inputs: bool = True) -> dict[str, Any] | None:
        """The stage's stamp if it is done. `check_inputs=False` (dry runs, where upstream
        files may not exist yet) trusts the key alone."""
        stamp = read_stamp(stage)
        if not stamp or stamp.get("key") != stage.key:
            return None
        for name, path in stage.outputs.items():
            out = stamp.get("outputs", {}).get(name)
            if not out or not path.is_file() or path.stat().st_size != out.get("size"):
                return None
            if self.hashes.sha256(path) != out.get("sha256"):
                return None
        for name, ref in stage.inputs.items() if check_inputs else ():
            recorded = stamp.get("inputs", {}).get(name, {}).get("sha256")
            if not ref.path.is_file() or self.hashes.sha256(ref.path) != recorded:
                return None
        return stamp

    # --- running ------------------------------------------------------------------------

    def _marker(self) -> str:
        return str(self.settings.engine.root) if self.settings.engine else ""

    def _on_child(self, pgid: int | None) -> None:
        for lock in self._locks:
            lock.set_child(pgid)

    def run(self, dry_run: bool = False, wait: bool = True) -> list[Stage]:
        """Run every stage that is not done; returns the stages that ran."""
        ran: list[Stage] = []
        if dry_run:
            self._dry_run()
            return ran
        run_lock = FolderLock(self.plan.run_dir, f"run folder {self.plan.run_dir}")
        run_lock.acquire(wait=wait, on_wait=lambda h: self.reporter.info(f"waiting for the run folder lock ({h.get('command', 'another copymachine')})"), marker=self._marker())
        self._locks = [run_lock]
        remove_stale_temps(self.plan.run_dir)  # an interrupted manifest write
        try:
            total = len(self.plan.stages)
            for index, stage in enumerate(self.plan.stages, 1):
                if stage.shared:
                    lock = FolderLock(stage.workdir, f"cache entry {stage.workdir}")
                    lock.acquire(wait=wait, on_wait=lambda h: self.reporter.info(f"waiting for another run building {stage.title} ({h.get('command', '')})"), marker=self._marker())
                    self._locks.append(lock)
                    try:
                        if self._run_stage(index, total, stage):
                            ran.append(stage)
                    finally:
                        self._locks.remove(lock)
                        lock.release()
                elif self._run_stage(index, total, stage):
                    ran.append(stage)
        finally:
            self.hashes.save()
            run_lock.release()
        return ran

    def _run_stage(self, index: int, total: int, stage: Stage) -> bool:
        _tidy(stage)
        stamp = self.done_stamp(stage)
        if stamp:
            where = str(stage.workdir) if stage.shared else ", ".join(p.name for p in stage.outputs.values())
            self.reporter.stage_skip(index, total, stage.title, where)
            self.manifest.update(stage, "skipped", stamp)
            self.manifest.save()
            self._conclude(stage, kinds()[stage.kind], stamp)
            return False
        kind = kinds()[stage.kind]
        log_path = self.plan.run_dir / "logs" / f"{stage.slug}.log"
        self.reporter.stage_start(index, total, kind.describe(stage), str(log_path) if kind.needs_engine else None)
        self.manifest.update(stage, "running")
        self.manifest.save()
        try:
            stamp = self._execute(stage, kind, log_path)
        except CopymachineError:
            self.manifest.update(stage, "failed")
            self.manifest.save()
            raise
        except KeyboardInterrupt:
            self.manifest.update(stage, "interrupted")
            self.manifest.save()
            raise
        self.manifest.update(stage, "done", stamp)
        self.manifest.save()
        self.reporter.stage_done(stamp["duration_s"], [str(p) for p in stage.outputs.values()])
        self._conclude(stage, kind, stamp)
        return True

    def _conclude(self, stage: Stage, kind, stamp: dict[str, Any]) -> None:
        """A stage's verdict (a check): recorded in the manifest; a failed one stops the run."""
        verdict = kind.conclude(stage, stamp, self.reporter)
        if verdict is None:
            return
        self.manifest.record(stage)["verdict"] = verdict
        self.manifest.save()
        if not verdict.get("passed", True):
            raise CheckFailed(verdict.get("message", f"stage '{stage.title}' did not pass"), details=verdict.get("details", []))

    def _execute(self, stage: Stage, kind, log_path: Path) -> dict[str, Any]:
        stamp_file = stamp_path(stage)
        if stamp_file.exists():
            stamp_file.unlink()  # what is at the final paths is not trusted until the new stamp
        ctx = StageContext(
            plan=self.plan,
            stage=stage,
            settings=self.settings,
            reporter=self.reporter,
            hashes=self.hashes,
            log_path=log_path,
            on_child=self._on_child,
        )
        reset_scratch(ctx.scratch)
        started = _now()
        t0 = time.monotonic()
        inputs = {}
        for name, ref in stage.inputs.items():
            if not ref.path.is_file():
                raise EngineError(f"stage '{stage.title}': its input {name} is missing: {ref.path}")
            inputs[name] = {"path": str(ref.path), "sha256": self.hashes.sha256(ref.path)}
        try:
            kind.execute(stage, ctx)
            produced = {}
            for name in stage.outputs:
                path = ctx.scratch_output(name)
                if not path.is_file():
                    raise EngineError(f"stage '{stage.title}' finished without writing {path.name}. Log: {log_path}")
                facts = _validated(kind, stage, name, path, ctx, log_path)
                produced[name] = (path, facts)
        except BaseException:
            # a failed attempt's files (a half-written 4 GB model, a NaN LoRA) are not kept:
            # the log holds what went wrong, and the next run starts the stage afresh
            shutil.rmtree(ctx.scratch, ignore_errors=True)
            _remove_if_empty(ctx.scratch.parent)
            raise
        outputs: dict[str, Any] = {}
        for name, (path, facts) in produced.items():
            final = stage.outputs[name]
            move_into_place(path, final)
            outputs[name] = {"path": str(final), "size": final.stat().st_size, "sha256": self.hashes.sha256(final), **facts}
        stamp = {
            "key": stage.key,
            "name": stage.name,
            "kind": stage.kind,
            "params": stage.params,
            "inputs": inputs,
            "outputs": outputs,
            "argv": ctx.commands,
            "commands": [command_line(c) for c in ctx.commands],
            "configs": sorted(str(p) for p in (stage.workdir / "config").glob(f"{stage.slug}-*")),
            "log": str(log_path),
            "started": started,
            "finished": _now(),
            "duration_s": round(time.monotonic() - t0, 2),
            "sd_scripts_commit": self.settings.engine.commit if (kind.needs_engine and self.settings.engine) else None,
        }
        if stage.shared and log_path.exists():
            shutil.copyfile(log_path, stage.workdir / f"{stage.slug}.log")
            stamp["log"] = str(stage.workdir / f"{stage.slug}.log")
        atomic_write_json(stamp_file, stamp)
        shutil.rmtree(ctx.scratch, ignore_errors=True)
        _remove_if_empty(ctx.scratch.parent)
        return stamp

    def _dry_run(self) -> None:
        """Write the configs and print every command; run nothing."""
        total = len(self.plan.stages)
        out = sys.stdout
        for index, stage in enumerate(self.plan.stages, 1):
            kind = kinds()[stage.kind]
            stamp = self.done_stamp(stage, check_inputs=all(r.path.is_file() for r in stage.inputs.values()))
            if stamp:
                out.write(f"# [{index}/{total}] {stage.title}: up to date ({stage.workdir})\n")
                self.manifest.update(stage, "skipped", stamp)
                continue
            ctx = StageContext(
                plan=self.plan, stage=stage, settings=self.settings, reporter=self.reporter, hashes=self.hashes, log_path=Path(), dry_run=True
            )
            kind.execute(stage, ctx)
            out.write(f"# [{index}/{total}] {kind.describe(stage)}\n")
            configs = sorted((stage.workdir / "config").glob(f"{stage.slug}-*"))
            for config in configs:
                out.write(f"#   config: {config}\n")
            for argv in ctx.commands:
                out.write(command_line(argv) + "\n")
            if not ctx.commands:
                out.write(f"#   (done by copymachine itself) -> {', '.join(str(p) for p in stage.outputs.values())}\n")
        out.flush()
