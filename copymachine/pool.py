"""One pool for work side by side: the pipeline's stages and the queue's jobs. `start` names what
may start now, `end` hears of each that ended; an exception or Ctrl-C stops the rest, waits for
them (a second Ctrl-C: `kill`), and goes on up."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

Task = tuple[Hashable, Callable[[], Any]]  # what the caller knows it by, and what runs


def side_by_side(workers: int, start: Callable[[], list[Task]], end: Callable[[Hashable, Future], None],
                 stop: Callable[[], None], name: str, kill: Callable[[], None] | None = None) -> None:
    """Run what `start()` gives, up to `workers` at once, until nothing runs and nothing
    starts; `end(tag, future)` for each that ended (it may raise to stop the rest)."""
    running: dict[Future, Hashable] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        while True:
            for tag, task in start():
                running[pool.submit(task)] = tag
            if not running:
                return
            finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                end(running.pop(future), future)
    except BaseException:
        try:
            stop()
            for future in running:
                with contextlib.suppress(Exception):
                    future.result(timeout=60)
        except KeyboardInterrupt:  # a second Ctrl-C: nothing waits for the grace time
            if kill is None:
                raise
            kill()
        raise
    finally:
        pool.shutdown(wait=True)
