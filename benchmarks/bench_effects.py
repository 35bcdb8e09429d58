"""Time each built-in effect at 512x512 and 1024x1024 (best of 3 after a warm-up, one process).

    make bench-effects                    # the default of each effect, then each alternative mode
    .venv/bin/python benchmarks/bench_effects.py --defaults-only

Not a test: it prints a table. Goals for the defaults: <= 0.5 s at 512, <= 2 s at 1024. The image is
the drawn test scene from tests/imagekit.py.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import imagekit  # noqa: E402

from copymachine.check import check_pair  # noqa: E402
from copymachine.effects import EFFECTS, apply_effect  # noqa: E402

SIZES = (512, 1024)
GOALS = {512: 0.5, 1024: 2.0}


def best_of(fn, repeat: int = 3) -> float:
    fn()  # warm-up: imports, caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def variants(defaults_only: bool) -> list[tuple[str, dict]]:
    rows = [(name, {}) for name in EFFECTS]
    if not defaults_only:
        for name, effect in EFFECTS.items():
            rows += [(name, {"mode": mode}) for mode in effect.params["mode"].choices[1:]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defaults-only", action="store_true", help="only the default mode of each effect")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    images = {size: imagekit.scene(size).image for size in SIZES}
    print(f"python {platform.python_version()}, {platform.machine()}, best of {args.repeat} after a warm-up")
    header = f"{'effect':<22}" + "".join(f"{f'{s}x{s}':>12}" for s in SIZES) + "   goal"
    print(header)
    print("-" * len(header))
    for name, params in variants(args.defaults_only):
        label = name + (f" ({params['mode']})" if params else "")
        cells, within = [], True
        for size in SIZES:
            seconds = best_of(lambda: apply_effect(name, images[size], params), args.repeat)
            cells.append(f"{seconds * 1000:>9.1f} ms")
            within &= seconds <= GOALS[size]
        goal = ("met" if within else "MISSED") if not params else "-"
        print(f"{label:<22}" + "".join(f"{c:>12}" for c in cells) + f"   {goal}")
    edited = {size: apply_effect("jpeg", images[size]) for size in SIZES}
    cells = [f"{best_of(lambda: check_pair(images[s], edited[s]), args.repeat) * 1000:>9.1f} ms" for s in SIZES]
    print(f"{'check_pair':<22}" + "".join(f"{c:>12}" for c in cells) + "   -")


if __name__ == "__main__":
    main()
