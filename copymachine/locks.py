"""Folder locks: one copymachine at a time in a run folder or a shared cache entry.

The lock is filelock's OS file lock on `<folder>/.lock.flock` (released by the OS when its holder
dies, even by SIGKILL); beside it `<folder>/.lock` records who holds it and which sd-scripts process
groups it started (a file apart, so another process reads it while the lock is held, on Windows too).
A run that finds a lock whose holder died ends that holder's orphaned sd-scripts processes
before it continues, so a resumed run never races a leftover training for the same files.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from copymachine.errors import BusyError
from copymachine.supervise import SUPERVISOR

OS_LOCK_NAME = ".lock.flock"


class FolderLock:
    def __init__(self, folder: Path, what: str):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"  # the holder's record
        self.what = what
        self.os_lock = FileLock(self.folder / OS_LOCK_NAME, thread_local=False)
        self.info: dict = {}

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self, wait: bool = True, on_wait: Callable[[dict], None] | None = None, marker: str = "") -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.os_lock.acquire(timeout=0)
        except Timeout:
            holder = self.holder()
            if not wait:
                raise BusyError(f"{self.what} is in use by {_describe(holder)}; wait for it to finish, "
                                "or use another --out / --cache-dir") from None
            if on_wait:
                on_wait(holder)
            self.os_lock.acquire(poll_interval=1.0)
        previous = self.holder()  # dead, since we hold the lock: end what it left running
        owner = previous.get("pid")
        same_host = previous.get("host") in (None, socket.gethostname())  # pids mean nothing elsewhere
        if owner and owner != os.getpid() and marker and same_host and not psutil.pid_exists(owner):
            SUPERVISOR.end_orphans(int(owner), [int(p) for p in previous.get("child_pgids", [])], marker)
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "command": " ".join(sys.argv)}
        self._write()

    def set_child(self, pgid: int, alive: bool) -> None:
        """Record (or forget) an sd-scripts process group started under this lock."""
        if not self.os_lock.is_locked:
            return
        known = set(self.info.get("child_pgids", []))
        self.info["child_pgids"] = sorted(known | {pgid} if alive else known - {pgid})
        with contextlib.suppress(OSError):  # a full disk: the record only helps a later run end orphans
            self._write()

    def _write(self) -> None:
        self.path.write_text(json.dumps(self.info), encoding="utf-8")

    def release(self) -> None:
        if not self.os_lock.is_locked:
            return
        try:
            self.info.pop("child_pgids", None)
            self._write()
        finally:
            self.os_lock.release()


def _describe(holder: dict) -> str:
    if not holder:
        return "another copymachine"
    return (f"copymachine pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
            f"({holder.get('command', '')})")
