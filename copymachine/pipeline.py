"""Running a plan: skip what is done (stamps.py), run the rest in the order the stage graph allows,
write every output atomically, keep the manifest true to what is on disk. A run killed at any moment
resumes at the first stage not done; a changed parameter re-runs that stage and what depends on it."""

from __future__ import annotations

import contextlib
import functools
import shutil
import sys
import threading
import time
from collections.abc import Hashable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from copymachine import graph, trainstate
from copymachine.dryrun import print_dry_run
from copymachine.errors import CheckFailed, CopymachineError, DiskFull, EngineError, is_disk_full
from copymachine.files import HashCache, move_into_place, remove_stale_temps
from copymachine.locks import FolderLock
from copymachine.manifest import Manifest
from copymachine.plan import Plan, Stage, stage_name
from copymachine.pool import Task, side_by_side
from copymachine.progress import Reporter
from copymachine.runner import log_tail
from copymachine.stages import Settings, StageContext, StageKind, reset_scratch
from copymachine.stages import kinds as all_kinds
from copymachine.stamps import done_stamp, new_stamp, now, remove_stamp, write_stamp
from copymachine.supervise import SUPERVISOR, CancelToken


def _validated(kind, stage: Stage, name: str, path: Path, ctx: StageContext) -> dict[str, Any]:
    """A stage's output that does not validate (NaN weights, wrong rank, truncated) is the
    stage's failure, reported like the engine's own: stage, log, the log's last lines."""
    try:
        return kind.validate(stage, name, path, ctx)
    except CopymachineError as e:
        if not kind.needs_engine:
            raise
        raise EngineError(f"stage '{stage.title}' wrote an unusable {path.name}: {e.message}. Log: {ctx.log_path}",
                          details=log_tail(ctx.log_path)) from None


def _tidy(stage: Stage, kind, reporter: Reporter | None = None) -> None:
    """What a run killed in this stage left behind (its lock is held): its scratch folder, an emptied
    .partial folder, temporary files of interrupted writes."""
    scratch = stage.workdir / ".partial" / stage.slug
    if scratch.exists():
        _clear_scratch(scratch, stage, kind, reporter)
    with contextlib.suppress(OSError):
        scratch.parent.rmdir()  # .partial/, when no other stage is under way there
    for folder in (stage.workdir, stage.workdir / ".stages", stage.workdir / "config"):
        remove_stale_temps(folder)


def _hashed_inputs(stage: Stage, hashes: HashCache) -> dict[str, Any]:
    inputs = {}
    for name, ref in stage.inputs.items():
        if not ref.path.is_file():
            raise EngineError(f"stage '{stage.title}': its input {name} is missing: {ref.path}")
        inputs[name] = {"path": str(ref.path), "sha256": hashes.sha256(ref.path)}
    return inputs


def _clear_scratch(scratch: Path, stage: Stage, kind, reporter: Reporter | None = None) -> None:
    """Empty a stage's scratch folder; a training keeps its newest saved state of this key (trainstate.py)."""
    if not getattr(kind, "keeps_state", False):
        shutil.rmtree(scratch, ignore_errors=True)
        return
    removed = trainstate.keep(scratch, stage.key)
    if removed and reporter is not None:
        reporter.info(f"{stage.title}: removed {removed}")
    with contextlib.suppress(OSError):
        scratch.rmdir()  # nothing kept


def _drop_scratch(ctx: StageContext, kind=None) -> None:
    """After an attempt: its files go (a training's newest saved state stays when it failed)."""
    _clear_scratch(ctx.scratch, ctx.stage, kind, ctx.reporter)
    with contextlib.suppress(OSError):
        ctx.scratch.parent.rmdir()


