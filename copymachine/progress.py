"""What the user sees while a run works: one line per stage and live training progress.

Everything goes to stderr, so stdout carries only results (the final LoRA paths, --json output).
On a terminal the progress line redraws in place; on a pipe or in a log it prints a line every
10 % of the stage, so CI logs and `| tee` stay readable.

`events`, when given, receives the same facts as dicts (`{"event": "stage_start", ...}`): the
queue writes them as JSON lines (`copymachine queue --events FILE`) and the web UI reads them.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from copymachine.runner import Progress, command_line, is_tty


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def describe(p: Progress) -> str:
    """One stage's progress: "step 120/3072 · 2.1it/s · loss 0.0123 · eta 24:10"."""
    label = p.desc or "progress"
    if label == "steps":
        label = "step"
    parts = [f"{label} {p.step}/{p.total}"]
    if p.rate and "?" not in p.rate:
        parts.append(p.rate)
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    if p.eta and p.eta != "?":
        parts.append(f"eta {p.eta}")
    return " · ".join(parts)


def live_line(jobs: dict[str, Progress], parallel: bool) -> str:
    """The terminal's progress line: one stage described in full, or several side by side."""
    if len(jobs) == 1 and not parallel:
        return describe(next(iter(jobs.values())))
    return " | ".join(f"{name}: {q.step}/{q.total}" + (f" {q.rate}" if q.rate and "?" not in q.rate else "") for name, q in jobs.items())


class Reporter:
    def __init__(
        self,
        stream: TextIO | None = None,
        verbose: bool = False,
        live: bool | None = None,
        prefix: str = "",
        events: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.stream = stream or sys.stderr
        self.prefix = prefix  # put before every line (jobs of a queue running side by side)
        self.events = events
        self.verbose = verbose
        self.live = is_tty(self.stream) if live is None else live
        self.parallel = False  # several stages run at once: name them on every line
        self._lock = threading.RLock()
        self._last_draw = 0.0
        self._last_event = 0.0
        self._last_key: tuple = ()
        self._deciles: dict[str, int] = {}
        self._jobs: dict[str, Progress] = {}
        self._drawn = False
        self.warnings: list[str] = []

    def _print(self, text: str) -> None:
        with self._lock:
            if self._drawn:
                self.stream.write("\r\033[K")
                self._drawn = False
            self.stream.write(self.prefix + text + "\n")
            self.stream.flush()

    def event(self, name: str, **facts: Any) -> None:
        if self.events is not None:
            self.events({"event": name, "time": round(time.time(), 3), **facts})

    def info(self, text: str) -> None:
        self.event("info", text=text)
        self._print(text)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.event("warning", text=text)
        self._print(f"warning: {text}")

    def note(self, text: str) -> None:
        self._print(f"note: {text}")

    def stage_start(self, index: int, total: int, description: str, log: str | None) -> None:
        self.event("stage_start", index=index, total=total, description=description, log=log)
        self._print(f"[{index}/{total}] {description}" + (f"  (log: {log})" if log else ""))

    def stage_skip(self, index: int, total: int, title: str, where: str) -> None:
        self.event("stage_skip", index=index, total=total, title=title, where=where)
        self._print(f"[{index}/{total}] {title}: up to date, skipped ({where})")

    def stage_done(self, title: str, seconds: float, outputs: list[str], peak_gib: float | None = None) -> None:
        self.event("stage_done", title=title, seconds=seconds, outputs=outputs, peak_gib=peak_gib)
        who = f"{title}: " if self.parallel else ""
        peak = f" (peak memory {peak_gib:.1f} GiB)" if peak_gib else ""
        self._print(f"      {who}done in {_duration(seconds)}{peak} -> {', '.join(outputs)}")

    def command(self, argv: list[str]) -> None:
        if self.verbose:
            self._print(f"      $ {command_line(argv)}")

    def progress(self, p: Progress, job: str = "") -> None:
        """Live progress of one running stage (`job`); several jobs share one line on a terminal."""
        with self._lock:
            self._jobs[job] = p
            if self.events is not None:
                now = time.monotonic()
                key = (job, p.desc, p.step, p.loss is None)  # a new step, or its first loss, is always sent
                if key != self._last_key or now - self._last_event >= 0.25 or p.step == p.total:
                    self._last_event, self._last_key = now, key
                    self.event("progress", job=job, desc=p.desc, step=p.step, total=p.total, rate=p.rate, eta=p.eta, loss=p.loss, text=describe(p))
            if self.live:
                now = time.monotonic()
                if now - self._last_draw < 0.2 and p.step != p.total:
                    return
                self._last_draw = now
                text = "      " + live_line(self._jobs, self.parallel)
                width = shutil.get_terminal_size((120, 24)).columns
                self.stream.write("\r\033[K" + (self.prefix + text)[: width - 1])
                self.stream.flush()
                self._drawn = True
                return
            decile = (10 * p.step // p.total) if p.total else 0
            if p.desc == "steps" and decile != self._deciles.get(job, -1):
                self._deciles[job] = decile
                who = f"{job}: " if self.parallel else ""
                self._print(f"      {who}{describe(p)}")

    def counting(self, job: str, text: str, done: int, total: int) -> None:
        """A count of something short that works before any stage ("...: 3/8 scripts"): redrawn in
        place on a terminal, one line per count on a pipe."""
        with self._lock:
            self.event("progress", job=job, desc=job, step=done, total=total, text=text)
            if not self.live:
                self._print(text)
                return
            self.stream.write("\r\033[K" + self.prefix + text)
            self._drawn = done < total
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()

    def end_progress(self, job: str = "") -> None:
        with self._lock:
            self._jobs.pop(job, None)
            self._deciles.pop(job, None)
            if self._drawn and not self._jobs:
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = False

    def summary(self, rows: list[tuple[str, str]]) -> None:
        """One line per result at the end of a run of several effects."""
        width = max(len(name) for name, _ in rows)
        self.event("summary", rows=[list(r) for r in rows])
        self._print("summary:")
        for name, result in rows:
            self._print(f"  {name.ljust(width)}  {result}")
