"""Stopping children: one supervisor for every sd-scripts (and `copymachine queue`) child, a backend
per platform, and the cancellation token that the pipeline, the queue and the UI worker share.

- POSIX: each child leads its own process group; stopping sends SIGINT to the group (sd-scripts stops
  as on Ctrl-C), then SIGTERM, then SIGKILL. An orphaned group (its copymachine was killed) is ended by id.
- Windows: each child starts suspended in its own console process group and is put in a Job Object
  (KILL_ON_JOB_CLOSE) before it runs, so the job holds the whole tree and dies with copymachine: no
  orphans. Stopping sends CTRL_BREAK_EVENT, then `TerminateJobObject`; `Win32` is the seam a test replaces.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

GRACE_S = 10.0  # after the polite stop (SIGINT / CTRL_BREAK_EVENT)
TERM_S = 5.0  # after SIGTERM
KILL_S = 5.0  # after the last word (SIGKILL / TerminateJobObject)


_POSIX_SIGNALS = {"interrupt": "SIGINT", "terminate": "SIGTERM", "kill": "SIGKILL"}


class CancelToken:
    """A cancellation shared by whoever runs work and whoever may stop it. Callbacks run once (one
    registered after the cancel at once); several run each on a thread of its own, so every job's
    sd-scripts is asked to stop at the same moment, and a second Ctrl-C ends every child at once."""

    def __init__(self) -> None:
        self.cancelled = False
        self._mutex = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        with self._mutex:
            if self.cancelled:
                return
            self.cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        if len(callbacks) <= 1:
            for callback in callbacks:
                callback()
            return
        threads = [threading.Thread(target=callback, name="cancel", daemon=True) for callback in callbacks]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:  # only the main thread gets it: the stopping threads cannot
            SUPERVISOR.kill_all()
            raise

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` when cancelled; returns a function that unregisters it."""
        with self._mutex:
            if not self.cancelled:
                self._callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._mutex:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


@dataclass
class Child:
    proc: subprocess.Popen
    job: Any = None  # Windows: the Job Object's handle

    @property
    def id(self) -> int:  # what a lock records: on POSIX the process group
        return self.proc.pid

    def wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False


