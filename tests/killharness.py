"""Kill-and-resume harness: SIGKILL a `copymachine train`/`diff` at random moments, re-run the
same command, and check after every attempt that nothing was lost and nothing is broken.

Only the copymachine process is killed, never its sd-scripts child: that is the worst case (the
child is orphaned and may go on writing), and the next run must end it before it continues.

After every attempt:
- every file at a final path in the run folder and the cache (stage outputs, the final LoRA,
  the manifest, stamps, configs, captions, images) loads and validates: safetensors headers and
  sizes (and finite LoRA values), PNGs decode, JSON and TOML parse; scratch (`.partial/`) and
  logs are not final paths;
- the manifest parses, and every stage it calls done has its outputs on disk with the recorded
  size (and sha256, for files under 256 MB);
- every stamp that existed before the attempt is unchanged: finished stages are not redone;
- an sd-scripts child orphaned by an earlier kill no longer runs once a later run got going.

Each kill is put in a phase by what was under way at that moment: `training` or `merge` (the
sd-scripts process the run-folder lock names), `write` (an output file being written in a
scratch folder, or one of copymachine's own temporary files), `other` (start-up, planning,
hashing, copymachine's own stages, other sd-scripts tools). Kill moments come from a seeded
random generator; the seed is printed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tomllib
from PIL import Image

from copymachine.files import sha256_file
from copymachine.lorafile import read_safetensors, validate_lora

PHASES = ("training", "merge", "write", "other")
HASH_LIMIT = 256 * 1024 * 1024


# --- looking at a run from outside ---------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def process_state(pid: int) -> str | None:
    """'R', 'S', 'Z', ... from /proc; None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[0]


def alive(pid: int | None) -> bool:
    return bool(pid) and process_state(pid) not in (None, "Z", "X")  # type: ignore[arg-type]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def child_of_lock(run_dir: Path, holder_pid: int | None = None) -> int | None:
    """The sd-scripts process group the run-folder lock names, if it runs (and, given
    `holder_pid`, only when that copymachine holds the lock: until a run takes the lock, it
    still names the group an earlier, killed run left behind)."""
    holder = _read_json(run_dir / ".lock") or {}
    if holder_pid is not None and holder.get("pid") != holder_pid:
        return None
    living = [int(p) for p in holder.get("child_pgids", []) if alive(int(p))]
    return living[0] if living else None


def _incomplete_safetensors(path: Path) -> bool:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return True
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                return True
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return True
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    return 8 + n + end > size


def _walk(roots: list[Path]):
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            yield Path(dirpath), dirnames, filenames


def writing_now(roots: list[Path]) -> str | None:
    """'engine' while sd-scripts writes an output (an incomplete safetensors file in a scratch
    folder), 'own' while copymachine writes one of its temporary files, else None."""
    own = None
    for folder, _dirs, files in _walk(roots):
        in_scratch = ".partial" in folder.parts
        for name in files:
            if in_scratch and name.endswith(".safetensors") and _incomplete_safetensors(folder / name):
                return "engine"
            if name.startswith(".") and (name.endswith(".partial") or name.endswith(".tmp")):
                own = "own"
    return own


def phase_now(run_dir: Path, roots: list[Path], holder_pid: int | None = None) -> str:
    if writing_now(roots):
        return "write"
    pgid = child_of_lock(run_dir, holder_pid)
    if pgid:
        line = cmdline(pgid)
        if "train_network.py" in line:
            return "training"
        if "merge_lora.py" in line:
            return "merge"
    return "other"


# --- checking what is on disk ----------------------------------------------------------------


