"""The web UI's queue on disk (`<queue>/<id>.toml`, one [[job]], with its .state.json, .events.jsonl and .log),
and the worker that runs one job at a time as `copymachine queue <id>.toml`: cancel is its Ctrl-C (resumable);
a UI that stops interrupts its job the same way and queues it again, so the next start resumes it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import tomli_w

from copymachine import events as ev
from copymachine import jobfile
from copymachine.errors import EXIT_INTERRUPTED
from copymachine.files import atomic_path, atomic_write_json
from copymachine.runner import log_tail
from copymachine.supervise import SUPERVISOR, Child

LOG_TAIL_LINES = 30
LOSS_POINTS = 300


def seconds_per_step(rate: str) -> float | None:
    """tqdm's rate (`1.25s/it`, `3.10it/s`) as seconds per step."""
    m = re.fullmatch(r"([\d.]+)\s*(s/it|it/s)", rate.strip())
    if not m or not float(m.group(1)):
        return None
    return float(m.group(1)) if m.group(2) == "s/it" else 1 / float(m.group(1))


def whole_job(stages: list[dict[str, Any]], progress: dict[str, Any] | None) -> dict[str, Any]:
    """Stages finished, and seconds left: steps left × the measured s/it, each training to come as many steps,
    each other stage the mean of those done (None until something was measured)."""
    finished = sum(st["status"] in ("done", "skipped") for st in stages)
    trained = [st for st in stages if st.get("steps") and st.get("spi")]
    spi = trained[-1]["spi"] if trained else None
    others = [st["seconds"] for st in stages if st["status"] == "done" and not st.get("steps") and "seconds" in st]
    left: float | None = 0.0
    if progress and progress.get("total") and spi:
        left = (progress["total"] - progress["step"]) * spi
    for st in stages:
        if st["status"] != "pending" or left is None:
            continue
        if st.get("kind") == "train_lora":
            left = left + trained[-1]["steps"] * spi if trained and spi else None
        elif others:
            left += sum(others) / len(others)
    return {"finished": finished, "stages": len(stages), "seconds_left": None if left is None else round(left)}