class PosixBackend:
    def popen_options(self) -> dict:
        # its own process group: Ctrl-C reaches copymachine only, which stops the group cleanly,
        # and a later run can end an orphaned group by its id (see locks.py)
        return {"start_new_session": True}

    def adopt(self, proc: subprocess.Popen) -> Child:
        return Child(proc)

    def steps(self, grace_s: float) -> list[tuple[str, float]]:
        return [("interrupt", grace_s), ("terminate", TERM_S), ("kill", KILL_S)]

    def send(self, child: Child, step: str) -> bool:  # False: the group is gone
        return self.signal_group(child.id, step)

    def signal_group(self, pgid: int, step: str) -> bool:
        try:
            os.killpg(pgid, getattr(signal, _POSIX_SIGNALS[step]))
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def kill(self, child: Child) -> None:
        self.send(child, "kill")

    finish = kill  # the leader is gone; members of its group may still be winding down

    def group_gone(self, pgid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def kill_orphaned_group(self, pgid: int, marker: str) -> bool:
        """End a group a killed copymachine left, if its leader's command line has `marker` (the
        sd-scripts root): an unrelated process that reuses the number is never touched."""
        try:
            cmdline = " ".join(psutil.Process(pgid).cmdline())
        except psutil.Error:
            return False
        return marker in cmdline and self.signal_group(pgid, "kill")

    def kill_orphans_of(self, owner_pid: int, marker: str, variable: str) -> list[int]:
        """End the groups of sd-scripts processes whose environment names `owner_pid` (a dead copymachine)."""
        killed = []
        for proc in psutil.process_iter(["environ", "cmdline"]):
            environ, cmdline = proc.info["environ"] or {}, " ".join(proc.info["cmdline"] or [])
            if proc.pid == os.getpid() or environ.get(variable) != str(owner_pid) or marker not in cmdline:
                continue
            try:
                pgid = os.getpgid(proc.pid)
                if pgid != os.getpgrp() and self.signal_group(pgid, "kill"):
                    killed.append(proc.pid)
            except OSError:
                continue
        return killed


class Win32:
    CREATE_NEW_PROCESS_GROUP = 0x00000200
    CREATE_SUSPENDED = 0x00000004
    _k32: Any
    _ntdll: Any
    _ctypes: Any
    _handle: Any

    def __init__(self) -> None:  # pragma: no cover - Windows
        if sys.platform != "win32":
            raise OSError("Windows only")
        import ctypes
        from ctypes import wintypes

        self._ctypes = ctypes
        self._handle = wintypes.HANDLE
        self._k32 = ctypes.WinDLL("kernel32", use_last_error=True)
        self._ntdll = ctypes.WinDLL("ntdll")
        self._k32.CreateJobObjectW.restype = wintypes.HANDLE

    def _check(self, ok: Any, what: str) -> Any:  # pragma: no cover - Windows
        if not ok:
            raise OSError(self._ctypes.get_last_error(), f"{what} failed")
        return ok

    def create_job(self) -> int:  # pragma: no cover - Windows
        import ctypes
        from ctypes import wintypes

        class BASIC(ctypes.Structure):
            _fields_ = [
                ("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64),
                ("LimitFlags", wintypes.DWORD), ("MinimumWorkingSetSize", ctypes.c_size_t),
                ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", wintypes.DWORD),
                ("Affinity", ctypes.c_size_t), ("PriorityClass", wintypes.DWORD), ("SchedulingClass", wintypes.DWORD)]

        class EXTENDED(ctypes.Structure):
            _fields_ = [
                ("Basic", BASIC), ("Io", ctypes.c_uint64 * 6), ("ProcessMemoryLimit", ctypes.c_size_t),
                ("JobMemoryLimit", ctypes.c_size_t), ("PeakProcessMemoryUsed", ctypes.c_size_t),
                ("PeakJobMemoryUsed", ctypes.c_size_t)]

        job = self._check(self._k32.CreateJobObjectW(None, None), "CreateJobObject")
        info = EXTENDED()
        info.Basic.LimitFlags = 0x2000  # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        self._check(self._k32.SetInformationJobObject(self._handle(job), 9, ctypes.byref(info), ctypes.sizeof(info)),
                    "SetInformationJobObject")
        return job

    def assign(self, job: int, process_handle: int) -> None:  # pragma: no cover - Windows
        self._check(self._k32.AssignProcessToJobObject(self._handle(job), self._handle(process_handle)),
                    "AssignProcessToJobObject")

    def resume(self, process_handle: int) -> None:  # pragma: no cover - Windows
        if self._ntdll.NtResumeProcess(self._handle(process_handle)) != 0:
            raise OSError("NtResumeProcess failed")

    def ctrl_break(self, pid: int) -> None:  # pragma: no cover - Windows
        os.kill(pid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]

    def terminate_job(self, job: int, exit_code: int) -> None:  # pragma: no cover - Windows
        self._k32.TerminateJobObject(self._handle(job), exit_code)

    def close(self, handle: int) -> None:  # pragma: no cover - Windows
        self._k32.CloseHandle(self._handle(handle))


class WindowsBackend:
    EXIT_CODE = 0xC000013A  # STATUS_CONTROL_C_EXIT: what a console program stopped by Ctrl-C exits with

    def __init__(self, win32: Any = None) -> None:
        self.win32 = win32 or Win32()

    def popen_options(self) -> dict:
        # suspended until it is in its job, so nothing it starts escapes the job
        return {"creationflags": Win32.CREATE_NEW_PROCESS_GROUP | Win32.CREATE_SUSPENDED}

    def adopt(self, proc: subprocess.Popen) -> Child:
        handle = int(proc._handle)  # type: ignore[attr-defined]  # the process handle Popen holds
        job = self.win32.create_job()
        try:
            self.win32.assign(job, handle)
        except OSError:
            self.release(Child(proc, job=job))
            proc.kill()  # never let a child run outside a job
            raise
        self.win32.resume(handle)
        return Child(proc, job=job)

    def steps(self, grace_s: float) -> list[tuple[str, float]]:
        return [("interrupt", grace_s), ("kill", KILL_S)]

    def send(self, child: Child, step: str) -> bool:
        if child.proc.poll() is not None:
            return False
        if step == "interrupt":
            try:
                self.win32.ctrl_break(child.proc.pid)
            except OSError:
                return False
        else:
            self.win32.terminate_job(child.job, self.EXIT_CODE)
        return True

    def release(self, child: Child) -> None:  # end what is left in the job, close its handle (once)
        if child.job is None:
            return
        job, child.job = child.job, None
        self.win32.terminate_job(job, self.EXIT_CODE)
        self.win32.close(job)

    finish = kill = release  # the leader is gone; what it started may not be: end the job, then let go of it


@dataclass
class Supervisor:
    backend: Any = None
    children: dict[int, Child] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend is None:
            self.backend = WindowsBackend() if os.name == "nt" else PosixBackend()
        self._mutex = threading.Lock()

    def popen(self, argv: list[str], **kwargs: Any) -> Child:
        proc = subprocess.Popen(argv, **kwargs, **self.backend.popen_options())
        child = self.backend.adopt(proc)
        with self._mutex:
            self.children[child.id] = child
        return child

    def forget(self, child: Child) -> None:
        """The child has ended and was waited for: let go of it (on Windows: of its job)."""
        with self._mutex:
            self.children.pop(child.id, None)
        if isinstance(self.backend, WindowsBackend):
            self.backend.release(child)

    def stop(self, child: Child, grace_s: float = GRACE_S) -> None:
        self.stop_all([child], grace_s)

    def stop_all(self, children: list[Child], grace_s: float = GRACE_S) -> None:
        """Ask the children's trees to stop, then insist: each step goes to all still running at once, so
        all stop within one grace time. A second Ctrl-C while they wind down ends them all at once."""
        try:
            running = list(children)
            for step, patience in self.backend.steps(grace_s):  # none left running: the later steps do nothing
                running = [c for c in running if self.backend.send(c, step)]
                deadline = time.monotonic() + patience
                for child in running:
                    child.wait(max(0.0, deadline - time.monotonic()))
                running = [c for c in running if c.proc.poll() is None]
            for child in children:
                self.backend.finish(child)
        except KeyboardInterrupt:
            self.kill_all(children)
            raise

    def kill_all(self, children: list[Child] | None = None) -> None:
        """The last word to every child (default: every running one) at once, then wait for them."""
        if children is None:
            with self._mutex:
                children = list(self.children.values())
        for child in children:
            self.backend.kill(child)
        for child in children:
            child.wait(KILL_S)

    def kill(self, child: Child) -> None:
        self.kill_all([child])

    def interrupt(self, child: Child) -> bool:
        """Only the polite stop (SIGINT / CTRL_BREAK_EVENT): what the UI's Cancel sends."""
        return self.backend.send(child, "interrupt")

    def _ours(self, child_ids: list[int]) -> tuple[list[Child], list[int]]:
        """By the numbers a lock records: the children started here, and (POSIX) others' process groups."""
        with self._mutex:
            ours = [self.children[i] for i in child_ids if i in self.children]
            others = [i for i in child_ids if i not in self.children]
        return ours, others if isinstance(self.backend, PosixBackend) else []

    def stop_ids(self, child_ids: list[int], grace_s: float = GRACE_S) -> None:
        """stop_all by the numbers a lock records (another thread may have started them)."""
        ours, others = self._ours(child_ids)
        for pgid in others:
            self._stop_group(pgid, grace_s)
        if ours:
            self.stop_all(ours, grace_s)

    def kill_ids(self, child_ids: list[int]) -> None:
        ours, others = self._ours(child_ids)
        for pgid in others:
            self.backend.signal_group(pgid, "kill")
        self.kill_all(ours)

    def _stop_group(self, pgid: int, grace_s: float) -> None:
        for step, patience in self.backend.steps(grace_s):
            if not self.backend.signal_group(pgid, step) or self.backend.group_gone(pgid, patience):
                return

    def end_orphans(self, owner_pid: int, child_ids: list[int], marker: str,
                    variable: str = "COPYMACHINE_PARENT_PID") -> list[int]:
        """End what a dead copymachine (`owner_pid`) left running: Linux only (on Windows its jobs died with it)."""
        if not isinstance(self.backend, PosixBackend) or not sys.platform.startswith("linux") or not marker:
            return []
        ended = [pgid for pgid in child_ids if self.backend.kill_orphaned_group(int(pgid), marker)]
        return ended + self.backend.kill_orphans_of(int(owner_pid), marker, variable)


SUPERVISOR = Supervisor()
