"""Benchmark (issue 34, `make bench-recipes`): the memo's and the fast recipe's trainings side by side.

For each recipe, one `copymachine train --recipe NAME --effect outline --max-steps N` (N = 20 by default) on the
real sd-scripts at 64 px: the copy LoRA and the effect LoRA each train N steps with the recipe's own numbers
(batch size, dim, scheduler, min_snr_gamma; the memo's warmup scaled to N as --max-steps does). From each training's
log, sd-scripts' own step timer (its `steps:` tqdm line) gives the seconds per step; the rest of the stage's wall
time is its fixed cost (loading the model, caching, saving). The projected whole-recipe time is, over the recipe's
trainings, fixed cost + steps x seconds per step: for one effect (outline) and for the memo's five effects (one copy
LoRA, five effect LoRAs; flat and jpeg at their own step counts, timed at the plain effect's dim). The resize, the
copy check and the renders are not in it (resize_lora.py runs for the memo only, ~90 s each on this CPU).

Writes its section (item 6) into docs/benchmarks.md between its markers (or --report FILE). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_pipeline import draw_test_picture, machine

from copymachine.engine import locate
from copymachine.recipe import load_recipe_file

RECIPES = ("memo", "fast")
EFFECTS = ("outline", "flat", "contrast", "posterize", "jpeg")  # the memo's five
STAGES = {"copy-lora": "copy LoRA", "outline/effect-lora": "effect LoRA"}
# the last `steps: 100%|...| 20/20 [00:41<00:00, ...]` of a training's log: its step loop's elapsed time
TQDM = re.compile(r"steps:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)\s*\[(?:(\d+):)?(\d+):(\d+)<")


def loop_seconds(log: Path, steps: int) -> float | None:
    """Seconds sd-scripts' step loop took for `steps` steps, from its tqdm line (None: not found)."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    done = [m for m in TQDM.finditer(text) if int(m.group(1)) == int(m.group(2)) == steps]
    if not done:
        return None
    h, m, s = (int(g or 0) for g in done[-1].groups()[2:])
    return h * 3600 + m * 60 + s