def progress_view(events: list[ev.Event]) -> dict[str, Any]:
    """Stages (title, status), the live progress line and the current log, from the events."""
    stages: list[dict[str, Any]] = []
    at: dict[str, int] = {}  # stage name -> its row
    view: dict[str, Any] = {"progress": None, "log": None, "finals": [], "message": None, "warnings": [],
                            "samples": []}
    for e in events:
        row = stages[at[e.stage]] if isinstance(e, ev.OfStage) and e.stage in at else {}
        if isinstance(e, ev.PlanMade):
            kinds = e.kinds or [""] * len(e.stages)
            stages = [{"title": t, "kind": k, "status": "pending"} for t, k in zip(e.stages, kinds)]
            at = {name: i for i, name in enumerate(e.names)}
        elif isinstance(e, ev.StageStart):
            row["status"] = "running"
            view["log"], view["progress"] = e.log or view["log"], None
        elif isinstance(e, ev.StageSkip):
            row["status"] = "skipped"
        elif isinstance(e, ev.StageDone):
            row.update(status="done", seconds=e.seconds)
            view["progress"] = None
        elif isinstance(e, ev.ProgressMade):
            view["progress"] = e.model_dump(include={"step", "total", "rate", "loss", "eta", "text", "job"})
            running = [st for st in stages if st["status"] == "running"]
            if running and e.total:
                running[-1].update(steps=e.total, spi=seconds_per_step(e.rate) or running[-1].get("spi"))
            if running and e.loss is not None and e.loss == e.loss:  # the loss chart: [step, loss], nan left out
                row = next((st for st in running if st["title"] == e.stage), running[-1])
                row.setdefault("loss", {})[e.step] = e.loss
        elif isinstance(e, ev.Warned):
            view["warnings"].append(e.text)
        elif isinstance(e, ev.Sample):
            view["samples"].append({"path": e.path, "title": e.title})
        elif isinstance(e, ev.JobEnd):
            view.update(finals=e.finals, message=e.message)
            for st in stages:
                if st["status"] == "running":
                    st["status"] = "done" if e.status == "done" else e.status
    for st in stages:  # at most LOSS_POINTS a chart
        points = sorted(st.pop("loss", {}).items())
        st["loss"] = points[:: -(-len(points) // LOSS_POINTS)] + points[-1:] if len(points) > LOSS_POINTS else points
    return {"stages": stages, **view, "overall": whole_job(stages, view["progress"])}


class JobFiles(NamedTuple):
    toml: Path
    state: Path
    events: Path
    log: Path

    @classmethod
    def of(cls, folder: Path, job_id: str) -> JobFiles:
        return cls(*(folder / f"{job_id}{suffix}" for suffix in (".toml", ".state.json", ".events.jsonl", ".log")))


class JobStore:
    """The queue folder: job files in the order they were added (their ids are numbers)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.toml") if p.stem.isdigit())

    def files(self, job_id: str) -> JobFiles:
        if not (job_id.isdigit() and (self.folder / f"{job_id}.toml").is_file()):
            raise KeyError(job_id)
        return JobFiles.of(self.folder, job_id)

    def add(self, table: dict[str, Any], check_overrides: dict[str, Any] | None = None,
            check: Callable[[jobfile.Job], None] | None = None) -> str:
        """Write a job file, checked as `copymachine queue` checks it, then by `check`, and queue it."""
        with self._lock:
            ids = self.ids()
            job_id = f"{int(ids[-1]) + 1 if ids else 1:04d}"
            job = jobfile.check_job(table, self.folder, check_overrides)  # a refused job leaves no file
            if check:
                check(job)
            with atomic_path(JobFiles.of(self.folder, job_id).toml) as scratch:
                scratch.write_text(tomli_w.dumps({"job": [table]}), encoding="utf-8")
            self.set_state(job_id, status="queued", label=job.label, command=job.command, added=time.time())
            return job_id

    def state(self, job_id: str) -> dict[str, Any]:
        try:
            return json.loads(self.files(job_id).state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"status": "queued", "label": job_id}

    def set_state(self, job_id: str, **changes: Any) -> dict[str, Any]:
        with self._lock:
            path = JobFiles.of(self.folder, job_id).state
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                state = {}
            state.update(changes)
            atomic_write_json(path, state)
            return state

    def remove(self, job_id: str) -> None:
        """The job's files in the queue; never its run folder (its results stay)."""
        files = self.files(job_id)
        with self._lock:
            for path in files:
                path.unlink(missing_ok=True)

    def next_queued(self) -> str | None:
        return next((job_id for job_id in self.ids() if self.state(job_id).get("status") == "queued"), None)

    def recover(self) -> list[str]:
        """At start: a job left `running` (the UI was stopped or killed) is queued again."""
        found = [job_id for job_id in self.ids() if self.state(job_id).get("status") == "running"]
        for job_id in found:
            self.set_state(job_id, status="queued", note="resumed after a restart of the UI")
        return found

    def view(self, job_id: str) -> dict[str, Any]:
        files = self.files(job_id)
        state = self.state(job_id)
        view = progress_view(ev.read_events(files.events))
        # a job that stopped (cancelled, failed, or queued again after a restart) runs no stage
        stopped = {"cancelled": "cancelled", "failed": "failed", "queued": "interrupted"}.get(state.get("status", ""))
        for st in view["stages"]:
            if stopped and st["status"] in ("running", "interrupted"):
                st["status"] = stopped
        running = view["log"] and state.get("status") == "running"
        log_lines = log_tail(Path(view["log"]), LOG_TAIL_LINES, indent=True) if running else []
        log_lines = log_lines or log_tail(files.log, LOG_TAIL_LINES, indent=True)
        return {"id": job_id, **state, **view, "log_tail": log_lines,
                "job": files.toml.read_text(encoding="utf-8"), "file": str(files.toml)}


class Worker(threading.Thread):
    """Runs the queued jobs one at a time, each as `copymachine queue JOB.toml` (one code path)."""

    def __init__(self, store: JobStore, queue_args: list[str]):
        super().__init__(name="copymachine-ui-worker", daemon=True)
        self.store = store
        self.queue_args = queue_args  # engine options handed to every job (sd-scripts, python ...)
        self.current: str | None = None
        self.child: Child | None = None
        self._interrupted = False  # the running job was sent its Ctrl-C (once: a second would end it at once)
        self._cancel: set[str] = set()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            job_id = self.store.next_queued()
            if job_id is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._run_job(job_id)

    def _run_job(self, job_id: str) -> None:
        files = self.store.files(job_id)
        argv = [sys.executable, "-m", "copymachine", "queue", str(files.toml), "--events", str(files.events),
                *self.queue_args]
        self.store.set_state(job_id, status="running", started=time.time(), exit_code=None, message=None)
        with open(files.log, "ab") as log, self._lock:
            log.write(f"$ copymachine queue {files.toml} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
            log.flush()
            # its own process group: Ctrl-C in the UI's terminal is the UI's to pass on (see stop())
            child = SUPERVISOR.popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.child, self.current, self._interrupted = child, job_id, False
            if self._stopping.is_set():
                self._interrupt()
        rc = child.proc.wait()
        SUPERVISOR.forget(child)
        with self._lock:
            self.child = self.current = None
        if self._stopping.is_set() and rc == EXIT_INTERRUPTED:
            self.store.set_state(job_id, status="queued",
                                 note="interrupted when the UI stopped; resumes at its next start")
            return
        if not files.toml.is_file():
            return  # removed while it ran
        end = ev.last_job_end(files.events)
        message = end.message if end else None
        cancelled = job_id in self._cancel and rc == EXIT_INTERRUPTED
        status = "done" if rc == 0 else "cancelled" if cancelled else "failed"
        if status == "failed" and not message:
            lines = log_tail(files.log, 5, indent=True)
            last = lines[-1] if lines else f"exit code {rc}"
            message = next((ln for ln in reversed(lines) if ln.startswith("copymachine: error:")), last)
        self._cancel.discard(job_id)
        self.store.set_state(job_id, status=status, exit_code=rc, message=message, finished=time.time())

    def _interrupt(self) -> None:
        """Ctrl-C to the running job (called holding the lock)."""
        if self.child is not None and not self._interrupted:
            self._interrupted = True
            SUPERVISOR.interrupt(self.child)

    def cancel(self, job_id: str) -> None:
        """A running job is interrupted as by Ctrl-C (finished stages kept); a queued one taken off the queue."""
        with self._lock:
            running = self.current == job_id and self.child is not None
            if running:
                self._cancel.add(job_id)
                self._interrupt()
        if not running and self.store.state(job_id).get("status") == "queued":
            self.store.set_state(job_id, status="cancelled", message="cancelled before it started")

    def retry(self, job_id: str) -> None:
        if self.store.state(job_id).get("status") in ("failed", "cancelled", "done"):
            self.store.set_state(job_id, status="queued", message=None, exit_code=None)
            self.wake()

    def remove(self, job_id: str) -> None:
        self.cancel(job_id)
        deadline = time.monotonic() + 60
        while self.current == job_id and time.monotonic() < deadline:
            time.sleep(0.05)
        self.store.remove(job_id)

    def stop(self, timeout: float = 60) -> None:
        """The UI stops: interrupt the running job (it is queued again for the next start)."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            child = self.child
            self._interrupt()
        if child is not None and not child.wait(timeout):
            SUPERVISOR.kill(child)  # it did not stop in time: end it (the next run ends its orphans)
        self.join(timeout)