def _execute(stage: Stage, kind, ctx: StageContext) -> dict[str, Any]:
    """Run one stage into its scratch folder, validate its outputs, move them into place, write its stamp last."""
    remove_stamp(stage)  # what is at the final paths is not trusted until the new stamp
    if getattr(kind, "keeps_state", False) and ctx.scratch.is_dir():
        _clear_scratch(ctx.scratch, stage, kind, ctx.reporter)
        ctx.scratch.mkdir(parents=True, exist_ok=True)
    else:
        reset_scratch(ctx.scratch)
    started = now()
    t0 = time.monotonic()
    inputs = _hashed_inputs(stage, ctx.hashes)
    try:
        kind.execute(stage, ctx)
        produced = {}
        for name in stage.outputs:
            path = ctx.scratch_output(name)
            if not path.is_file():
                raise EngineError(f"stage '{stage.title}' finished without writing {path.name}. Log: {ctx.log_path}")
            produced[name] = (path, _validated(kind, stage, name, path, ctx))
    except BaseException:
        # a failed attempt's files (a half-written 4 GB model, a NaN LoRA) are not kept: the log holds what went
        # wrong, and the next run starts the stage afresh (a training from its newest saved state)
        _drop_scratch(ctx, kind)
        raise
    outputs: dict[str, Any] = {}
    for name, (path, facts) in produced.items():
        final = stage.outputs[name]
        move_into_place(path, final)
        outputs[name] = {"path": str(final), "size": final.stat().st_size, "sha256": ctx.hashes.sha256(final), **facts}
    engine = ctx.settings.engine
    commit = engine.commit if (kind.needs_engine and engine) else None
    stamp = new_stamp(stage, ctx, inputs, outputs, started, time.monotonic() - t0, commit)
    if stage.shared and ctx.log_path.exists():
        shutil.copyfile(ctx.log_path, stage.workdir / f"{stage.slug}.log")
        stamp["log"] = str(stage.workdir / f"{stage.slug}.log")
    write_stamp(stage, stamp)
    _drop_scratch(ctx)
    return stamp


def _conclude(manifest: Manifest, reporter: Reporter, stage: Stage, kind, stamp: dict[str, Any]) -> None:
    verdict = kind.conclude(stage, stamp, reporter)
    if verdict is None:
        return
    manifest.update(stage, manifest.record(stage)["status"], verdict=verdict)
    if not verdict.get("passed", True):
        message = verdict.get("message", f"stage '{stage.title}' did not pass")
        raise CheckFailed(message, details=verdict.get("details", []))


class _Schedule:
    """A stage starts when what it depends on is done, up to `jobs` at once, each sd-scripts stage on a GPU of
    its own where there are several; one that depends on a failed one, or whose every result failed, does not."""

    def __init__(self, plan: Plan, jobs: int, gpus: int, kinds: Mapping[str, StageKind]):
        self.plan, self.kinds, self.jobs = plan, kinds, jobs
        self.deps = graph.dependencies(plan)
        self.reach = graph.results(plan, self.deps)
        self.state = {s.name: "pending" for s in plan.stages}
        self.failures: list[tuple[Stage, BaseException]] = []
        self.ran: list[Stage] = []
        self.free_gpus = list(range(gpus)) if gpus > 1 and jobs > 1 else []
        self.gpu_of: dict[str, int] = {}

    def start(self) -> list[tuple[Stage, int | None]]:
        """What may start now, each with its GPU (None: the device's default)."""
        state, deps = self.state, self.deps
        for stage in self.plan.stages:
            if state[stage.name] == "pending" and any(state[d] in ("failed", "blocked") for d in deps[stage.name]):
                state[stage.name] = "blocked"
        lost = {n for n, st in state.items() if st in ("failed", "blocked")}
        started: list[tuple[Stage, int | None]] = []
        free = self.jobs - list(state.values()).count("running")
        for stage in self.plan.stages:
            name = stage.name
            if len(started) >= free:
                break
            ready = state[name] == "pending" and all(state[d] == "done" for d in deps[name])
            if not ready or not (self.reach[name] - lost):  # nor when everything it leads to has failed already
                continue
            state[name] = "running"
            gpu = self.free_gpus.pop(0) if self.free_gpus and self.kinds[stage.kind].needs_engine else None
            if gpu is not None:
                self.gpu_of[name] = gpu
            started.append((stage, gpu))
        return started

    def finish(self, name: Hashable, future: Future) -> None:
        """A stage ended: done (and whether it ran), or failed; Ctrl-C and exits go on up."""
        assert isinstance(name, str)
        if name in self.gpu_of:
            self.free_gpus.append(self.gpu_of.pop(name))
        error = future.exception()
        if error is None:
            self.state[name] = "done"
            if future.result():
                self.ran.append(self.plan.stage(name))
            return
        self.state[name] = "failed"
        self.failures.append((self.plan.stage(name), error))
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit
            raise error

    def summary(self) -> list[tuple[str, str]]:
        failed = {stage.name: error for stage, error in self.failures}
        rows = []
        for effect, path in self.plan.finals.items():
            final = stage_name("final", effect)
            if self.state.get(final) == "done":
                rows.append((effect, str(path)))
                continue
            needed = graph.ancestors(final, self.deps) | {final}
            cause = next((n for n in failed if n in needed), None)
            rows.append((effect, f"failed in '{self.plan.stage(cause).title}': {failed[cause]}" if cause
                          else "not run: a stage it needs failed"))
        return rows


