"""Whole jobs of a jobs file on an engine (Slurm here, Ray in rayqueue.py), each as `copymachine queue JOBS.toml
--only N` where the engine puts it: the GPU probe, the plan and every stage run on that node (the head may have
no GPU; precision is in the stage keys)."""

from __future__ import annotations

import io
import itertools
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from copymachine import run
from copymachine.errors import CopymachineError, EnvironmentProblem, InputError
from copymachine.jobfile import Job, engine_argv, queue_folder
from copymachine.progress import Reporter
from copymachine.stamps import done_stamp
from copymachine.supervise import GRACE_S, KILL_S, TERM_S

# Slurm's default KillWait: between scancel's (or a preemption's) SIGTERM and SIGKILL
SLURM_KILL_WAIT_S = 30
STOP_S = GRACE_S + TERM_S + KILL_S  # the longest a job takes to stop its sd-scripts


@dataclass
class Waves:
    first: list[Job]
    rest: list[Job]  # each shares a copy LoRA that a job of `first` trains
    after: dict[int, set[int]] = field(default_factory=dict)  # a job of `rest` -> the first-wave jobs it waits for
    copies: dict[int, int] = field(default_factory=dict)  # a first-wave job -> how many copy LoRAs it makes
    # a job -> the earlier job writing the same run folder: it holds the folder's lock for its whole
    # run, so the later one waits for it to end (Ray), instead of holding a GPU meanwhile
    same_folder: dict[int, int] = field(default_factory=dict)


def waves(jobs: list[Job], reporter: Reporter) -> Waves:
    """The copy machine first: one job per copy-cache key in a first wave, in file order; a job whose every
    copy LoRA an earlier one trains goes second (else it would hold a GPU while it waits on the LoRA's lock).
    A job the user must fix is refused here, before anything is submitted; no sd-scripts here: one wave."""
    split = Waves(first=[], rest=[])
    claimed: dict[str, int] = {}  # copy LoRA key -> the first-wave job that trains it
    folders: dict[Path, int] = {}
    quiet = Reporter(stream=io.StringIO(), live=False)  # what planning says is not the queue's to print
    for job in jobs:
        try:
            the_plan, hashes = run.plan_only(job.method, job.options, quiet)
        except EnvironmentProblem as e:
            reporter.warn(f"cannot plan the jobs on this host ({e.message}): one wave; "
                          "jobs that share a copy LoRA wait on its lock")
            return Waves(first=list(jobs), rest=[])
        except CopymachineError as e:
            raise InputError(f"job {job.index} ({job.label}): {e.message}", details=e.details) from None
        # the plan's copy LoRAs (LoRA A for diff) not done yet
        keys = {s.key for s in the_plan.stages if s.shared and s.workdir.parent.name == "copy-lora"
                and not done_stamp(s, hashes, check_inputs=False)}
        run_dir = Path(the_plan.run_dir).resolve()
        if run_dir in folders:
            split.same_folder[job.index] = folders[run_dir]
        folders[run_dir] = job.index
        if keys and keys <= claimed.keys():
            split.rest.append(job)
            split.after[job.index] = {claimed[k] for k in keys}
        else:
            split.first.append(job)
            claimed.update({k: job.index for k in keys if k not in claimed})
            split.copies[job.index] = len(keys)
    return split


def array_spec(indices: list[int]) -> str:
    """1,2,3,5 -> '1-3,5' (sbatch --array)."""
    runs = [[i for _, i in run] for _, run in itertools.groupby(enumerate(sorted(indices)), lambda p: p[1] - p[0])]
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs)


def job_command(jobs_file: Path, index: str, engine: dict) -> list[str]:
    """`copymachine queue JOBS.toml --only N` with this Python (the same install on every node)."""
    jobs_file = Path(jobs_file).resolve()
    return [sys.executable, "-m", "copymachine", "queue", str(jobs_file), "--only", index, *engine_argv(engine)]


def slurm_script(jobs_file: Path, jobs: list[Job], engine: dict, throttle: int | None, sbatch: tuple[str, ...],
                 workdir: Path) -> str:
    """The sbatch array script: task N = job N, one GPU each, requeued when preempted (it resumes). `exec`
    makes copymachine the task's process: scancel's SIGTERM reaches it, it stops in STOP_S < Slurm's KillWait."""
    jobs_file = Path(jobs_file).resolve()
    folder = queue_folder(jobs_file)
    array = f"1-{len(jobs)}" + (f"%{throttle}" if throttle else "")
    command = job_command(jobs_file, "__TASK__", engine)
    line = " ".join(shlex.quote(a) for a in command).replace("__TASK__", '"$SLURM_ARRAY_TASK_ID"')
    directives = [f"--job-name={jobs_file.stem}", f"--array={array}", "--gres=gpu:1", "--requeue", "--open-mode=append",
                  f"--chdir={workdir.resolve()}", f"--output={folder / 'slurm-%A_%a.out'}", *sbatch]
    return "\n".join([
        "#!/bin/bash",
        f"# copymachine queue {jobs_file.name}: {len(jobs)} job(s), task N = job N of the file",
        "# written by `copymachine queue --slurm-script`; submit with the sbatch line(s) it printed",
        *(f"#SBATCH {_directive(d)}" for d in directives),
        "",
        "# the job's events and output: <jobs file>.queue/job-$SLURM_ARRAY_TASK_ID.events.jsonl and .log",
        f"exec {line}",
        "",
    ])


def _directive(option: str) -> str:
    """An #SBATCH option; a value with spaces in double quotes (sbatch strips them)."""
    name, sep, value = option.partition("=")
    if sep and any(c.isspace() for c in value):
        if '"' in value:
            raise InputError(f"--sbatch / paths: a double quote cannot go in an #SBATCH line: {option}")
        return f'{name}="{value}"'
    return option


def sbatch_lines(script: Path, split: Waves, throttle: int | None) -> list[str]:
    """One sbatch array, or two (jobs sharing a copy LoRA): the second after the first (afterok)."""
    script_q = shlex.quote(str(Path(script).resolve()))
    cap = f"%{throttle}" if throttle else ""
    if not split.rest:
        return [f"sbatch {script_q}"]
    first = array_spec([j.index for j in split.first]) + cap
    rest = array_spec([j.index for j in split.rest]) + cap
    return [f"first=$(sbatch --parsable --array={first} {script_q})",
            f'sbatch --array={rest} --dependency=afterok:"${{first%%;*}}" --kill-on-invalid-dep=yes {script_q}']
