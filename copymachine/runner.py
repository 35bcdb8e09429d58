"""Running one sd-scripts command: argument list in, full log to a file, live progress out.

sd-scripts prints through rich on stderr and draws tqdm bars with carriage returns; the runner
reads stdout and stderr as one stream, writes every byte to the stage's log, splits the stream
on CR and LF, and parses the `steps:` bar into step / total / rate / loss. It also watches for
the failures sd-scripts does not turn into an exit code (NaN loss) and for out-of-memory.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from copymachine.supervise import SUPERVISOR

# tqdm: "steps:  42%|####      | 420/1000 [05:12<07:11,  1.34it/s, avr_loss=0.0873]"
_TQDM = re.compile(
    r"(?:(?P<desc>[A-Za-z][\w ]*):\s*)?(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
    r"\[(?P<elapsed>[^<\]]*)(?:<(?P<eta>[^,\]]*))?(?:,\s*(?P<rate>[\d.?]+\s*(?:it/s|s/it)))?(?:,\s*(?P<post>[^\]]*))?\]"
)
_LOSS = re.compile(r"(?:avr_loss|loss)=(?P<loss>[-+\w.]+)")
_OOM = re.compile(r"(CUDA out of memory|OutOfMemoryError|out of memory|DefaultCPUAllocator: can't allocate memory)",
                  re.I)
_NAN_LINE = re.compile(r"NaN detected|nan found|loss is nan", re.I)
# a full disk, as Python (OSError errno 28), Rust (safetensors: `os error 28`, StorageFull) and
# torch's zip writer (PytorchStreamWriter ... file write failed) report it
_NO_SPACE = re.compile(r"No space left on device|\[Errno 28\]|os error 28|StorageFull|Disk quota exceeded"
                       r"|PytorchStreamWriter failed writing file", re.I)


@dataclass
class Progress:
    step: int
    total: int
    desc: str = ""
    rate: str = ""
    eta: str = ""
    loss: float | None = None


_LIBRARY = ("site-packages", "dist-packages", "/lib/python", "\\lib\\")


def _machinery(file_line: str) -> bool:
    return "importlib" in file_line or "<frozen" in file_line


@dataclass
class Traceback:
    """A Python traceback in the output: its frames ([`File ...` line, source line]) and its exception line."""

    frames: list[list[str]] = field(default_factory=list)
    exception: str = ""
    printed_stack: bool = False

    def frame(self) -> list[str]:
        """The innermost frame of the program itself (else of a library, else any), as lines."""
        own = [f for f in self.frames if not _machinery(f[0])]
        frames = [f for f in own if not any(part in f[0] for part in _LIBRARY)] or own or self.frames
        return [line for line in frames[-1] if line] if frames else []

    def failed_module(self) -> str:
        """For an ImportError: the module that failed (`No module named 'x'`, else the innermost `x/__init__.py`)."""
        if "No module named" in self.exception:
            return self.exception.split("No module named", 1)[1].strip().strip("'\"").split(".")[0]
        for file_line, _ in reversed(self.frames):
            if _machinery(file_line):
                continue
            m = re.search(r"[\\/]([A-Za-z_]\w*)[\\/]__init__\.py\"", file_line)
            if m:
                return m.group(1)
        return ""


@dataclass
class StreamWatcher:
    on_progress: Callable[[Progress], None] | None = None
    tail: deque = field(default_factory=lambda: deque(maxlen=40))
    last_progress: Progress | None = None
    nan: bool = False
    oom: bool = False
    no_space: bool = False  # the output says the disk is full
    # every Python traceback in the output, in order (the child's own comes before the launcher's)
    tracebacks: list[Traceback] = field(default_factory=list)
    _last_bar_line: str = ""
    _open: Traceback | None = None

    def feed(self, segment: str) -> None:
        text = segment.strip()
        if not text:
            return
        self._watch_traceback(segment, text)
        m = _TQDM.search(text)
        if m:
            lm = _LOSS.search(m.group("post") or "")
            loss = None
            with contextlib.suppress(ValueError):
                loss = float(lm.group("loss")) if lm else None
            if lm and (lm.group("loss").lower() in ("nan", "inf", "-inf") or (loss is not None and loss != loss)):
                self.nan = True
            p = Progress(step=int(m.group("n")), total=int(m.group("total")), desc=(m.group("desc") or "").strip(),
                         rate=(m.group("rate") or "").replace(" ", ""), eta=(m.group("eta") or "").strip(), loss=loss)
            self.last_progress = p
            self._last_bar_line = text
            if self.on_progress:
                self.on_progress(p)
            return
        for flag, pattern in (("oom", _OOM), ("no_space", _NO_SPACE), ("nan", _NAN_LINE)):
            if pattern.search(text):
                setattr(self, flag, True)
        self.tail.append(text)

    def _watch_traceback(self, segment: str, text: str) -> None:
        if text.startswith("Traceback (most recent call last):"):
            rest = text.split(":", 1)[1].strip()
            # numpy prints the stack of a failed import of a module built for numpy 1 with its
            # first frame on the header's line: a printed stack, not the exception raised
            self._open = Traceback(printed_stack=bool(rest))
            if rest.startswith("File "):
                self._open.frames.append([rest, ""])
            return
        tb = self._open
        if tb is None:
            return
        if segment[:1] in (" ", "\t"):  # frames and their source lines are indented
            if text.startswith("File "):
                tb.frames.append([text, ""])
            elif tb.frames and not tb.frames[-1][1] and not set(text) <= set("^~ "):
                tb.frames[-1][1] = text
            return
        tb.exception = text  # the unindented line after the frames
        self._open = None
        if len(self.tracebacks) < 20:
            self.tracebacks.append(tb)

    @property
    def root_cause(self) -> Traceback | None:
        """The first exception raised in the output, not the launcher's report of the child's exit
        (`accelerate launch` raises CalledProcessError after the child's own traceback)."""
        launcher = ("subprocess.CalledProcessError", "CalledProcessError")
        raised = [tb for tb in self.tracebacks if not tb.exception.startswith(launcher)]
        for tb in raised:
            if not tb.printed_stack:
                return tb
        return raised[0] if raised else None

    def tail_lines(self, n: int = 15) -> list[str]:
        lines = list(self.tail)[-n:]
        if self._last_bar_line and (not lines or lines[-1] != self._last_bar_line):
            lines.append(self._last_bar_line)
        return lines


@dataclass
class RunResult:
    returncode: int
    duration_s: float
    watcher: StreamWatcher
    log_path: Path
    peak_rss: int | None = None  # bytes: the largest process of the command's tree (POSIX)
    log_error: OSError | None = None  # the log could not be written on (a full disk): it ends there


def _wait(proc: subprocess.Popen) -> tuple[int, int | None]:
    """Wait for the child; on POSIX also read its peak memory (wait4's rusage covers the
    child's waited-for descendants too, e.g. the training under `accelerate launch`)."""
    if not hasattr(os, "wait4"):  # pragma: no cover - Windows
        return proc.wait(), None
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:  # the supervisor, stopping it from another thread, reaped it first
        return proc.wait(), None
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return proc.returncode, usage.ru_maxrss * scale


def _pump(proc: subprocess.Popen, watcher: StreamWatcher, write: Callable[[bytes], None]) -> None:
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while chunk := os.read(proc.stdout.fileno(), 65536):
        write(chunk)
        *segments, pending = re.split(r"[\r\n]", pending + decoder.decode(chunk))
        for seg in segments:
            watcher.feed(seg)
    pending += decoder.decode(b"", final=True)
    if pending:
        watcher.feed(pending)


def run_command(argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
                on_progress: Callable[[Progress], None] | None = None,
                on_spawn: Callable[[int], None] | None = None) -> RunResult:
    """Run `argv` (a list, never a shell string), streaming output into `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    watcher = StreamWatcher(on_progress=on_progress)
    start = time.monotonic()
    log_error: list[OSError] = []

    def write(data: bytes) -> None:
        """A write the disk refuses ends the log, not the command (sd-scripts' own error says what happened)."""
        if not log_error:
            try:
                log.write(data)
            except OSError as e:
                log_error.append(e)

    with open(log_path, "ab", buffering=0) as log:
        write(f"$ {command_line(argv)}\n# cwd: {cwd}\n# started: {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        child = SUPERVISOR.popen(argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
        if on_spawn:
            on_spawn(child.proc.pid)
        try:
            _pump(child.proc, watcher, write)
            returncode, peak_rss = _wait(child.proc)
        except BaseException:
            SUPERVISOR.stop(child)
            raise
        finally:
            SUPERVISOR.forget(child)
            if child.proc.stdout:
                child.proc.stdout.close()
        duration = time.monotonic() - start
        peak = f", peak memory {peak_rss / 2**30:.1f} GiB" if peak_rss else ""
        write(f"\n# exit code {returncode} after {duration:.1f} s{peak}\n".encode())
    return RunResult(returncode=returncode, duration_s=duration, watcher=watcher, log_path=log_path, peak_rss=peak_rss,
                     log_error=log_error[0] if log_error else None)


def log_tail(log_path: Path, n: int = 12, indent: bool = False) -> list[str]:
    """The last `n` non-empty lines of a log (split on CR and LF); `indent`: leading blanks kept (the UI)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = [line.rstrip() if indent else line.strip() for line in re.split(r"[\r\n]", text)]
    return [line for line in lines if line.strip()][-n:]


def command_line(argv: list[str]) -> str:
    """A copy-pasteable command line for this platform's shell."""
    if os.name == "nt":  # pragma: no cover - Windows
        return subprocess.list2cmdline(argv)
    return shlex.join(argv)


def is_tty(stream=None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