class _Held:
    """A run's folder locks and running sd-scripts children (stages finish on worker threads: one lock guards
    both). Its token's cancel stops them."""

    def __init__(self, token: CancelToken) -> None:
        self.locks: list[FolderLock] = []
        self.children: set[int] = set()
        self.token = token
        self.mutex = threading.RLock()
        # every running sd-scripts at once (trainings side by side all stop within one grace time)
        token.on_cancel(lambda: SUPERVISOR.stop_ids(self._running()))

    def _running(self) -> list[int]:
        with self.mutex:
            return list(self.children)

    def on_child(self, pgid: int, alive: bool) -> None:
        with self.mutex:
            if alive:
                self.children.add(pgid)
            else:
                self.children.discard(pgid)
            for lock in self.locks:
                lock.set_child(pgid, alive)
        if alive and self.token.cancelled:
            # started by a stage that was already under way when the run was cancelled: stopped
            # too, on a thread of its own (this one must go on reading the child's output)
            threading.Thread(target=SUPERVISOR.stop_ids, args=([pgid],), name="stop-late-child", daemon=True).start()

    @contextlib.contextmanager
    def holding(self, lock: FolderLock) -> Iterator[None]:
        """A cache entry's lock, told of the children started until the block ends."""
        with self.mutex:
            self.locks.append(lock)
        try:
            yield
        finally:
            with self.mutex:
                self.locks.remove(lock)
            lock.release()

    def kill_children(self) -> None:  # a second Ctrl-C
        SUPERVISOR.kill_ids(self._running())


