"""What the user sees while a run works, on stderr (stdout carries only results): one line per stage and
live training progress, on a terminal one live line per running stage (rich), on a pipe a line every 10 %.
`events`, when given, receives the same facts as typed events (events.py) for the queue and the web UI."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from copymachine import events as ev
from copymachine.plan import Plan, Stage
from copymachine.runner import Progress, command_line, is_tty


def _duration(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def describe(p: Progress) -> str:
    """One stage's progress: "step 120/3072 · 2.1it/s · loss 0.0123 · eta 24:10"."""
    label = "step" if p.desc == "steps" else p.desc or "progress"
    parts = [f"{label} {p.step}/{p.total}",
             p.rate if p.rate and "?" not in p.rate else "",
             f"loss {p.loss:.4f}" if p.loss is not None else "",
             f"eta {p.eta}" if p.eta and p.eta != "?" else ""]
    return " · ".join(part for part in parts if part)


class Reporter:
    def __init__(self, stream: TextIO | None = None, verbose: bool = False, live: bool | None = None, prefix: str = "",
                 events: Callable[[ev._Event], None] | None = None):
        self.stream = stream or sys.stderr
        self.prefix = prefix  # put before every line (jobs of a queue running side by side)
        self.events = events
        self.verbose = verbose
        self.live = is_tty(self.stream) if live is None else live
        self.parallel = False  # several stages run at once: name them on every line
        self._lock = threading.RLock()
        self._last_event = 0.0
        self._last_key: tuple = ()
        self._deciles: dict[str, int] = {}
        self._lines: dict[str, str] = {}  # on a terminal: the live line of each running stage
        self._live: Live | None = None

    def _print(self, text: str) -> None:
        with self._lock:
            if self._live is not None:
                self._live.console.print(Text(self.prefix + text), soft_wrap=True)
                return
            self.stream.write(self.prefix + text + "\n")
            self.stream.flush()

    def _draw(self) -> None:
        if not self._lines:
            if self._live is not None:
                self._live.stop()
                self._live = None
            return
        shown = Group(*(Text(self.prefix + line, no_wrap=True, overflow="ellipsis") for line in self._lines.values()))
        if self._live is None:
            self._live = Live(shown, console=Console(file=self.stream, highlight=False), transient=True,
                              redirect_stdout=False, redirect_stderr=False, refresh_per_second=5)
            self._live.start()
        else:
            self._live.update(shown)

    def emit(self, event: ev._Event) -> None:
        if self.events is not None:
            self.events(event)

    def event(self, name: str, **facts: Any) -> None:
        """An event by its kind's name (`reporter.event("sample", path=...)`)."""
        if self.events is not None:
            self.events(ev.parse({"event": name, **facts}))

    def plan(self, plan: Plan) -> None:
        self.emit(ev.PlanMade(run_dir=str(plan.run_dir), stages=[s.title for s in plan.stages],
                              names=[s.name for s in plan.stages], kinds=[s.kind for s in plan.stages],
                              finals={k: str(v) for k, v in plan.finals.items()}))

    def info(self, text: str) -> None:
        self.emit(ev.Info(text=text))
        self._print(text)

    def warn(self, text: str) -> None:
        self.emit(ev.Warned(text=text))
        self._print(f"warning: {text}")

    def note(self, text: str) -> None:
        self._print(f"note: {text}")

    def stage_start(self, index: int, total: int, stage: Stage, description: str, log: str | None) -> None:
        self.emit(ev.StageStart(stage=stage.name, kind=stage.kind, title=stage.title, index=index, total=total,
                                description=description, log=log))
        self._print(f"[{index}/{total}] {description}" + (f"  (log: {log})" if log else ""))

    def stage_skip(self, index: int, total: int, stage: Stage, where: str) -> None:
        self.emit(ev.StageSkip(stage=stage.name, kind=stage.kind, index=index, total=total, title=stage.title,
                               where=where))
        self._print(f"[{index}/{total}] {stage.title}: up to date, skipped ({where})")

    def stage_done(self, stage: Stage, seconds: float, outputs: list[str], peak_gib: float | None = None) -> None:
        self.emit(ev.StageDone(stage=stage.name, kind=stage.kind, title=stage.title, seconds=seconds, outputs=outputs,
                               peak_gib=peak_gib))
        who = f"{stage.title}: " if self.parallel else ""
        peak = f" (peak memory {peak_gib:.1f} GiB)" if peak_gib else ""
        self._print(f"      {who}done in {_duration(seconds)}{peak} -> {', '.join(outputs)}")

    def command(self, argv: list[str]) -> None:
        if self.verbose:
            self._print(f"      $ {command_line(argv)}")

    def progress(self, p: Progress, job: str = "") -> None:
        with self._lock:
            now = time.monotonic()
            key = (job, p.desc, p.step, p.loss is None)  # a new step, or its first loss, is always sent
            if key != self._last_key or now - self._last_event >= 0.25 or p.step == p.total:
                self._last_event, self._last_key = now, key
                self.emit(ev.ProgressMade(stage=job, desc=p.desc, step=p.step, total=p.total, rate=p.rate, eta=p.eta,
                                          loss=p.loss, text=describe(p)))
            who = f"{job}: " if self.parallel else ""
            if self.live:
                self._lines[job] = f"      {who}{describe(p)}"
                self._draw()
                return
            decile = (10 * p.step // p.total) if p.total else 0
            if p.desc == "steps" and decile != self._deciles.get(job, -1):
                self._deciles[job] = decile
                self._print(f"      {who}{describe(p)}")

    def counting(self, job: str, text: str, done: int, total: int) -> None:
        """A count of something short before any stage ("...: 3/8 scripts"): a live line on a terminal."""
        with self._lock:
            self.emit(ev.ProgressMade(stage=job, desc=job, step=done, total=total, text=text))
            if self.live and done < total:
                self._lines[job] = text
                self._draw()
                return
            self.end_progress(job)
            self._print(text)

    def end_progress(self, job: str = "") -> None:
        with self._lock:
            self._lines.pop(job, None)
            self._deciles.pop(job, None)
            self._draw()

    def summary(self, rows: list[tuple[str, str]]) -> None:
        width = max(len(name) for name, _ in rows)
        self.emit(ev.Summary(rows=[list(r) for r in rows]))
        self._print("summary:")
        for name, result in rows:
            self._print(f"  {name.ljust(width)}  {result}")
