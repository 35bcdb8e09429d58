"""Benchmark: copymachine against the same sd-scripts commands run by hand (`make bench`).

1. overhead: `copymachine train` for one effect vs the sd-scripts commands it ran, replayed one
   after another by hand (the same configs, the same Python, the same environment);
2. several effects: a user following the memo by hand rebuilds the copy machine for every effect
   (copy LoRA, merge, effect LoRA, resize, per effect), copymachine builds it once and trains the
   effects (side by side on a GPU; one after another on the CPU);
3. GPU figures come from a run on a GPU machine; this script says when there was none.

Writes a Markdown table to docs/benchmarks.md (or --report) with the machine described. Not a
test: it takes tens of minutes on a CPU at 64 px.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from copymachine import __version__
from copymachine.engine import locate

EFFECTS = ["outline", "flat", "contrast", "posterize", "jpeg"]


def cm(args: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "copymachine", *args], env=env, capture_output=True, text=True, encoding="utf-8")
    if result.returncode != 0:
        sys.exit(f"copymachine failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.monotonic() - t0


def engine_commands(run_dir: Path) -> list[tuple[str, list[str]]]:
    """The sd-scripts commands of a run, in order, from its manifest."""
    stages = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["stages"]
    return [(s["name"], argv) for s in stages for argv in s.get("argv", [])]


def replay(commands: list[tuple[str, list[str]]], engine, offline: bool) -> dict[str, float]:
    """Run the commands by hand (no copymachine in between), timing each."""
    times: dict[str, float] = {}
    env = engine.env(offline=offline)
    for name, argv in commands:
        for option in ("--save_to", "--outdir"):  # copymachine made these folders; a user would too
            if option in argv:
                Path(argv[argv.index(option) + 1]).parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        result = subprocess.run(argv, cwd=engine.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
        if result.returncode != 0:
            sys.exit(f"hand-run of {name} failed:\n{result.stderr[-3000:]}")
        times[name] = times.get(name, 0.0) + time.monotonic() - t0
    return times


def machine(engine) -> dict[str, str]:
    probe = engine.probe()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3 if hasattr(os, "sysconf") else 0
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "ram": f"{ram:.0f} GiB",
        "gpu": ", ".join(probe.gpus) if probe.cuda else "none",
        "torch": probe.torch or "?",
        "python": probe.python_version,
        "sd-scripts": (engine.commit or "unknown")[:8],
        "copymachine": __version__,
    }


def draw_test_picture(path: Path, size: int = 512) -> Path:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (235, 225, 210))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, size, size // 3], fill=(150, 190, 235))
    d.ellipse([size * 0.2, size * 0.25, size * 0.8, size * 0.9], fill=(250, 215, 190), outline=(20, 20, 20), width=6)
    for x in (0.35, 0.55):
        d.ellipse([size * x, size * 0.45, size * (x + 0.1), size * 0.55], fill=(40, 60, 120), outline=(10, 10, 10), width=4)
    d.line([size * 0.4, size * 0.72, size * 0.6, size * 0.72], fill=(120, 30, 30), width=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def fmt(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, type=Path)
    ap.add_argument("--image", type=Path, help="the original image (default: a drawn test picture)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="the memo's full recipe at the image's own size (a GPU job): no --resolution, no --max-steps")
    ap.add_argument("--effects", type=int, default=5, help="how many of the five effects item 2 trains")
    ap.add_argument("--sd-scripts", type=Path)
    ap.add_argument("--python")
    ap.add_argument("--tokenizer-cache-dir", type=Path)
    ap.add_argument("--offline", action="store_true")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--report", type=Path, default=Path("docs/benchmarks.md"))
    a = ap.parse_args()

    engine = locate(a.sd_scripts, a.python)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    work = a.work or Path(tempfile.mkdtemp(prefix="cm-bench-"))
    if a.image is None:
        a.image = draw_test_picture(work / "picture.png")
    small = [] if a.full else ["--resolution", str(a.resolution), "--max-steps", str(a.max_steps)]
    common = ["--base", str(a.base), "--image", str(a.image), *small, "--no-copy-check", "--sd-scripts", str(engine.root), "--python", engine.python]
    if a.tokenizer_cache_dir:
        common += ["--tokenizer-cache-dir", str(a.tokenizer_cache_dir)]
    if a.offline:
        common.append("--offline")
    info = machine(engine)
    print(f"machine: {info}", flush=True)

    # 1. overhead, one effect
    one = work / "one"
    t_cm = cm(["train", "--effect", "contrast", "--out", str(one / "run"), "--cache-dir", str(one / "cache"), *common], env)
    t_rerun = cm(["train", "--effect", "contrast", "--out", str(one / "run"), "--cache-dir", str(one / "cache"), *common], env)
    commands = engine_commands(one / "run")
    hand = replay(commands, engine, a.offline)
    t_hand = sum(hand.values())
    print(f"1. copymachine {t_cm:.1f} s, by hand {t_hand:.1f} s, re-run {t_rerun:.1f} s", flush=True)

    # 2. several effects
    effects = EFFECTS[: a.effects]
    many = work / "many"
    t_cm_many = cm(["train", *sum((["--effect", e] for e in effects), []), "--out", str(many / "run"), "--cache-dir", str(many / "cache"), *common], env)
    stages = {n: argv for n, argv in engine_commands(many / "run")}
    copy_machine = [(n, stages[n]) for n in ("copy-lora", "copy-model")]
    t_hand_many = 0.0
    for effect in effects:
        per_effect = copy_machine + [(n, argv) for n, argv in engine_commands(many / "run") if n.startswith(f"{effect}/")]
        t_hand_many += sum(replay(per_effect, engine, a.offline).values())
        print(f"   by hand, {effect}: {t_hand_many:.1f} s so far", flush=True)
    print(f"2. {len(effects)} effects: copymachine {t_cm_many:.1f} s, by hand {t_hand_many:.1f} s", flush=True)

    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` (`benchmarks/bench_pipeline.py`) on {time.strftime('%Y-%m-%d')}.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
        ("Settings: the memo's full recipe at the image's own size, " if a.full else f"Settings: `--resolution {a.resolution} --max-steps {a.max_steps}` (every training {a.max_steps} steps at {a.resolution} px), ")
        +
        f"base model `{a.base.name}`, device {'GPU' if info['gpu'] != 'none' else 'CPU'}, no copy check.",
        "",
        "## 1. Overhead: copymachine vs the same sd-scripts commands run by hand (one effect)",
        "",
        "| | wall |",
        "|---|---|",
        f"| sd-scripts commands replayed by hand ({len(commands)} commands) | {fmt(t_hand)} |",
        f"| `copymachine train` (first run: hashing, probe, edit, captions, checks included) | {fmt(t_cm)} |",
        f"| overhead | {100 * (t_cm - t_hand) / t_hand:+.1f} % (goal ≤ 2 %) |",
        f"| `copymachine train` again (everything up to date) | {fmt(t_rerun)} |",
        "",
        "Per command, by hand: " + ", ".join(f"{n} {fmt(t)}" for n, t in hand.items()) + ".",
        "",
        f"## 2. {len(effects)} effects: by hand, copy machine rebuilt per effect, vs copymachine",
        "",
        "| | wall |",
        "|---|---|",
        f"| by hand, following the memo per effect (copy LoRA, merge, effect LoRA, resize) × {len(effects)} | {fmt(t_hand_many)} |",
        f"| `copymachine train --effect …` ×{len(effects)} (copy machine once{', effects side by side' if info['gpu'] != 'none' else ', effects one after another on the CPU'}) | {fmt(t_cm_many)} |",
        f"| copymachine / by hand | {100 * t_cm_many / t_hand_many:.0f} % (goal on a GPU ≤ 30 %) |",
        "",
    ]
    report = a.report
    extra = report.read_text(encoding="utf-8").split("<!-- gpu -->", 1)[1] if report.exists() and "<!-- gpu -->" in report.read_text(encoding="utf-8") else None
    lines.append("<!-- gpu -->" + (extra if extra is not None else "\n## 3. GPU\n\nNo GPU figures yet.\n"))
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {report}")
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
