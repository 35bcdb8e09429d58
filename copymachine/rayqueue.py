"""`copymachine queue JOBS.toml --ray [ADDRESS]`: each job as a Ray task running `copymachine queue JOBS.toml
--only N` as a child on its node (cluster.py), the copy machine first (cluster.waves); every node shares the jobs
file, run folders and cache. Ray is an optional extra (`pip install 'copymachine[ray]'`), imported when used.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from copymachine import cluster
from copymachine import events as ev
from copymachine.errors import EXIT_INTERRUPTED, CopymachineError, EnvironmentProblem, OutputError
from copymachine.events import last_job_end, read_events
from copymachine.jobfile import Job, JobResult, job_end, queue_folder
from copymachine.progress import Reporter
from copymachine.supervise import SUPERVISOR

INSTALL_HINT = "--ray needs Ray, on this machine and on every node: pip install 'copymachine[ray]'"
MAX_RETRIES = 3  # a task whose worker or node died is run again (Ray's own retry)
COPY_STAGES = ("copy-lora", "lora-a")  # the last part of the names of the stages a second-wave job waits for


def connect(address: str):
    """ray.init to a running cluster: `auto` (the one `ray start` made here) or the head's address."""
    try:
        import ray
    except ImportError:
        raise EnvironmentProblem(INSTALL_HINT) from None
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EnvironmentProblem(f"--ray {address}: no Ray cluster there ({e}); start one with `ray start --head` "
                                 "(and `ray start --address HEAD:6379` on the other machines)") from None
    return ray


def _child_setup() -> None:  # pragma: no cover -- runs in the child between fork and exec
    """Unblock SIGINT/SIGTERM (a Ray worker blocks them, and a child inherits the mask: it could not be
    stopped as Ctrl-C stops a run); on Linux, SIGTERM to the child when the task's worker dies, so it stops."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def run_job_task(argv: list[str], cwd: str, task_log: str, queue_env: dict[str, str] | None = None) -> dict[str, Any]:
    """A job's Ray task: `copymachine queue … --only N` as a child (its record of each attempt in `task_log`);
    a cancel (KeyboardInterrupt from ray.cancel) stops it as Ctrl-C does, nothing finished lost."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    gpus = [str(g) for g in ray.get_gpu_ids()]
    env = dict(os.environ, **(queue_env or {}))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    Path(task_log).parent.mkdir(parents=True, exist_ok=True)
    with open(task_log, "ab") as log:
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"--- {when} node {node} ({socket.gethostname()}) GPUs {','.join(gpus) or '-'}\n".encode())
        log.flush()
        extra = {"preexec_fn": _child_setup} if os.name == "posix" else {}
        child = SUPERVISOR.popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 **extra)
        cancelled = False
        try:
            while child.proc.poll() is None:
                time.sleep(0.2)  # a sleep, not a blocking wait: ray.cancel's KeyboardInterrupt lands here
        except KeyboardInterrupt:
            cancelled = True
            SUPERVISOR.stop(child)
        code = child.proc.wait()
        SUPERVISOR.forget(child)
        log.write(f"--- exit code {code}{' (cancelled)' if cancelled else ''}\n".encode())
    if cancelled:
        raise KeyboardInterrupt  # the task ends cancelled (ray.get: TaskCancelledError)
    return {"exit_code": code, "node": node, "gpus": gpus, "host": socket.gethostname()}


def probe_folders(folders: list[str]) -> list[str]:
    """On a node: write and remove a file in each folder; the folders where that failed."""
    problems = []
    for folder in folders:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".copymachine-probe-"):
                pass
        except OSError as e:
            problems.append(f"{folder}: {e.strerror or e}")
    return problems


def job_folders(jobs_file: Path, jobs: list[Job], cwd: Path) -> list[str]:
    """The folders the jobs write to: the queue folder, each run folder's parent, each cache folder set."""
    folders = {queue_folder(Path(jobs_file).resolve())}
    for job in jobs:
        o = job.options
        run = (cwd / o.out) if o.out else cwd / "runs"
        folders.add(run.parent if o.out else run)
        if o.cache_dir:
            folders.add(cwd / o.cache_dir)
    return sorted(str(f) for f in folders)


def _job_file(jobs_file: Path, job: Job, suffix: str) -> Path:
    return queue_folder(Path(jobs_file).resolve()) / f"job-{job.index}.{suffix}"


def submit(ray, job: Job, jobs_file: Path, engine: dict, cwd: Path):
    """The job as a Ray task; returns its ObjectRef."""
    task = ray.remote(run_job_task).options(num_gpus=job.gpus, num_cpus=0, max_retries=MAX_RETRIES,
                                            retry_exceptions=False, name=f"copymachine job {job.index}: {job.label}")
    argv = cluster.job_command(jobs_file, str(job.index), engine)
    # the queue's own variables (COPYMACHINE_*, SD_SCRIPTS*, HF_*) for the child, whatever its node's are
    env = {k: v for k, v in os.environ.items() if k.startswith(("COPYMACHINE_", "SD_SCRIPTS", "HF_"))}
    return task.remote(argv, str(cwd), str(_job_file(jobs_file, job, "task.log")), env)


def copies_made(jobs_file: Path, job: Job) -> int:
    """How many copy LoRAs the job's latest attempt has made or found done (its events file)."""
    return sum(1 for e in read_events(_job_file(jobs_file, job, "events.jsonl"))
               if isinstance(e, ev.StageDone | ev.StageSkip) and e.stage.rsplit("/", 1)[-1] in COPY_STAGES)


