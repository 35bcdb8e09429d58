"""The supervisor that stops children: the POSIX backend for real (process groups, SIGINT -> SIGTERM
-> SIGKILL), the Windows backend's decisions with its Win32 calls replaced (which handle, in what
order, what happens on a timeout), the cancellation token, and the Windows lock's byte."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from copymachine import locks, supervise
from copymachine.supervise import CancelToken, PosixBackend, Supervisor, WindowsBackend

posix_only = pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")


class FakeWin32:
    def __init__(self, fail_assign: bool = False):
        self.calls: list[tuple] = []
        self.fail_assign = fail_assign
        self.next_job = 100

    def create_job(self):
        self.next_job += 1
        self.calls.append(("create_job", self.next_job))
        return self.next_job

    def assign(self, job, handle):
        self.calls.append(("assign", job, handle))
        if self.fail_assign:
            raise OSError(5, "AssignProcessToJobObject failed")

    def resume(self, handle):
        self.calls.append(("resume", handle))

    def ctrl_break(self, pid):
        self.calls.append(("ctrl_break", pid))

    def terminate_job(self, job, code):
        self.calls.append(("terminate_job", job))

    def close(self, handle):
        self.calls.append(("close", handle))


class FakeProc:
    """A Windows child: it ends `ends_after` seconds after CTRL_BREAK (None: never)."""

    def __init__(self, win32: FakeWin32, ends_after: float | None):
        self.pid, self._handle = 4242, 77
        self.win32, self.ends_after = win32, ends_after
        self.returncode = None
        self.killed = False

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        broke = any(c[0] == "ctrl_break" for c in self.win32.calls)
        terminated = any(c[0] == "terminate_job" for c in self.win32.calls)
        if terminated or (broke and self.ends_after is not None and self.ends_after <= (timeout or 0)):
            self.returncode = 0xC000013A
            return self.returncode
        raise subprocess.TimeoutExpired("fake", timeout)

    def kill(self):
        self.killed = True


def windows_supervisor(win32):
    return Supervisor(backend=WindowsBackend(win32))


def test_windows_child_runs_only_once_it_is_in_its_job():
    win32 = FakeWin32()
    sup = windows_supervisor(win32)
    assert sup.backend.popen_options()["creationflags"] == 0x200 | 0x4  # CREATE_NEW_PROCESS_GROUP | CREATE_SUSPENDED
    child = sup.backend.adopt(FakeProc(win32, ends_after=1))
    assert win32.calls == [("create_job", 101), ("assign", 101, 77), ("resume", 77)]
    assert child.job == 101


def test_windows_stop_that_works_sends_ctrl_break_then_ends_the_rest_of_the_job_and_closes_it():
    win32 = FakeWin32()
    sup = windows_supervisor(win32)
    child = sup.backend.adopt(FakeProc(win32, ends_after=1))
    win32.calls.clear()
    sup.stop(child, grace_s=10)
    # the training under `accelerate launch` may outlive its leader: the job ends it
    assert win32.calls == [("ctrl_break", 4242), ("terminate_job", 101), ("close", 101)]
    sup.forget(child)  # the handle is closed once
    assert win32.calls.count(("close", 101)) == 1


def test_windows_stop_on_timeout_terminates_the_job():
    win32 = FakeWin32()
    sup = windows_supervisor(win32)
    child = sup.backend.adopt(FakeProc(win32, ends_after=None))  # ignores CTRL_BREAK
    win32.calls.clear()
    sup.stop(child, grace_s=0.01)
    assert win32.calls[0] == ("ctrl_break", 4242)
    assert win32.calls[1] == ("terminate_job", 101)  # after the grace, the whole tree at once
    assert win32.calls[-1] == ("close", 101)
    assert child.proc.returncode is not None


def test_windows_a_child_that_cannot_join_a_job_is_never_left_running():
    win32 = FakeWin32(fail_assign=True)
    proc = FakeProc(win32, ends_after=1)
    with pytest.raises(OSError):
        WindowsBackend(win32).adopt(proc)
    assert proc.killed
    assert [c[0] for c in win32.calls] == ["create_job", "assign", "terminate_job", "close"]
    assert ("resume", 77) not in win32.calls


def test_windows_leaves_no_orphans_to_end_later():
    # KILL_ON_JOB_CLOSE: a dead copymachine's jobs ended with it; nothing is signalled by number
    assert windows_supervisor(FakeWin32()).end_orphans(1, [2, 3], marker="/sd-scripts") == []


_TREE = r"""
import os, signal, subprocess, sys, time
ignore = sys.argv[1].split(",") if sys.argv[1] else []
for name in ignore:
    signal.signal(getattr(signal, name), signal.SIG_IGN)
