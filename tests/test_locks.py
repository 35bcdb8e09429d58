"""Folder locks: who holds one, and what a dead holder left running."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from killharness import alive

from copymachine.errors import BusyError
from copymachine.locks import FolderLock

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="orphans are found through /proc (Linux)")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def sleeper(marker: str, owner: int) -> subprocess.Popen:
    """A stand-in for an orphaned sd-scripts: its command line names the sd-scripts root, its
    environment the copymachine that started it; in its own session, as the runner starts them."""
    env = dict(os.environ, COPYMACHINE_PARENT_PID=str(owner))
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker], env=env, start_new_session=True)


def test_a_dead_holders_orphan_is_ended_even_when_the_lock_does_not_name_it(tmp_path):
    marker = str(tmp_path / "sd-scripts")
    owner = dead_pid()
    named, unnamed, stranger = sleeper(marker, owner), sleeper(marker, owner), sleeper(str(tmp_path / "other"), owner)
    try:
        folder = tmp_path / "run"
        folder.mkdir()
        # killed between starting `unnamed` and recording it: the lock names only `named`
        (folder / ".lock").write_text(json.dumps({"pid": owner, "host": socket.gethostname(), "child_pgids": [named.pid]}), encoding="utf-8")
        lock = FolderLock(folder, "run folder")
        lock.acquire(wait=False, marker=marker)
        for proc in (named, unnamed):
            proc.wait(timeout=5)
        assert named.returncode == unnamed.returncode == -9
        time.sleep(0.1)
        assert alive(stranger.pid)  # not sd-scripts at that root: left alone
        assert json.loads((folder / ".lock").read_text(encoding="utf-8"))["pid"] == os.getpid()
        # a second copymachine sees who holds it
        with pytest.raises(BusyError) as busy:
            FolderLock(folder, "run folder").acquire(wait=False, marker=marker)
        assert f"run folder is in use by copymachine pid {os.getpid()} on {socket.gethostname()}" in busy.value.message
        lock.release()
    finally:
        for proc in (named, unnamed, stranger):
            proc.kill()
            proc.wait()
