"""Folder locks: one copymachine at a time in a run folder or a shared cache entry.

The lock is an OS file lock (released by the OS when its holder dies, even by SIGKILL) on
`<folder>/.lock` (on Windows a byte far past its text, so the text stays readable), whose text says who holds it and which sd-scripts process group it started.
A run that finds a lock whose holder died ends that holder's orphaned sd-scripts processes
before it continues, so a resumed run never races a leftover training for the same files.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from copymachine.errors import BusyError
from copymachine.supervise import SUPERVISOR

# Windows locks a byte range, and a locked byte cannot be read through another handle: the lock is
# on a byte far past the holder's record (LockFile may lock past the end of a file), so `holder()`
# reads the record while the lock is held and "in use by ..." names who holds it.
WINDOWS_LOCK_OFFSET = 1 << 30


def windows_try_lock(fd: int, msvcrt_module: Any) -> bool:
    try:
        os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt_module.locking(fd, msvcrt_module.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def windows_unlock(fd: int, msvcrt_module: Any) -> None:
    os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    msvcrt_module.locking(fd, msvcrt_module.LK_UNLCK, 1)


if os.name == "nt":  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        return windows_try_lock(fd, msvcrt)

    def _unlock(fd: int) -> None:
        windows_unlock(fd, msvcrt)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class FolderLock:
    def __init__(self, folder: Path, what: str):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self.what = what
        self.fd: int | None = None
        self.info: dict = {}

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self, wait: bool = True, on_wait: Callable[[dict], None] | None = None, marker: str = "") -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        told = False
        while not _try_lock(fd):
            holder = self.holder()
            if not wait:
                os.close(fd)
                raise BusyError(f"{self.what} is in use by {_describe(holder)}; wait for it to finish, or use another --out / --cache-dir")
            if on_wait and not told:
                on_wait(holder)
                told = True
            time.sleep(1.0)
        self.fd = fd
        previous = self.holder()
        # The previous holder is dead (we hold the lock); end what it left running.
        owner = previous.get("pid")
        same_host = previous.get("host") in (None, socket.gethostname())  # pids mean nothing elsewhere
        if owner and owner != os.getpid() and marker and same_host and not SUPERVISOR.process_alive(owner):
            SUPERVISOR.end_orphans(int(owner), [int(p) for p in previous.get("child_pgids", [])], marker)
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        self._write()

    def set_child(self, pgid: int, alive: bool) -> None:
        """Record (or forget) an sd-scripts process group started under this lock."""
        if self.fd is None:
            return
        pgids = set(self.info.get("child_pgids", []))
        if alive:
            pgids.add(pgid)
        else:
            pgids.discard(pgid)
        self.info["child_pgids"] = sorted(pgids)
        try:
            self._write()
        except OSError:
            pass  # a full disk: the record only helps a later run end orphans; the run goes on

    def _write(self) -> None:
        assert self.fd is not None
        data = json.dumps(self.info).encode("utf-8")
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, data)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.info.pop("child_pgids", None)
            self._write()
            _unlock(self.fd)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(holder: dict) -> str:
    if not holder:
        return "another copymachine"
    return f"copymachine pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} ({holder.get('command', '')})"
