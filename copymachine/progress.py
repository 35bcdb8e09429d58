"""What the user sees while a run works: one line per stage and live training progress.

Everything goes to stderr, so stdout carries only results (the final LoRA paths, --json output).
On a terminal the progress line redraws in place; on a pipe or in a log it prints a line every
10 % of the stage, so CI logs and `| tee` stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from copymachine.runner import Progress, command_line, is_tty


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class Reporter:
    def __init__(self, stream: TextIO | None = None, verbose: bool = False, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.live = is_tty(self.stream) if live is None else live
        self._last_draw = 0.0
        self._last_decile = -1
        self._drawn = False
        self.warnings: list[str] = []

    def _print(self, text: str) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def info(self, text: str) -> None:
        self._print(text)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self._print(f"warning: {text}")

    def stage_start(self, index: int, total: int, description: str, log: str | None) -> None:
        self._last_decile = -1
        self._print(f"[{index}/{total}] {description}" + (f"  (log: {log})" if log else ""))

    def stage_skip(self, index: int, total: int, title: str, where: str) -> None:
        self._print(f"[{index}/{total}] {title}: up to date, skipped ({where})")

    def stage_done(self, seconds: float, outputs: list[str]) -> None:
        self._print(f"      done in {_duration(seconds)} -> {', '.join(outputs)}")

    def command(self, argv: list[str]) -> None:
        if self.verbose:
            self._print(f"      $ {command_line(argv)}")

    def progress(self, p: Progress) -> None:
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
        text = "      " + " · ".join(parts)
        if self.live:
            now = time.monotonic()
            if now - self._last_draw < 0.2 and p.step != p.total:
                return
            self._last_draw = now
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._drawn = True
            return
        decile = (10 * p.step // p.total) if p.total else 0
        if p.desc == "steps" and decile != self._last_decile:
            self._last_decile = decile
            self._print(text)

    def end_progress(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
