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
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from copymachine import __version__
from copymachine.engine import locate

EFFECTS = ["outline", "flat", "contrast", "posterize", "jpeg"]


def cm(args: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "copymachine", *args], env=env, capture_output=True, text=True, encoding="utf-8")
    if result.returncode != 0:
        sys.exit(f"copymachine failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.monotonic() - t0


Commands = list[tuple[str, list[str]]]


def engine_commands(run_dir: Path) -> Commands:
    """The sd-scripts commands of a run, in order, from its manifest."""
    stages = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["stages"]
    return [(s["name"], argv) for s in stages for argv in s.get("argv", [])]


def memo_commands(args: list[str], env: dict[str, str]) -> Commands:
    """The commands a user following the memo runs for a finished run: `copymachine train
    --copy-model file --dry-run` over the same run and cache folders prints them (the copy model
    by merge_lora.py, each effect LoRA trained on that file, its resize), named by stage title."""
    result = subprocess.run([sys.executable, "-m", "copymachine", "train", *args, "--copy-model", "file", "--dry-run"], env=env, capture_output=True, text=True, encoding="utf-8")
    if result.returncode != 0:
        sys.exit(f"copymachine --dry-run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    commands: Commands = []
    title = ""
    for line in result.stdout.splitlines():
        if line.startswith("# ["):
            title = line.split("] ", 1)[1]
        elif line and not line.startswith("#"):
            commands.append((title, shlex.split(line)))
    return commands


def _partial_folders(argv: list[str]) -> list[Path]:
    """Where a command writes before copymachine would rename: --save_to's folder, a training
    config's output_dir."""
    folders = []
    for option in ("--save_to", "--outdir"):
        if option in argv:
            folders.append(Path(argv[argv.index(option) + 1]).parent)
    if "--config_file" in argv:
        config = tomllib.loads(Path(argv[argv.index("--config_file") + 1]).read_text(encoding="utf-8"))
        # sd-scripts reads a sectioned config flat (its sections only group the keys)
        flat = {k: v for section in config.values() if isinstance(section, dict) for k, v in section.items()} | config
        if "output_dir" in flat:
            folders.append(Path(flat["output_dir"]))
    return [f for f in folders if ".partial" in f.parts]


def replay(commands: Commands, engine, offline: bool) -> dict[str, float]:
    """Run the commands by hand (no copymachine in between), timing each. Like a user, each
    command's file lands where the next one reads it (copymachine's `.partial/<stage>/` is moved
    up to the stage folder, untimed)."""
    times: dict[str, float] = {}
    env = engine.env(offline=offline)
    for name, argv in commands:
        partial = _partial_folders(argv)
        for folder in partial:  # copymachine made these folders; a user would too
            folder.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        result = subprocess.run(argv, cwd=engine.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
        if result.returncode != 0:
            sys.exit(f"hand-run of {name} failed:\n{result.stderr[-3000:]}")
        times[name] = times.get(name, 0.0) + time.monotonic() - t0
        for folder in partial:
            for made in folder.iterdir():
                if made.is_file():
                    made.replace(folder.parent.parent / made.name)
    return times


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):+.1f} %, range {min(values):+.1f} … {max(values):+.1f} %"


def goal_verdict(overheads: list[float], goal: float = 2.0) -> str:
    """Whether the overhead goal holds within the measured range."""
    if max(overheads) <= goal:
        return f"holds: the whole range is ≤ {goal:g} %"
    if min(overheads) > goal:
        return f"missed: the whole range is above {goal:g} %"
    return f"not decided: the range straddles {goal:g} %"


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


def of_effect(name: str, effect: str) -> bool:
    """A stage of this effect: `contrast/resize` in a manifest, `contrast: resize …` in a dry run."""
    return name.startswith((f"{effect}/", f"{effect}:"))


def splice(text: str, key: str, block: str) -> str:
    """Replace the generated block `key` of the report (between its markers); text outside the
    markers (notes written by hand, the GPU section) stays. A new block goes before the GPU section."""
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{begin}\n{block.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    if "<!-- gpu -->" in text:
        head, tail = text.split("<!-- gpu -->", 1)
        return head.rstrip() + "\n\n" + block + "\n\n<!-- gpu -->" + tail
    return text.rstrip() + "\n\n" + block + "\n"


def old_report(report: Path) -> str:
    """The report to update: a report without blocks (the format before them) keeps only its
    GPU section and what follows it."""
    text = report.read_text(encoding="utf-8") if report.exists() else ""
    if "<!-- machine -->" in text:
        return text
    tail = text.split("<!-- gpu -->", 1)[1] if "<!-- gpu -->" in text else "\n## 3. GPU\n\nNo GPU figures yet.\n"
    return "# Benchmarks\n\n<!-- gpu -->" + tail


def item_one(a, common: list[str], route: list[str], env: dict[str, str], engine, work: Path) -> list[str]:
    """Overhead for one effect: copymachine and the hand-run of its commands, `--repeats` pairs,
    interleaved and alternating which side goes first (ABBA), each copymachine run fresh (its own
    run and cache folder)."""
    t_cm: list[float] = []
    t_hand: list[float] = []
    per_command: dict[str, list[float]] = {}
    commands: Commands = []
    runs: list[list[str]] = []
    for i in range(a.repeats):
        one = work / "one" / str(i + 1)
        runs.append(["train", "--effect", "contrast", "--out", str(one / "run"), "--cache-dir", str(one / "cache"), *route, *common])
        hand_first = i % 2 == 1  # the previous run's commands, replayed in its folders
        if hand_first:
            hand = replay(commands, engine, a.offline)
        t_cm.append(cm(runs[-1], env))
        if i == 0:  # before a hand-run writes into its folders
            t_rerun = cm(runs[0], env)
            print(f"1. re-run {t_rerun:.1f} s", flush=True)
        if not hand_first:
            commands = engine_commands(one / "run")
            hand = replay(commands, engine, a.offline)
        t_hand.append(sum(hand.values()))
        for name, t in hand.items():
            per_command.setdefault(name, []).append(t)
        print(f"1. [{i + 1}/{a.repeats}] copymachine {t_cm[-1]:.1f} s, by hand {t_hand[-1]:.1f} s ({'hand-run first' if hand_first else 'copymachine first'})", flush=True)
    overheads = [100 * (c - h) / h for c, h in zip(t_cm, t_hand)]
    taken = "file" if any(n == "copy-model" for n, _ in commands) else "memory"
    return [
        "## 1. Overhead: copymachine vs the same sd-scripts commands run by hand (one effect)",
        "",
        f"Measured on {time.strftime('%Y-%m-%d')}, copy model {'as a file' if taken == 'file' else 'in memory'} (`--copy-model {taken}`), "
        f"{a.repeats} pairs interleaved (copymachine first, then the hand-run first, alternating), each copymachine run in fresh folders.",
        "",
        "| | median | range |",
        "|---|---|---|",
        f"| sd-scripts commands replayed by hand ({len(commands)} commands) | {fmt(statistics.median(t_hand))} | {fmt(min(t_hand))} … {fmt(max(t_hand))} |",
        f"| `copymachine train` (first run: hashing, probe, edit, captions, checks included) | {fmt(statistics.median(t_cm))} | {fmt(min(t_cm))} … {fmt(max(t_cm))} |",
        f"| overhead per pair (copymachine − hand) / hand | {statistics.median(overheads):+.1f} % | {min(overheads):+.1f} … {max(overheads):+.1f} % |",
        f"| `copymachine train` again (everything up to date) | {fmt(t_rerun)} | one run |",
        "",
        f"Pairs (copymachine / by hand): {', '.join(f'{fmt(c)} / {fmt(h)} ({o:+.1f} %)' for c, h, o in zip(t_cm, t_hand, overheads))}. "
        f"Goal ≤ 2 %: {goal_verdict(overheads)}.",
        "",
        "Per command, by hand (median): " + ", ".join(f"{n} {fmt(statistics.median(t))}" for n, t in per_command.items()) + ".",
    ]


def item_two(a, common: list[str], route: list[str], env: dict[str, str], engine, work: Path, gpu: bool) -> list[str]:
    """Several effects: copymachine builds the copy machine once; by hand, a user following the memo
    rebuilds it per effect (copy LoRA, merge_lora.py, effect LoRA, resize), whichever route the
    copymachine run took."""
    effects = EFFECTS[: a.effects]
    many = work / "many"
    args = [*sum((["--effect", e] for e in effects), []), "--out", str(many / "run"), "--cache-dir", str(many / "cache"), *common]
    t_cm_many = cm(["train", *args, *route], env)
    commands = engine_commands(many / "run")
    taken = "file" if any(n == "copy-model" for n, _ in commands) else "memory"
    if taken == "memory":  # the run merged the copy model in memory: the memo's merge and trainings on its file
        commands = [(n, argv) for n, argv in commands if n == "copy-lora"] + memo_commands(args, env)
    copy_machine = [(n, argv) for n, argv in commands if not any(of_effect(n, e) for e in effects)]
    t_hand_many = 0.0
    for effect in effects:
        per_effect = copy_machine + [(n, argv) for n, argv in commands if of_effect(n, effect)]
        t_hand_many += sum(replay(per_effect, engine, a.offline).values())
        print(f"   by hand, {effect}: {t_hand_many:.1f} s so far", flush=True)
    print(f"2. {len(effects)} effects: copymachine {t_cm_many:.1f} s, by hand {t_hand_many:.1f} s", flush=True)
    return [
        f"## 2. {len(effects)} effects: by hand, copy machine rebuilt per effect, vs copymachine",
        "",
        f"Measured on {time.strftime('%Y-%m-%d')}, copymachine's copy model {'as a file' if taken == 'file' else 'in memory'} (`--copy-model {taken}`); "
        "the hand-run follows the memo (the copy model a file by merge_lora.py), once each.",
        "",
        "| | wall |",
        "|---|---|",
        f"| by hand, following the memo per effect (copy LoRA, merge, effect LoRA, resize) × {len(effects)} | {fmt(t_hand_many)} |",
        f"| `copymachine train --effect …` ×{len(effects)} (copy machine once{', effects side by side' if gpu else ', effects one after another on the CPU'}) | {fmt(t_cm_many)} |",
        f"| copymachine / by hand | {100 * t_cm_many / t_hand_many:.0f} % (goal on a GPU ≤ 30 %) |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, type=Path)
    ap.add_argument("--image", type=Path, help="the original image (default: a drawn test picture)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="the memo's full recipe at the image's own size (a GPU job): no --resolution, no --max-steps")
    ap.add_argument("--items", default="1,2", help="which items to run, e.g. 1 or 2 (default 1,2); the others' figures stay in the report")
    ap.add_argument("--repeats", type=int, default=3, help="item 1: how many copymachine / hand-run pairs (interleaved)")
    ap.add_argument("--effects", type=int, default=5, help="how many of the five effects item 2 trains")
    ap.add_argument("--copy-model", choices=["memory", "file"], help="copymachine's route (default: copymachine's own default)")
    ap.add_argument("--sd-scripts", type=Path)
    ap.add_argument("--python")
    ap.add_argument("--tokenizer-cache-dir", type=Path)
    ap.add_argument("--offline", action="store_true")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--report", type=Path, default=Path("docs/benchmarks.md"))
    a = ap.parse_args()
    items = {i.strip() for i in a.items.split(",") if i.strip()}
    if not items or items - {"1", "2"} or a.repeats < 1 or not 1 <= a.effects <= len(EFFECTS):
        ap.error(f"--items takes 1 and/or 2, --repeats at least 1, --effects 1 to {len(EFFECTS)}")

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
    route = ["--copy-model", a.copy_model] if a.copy_model else []
    info = machine(engine)
    print(f"machine: {info}", flush=True)

    text = old_report(a.report)
    header = [
        "The machine and settings of the latest `make bench` (`benchmarks/bench_pipeline.py`); each item says when it was measured.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
        ("Settings: the memo's full recipe at the image's own size, " if a.full else f"Settings: `--resolution {a.resolution} --max-steps {a.max_steps}` (every training {a.max_steps} steps at {a.resolution} px), ")
        + f"base model `{a.base.name}`, device {'GPU' if info['gpu'] != 'none' else 'CPU'}, no copy check.",
    ]
    text = splice(text, "machine", "\n".join(header))
    if "1" in items:
        text = splice(text, "item 1", "\n".join(item_one(a, common, route, env, engine, work)))
    if "2" in items:
        text = splice(text, "item 2", "\n".join(item_two(a, common, route, env, engine, work, info["gpu"] != "none")))
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.write_text(text, encoding="utf-8")
    print(f"wrote {a.report}")
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
