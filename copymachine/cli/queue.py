"""`copymachine queue JOBS.toml`: many `train` / `diff` jobs from one file (copymachine/jobfile.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from copymachine import cluster, jobfile
from copymachine.cli import cli
from copymachine.cli.common import engine_options, make_settings
from copymachine.errors import EXIT_INTERRUPTED, EnvironmentProblem, InputError
from copymachine.events import JsonLines, QueueEnd
from copymachine.files import atomic_write_text
from copymachine.progress import Reporter


@cli.command()
@click.argument("jobs_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--jobs", "slots", type=click.IntRange(1), default=1, show_default=True,
              help="Jobs run side by side: on a multi-GPU machine each on its own GPU, on one GPU they share it; CPU "
                   "runs stay sequential (as train's --jobs).")
@click.option("--events", "events_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every progress event as a JSON line to this file (what the web UI reads).")
@click.option("--only", "only", type=click.IntRange(1), metavar="N",
              help="Run only the file's N-th job (1-based: SLURM_ARRAY_TASK_ID), its events (unless --events) and "
                   "output also written to <jobs file>.queue/job-N.events.jsonl and job-N.log.")
@click.option("--slurm-script", type=click.Path(dir_okay=False, path_type=Path),
              help="Run nothing: write an sbatch array script for the jobs (one task and one GPU per job, requeued "
                   "when preempted; --jobs K: at most K at once) and print the sbatch line(s) that submit it.")
@click.option("--sbatch", "sbatch", multiple=True, metavar="OPTION",
              help="With --slurm-script: one more #SBATCH line (--partition=gpu, --time=4:00:00, --mem=32G). "
                   "Repeatable.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", metavar="[ADDRESS]",
              help="Run each job as a Ray task with one GPU (a job's gpus key asks for more) on the Ray cluster at "
                   "ADDRESS (default auto: the one `ray start` joined on this machine); every node must share the "
                   "jobs file, run and cache folders. Needs the [ray] extra.")
@engine_options
@click.pass_context
def queue(ctx, jobs_file, slots, events_file, only, slurm_script, sbatch, ray_address, **engine):
    """Run the train / diff jobs of a jobs file, in order; a summary at the end.

    Each [[job]] takes the long options of `copymachine train` or `diff` as keys (method = "diff"
    for diff; set.copy.network_dim = 32 for --set); [defaults] applies to every job; relative paths
    are relative to the jobs file. docs/jobs.example.toml is a commented example.

    A job that fails (a missing image, a failed stage) is reported and the others run; the exit
    code is then the first failed job's. Every job is resumable like any run: the same command
    again skips every finished stage, so a killed or interrupted queue goes on where it stopped.

    With --only N the queue runs one job (the file is still checked whole), as an engine's task
    does (a Slurm array, a Ray task); its exit code is the job's.

    \b
    Example:
      copymachine queue jobs.toml --jobs 2
      copymachine queue jobs.toml --only 3
    """
    if only is not None and slurm_script is not None:
        raise InputError("--only runs one job here; --slurm-script writes a script for them all: give one of them")
    if ray_address is not None and (only is not None or slurm_script is not None):
        raise InputError("--ray runs every job on the Ray cluster: not with --only or --slurm-script")
    if sbatch and slurm_script is None:
        raise InputError("--sbatch adds a line to the script of --slurm-script: give --slurm-script too")
    jobs = jobfile.load_jobs(jobs_file, jobfile.engine_keys(engine))
    total = len(jobs)
    if slurm_script is not None:
        throttle = slots if ctx.get_parameter_source("slots") is not click.core.ParameterSource.DEFAULT else None
        _write_slurm_script(jobs_file, jobs, engine, throttle, sbatch, slurm_script)
        return
    if ray_address is not None:
        _run_on_ray(jobs_file, jobs, ray_address, events_file, engine)
        return
    log = None
    if only is not None:
        jobs = [jobfile.only(jobs, only, jobs_file)]
        folder = jobfile.queue_folder(jobs_file)
        events_file = events_file or folder / f"job-{only}.events.jsonl"
        log = jobfile.Tee(sys.stderr, folder / f"job-{only}.log")
    try:
        _run_queue(jobs_file, jobs, slots, events_file, engine, Reporter(stream=log, verbose=engine["verbose"]), total)
    finally:
        if log is not None:
            log.close()


def _run_queue(jobs_file, jobs, slots, events_file, engine, reporter: Reporter, total: int) -> None:
    gpus = 0
    if slots > 1:
        # the queue's engine options decide, as train decides for its trainings
        try:
            settings = make_settings(engine["sd_scripts"], engine["python"], engine["device"],
                                     engine["tokenizer_cache_dir"], engine["offline"], reporter, require=False)
        except EnvironmentProblem:
            settings = None
        if settings is None or settings.device == "cpu":
            reporter.warn("--jobs: CPU runs stay sequential (jobs side by side would only share the same cores)")
            slots = 1
        else:
            gpus = settings.gpus
            where = f", each on its own GPU ({gpus} GPUs)" if gpus > 1 else " on one GPU"
            reporter.info(f"{slots} jobs side by side{where}")
    events = JsonLines(events_file) if events_file else None
    reporter.events = events
    which = f"{len(jobs)} job(s)" if len(jobs) == total else f"job {jobs[0].index} of {total}"
    reporter.info(f"copymachine queue: {which} from {jobs_file}")
    runner = jobfile.Queue(jobs, reporter, slots=min(slots, len(jobs)), gpus=gpus, events=events, total=total)
    try:
        results = runner.run()
    except KeyboardInterrupt:
        _end(runner.results, reporter, events, interrupted=True)
        raise
    _end(results, reporter, events)


def _end(results, reporter: Reporter, events, interrupted: bool = False) -> None:
    """The summary, the queue's end event, and (when it ran to its end) the first failed job's exit code."""
    if results:
        jobfile.print_summary(results, reporter)
    failed = [r for r in results if r.status != "done"]
    code = EXIT_INTERRUPTED if interrupted else failed[0].exit_code if failed else 0
    if events:
        events(QueueEnd(status="interrupted" if interrupted else "failed" if failed else "done", exit_code=code))
        events.close()
    if failed and not interrupted:
        raise click.exceptions.Exit(code)


def _write_slurm_script(jobs_file: Path, jobs, engine: dict, throttle: int | None, sbatch: tuple[str, ...],
                        script: Path) -> None:
    reporter = Reporter(verbose=engine["verbose"])
    split = cluster.waves(jobs, reporter)
    text = cluster.slurm_script(jobs_file, jobs, engine, throttle, sbatch, Path.cwd())
    script.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(script, text)
    script.chmod(0o755)
    jobfile.queue_folder(jobs_file).mkdir(parents=True, exist_ok=True)  # sbatch's --output folder
    if split.rest:
        rest, first = (cluster.array_spec([j.index for j in wave]) for wave in (split.rest, split.first))
        reporter.info(f"{len(split.rest)} job(s) share a copy LoRA with an earlier one: two arrays, "
                      f"jobs {rest} after {first}")
    reporter.info(f"wrote {script}: {len(jobs)} Slurm task(s); submit with:")
    for line in cluster.sbatch_lines(script, split, throttle):
        click.echo(line)


def _run_on_ray(jobs_file: Path, jobs, address: str, events_file: Path | None, engine: dict) -> None:
    from copymachine import rayqueue

    reporter = Reporter(verbose=engine["verbose"])
    events = JsonLines(events_file) if events_file else None
    try:
        results = rayqueue.run_queue(jobs_file, jobs, address, engine, reporter, events)
    except rayqueue.QueueInterrupted as stopped:
        _end(stopped.results, reporter, events, interrupted=True)
        raise KeyboardInterrupt from None
    _end(results, reporter, events)