def run_recipe(name: str, common: list[str], work: Path, steps: int, env: dict[str, str]) -> dict[str, dict]:
    """One `copymachine train` with the recipe, cut to `steps` steps a training; each training's timings."""
    out = work / name
    args = ["train", "--recipe", name, "--effect", "outline", "--out", str(out), "--max-steps", str(steps),
            "--cache-dir", str(work / f"cache-{name}"), "--set", "resize.rank=0", *common]
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "copymachine", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, encoding="utf-8", check=False)
    if r.returncode != 0:
        sys.exit(f"copymachine --recipe {name} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    print(f"{name}: {time.monotonic() - t0:.0f} s", flush=True)
    stages = {s["name"]: s for s in json.loads((out / "manifest.json").read_text(encoding="utf-8"))["stages"]}
    timings = {}
    for stage in STAGES:
        wall = float(stages[stage]["duration_s"])
        loop = loop_seconds(Path(stages[stage]["log"]), steps)
        per_step = (loop if loop is not None else wall) / steps
        fixed = max(0.0, wall - per_step * steps)
        timings[stage] = {"wall": wall, "per_step": per_step, "fixed": fixed, "timed": loop is not None}
    return timings


def projection(name: str, t: dict[str, dict], effects: tuple[str, ...]) -> float:
    """Seconds the recipe's trainings take for `effects` (one copy LoRA, one effect LoRA each)."""
    r = load_recipe_file(name)
    copy, effect = t["copy-lora"], t["outline/effect-lora"]
    total = copy["fixed"] + r.copy.steps * copy["per_step"]
    return total + sum(effect["fixed"] + r.effect_training(e).steps * effect["per_step"] for e in effects)


def steps_for(r, effects: tuple[str, ...]) -> int:
    return r.copy.steps + sum(r.effect_training(e).steps for e in effects)


def fmt(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def report(timings: dict[str, dict], steps: int, resolution: int, info: dict[str, str]) -> str:
    rows = []
    for name in RECIPES:
        r = load_recipe_file(name)
        for stage, title in STAGES.items():
            tr, t = (r.copy if stage == "copy-lora" else r.effect), timings[name][stage]
            note = "" if t["timed"] else " (wall / steps: no tqdm line found)"
            rows.append(f"| {name} | {title} | {tr.batch_size} | {tr.network_dim} | {t['per_step']:.2f} s{note} | "
                        f"{t['fixed']:.0f} s | {tr.steps:,} |")
    proj = []
    for label, effects in (("one effect (outline)", EFFECTS[:1]), ("five effects (the memo's)", EFFECTS)):
        memo, fast = (projection(n, timings[n], effects) for n in RECIPES)
        n_memo, n_fast = (steps_for(load_recipe_file(n), effects) for n in RECIPES)
        proj.append(f"| {label} | {n_memo:,} | {fmt(memo)} | {n_fast:,} | {fmt(fast)} | {fast / memo:.2f} |")
    return "\n".join([
        "## 6. The fast recipe beside the memo's (issue 34)",
        "",
        f"`make bench-recipes` (`benchmarks/bench_recipes.py --steps {steps}`), {time.strftime('%Y-%m-%d')}, on the "
        f"real sd-scripts ({info['sd-scripts']}) on the CPU ({info['cpu']}; torch {info['torch']}) at {resolution} px, "
        f"random SD1.5 weights: each recipe's copy LoRA and effect LoRA trained {steps} steps with its own numbers.",
        "",
        "| recipe | training | batch | dim | seconds per step | fixed cost | the recipe's steps |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Projected whole-recipe training time at {resolution} px on this CPU (fixed cost + steps x seconds per step, "
        "per training; no resize, copy check or renders):",
        "",
        "| | memo: steps | memo: time | fast: steps | fast: time | fast / memo |",
        "|---|---|---|---|---|---|",
        *proj,
        "",
        "Batch 2 costs more per step than batch 1, so the time ratio is above the step ratio. The fast recipe's "
        "numbers are a peer's published preset (hako-mikan's traintrain, `presets/Difference_Use2ndPass.json`), not "
        "our finding: its quality has not been judged on real weights here. No GPU was at hand for the 512 px figures.",
    ])


def splice(text: str, block: str, key: str = "item 6") -> str:
    """Replace this item's block (between its markers), or add it at the end; the rest stays."""
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{begin}\n{block.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip() + "\n\n" + block + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="an SD1.x checkpoint (the integration tests' random one)")
    ap.add_argument("--steps", type=int, default=20, help="steps of each training (default 20)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--sd-scripts", type=Path)
    ap.add_argument("--python")
    ap.add_argument("--tokenizer-cache-dir", type=Path)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--report", type=Path, default=Path("docs/benchmarks.md"))
    a = ap.parse_args()
    engine = locate(a.sd_scripts, a.python)
    work = a.work or Path(tempfile.mkdtemp(prefix="cm-bench-recipes-"))
    image = draw_test_picture(work / "picture.png", size=128)
    common = ["--base", str(a.base), "--image", str(image), "--resolution", str(a.resolution), "--no-copy-check",
              "--sd-scripts", str(engine.root), "--python", engine.python, "--device", "cpu"]
    if a.tokenizer_cache_dir:
        common += ["--tokenizer-cache-dir", str(a.tokenizer_cache_dir)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    timings = {name: run_recipe(name, common, work, a.steps, env) for name in RECIPES}
    print(json.dumps(timings, indent=1))
    text = a.report.read_text(encoding="utf-8") if a.report.exists() else "# Benchmarks\n"
    a.report.write_text(splice(text, report(timings, a.steps, a.resolution, machine(engine))), encoding="utf-8")
    print(f"wrote item 6 of {a.report}")


if __name__ == "__main__":
    main()
