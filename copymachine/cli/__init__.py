"""The `copymachine` command: a click group; each command group lives in its own module."""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys

import click

from copymachine import __version__
from copymachine.errors import EXIT_INTERRUPTED, EXIT_OUTPUT, CopymachineError, is_disk_full

RESUME_HINT = "sd-scripts was stopped and every finished stage is kept: run the same command again to resume"


class CopymachineGroup(click.Group):
    """Turns user errors into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CopymachineError as e:
            click.echo(f"copymachine: error: {e.message}", err=True)
            for line in e.details:
                click.echo(f"  | {line}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo(f"copymachine: interrupted; {RESUME_HINT}", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except OSError as e:
            if not is_disk_full(e):
                raise
            # a full disk outside a stage (a lock, the manifest): the stages report their own
            where = f" writing {e.filename}" if e.filename else ""
            click.echo(f"copymachine: error: the disk is full{where}; free some space and run the same command "
                       "again (finished stages are kept)", err=True)
            ctx.exit(EXIT_OUTPUT)


@click.group(cls=CopymachineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="copymachine")
def cli():
    """Turn one image and one edit of it into a slider LoRA (the copy-machine LoRA method),
    by driving kohya-ss sd-scripts.

    \b
    Start here:
      copymachine setup                      # sd-scripts, its venv and torch (or --sd-scripts DIR you have)
      copymachine doctor                     # is this machine ready?
      copymachine train --effect outline --base sd15.safetensors --image picture.png --dry-run
      copymachine train --effect outline --base sd15.safetensors --image picture.png
    \b
    Each command's own help: copymachine COMMAND --help. A smoke test on the CPU:
      ... --resolution 64 --max-steps 3 --no-copy-check
    """


# Each module adds its commands to `cli` when imported.
COMMAND_MODULES: list[str] = ["methods", "queue", "ui", "edit", "tools", "recipe", "see", "doctor", "install"]
for _name in COMMAND_MODULES:
    importlib.import_module(f"copymachine.cli.{_name}")


def _terminate(signum, frame) -> None:
    # `kill PID`, a closing terminal, `docker stop`: stop sd-scripts as Ctrl-C does
    raise KeyboardInterrupt


def utf8_streams() -> None:
    """Write stdout and stderr as UTF-8, replacing what cannot be written: a redirected stdout on
    Windows is cp1252 (or cp932 on a Japanese system), where a Japanese file name or the progress
    line's "·" would raise UnicodeEncodeError, after the training has finished."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # a stream a caller replaced may lack it
        with contextlib.suppress(ValueError, OSError):  # a stream already closed, or one that cannot change now
            if reconfigure is not None:
                reconfigure(encoding="utf-8", errors="replace")


def main() -> None:
    utf8_streams()
    # SIGBREAK: Windows' CTRL_BREAK_EVENT, what the supervisor sends a child copymachine to stop it
    for name in ("SIGTERM", "SIGHUP", "SIGBREAK"):
        sig = getattr(signal, name, None)
        # an ignored signal stays ignored (`nohup copymachine ...` must survive its terminal)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _terminate)
    cli(prog_name="copymachine")