if "grandchild" in sys.argv[2:]:
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"])
    print(child.pid, flush=True)
else:
    print(0, flush=True)
signal.signal(signal.SIGINT, signal.SIG_IGN) if "SIGINT" in ignore else None
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


@posix_only
@pytest.mark.parametrize(("ignored", "returncode"), [("", -2), ("SIGINT", -15), ("SIGINT,SIGTERM", -9)])
def test_posix_stop_escalates_sigint_sigterm_sigkill(ignored, returncode, monkeypatch):
    monkeypatch.setattr(supervise, "TERM_S", 0.5)
    monkeypatch.setattr(supervise, "KILL_S", 5.0)
    sup = Supervisor(backend=PosixBackend())
    child = sup.popen([sys.executable, "-c", _TREE, ignored], stdout=subprocess.PIPE, text=True)
    assert child.proc.stdout.readline().strip() == "0"
    assert os.getpgid(child.proc.pid) == child.proc.pid  # it leads a group of its own
    t0 = time.monotonic()
    sup.stop(child, grace_s=0.5)
    assert child.proc.returncode == returncode
    assert time.monotonic() - t0 < 4
    sup.forget(child)
    assert child.id not in sup.children


@posix_only
def test_posix_stop_ends_the_group_when_its_leader_is_gone():
    sup = Supervisor(backend=PosixBackend())
    child = sup.popen([sys.executable, "-c", _TREE, "", "grandchild"], stdout=subprocess.PIPE, text=True)
    grandchild = int(child.proc.stdout.readline())
    assert _alive(grandchild)
    sup.stop(child, grace_s=5)  # the leader stops on SIGINT, its grandchild ignores it
    assert child.proc.returncode == -2
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


@posix_only
def test_stop_by_id_stops_a_child_another_thread_started():
    sup = Supervisor(backend=PosixBackend())
    child = sup.popen([sys.executable, "-c", _TREE, ""], stdout=subprocess.PIPE, text=True)
    child.proc.stdout.readline()
    sup.stop_ids([child.id])
    assert child.proc.returncode == -2


def test_the_token_runs_each_callback_once_and_late_ones_at_once():
    token, seen = CancelToken(), []
    token.on_cancel(lambda: seen.append("a"))
    undo = token.on_cancel(lambda: seen.append("b"))
    undo()
    assert not token.cancelled
    token.cancel()
    token.cancel()
    assert seen == ["a"] and token.cancelled
    token.on_cancel(lambda: seen.append("late"))
    assert seen == ["a", "late"]


def test_the_queue_shares_its_token_with_its_pipelines():
    from copymachine.jobfile import Queue
    from copymachine.progress import Reporter

    class Pipeline:
        def __init__(self):
            self.token = CancelToken()

    queue = Queue([], Reporter(stream=sys.stderr, live=False))
    pipeline = Pipeline()
    queue.token.on_cancel(pipeline.token.cancel)
    queue.stop()
    assert pipeline.token.cancelled