class Pipeline:
    def __init__(self, plan: Plan, settings: Settings, reporter: Reporter, hashes: HashCache,
                 argv: list[str] | None = None, token: CancelToken | None = None,
                 kinds: Mapping[str, StageKind] | None = None, weak_edit_ok: bool = False):
        self.plan = plan
        self.weak_edit_ok = weak_edit_ok  # --weak-edit-ok: a generated original's weak edit is trained on
        self.kinds = kinds if kinds is not None else all_kinds()  # the stage kinds (a test passes its own)
        self.settings = settings
        self.reporter = reporter
        self.hashes = hashes
        self.manifest = Manifest(plan, settings, argv or sys.argv)
        self.token = token or CancelToken()  # cancelled: the running sd-scripts are stopped (Ctrl-C, the queue)
        self._held = _Held(self.token)

    @property
    def interrupted(self) -> bool:
        """Whether the run was cancelled (Ctrl-C, the queue's stop): a stage that fails then was interrupted."""
        return self.token.cancelled

    def _marker(self) -> str:
        return str(self.settings.engine.root) if self.settings.engine else ""

    def run(self, dry_run: bool = False, wait: bool = True, jobs: int = 1) -> list[Stage]:
        """Run every stage not done, up to `jobs` at once; returns the stages that ran. A failed stage stops only
        what depends on it; the first failure is raised at the end (after a summary of several LoRAs)."""
        if dry_run:
            print_dry_run(self.plan, self.settings, self.reporter, self.hashes, kinds=self.kinds)
            return []
        jobs = max(1, jobs)
        self.reporter.parallel = jobs > 1
        run_lock = FolderLock(self.plan.run_dir, f"run folder {self.plan.run_dir}")
        run_lock.acquire(wait=wait, marker=self._marker(), on_wait=lambda h: self.reporter.info(
            f"waiting for the run folder lock ({h.get('command', 'another copymachine')})"))
        self._held.locks = [run_lock]
        remove_stale_temps(self.plan.run_dir)  # an interrupted manifest write
        index = {s.name: i for i, s in enumerate(self.plan.stages, 1)}
        schedule = _Schedule(self.plan, jobs, self.settings.gpus, self.kinds)

        def start() -> list[Task]:
            if self.token.cancelled:  # a cancelled run starts nothing new
                return []
            return [(stage.name, functools.partial(self._run_locked, index[stage.name], len(index), stage, wait, gpu))
                    for stage, gpu in schedule.start()]

        try:
            side_by_side(jobs, start, schedule.finish, self.stop, "stage", kill=self._held.kill_children)
        finally:
            self.hashes.save()
            run_lock.release()
        if schedule.failures:
            if len(self.plan.finals) > 1:
                self.reporter.summary(schedule.summary())
            raise schedule.failures[0][1]
        if self.token.cancelled and any(state == "pending" for state in schedule.state.values()):
            raise EngineError("interrupted: the run was cancelled before it finished; "
                              "run the same command again to resume")
        return schedule.ran

    def stop(self) -> None:
        """Ctrl-C (or a crash), or the queue's stop: every running sd-scripts child is stopped cleanly."""
        self.token.cancel()

    def _run_locked(self, index: int, total: int, stage: Stage, wait: bool, gpu: int | None) -> bool:
        if not stage.shared:
            return self._run_stage(index, total, stage, gpu)
        lock = FolderLock(stage.workdir, f"cache entry {stage.workdir}")
        lock.acquire(wait=wait, marker=self._marker(), on_wait=lambda h: self.reporter.info(
            f"waiting for another run building {stage.title} ({h.get('command', '')})"))
        with self._held.holding(lock):
            return self._run_stage(index, total, stage, gpu)

    def _run_stage(self, index: int, total: int, stage: Stage, gpu: int | None = None) -> bool:
        """Skip the stage when done, else run it; then its verdict. True when it ran. A full disk ends the
        stage with one line naming the folder and what the stage needs there."""
        try:
            return self._run_stage_here(index, total, stage, gpu)
        except DiskFull as e:
            self._record(stage, "interrupted" if self.interrupted else "failed")
            raise self._disk_full(stage, e.folder, log=e.log) from None
        except OSError as e:
            if not is_disk_full(e):
                raise
            self._record(stage, "failed")
            folder = Path(e.filename).parent if e.filename else stage.workdir
            if ".partial" in folder.parts:  # the stage's scratch: name the folder the user knows
                folder = stage.workdir
            cause = f"writing {Path(e.filename).name}" if e.filename else ""
            raise self._disk_full(stage, folder, cause=cause) from None

    def _disk_full(self, stage: Stage, folder: Path, cause: str = "", log: Path | None = None) -> CopymachineError:
        from copymachine.preflight import disk_full

        needs = (self.plan.info.stage_bytes or {}).get(stage.name)
        return disk_full(folder, stage.title, needs, cause=cause, log=log)

    def _record(self, stage: Stage, status: str) -> None:
        """A failed stage's status; on a full disk that write may fail too, which must not hide why."""
        try:
            self.manifest.update(stage, status)
        except OSError as e:
            if not is_disk_full(e):
                raise

    def _run_stage_here(self, index: int, total: int, stage: Stage, gpu: int | None = None) -> bool:
        kind = self.kinds[stage.kind]
        _tidy(stage, kind, self.reporter)
        stamp = done_stamp(stage, self.hashes)
        if stamp:
            where = str(stage.workdir) if stage.shared else ", ".join(p.name for p in stage.outputs.values())
            self.reporter.stage_skip(index, total, stage, where)
            self.manifest.update(stage, "skipped", stamp)
            _conclude(self.manifest, self.reporter, stage, kind, stamp)
            return False
        log_path = self.plan.run_dir / "logs" / f"{stage.slug}.log"
        self.reporter.stage_start(index, total, stage, kind.describe(stage),
                                  str(log_path) if kind.needs_engine else None)
        self.manifest.update(stage, "running")
        ctx = StageContext(plan=self.plan, stage=stage, settings=self.settings, reporter=self.reporter,
                           hashes=self.hashes, log_path=log_path, on_child=self._held.on_child, gpu=gpu,
                           weak_edit_ok=self.weak_edit_ok)
        try:
            stamp = _execute(stage, kind, ctx)
        except CopymachineError:
            # sd-scripts stopped because copymachine was interrupted is not a failure of the stage
            self._record(stage, "interrupted" if self.interrupted else "failed")
            raise
        except KeyboardInterrupt:
            self._record(stage, "interrupted")
            raise
        self.manifest.update(stage, "done", stamp)
        outputs = [str(p) for p in stage.outputs.values()]
        self.reporter.stage_done(stage, stamp["duration_s"], outputs, stamp.get("peak_memory_gib"))
        _conclude(self.manifest, self.reporter, stage, kind, stamp)
        return True
