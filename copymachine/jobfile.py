"""Jobs files (`[defaults]`, `[[job]]` tables of train/diff options plus method, set, gpus; docs/jobs.example.toml)
and the queue that runs them. Every key is checked as its option is (RunOptions) and every job runs through
`run.run_method`, the function behind `train` and `diff`; a re-run skips every stage that is done."""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copymachine import events as ev
from copymachine import run
from copymachine.errors import EXIT_INTERRUPTED, CopymachineError, InputError
from copymachine.files import read_toml
from copymachine.options import ENGINE, PATHS, RunOptions, job_keys, option_name, validate
from copymachine.pool import Task, side_by_side
from copymachine.progress import Reporter
from copymachine.supervise import CancelToken

METHODS = run.COMMANDS  # train -> copy-machine, diff -> difference-extraction
EXTRA_KEYS = ("method", "set", "gpus")  # gpus: what an engine gives the job (Ray's num_gpus)
# engine options that are also job keys: given to a queue, they apply to every job not setting them (and its --only)
ENGINE_KEYS = {name: option_name(name) for name in ENGINE}


def engine_keys(engine: dict[str, Any]) -> dict[str, Any]:
    """The engine options given (not left at their defaults), by job key."""
    return {key: engine[k] for k, key in ENGINE_KEYS.items() if engine.get(k) not in (None, False, "auto")}


def engine_argv(engine: dict[str, Any]) -> list[str]:
    """The engine options given as another `copymachine`'s argv (paths absolute; --python only when it is a path,
    so that a venv's python keeps its link)."""
    argv: list[str] = []
    for key, value in engine_keys(engine).items():
        if value is True:
            argv.append(f"--{key}")
            continue
        if key in ("sd-scripts", "tokenizer-cache-dir") or (key == "python" and os.sep in str(value)):
            value = os.path.abspath(value)
        argv += [f"--{key}", str(value)]
    return argv


def flatten_sets(table: dict[str, Any], at: str) -> dict[str, dict[str, Any]]:
    """`set` as a nested TOML table (`effect.flat.epochs = 8`): the section is every name but the last."""
    out: dict[str, dict[str, Any]] = {}

    def walk(prefix: str, value: Any) -> None:
        for key, sub in value.items():
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(sub, dict):
                walk(name, sub)
            elif not prefix:
                raise InputError(f"{at}set.{key} = … names no section; write section.key "
                                 "(e.g. set.copy.network_dim = 32)")
            else:
                out.setdefault(prefix, {})[key] = sub

    walk("", table)
    return out


@dataclass
class Job:
    """One job of a jobs file, its keys converted and checked as the command's options are."""

    index: int  # 1-based, in file order
    label: str
    command: str  # train | diff
    options: RunOptions
    gpus: int = 1  # the `gpus` key: GPUs an engine (Ray) gives the whole job

    @property
    def method(self) -> str:
        return METHODS[self.command]


@dataclass
class JobResult:
    job: Job
    status: str  # done | failed | interrupted
    finals: list[Path] = field(default_factory=list)
    error: CopymachineError | None = None
    seconds: float = 0.0
    node: str | None = None  # the engine's node it ran on (Ray)

    @property
    def exit_code(self) -> int:
        if self.status == "done":
            return 0
        if self.status == "interrupted":
            return EXIT_INTERRUPTED
        return self.error.exit_code if self.error else 1


def _path(value: Any, folder: Path) -> Any:
    """A job's path as given, relative to the jobs file."""
    if isinstance(value, list):
        return [_path(v, folder) for v in value]
    if not isinstance(value, str):
        return value
    path = Path(value).expanduser()
    return str(path if not value or path.is_absolute() else folder / value)


