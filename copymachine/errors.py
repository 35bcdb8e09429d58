"""Errors a user can cause: each ends the command with one line on stderr (no traceback) and its exit code,
as the README's troubleshooting table lists them."""

from __future__ import annotations

import errno

# Exit codes (documented in README "Troubleshooting").
EXIT_OK = 0
EXIT_ENGINE = 1  # an sd-scripts stage failed (non-zero exit, missing output, NaN loss, out of memory)
EXIT_USAGE = 2  # bad command line (click's own code for usage errors)
EXIT_INPUT = 3  # a bad input file: model, image, edited image, recipe file
EXIT_ENVIRONMENT = 4  # sd-scripts or its Python not found or incomplete (doctor: also too little RAM)
EXIT_OUTPUT = 5  # output path exists, not writable, or not enough disk space
EXIT_BUSY = 6  # another run holds the lock on the same cache or run folder
EXIT_CHECK = 7  # a check of the method failed (the copy model does not copy the original yet)
EXIT_INTERRUPTED = 130  # Ctrl-C


class CopymachineError(Exception):
    exit_code = EXIT_INPUT

    def __init__(self, message: str, exit_code: int | None = None, details: list[str] | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        self.details = list(details or [])  # shown under the message (the last lines of a log)

    @property
    def message(self) -> str:
        return str(self.args[0])


class InputError(CopymachineError):
    exit_code = EXIT_INPUT


class EnvironmentProblem(CopymachineError):
    exit_code = EXIT_ENVIRONMENT


class EngineError(CopymachineError):
    exit_code = EXIT_ENGINE


class OutputError(CopymachineError):
    exit_code = EXIT_OUTPUT


class DiskFull(OutputError):
    """A full disk met; the pipeline turns it into the line that names the folder (preflight.disk_full)."""

    def __init__(self, message: str, folder, log=None):
        super().__init__(message)
        self.folder = folder
        self.log = log


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class BusyError(CopymachineError):
    exit_code = EXIT_BUSY


class CheckFailed(CopymachineError):
    exit_code = EXIT_CHECK