def test_no_process_group_is_signalled_outside_the_posix_backend():
    root = Path(supervise.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "supervise.py":
            continue
        text = path.read_text(encoding="utf-8")
        for pattern in (r"os\.killpg", r"signal\.SIGKILL", r"\.send_signal\(", r"signal\.CTRL_BREAK_EVENT", r"\.kill\(\)"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(root)}: {pattern}")
    assert offenders == []


def test_the_holder_record_is_a_file_apart_from_the_os_lock(tmp_path):
    """filelock locks its own file (on Windows a locked byte cannot be read through another handle):
    the record of who holds the lock is a file beside it, which a second handle reads while it is held."""
    lock = locks.FolderLock(tmp_path, "run folder")
    lock.acquire(wait=False)
    try:
        assert lock.path.name == ".lock" and Path(lock.os_lock.lock_file).name == locks.OS_LOCK_NAME
        assert locks.FolderLock(tmp_path, "run folder").holder()["pid"] == os.getpid()
    finally:
        lock.release()


class HeldOpen:
    """Windows' rename onto a file another process has open: PermissionError until it is closed."""

    def __init__(self, monkeypatch, target: Path, for_s: float):
        from copymachine import files

        self.target, self.until, self.attempts = target, time.monotonic() + for_s, 0
        real = os.replace

        def replace(src, dst):
            self.attempts += 1
            if Path(dst) == self.target and time.monotonic() < self.until:
                raise PermissionError(13, "The process cannot access the file because it is being used by another process")
            real(src, dst)

        monkeypatch.setattr(files.os, "replace", replace)


def test_a_replace_waits_for_a_reader_to_let_go(tmp_path, monkeypatch):
    from copymachine.files import atomic_write_json

    state = tmp_path / "state.json"
    state.write_text("{}", encoding="utf-8")
    held = HeldOpen(monkeypatch, state, for_s=0.3)
    atomic_write_json(state, {"status": "done"})
    assert held.attempts >= 3
    assert '"done"' in state.read_text(encoding="utf-8")
    assert not [p for p in tmp_path.iterdir() if p.name != "state.json"]  # no temporary left


def test_a_replace_held_too_long_ends_in_one_clear_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    from copymachine.errors import OutputError
    from copymachine.files import atomic_write_json

    monkeypatch.setattr("copymachine.files.REPLACE_DELAYS_S", (0.01, 0.02))
    state = tmp_path / "state.json"
    state.write_text("{}", encoding="utf-8")
    held = HeldOpen(monkeypatch, state, for_s=60)
    with pytest.raises(OutputError) as e:
        atomic_write_json(state, {"status": "done"})
    assert held.attempts == 3
    assert "\n" not in e.value.message and str(state) in e.value.message and "holds it open" in e.value.message
    assert state.read_text(encoding="utf-8") == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# a child that takes `delay` seconds to stop after SIGINT (sd-scripts saving its state), and
# prints when it got the signal
_SLOW_TO_STOP = r"""
import signal, sys, time
delay = float(sys.argv[1])
def stop(signum, frame):
    print(f"sigint {time.time():.3f}", flush=True)
    time.sleep(delay)
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
print("ready", flush=True)
time.sleep(60)
"""


@posix_only
def test_children_side_by_side_all_stop_within_one_grace_time():
    sup = Supervisor(backend=PosixBackend())
    children = [sup.popen([sys.executable, "-c", _SLOW_TO_STOP, "1.5"], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for child in children:
        assert child.proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    sup.stop_ids([c.id for c in children], grace_s=3.0)
    took = time.monotonic() - t0
    # one after the other would take 2 x 1.5 s; side by side both stop within one grace time
    assert [c.proc.returncode for c in children] == [130, 130]
    assert took < 2.8, took
    heard = [float(c.proc.stdout.readline().split()[1]) for c in children]
    assert abs(heard[0] - heard[1]) < 0.5, heard  # both asked at the same moment


@posix_only
def test_a_second_ctrl_c_while_children_wind_down_kills_them_all_at_once(monkeypatch):
    sup = Supervisor(backend=PosixBackend())
    children = [sup.popen([sys.executable, "-c", _SLOW_TO_STOP, "30"], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for child in children:
        assert child.proc.stdout.readline().strip() == "ready"
    waits, original = [], supervise.Child.wait

    def wait(self, timeout):  # the second Ctrl-C arrives while the first child winds down
        waits.append(self.id)
        if len(waits) == 1:
            time.sleep(0.3)
            raise KeyboardInterrupt
        return original(self, timeout)

    monkeypatch.setattr(supervise.Child, "wait", wait)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sup.stop_all(children, grace_s=20.0)
    assert time.monotonic() - t0 < 5.0
    assert [c.proc.returncode for c in children] == [-9, -9]


def test_several_cancel_callbacks_run_side_by_side():
    token, started = CancelToken(), []

    def slow(name):
        def callback():
            started.append((name, time.monotonic()))
            time.sleep(0.5)

        return callback

    token.on_cancel(slow("a"))
    token.on_cancel(slow("b"))
    t0 = time.monotonic()
    token.cancel()
    assert time.monotonic() - t0 < 0.9  # one after the other: 1 s
    assert sorted(n for n, _ in started) == ["a", "b"]