def validate_file(path: Path, deep: bool = True) -> None:
    """Raise when a file at a final path does not load (by its suffix)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        st = read_safetensors(path)  # header, and the size the header promises
        if deep and any(k.startswith("lora_") for k in st.tensors):
            validate_lora(path)
    elif suffix == ".png":
        with Image.open(path) as im:
            im.load()
    elif suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".toml":
        tomllib.loads(path.read_text(encoding="utf-8"))
    elif suffix in (".txt", ".log"):
        path.read_text(encoding="utf-8")


def final_files(roots: list[Path]) -> tuple[list[Path], list[Path]]:
    """(files at final paths, leftover temporary files). Scratch folders, logs and locks are not
    final paths."""
    finals, temps = [], []
    for folder, dirs, files in _walk(roots):
        dirs[:] = [d for d in dirs if d not in (".partial", "logs")]
        for name in files:
            if name in (".lock", ".lock.flock"):
                continue
            if name.startswith("."):
                temps.append(folder / name)
            else:
                finals.append(folder / name)
    return finals, temps


def stamps(roots: list[Path]) -> dict[str, str]:
    out = {}
    for folder, _dirs, files in _walk(roots):
        if folder.name == ".stages" and ".partial" not in folder.parts:
            for name in files:
                if name.endswith(".json"):
                    out[str(folder / name)] = (folder / name).read_text(encoding="utf-8")
    return out


def check_disk(run_dir: Path, roots: list[Path], deep: bool = True) -> dict:
    """Every final file loads; the manifest parses and what it calls done is on disk."""
    finals, temps = final_files(roots)
    for path in finals:
        try:
            validate_file(path, deep=deep)
        except Exception as e:
            raise AssertionError(f"file at a final path does not load: {path}: {type(e).__name__}: {e}") from None
    manifest_path = run_dir / "manifest.json"
    done = 0
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for record in manifest["stages"]:
            if record["status"] not in ("done", "skipped"):
                continue
            done += 1
            for name, out in record["outputs"].items():
                path = Path(out["path"])
                assert path.is_file(), f"manifest: stage {record['name']} is {record['status']} but its {name} is missing: {path}"
                assert path.stat().st_size == out["size"], f"manifest: {path} has another size than recorded"
                if out["size"] <= HASH_LIMIT:
                    assert sha256_file(path) == out["sha256"], f"manifest: {path} has another sha256 than recorded"
    return {"finals": len(finals), "temps": [str(t) for t in temps], "done_in_manifest": done}


# --- the harness -------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    argv: list[str]  # the copymachine arguments (after `python -m copymachine`)
    run_dir: Path
    cache_dir: Path
    targets: tuple[str, ...]  # phases to aim kills at ("any": a uniform random moment)
    crash_stems: tuple[str, ...] = ()  # sd-scripts scripts told to die mid-write once
    final: str = ""  # the final LoRA's path (checked after the run completes)

    @property
    def roots(self) -> list[Path]:
        return [self.run_dir, self.cache_dir]


@dataclass
class Report:
    seed: int
    kills: Counter = field(default_factory=Counter)
    crashes: int = 0  # sd-scripts killed itself mid-write (the fake's die-mid-write)
    attempts: int = 0
    completed_runs: int = 0
    orphans_ended: int = 0  # orphaned sd-scripts still running when the next run started, ended by it
    temps_left: int = 0
    wall_s: float = 0.0
    events: list[str] = field(default_factory=list)

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    def add(self, other: Report) -> None:
        self.kills.update(other.kills)
        for name in ("crashes", "attempts", "completed_runs", "orphans_ended", "temps_left"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.events += other.events

    def summary(self) -> str:
        phases = ", ".join(f"{p} {self.kills.get(p, 0)}" for p in PHASES)
        return (
            f"kill harness (seed {self.seed}): {self.total_kills} SIGKILLs ({phases}); "
            f"{self.crashes} sd-scripts deaths mid-write; {self.attempts} attempts, {self.completed_runs} runs completed; "
            f"{self.orphans_ended} orphaned sd-scripts ended by the next run; {self.temps_left} temporary files left; {self.wall_s:.1f} s"
        )


class KillHarness:
    def __init__(
        self,
        env: dict[str, str],
        cwd: Path,
        seed: int,
        windows: dict[str, float],
        timeout_s: float = 120.0,
        deep: bool = True,
        log: Callable[[str], None] = print,
    ):
        self.env = env
        self.cwd = cwd
        self.rng = random.Random(seed)
        self.report = Report(seed=seed)
        self.windows = windows  # phase -> longest random delay after it is first seen (s); "any": the spread
        self.timeout_s = timeout_s
        self.deep = deep
        self.log = log
        self.orphans: list[int] = []
        self.schedule: list[str] = []  # targets to aim at first (then random among the scenario's)

    def cover(self, groups: list[list[str]]) -> None:
        """Aim the first attempts at these phases: the groups in order, each in a seeded random
        order (a run gets past a phase only in an attempt aimed at a later one, so the order of
        the groups decides which phases are still ahead)."""
        self.schedule = []
        for group in groups:
            group = list(group)
            self.rng.shuffle(group)
            self.schedule += group

    def next_target(self, scenario: Scenario) -> str:
        return self.schedule.pop(0) if self.schedule else self.rng.choice(scenario.targets)

    def _start(self, scenario: Scenario, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        env = dict(self.env, **(extra_env or {}))
        return subprocess.Popen(
            [sys.executable, "-m", "copymachine", *scenario.argv],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )

    def attempt(self, scenario: Scenario, target: str) -> tuple[bool, str]:
        """Run once, SIGKILL copymachine when `target` comes (after a random delay). Returns
        (killed, phase at the kill or 'completed')."""
        before = stamps(scenario.roots)
        orphans_before = [p for p in self.orphans if alive(p)]
        self.report.attempts += 1
        proc = self._start(scenario)
        t0 = time.monotonic()
        kill_at = t0 + self.rng.uniform(0.05, self.windows["any"]) if target == "any" else None
        killed, phase = False, "completed"
        while proc.poll() is None:
            now = time.monotonic()
            if now - t0 > self.timeout_s:
                proc.kill()
                proc.communicate()
                raise AssertionError(f"{scenario.name}: attempt ran past {self.timeout_s} s")
            if kill_at is None:
                # aimed at a write: wait for sd-scripts writing an output (copymachine's own
                # temporary files live for a millisecond; kills land there only by chance)
                seen = ("write" if writing_now(scenario.roots) == "engine" else "") if target == "write" else phase_now(scenario.run_dir, scenario.roots, proc.pid)
                if seen == target:
                    kill_at = now + self.rng.uniform(0.0, self.windows[target])
            if kill_at is not None and now >= kill_at:
                phase = phase_now(scenario.run_dir, scenario.roots, proc.pid)
                child = child_of_lock(scenario.run_dir, proc.pid)
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    break
                proc.wait()
                if proc.returncode == -signal.SIGKILL:
                    killed = True
                    if child:
                        self.orphans.append(child)
                break
            time.sleep(0.01)
        _out, err = proc.communicate()
        if killed:
            self.report.kills[phase] += 1
            self.report.events.append(f"{scenario.name}: killed in {phase} (aimed at {target}) after {time.monotonic() - t0:.2f} s")
        else:
            assert proc.returncode == 0, f"{scenario.name}: run failed ({proc.returncode}):\n{err[-3000:]}"
            phase = "completed"
            self.report.completed_runs += 1
        self._check_after(scenario, before, orphans_before, err)
        return killed, phase

    def crash(self, scenario: Scenario, stem: str) -> None:
        """Run once with sd-scripts' `stem` dying mid-write: one clear error, nothing broken."""
        before = stamps(scenario.roots)
        orphans_before = [p for p in self.orphans if alive(p)]
        self.report.attempts += 1
        proc = self._start(scenario, {"COPYMACHINE_FAKE_FAIL": f"{stem}:die-mid-write"})
        try:
            _out, err = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        if proc.returncode == 0:  # that script had nothing left to do in this run
            self.report.completed_runs += 1
        else:
            assert proc.returncode == 1, f"{scenario.name}: {stem} died mid-write: exit {proc.returncode}, expected 1:\n{err[-2000:]}"
            errors = [line for line in err.splitlines() if line.startswith("copymachine: error:")]
            assert len(errors) == 1 and "Log: " in errors[0] and "Traceback" not in err.split("copymachine: error:")[0][-300:], err[-2000:]
            self.report.crashes += 1
            self.report.events.append(f"{scenario.name}: {stem} died mid-write -> {errors[0][:160]}")
        self._check_after(scenario, before, orphans_before, err)

    def _check_after(self, scenario: Scenario, before: dict[str, str], orphans_before: list[int], err: str) -> None:
        after = stamps(scenario.roots)
        for path, text in before.items():
            assert after.get(path) == text, f"{scenario.name}: a finished stage was redone or its stamp lost: {path}\n{err[-2000:]}"
        state = check_disk(scenario.run_dir, scenario.roots, deep=self.deep)
        # a run that got as far as its first stage has ended every orphan of earlier kills
        if (scenario.run_dir / "manifest.json").exists() and "[1/" in err:
            for pid in orphans_before:
                assert not alive(pid), f"{scenario.name}: orphaned sd-scripts {pid} ({cmdline(pid)[:200]}) still runs after the next run started"
                self.report.orphans_ended += 1
                self.orphans.remove(pid)
        return state

    def soak(self, scenario: Scenario, max_kills: int) -> int:
        """Crash each of its `crash_stems` once, kill `scenario` at aimed moments until it
        completes (or `max_kills`), then run it to the end and check the result."""
        kills = 0
        for stem in scenario.crash_stems:  # first: each reaches its script before it is done
            self.crash(scenario, stem)
        completed = False
        while not completed:
            if kills >= max_kills:
                break
            killed, _ = self.attempt(scenario, self.next_target(scenario))
            kills += killed
            completed = not killed
        if not completed:  # the same command, left alone, finishes
            killed, _ = self.attempt(scenario, "never")
            assert not killed
        check_disk(scenario.run_dir, scenario.roots, deep=self.deep)
        leftovers = [p for p in scenario.roots for p in p.rglob(".partial")]
        assert not leftovers, f"{scenario.name}: scratch folders left after the run completed: {leftovers}"
        if scenario.final:
            validate_file(Path(scenario.final), deep=True)
        manifest = json.loads((scenario.run_dir / "manifest.json").read_text(encoding="utf-8"))
        assert all(s["status"] in ("done", "skipped") for s in manifest["stages"]), [(s["name"], s["status"]) for s in manifest["stages"]]
        for pid in self.orphans:
            assert not alive(pid), f"orphaned sd-scripts {pid} still runs after the run completed"
        _, temps = final_files(scenario.roots)
        self.report.temps_left += len(temps)
        self.report.events += [f"{scenario.name}: temporary file left: {t}" for t in temps]
        return kills