def _values(merged: dict[str, Any], keys: dict[str, str], overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A job's keys as RunOptions' fields (paths relative to the jobs file; a recipe name stays one)."""
    values = {keys[k]: _path(v, folder) if keys[k] in PATHS else v for k, v in merged.items() if k in keys}
    if isinstance(values.get("model_files"), list):  # NAME=FILE: the file relative to the jobs file
        values["model_files"] = [f"{n}={_path(f, folder)}" if s else item for item in values["model_files"]
                                 for n, s, f in [str(item).partition("=")]]
    recipe = merged.get("recipe")
    if isinstance(recipe, str) and (folder / recipe).is_file():
        values["recipe_file"] = str(folder / recipe)
    for name, value in overrides.items():
        if name in keys and value is not None and keys[name] not in values:
            values[keys[name]] = value
    return values


def _job(index: int, table: dict[str, Any], defaults: dict[str, Any], overrides: dict[str, Any], folder: Path,
         source: str) -> Job:
    # what a message names first ("jobs.toml: job 2: "); nothing for a job from no file (the web UI's)
    where = f"{source}: job {index}" if source else ""
    at = f"{where}: " if where else ""
    merged = {**defaults, **table}
    command_name = merged.pop("method", "train")
    if command_name not in METHODS:
        raise InputError(f"{at}method must be train or diff, not {command_name!r}")
    keys = job_keys(command_name)
    unknown = sorted(k for k in merged if k not in keys and k not in EXTRA_KEYS)
    if unknown:
        other = "diff" if command_name == "train" else "train"
        hint = f" (an option of {other}, not of {command_name})" if unknown[0] in job_keys(other) else ""
        raise InputError(f"{at}unknown key {unknown[0]!r}{hint}; valid keys: method, set, {', '.join(keys)}, gpus")
    sets = merged.pop("set", None)
    gpus = merged.pop("gpus", 1)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise InputError(f"{at}gpus must be a whole number from 1 (the GPUs an engine gives the job), not {gpus!r}")
    values = _values(merged, keys, overrides, folder)
    if "base" not in values:
        raise InputError(f"{at}base is required (here or in [defaults])")
    if isinstance(sets, dict):
        values["set_tables"] = flatten_sets(sets, at)
    elif sets is not None:
        items = sets if isinstance(sets, list) else [sets]
        if not all(isinstance(i, str) for i in items):
            raise InputError(f"{at}set must be a table (set.copy.network_dim = 32) or a list of "
                             "'section.key=value' strings")
        given = values.get("sets", [])
        values["sets"] = ([given] if isinstance(given, str) else list(given)) + items
    o = validate(values, where)
    label = o.name
    if not label:
        stem = o.out.name if o.out else (o.images[0].stem if o.images else f"job {index}")
        label = f"{stem}-{'+'.join(o.effects) or 'custom'}"
    return Job(index=index, label=label, command=command_name, options=o, gpus=gpus)


def load_jobs(path: Path, overrides: dict[str, Any] | None = None) -> list[Job]:
    """A jobs file, every job checked before any runs; `overrides` (by key) fill what job and [defaults] leave."""
    path = Path(path)
    data = read_toml(path, "jobs file")
    unknown = sorted(set(data) - {"defaults", "job"})
    if unknown:
        raise InputError(f"{path}: unknown table {unknown[0]!r}; a jobs file has [defaults] and [[job]] tables")
    defaults = data.get("defaults", {})
    tables = data.get("job", [])
    if not isinstance(defaults, dict) or not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise InputError(f"{path}: write [defaults] as a table and each job as [[job]]")
    if not tables:
        raise InputError(f"{path}: no jobs (add a [[job]] table)")
    folder = path.resolve().parent
    jobs = [_job(i, t, defaults, overrides or {}, folder, str(path)) for i, t in enumerate(tables, 1)]
    seen: dict[str, int] = {}
    for job in jobs:
        seen[job.label] = seen.get(job.label, 0) + 1
        if seen[job.label] > 1:
            job.label = f"{job.label} ({job.index})"
    return jobs


def check_job(table: dict[str, Any], folder: Path, overrides: dict[str, Any] | None = None) -> Job:
    """One job table checked as `load_jobs` does (paths relative to `folder`, messages name no file): the web UI's."""
    return _job(1, table, {}, overrides or {}, folder, "")


def queue_folder(jobs_file: Path) -> Path:
    """`<jobs file>.queue/`: each `--only N` job's events (`job-N.events.jsonl`) and output (`job-N.log`)."""
    jobs_file = Path(jobs_file)
    return jobs_file.parent / f"{jobs_file.stem}.queue"


def only(jobs: list[Job], n: int, source: Path) -> Job:
    """The N-th job (1-based, as SLURM_ARRAY_TASK_ID), refused when the file has fewer."""
    if not 1 <= n <= len(jobs):
        raise InputError(f"--only {n}: {source} has {len(jobs)} job(s) (1 to {len(jobs)})")
    return jobs[n - 1]


class Tee:
    """A text stream writing to `first` (the terminal) and a log file (`queue --only N`'s output)."""

    def __init__(self, first, log: Path):
        self.first = first
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "a", encoding="utf-8")  # noqa: SIM115 -- open for the object's life, closed by close()

    def write(self, text: str) -> int:
        self.first.write(text)
        self._log.write(text)
        return len(text)

    def flush(self) -> None:
        self.first.flush()
        self._log.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.first, "isatty", lambda: False)())

    def close(self) -> None:
        self._log.close()


