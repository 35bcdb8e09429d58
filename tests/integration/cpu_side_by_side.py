"""`copymachine` with --jobs honoured on the CPU: a test-only way to run two sd-scripts trainings
side by side on a machine without a GPU (tests/integration/test_ctrl_c_side_by_side_real.py).

copymachine keeps CPU runs sequential (`side_by_side` returns 1 there: parallel trainings would
only share the same cores); the pipeline that runs stages side by side is the same on the CPU and
on a GPU. This script replaces only that decision, then runs copymachine's own entry point (its
signal handling included):

    python tests/integration/cpu_side_by_side.py train ... --jobs 2
"""

from __future__ import annotations

import importlib
import sys


def side_by_side(o, *_, **__) -> int:
    """--jobs as given (the run's options: a dict of click options, or copymachine.run's RunOptions)."""
    jobs = (o.get("jobs") if isinstance(o, dict) else getattr(o, "jobs", None)) or 1
    reporter = [a for a in (*_, *__.values()) if hasattr(a, "info") and hasattr(a, "warn")][-1]
    reporter.info(f"{jobs} trainings side by side on the CPU (test-only: tests/integration/cpu_side_by_side.py)")
    return jobs


def main() -> int:
    for name in ("copymachine.run", "copymachine.cli.methods"):  # wherever the run's decision lives
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "side_by_side"):
            module.side_by_side = side_by_side
    from copymachine.cli import main as copymachine_main

    return copymachine_main()


if __name__ == "__main__":
    sys.exit(main())
