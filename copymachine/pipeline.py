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
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

from copymachine import __version__
from copymachine.errors import CheckFailed, CopymachineError, EngineError
from copymachine.files import HashCache, atomic_write_json, move_into_place, remove_stale_temps
from copymachine.locks import FolderLock
from copymachine.plan import Plan, Stage
from copymachine.progress import Reporter
from copymachine.runner import command_line, log_tail, stop_group
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
        self._lock = threading.RLock()
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

    def update(self, stage: Stage, status: str, stamp: dict[str, Any] | None = None, **extra: Any) -> None:
        """Record a stage's status (and its stamp's facts), then write the manifest."""
        with self._lock:
            record = self._records[stage.name]
            record["status"] = status
            if stamp:
                for field in ("inputs", "outputs", "commands", "argv", "configs", "log", "started", "finished", "duration_s", "peak_memory_gib", "sd_scripts_commit"):
                    if field in stamp:
                        record[field] = stamp[field]
            record.update(extra)
            self.save()

    def record(self, stage: Stage) -> dict[str, Any]:
        return self._records[stage.name]

    def save(self) -> None:
        with self._lock:
            self.data["updated"] = _now()
            atomic_write_json(self.path, self.data)


def _ancestors(name: str, deps: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(deps.get(name, ()))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(deps.get(n, ()))
    return seen


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
        self._children: set[int] = set()
        self._interrupted = False
        self._mutex = threading.RLock()  # locks, children, manifest: stages finish on worker threads

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

    def _on_child(self, pgid: int, alive: bool) -> None:
        with self._mutex:
            if alive:
                self._children.add(pgid)
            else:
                self._children.discard(pgid)
            for lock in self._locks:
                lock.set_child(pgid, alive)

    def dependencies(self) -> dict[str, set[str]]:
        """What each stage waits for: the stages whose outputs it reads, its `after`, and every
        gate (a check) planned before it — a failed check stops the trainings after it."""
        names = {s.name for s in self.plan.stages}
        deps: dict[str, set[str]] = {}
        gates: list[str] = []
        for stage in self.plan.stages:
            d = {ref.producer for ref in stage.inputs.values() if ref.producer} | set(stage.after) | set(gates)
            deps[stage.name] = d & names
            if stage.gate:
                gates.append(stage.name)
        return deps

    def _results(self, deps: dict[str, set[str]]) -> dict[str, set[str]]:
        """For each stage, the end products (stages nothing depends on) it leads to."""
        dependents: dict[str, set[str]] = {s.name: set() for s in self.plan.stages}
        for name, d in deps.items():
            for dep in d:
                dependents[dep].add(name)
        reach: dict[str, set[str]] = {}
        for stage in reversed(self.plan.stages):
            below = dependents[stage.name]
            reach[stage.name] = set().union(*(reach[n] for n in below)) if below else {stage.name}
        return reach

    def run(self, dry_run: bool = False, wait: bool = True, jobs: int = 1) -> list[Stage]:
        """Run every stage that is not done, up to `jobs` at once; returns the stages that ran.

        A stage starts when what it depends on is done. A failed stage stops only what depends
        on it: the other effects of the run go on, and the first failure is raised at the end
        (after a summary, when the run makes several LoRAs)."""
        if dry_run:
            self._dry_run()
            return []
        jobs = max(1, jobs)
        self.reporter.parallel = jobs > 1
        run_lock = FolderLock(self.plan.run_dir, f"run folder {self.plan.run_dir}")
        run_lock.acquire(wait=wait, on_wait=lambda h: self.reporter.info(f"waiting for the run folder lock ({h.get('command', 'another copymachine')})"), marker=self._marker())
        self._locks = [run_lock]
        remove_stale_temps(self.plan.run_dir)  # an interrupted manifest write
        index = {s.name: i for i, s in enumerate(self.plan.stages, 1)}
        deps = self.dependencies()
        reach = self._results(deps)
        state = {s.name: "pending" for s in self.plan.stages}
        failures: list[tuple[Stage, BaseException]] = []
        ran: list[Stage] = []
        running: dict[Future, Stage] = {}
        free_gpus = list(range(self.settings.gpus)) if self.settings.gpus > 1 and jobs > 1 else []
        gpu_of: dict[str, int] = {}
        pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="stage")
        try:
            while True:
                for stage in self.plan.stages:
                    if state[stage.name] == "pending" and any(state[d] in ("failed", "blocked") for d in deps[stage.name]):
                        state[stage.name] = "blocked"
                lost = {n for n, st in state.items() if st in ("failed", "blocked")}
                for stage in self.plan.stages:
                    if len(running) >= jobs:
                        break
                    name = stage.name
                    if state[name] != "pending" or not all(state[d] == "done" for d in deps[name]):
                        continue
                    if not (reach[name] - lost):
                        continue  # everything it leads to has failed already
                    state[name] = "running"
                    gpu = free_gpus.pop(0) if free_gpus and kinds()[stage.kind].needs_engine else None
                    if gpu is not None:
                        gpu_of[name] = gpu
                    running[pool.submit(self._run_locked, index[name], len(index), stage, wait, gpu)] = stage
                if not running:
                    break
                finished, _ = futures_wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    stage = running.pop(future)
                    if stage.name in gpu_of:
                        free_gpus.append(gpu_of.pop(stage.name))
                    error = future.exception()
                    if error is None:
                        state[stage.name] = "done"
                        if future.result():
                            ran.append(stage)
                    else:
                        state[stage.name] = "failed"
                        failures.append((stage, error))
                        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit
                            raise error
        except BaseException:
            self._stop_children()
            for future in running:
                try:
                    future.result(timeout=60)
                except BaseException:
                    pass
            raise
        finally:
            pool.shutdown(wait=True)
            self.hashes.save()
            run_lock.release()
        if failures:
            if len(self.plan.finals) > 1:
                self.reporter.summary(self._summary(state, failures))
            raise failures[0][1]
        return ran

    def _stop_children(self) -> None:
        """Ctrl-C (or a crash) in copymachine: stop every running sd-scripts group cleanly."""
        self._interrupted = True
        with self._mutex:
            children = list(self._children)
        for pgid in children:
            stop_group(pgid)

    def _summary(self, state: dict[str, str], failures: list[tuple[Stage, BaseException]]) -> list[tuple[str, str]]:
        failed = {stage.name: error for stage, error in failures}
        deps = self.dependencies()
        rows = []
        for effect, path in self.plan.finals.items():
            final = f"{effect}/final"
            if state.get(final) == "done":
                rows.append((effect, str(path)))
                continue
            needed = _ancestors(final, deps) | {final}
            cause = next((n for n in failed if n in needed), None)
            if cause:
                rows.append((effect, f"failed in '{self.plan.stage(cause).title}': {failed[cause]}"))
            else:
                rows.append((effect, "not run: a stage it needs failed"))
        return rows

    def _run_locked(self, index: int, total: int, stage: Stage, wait: bool, gpu: int | None) -> bool:
        if not stage.shared:
            return self._run_stage(index, total, stage, gpu)
        lock = FolderLock(stage.workdir, f"cache entry {stage.workdir}")
        lock.acquire(wait=wait, on_wait=lambda h: self.reporter.info(f"waiting for another run building {stage.title} ({h.get('command', '')})"), marker=self._marker())
        with self._mutex:
            self._locks.append(lock)
        try:
            return self._run_stage(index, total, stage, gpu)
        finally:
            with self._mutex:
                self._locks.remove(lock)
            lock.release()

    def _run_stage(self, index: int, total: int, stage: Stage, gpu: int | None = None) -> bool:
        _tidy(stage)
        stamp = self.done_stamp(stage)
        if stamp:
            where = str(stage.workdir) if stage.shared else ", ".join(p.name for p in stage.outputs.values())
            self.reporter.stage_skip(index, total, stage.title, where)
            self.manifest.update(stage, "skipped", stamp)
            self._conclude(stage, kinds()[stage.kind], stamp)
            return False
        kind = kinds()[stage.kind]
        log_path = self.plan.run_dir / "logs" / f"{stage.slug}.log"
        self.reporter.stage_start(index, total, kind.describe(stage), str(log_path) if kind.needs_engine else None)
        self.manifest.update(stage, "running")
        try:
            stamp = self._execute(stage, kind, log_path, gpu)
        except CopymachineError:
            # sd-scripts stopped because copymachine was interrupted is not a failure of the stage
            self.manifest.update(stage, "interrupted" if self._interrupted else "failed")
            raise
        except KeyboardInterrupt:
            self.manifest.update(stage, "interrupted")
            raise
        self.manifest.update(stage, "done", stamp)
        self.reporter.stage_done(stage.title, stamp["duration_s"], [str(p) for p in stage.outputs.values()], stamp.get("peak_memory_gib"))
        self._conclude(stage, kind, stamp)
        return True

    def _conclude(self, stage: Stage, kind, stamp: dict[str, Any]) -> None:
        """A stage's verdict (a check): recorded in the manifest; a failed one stops the run."""
        verdict = kind.conclude(stage, stamp, self.reporter)
        if verdict is None:
            return
        self.manifest.update(stage, self.manifest.record(stage)["status"], verdict=verdict)
        if not verdict.get("passed", True):
            raise CheckFailed(verdict.get("message", f"stage '{stage.title}' did not pass"), details=verdict.get("details", []))

    def _execute(self, stage: Stage, kind, log_path: Path, gpu: int | None = None) -> dict[str, Any]:
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
            gpu=gpu,
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
            "peak_memory_gib": round(ctx.peak_rss / 2**30, 2) if ctx.peak_rss else None,
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
