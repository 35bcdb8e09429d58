"""`copymachine ui`: the local web page (copymachine/ui/)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import click

from copymachine import jobfile
from copymachine.cli import cli
from copymachine.cli.common import engine_options
from copymachine.errors import InputError
from copymachine.progress import Reporter


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Another than this machine's needs --share-on-network.")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True,
              help="Port (0: any free one, printed).")
@click.option("--share-on-network", is_flag=True,
              help="Allow --host to be an address other machines can reach (prints a warning; needs --auth, else a "
                   "random password is made and printed).")
@click.option("--auth", metavar="USER:PASSWORD",
              help="Ask for this user and password (HTTP basic authentication); required with --share-on-network.")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Where jobs, uploads (<runs>/_ui) and run folders go.")
@click.option("--models", "models_dirs", type=click.Path(file_okay=False, path_type=Path), multiple=True,
              help="A folder of models to pick the base and preview models from (repeat for several; the folders "
                   "in COPYMACHINE_MODELS, separated by the path separator, and the model folders of kohya_ss, "
                   "A1111, Forge or ComfyUI next to the sd-scripts in use are added). A model linked into one "
                   "of them is accepted.")
@click.option("--loras", "lora_dirs", type=click.Path(file_okay=False, path_type=Path), multiple=True,
              help="A LoRA folder the Results page may copy a LoRA into (repeat for several; with those in "
                   "COPYMACHINE_LORAS and the A1111/Forge models/Lora, ComfyUI models/loras beside the model folders).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", metavar="[ADDRESS]",
              help="Run each job as a Ray task on the Ray cluster at ADDRESS (default auto), as `copymachine queue "
                   "--ray` does; the runs folder must be on a filesystem every node shares.")
@engine_options
def ui(host, port, share_on_network, auth, runs_dir, models_dirs, lora_dirs, ray_address, **engine):
    """A local web page: make jobs (live edit previews with the check's verdict), watch the queue,
    see the results (copy-check sheet, strength sweep, inspect, download).

    The address printed carries a token (made at each start, kept in a cookie): the API answers
    only the page opened with it, at this UI's own host, and refuses requests from other sites'
    pages. The engine (--sd-scripts, --python, --device ...) is the UI's and goes to every job;
    a job's paths must lie under --runs or --models.

    The page runs nothing itself: every job is a jobs file in <runs>/_ui/queue, run by `copymachine
    queue` in a child process (cancel = Ctrl-C to it; a restart of the UI resumes the queue).

    \b
    Example:
      copymachine ui --models ~/models
    """
    from copymachine.ui.files import model_folders_near
    from copymachine.ui.server import App, check_host, make_server

    reporter = Reporter()
    warning = check_host(host, share_on_network)
    if auth is not None and (":" not in auth or not auth.split(":", 1)[0]):
        raise InputError("--auth expects user:password")
    if warning:
        reporter.warn(warning)
        if auth is None:
            auth = "copymachine:" + secrets.token_urlsafe(12)
            reporter.info(f"copymachine ui: no --auth given, so the page asks for user and password {auth}")
    queue_args, overrides = queue_options(engine, ray_address)
    from_env = [Path(p) for p in os.environ.get("COPYMACHINE_MODELS", "").split(os.pathsep) if p]
    loras = [*lora_dirs, *(Path(p) for p in os.environ.get("COPYMACHINE_LORAS", "").split(os.pathsep) if p)]
    sd_scripts = engine.get("sd_scripts") or os.environ.get("SD_SCRIPTS")
    near = model_folders_near(Path(sd_scripts)) if sd_scripts else []
    app = App(runs_dir, [*models_dirs, *(p for p in from_env if p.is_dir()), *near], queue_args, auth=auth,
              engine_overrides=overrides, loras=loras)
    try:
        server = make_server(app, host, port)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.server_address[1]}/?token={app.token}"
    if app.model_folders:
        reporter.info("copymachine ui: models from " + ", ".join(map(str, app.model_folders)))
    if app.lora_folders:
        reporter.info("copymachine ui: LoRAs may be copied to " + ", ".join(map(str, app.lora_folders)))
    if app.recovered:
        reporter.info(f"resuming {len(app.recovered)} job(s) that were running when the UI stopped")
    app.worker.start()
    reporter.info(f"copymachine ui: {url}  (jobs in {app.store.folder}; Ctrl-C stops: a running job is interrupted "
                  "and resumes at the next start)")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        running = app.worker.current
        job = f"; the running job {running} is interrupted (finished stages kept) and resumes at the next start"
        reporter.info("copymachine ui: stopping" + (job if running else ""))
    finally:
        app.worker.stop()
        server.server_close()


def queue_options(engine: dict, ray_address: str | None = None) -> tuple[list[str], dict]:
    """The `copymachine queue` options the worker gives every job, and the job keys they stand for."""
    ray = ["--ray", ray_address] if ray_address is not None else []
    return [*jobfile.engine_argv(engine), *ray], jobfile.engine_keys(engine)