class Queue:
    """Runs jobs in file order, `slots` at a time; a failed job is reported and the others go on; Ctrl-C stops all."""

    def __init__(self, jobs: list[Job], reporter: Reporter, slots: int = 1, gpus: int = 0,
                 events: Callable[[ev._Event], None] | None = None, total: int | None = None):
        self.jobs = jobs
        self.total = total or len(jobs)  # the jobs file's (more than `jobs` with --only)
        self.reporter = reporter
        self.slots = max(1, slots)
        self.gpus = gpus
        self.events = events
        self._emit = events or (lambda event: None)
        self._lock = threading.Lock()
        self.token = CancelToken()  # cancelled: every running job's pipeline is cancelled, no job starts
        self.results: list[JobResult] = []  # as they finish (an interrupted queue prints these)

    def _reporter(self, job: Job) -> Reporter:
        parallel = self.slots > 1
        events = self.events
        return Reporter(stream=self.reporter.stream, verbose=job.options.verbose or self.reporter.verbose,
                        live=False if parallel else self.reporter.live, prefix=f"[{job.label}] " if parallel else "",
                        events=(lambda e: events(e.model_copy(update={"job": job.index}))) if events else None)

    def _run_one(self, job: Job, slot: int) -> JobResult:
        reporter = self._reporter(job)
        self._emit(ev.JobStart(job=job.index, label=job.label, command=job.command))
        self.reporter.info(f"job {job.index}/{self.total}: {job.label} ({job.command})")
        gpu = slot if (self.slots > 1 and self.gpus > 1) else None
        pipelines: list[Any] = []
        unlink: list[Callable[[], None]] = []

        def register(pipeline: Any) -> None:
            pipelines.append(pipeline)
            unlink.append(self.token.on_cancel(pipeline.token.cancel))

        t0 = time.monotonic()
        try:
            if self.token.cancelled:
                raise CopymachineError("interrupted before it started")
            finals = run.run_method(job.method, job.options, reporter=reporter, on_pipeline=register, gpu=gpu)
            result = JobResult(job, "done", finals=finals)
        except CopymachineError as e:
            interrupted = self.token.cancelled or (bool(pipelines) and pipelines[-1].interrupted)
            result = JobResult(job, "interrupted" if interrupted else "failed", error=e)
            if not interrupted:
                reporter.info(f"job {job.label} failed: {e.message}")
                for line in e.details:
                    reporter.info(f"  | {line}")
        finally:
            for undo in unlink:
                undo()
        result.seconds = round(time.monotonic() - t0, 2)
        with self._lock:
            self.results.append(result)
        self._emit(job_end(result))
        return result

    def stop(self) -> None:
        """Stop every running job's sd-scripts (what Ctrl-C does to `train`), start no other job."""
        self.token.cancel()

    def run(self) -> list[JobResult]:
        self._emit(ev.QueueStart(jobs=[{"job": j.index, "label": j.label, "command": j.command} for j in self.jobs],
                                 slots=self.slots))
        if self.slots == 1:  # on this thread: Ctrl-C reaches the job's run as it reaches `train`
            return [self._run_one(job, 0) for job in self.jobs]
        results: dict[Hashable, JobResult] = {}
        todo, free = list(self.jobs), list(range(self.slots))
        slot_of: dict[Hashable, int] = {}

        def start() -> list[Task]:
            started: list[Task] = []
            while todo and free:
                job, slot = todo.pop(0), free.pop(0)
                slot_of[job.index] = slot
                started.append((job.index, functools.partial(self._run_one, job, slot)))
            return started

        def end(index: Hashable, future: Future) -> None:
            free.append(slot_of.pop(index))
            results[index] = future.result()

        side_by_side(self.slots, start, end, self.stop, "job")
        return [results[j.index] for j in self.jobs]


def job_end(result: JobResult) -> ev.JobEnd:
    return ev.JobEnd(job=result.job.index, label=result.job.label, status=result.status, exit_code=result.exit_code,
                     finals=[str(p) for p in result.finals], message=result.error.message if result.error else None,
                     seconds=result.seconds, node=result.node)


def _outcome(r: JobResult) -> str:
    if r.status == "done":
        return "done: " + (", ".join(str(p) for p in r.finals) or "(dry run)")
    if r.status == "interrupted":
        return "interrupted: run the queue again to resume"
    return f"failed (exit {r.exit_code}): {r.error.message if r.error else 'unknown error'}"


def print_summary(results: list[JobResult], reporter: Reporter, out=None) -> None:
    reporter.summary([(r.job.label, _outcome(r)) for r in results])
    done = sum(r.status == "done" for r in results)
    retry = "" if done == len(results) else "; run the same command again to retry (finished stages are kept)"
    reporter.info(f"queue: {done} of {len(results)} job(s) done{retry}")
    for r in results:
        for path in r.finals:
            print(str(path), file=out or sys.stdout)