def result_of(job: Job, outcome: dict[str, Any] | None, jobs_file: Path, seconds: float, cancelled: bool = False,
              error: str | None = None) -> JobResult:
    """What a job's task came to: its child's exit code, and the job's own account (its events)."""
    end = last_job_end(_job_file(jobs_file, job, "events.jsonl"))
    code = EXIT_INTERRUPTED if cancelled else outcome["exit_code"] if outcome else 1
    if code == 0:
        return JobResult(job, "done", finals=[Path(p) for p in end.finals] if end else [], seconds=seconds)
    if code == EXIT_INTERRUPTED:
        message = "cancelled" if cancelled else "interrupted"
        return JobResult(job, "interrupted", error=CopymachineError(message, exit_code=code), seconds=seconds)
    if outcome is None:
        message = f"its Ray task failed: {error}"
    else:
        log = _job_file(jobs_file, job, "log")
        message = (end.message if end else None) or (f"copymachine queue --only {job.index} ended with exit code "
                                                     f"{code} (see {log})")
    return JobResult(job, "failed", error=CopymachineError(message, exit_code=code), seconds=seconds)


def _check_cluster(ray, jobs_file: Path, jobs: list[Job], cwd: Path, reporter: Reporter) -> None:
    """GPUs enough for each job; a probe on every alive node, before any job: each folder the jobs write
    to must be writable there (a shared filesystem)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    gpus = ray.cluster_resources().get("GPU", 0)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    reporter.info(f"copymachine queue --ray: {len(jobs)} job(s) on {len(nodes)} node(s), {gpus:g} GPU(s)")
    job = next((j for j in jobs if j.gpus > gpus), None)
    if job:
        raise EnvironmentProblem(f"job {job.index} ({job.label}) asks for {job.gpus} GPU(s); "
                                 f"the Ray cluster has {gpus:g}")
    folders = job_folders(jobs_file, jobs, cwd)
    probe = ray.remote(probe_folders)
    refs = {node: probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
            .remote(folders) for node in nodes}
    problems = []
    for node, ref in refs.items():
        problems += [f"node {node[:8]}: {p}" for p in ray.get(ref, timeout=120)]
    if problems:
        raise OutputError("--ray: a folder the jobs write to is not writable from every node (the run, cache and queue "
                          f"folders must be on a filesystem every node shares): {problems[0]}", details=problems[1:])


def _cancel(ray, running: dict[Any, tuple[Job, float]], jobs_file: Path, results: dict[int, JobResult]) -> None:
    """Ctrl-C: every task cancelled, and waited for while its child stops sd-scripts."""
    for ref in running:
        ray.cancel(ref)
    deadline = time.monotonic() + cluster.STOP_S + 30
    for ref, (job, t0) in running.items():
        try:
            ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
        except Exception:  # cancelled, or ended another way: the job is interrupted
            pass
        results[job.index] = result_of(job, None, jobs_file, round(time.monotonic() - t0, 2), cancelled=True)


def run_queue(jobs_file: Path, jobs: list[Job], address: str, engine: dict, reporter: Reporter,
              events: Callable[[ev._Event], None] | None = None) -> list[JobResult]:
    """The jobs' results in file order; Ctrl-C cancels every task and waits for their children to stop."""
    ray = connect(address)
    cwd = Path.cwd().resolve()
    emit = events or (lambda e: None)
    _check_cluster(ray, jobs_file, jobs, cwd, reporter)
    split = cluster.waves(jobs, reporter)
    if split.rest:
        reporter.info(f"{len(split.rest)} job(s) share a copy LoRA with an earlier one: they start once it is made")
    emit(ev.QueueStart(jobs=[{"job": j.index, "label": j.label, "command": j.command} for j in jobs], engine="ray"))
    pending = split.first + split.rest
    ended: set[int] = set()
    released: set[int] = set()
    running: dict[Any, tuple[Job, float]] = {}
    results: dict[int, JobResult] = {}
    try:
        while pending or running:
            # a first-wave job releases the jobs that share its copy LoRA(s) once it has made them
            for job, _t0 in running.values():
                if job.index not in released and copies_made(jobs_file, job) >= split.copies.get(job.index, 0):
                    released.add(job.index)
            for job in [j for j in pending if split.after.get(j.index, set()) <= ended | released
                        and split.same_folder.get(j.index, 0) in ended | {0}]:
                pending.remove(job)
                running[submit(ray, job, jobs_file, engine, cwd)] = (job, time.monotonic())
                emit(ev.JobStart(job=job.index, label=job.label, command=job.command))
                reporter.info(f"job {job.index}/{len(jobs)}: {job.label} ({job.command}) submitted")
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                job, t0 = running.pop(ref)
                result = results[job.index] = _collect(ray, ref, job, jobs_file, round(time.monotonic() - t0, 2))
                ended.add(job.index)
                where = f" on node {result.node[:8]}" if result.node else ""
                failed = f": {result.error.message}" if result.status == "failed" and result.error else ""
                reporter.info(f"job {job.label}: {result.status}{where}{failed}")
                emit(job_end(result))
    except KeyboardInterrupt:
        reporter.info(f"copymachine queue --ray: stopping {len(running)} running job(s)")
        _cancel(ray, running, jobs_file, results)
        raise QueueInterrupted([results[j.index] for j in jobs if j.index in results]) from None
    return [results[j.index] for j in jobs]


class QueueInterrupted(KeyboardInterrupt):
    def __init__(self, results: list[JobResult]):
        super().__init__()
        self.results = results


def _collect(ray, ref, job: Job, jobs_file: Path, seconds: float) -> JobResult:
    from ray.exceptions import RayError, TaskCancelledError

    try:
        outcome = ray.get(ref)
    except TaskCancelledError:
        return result_of(job, None, jobs_file, seconds, cancelled=True)
    except RayError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return result_of(job, None, jobs_file, seconds, error=first)
    result = result_of(job, outcome, jobs_file, seconds)
    result.node = outcome.get("node")
    return result
