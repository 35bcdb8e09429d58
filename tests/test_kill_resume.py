"""Kill and resume, measured: `copymachine train` and `diff` SIGKILLed at random moments (during
training, during the merge, during a file write, elsewhere) against the recording fake of
sd-scripts, and re-run with the same command each time (tests/killharness.py says what is
checked after every attempt). sd-scripts is also made to die in the middle of writing its output.

`train` and `diff` are soaked side by side (two harnesses, two threads), each in fresh run and
cache folders per round. COPYMACHINE_KILL_SEED=N picks the random moments (default: a fixed seed,
printed); COPYMACHINE_KILLS=N asks for more kills (default 22).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from killharness import PHASES, KillHarness, Report, Scenario
from PIL import Image, ImageEnhance

SEED = int(os.environ.get("COPYMACHINE_KILL_SEED") or 20260207)
KILLS = int(os.environ.get("COPYMACHINE_KILLS") or 22)
STEP_SECONDS = 0.08  # 3 steps per training: ~0.25 s of training to land in
WRITE_SECONDS = 0.15  # every sd-scripts output written in 10 pieces over this long
TARGETS = {"train": ("training", "merge", "write", "other", "any"), "diff": ("training", "write", "other", "any")}
CRASHES = {"train": ("train_network", "merge_lora"), "diff": ("svd_merge_lora",)}
# The first attempts of each method aim at every phase: for train, start-up and the copy LoRA's
# training and write first, then the merge (three times), then the effect LoRA's training and
# the writes that come after the merge.
COVER = {
    "train": [["other", "training", "write"], ["merge", "merge", "merge"], ["training", "write"]],
    "diff": [["other", "other", "training", "training", "write", "write"]],
}


def soak_method(method: str, harness: KillHarness, tmp_path, fake_engine, original, edited, kills: int) -> None:
    round_no = 0
    while harness.report.total_kills < kills:
        assert round_no < 8, harness.report.summary()
        run_dir, cache_dir = tmp_path / f"{method} run {round_no}", tmp_path / f"{method} cache {round_no}"
        argv = [
            method,
            "--effect", "custom",
            "--base", str(fake_engine.base),
            "--image", str(original),
            "--edited", str(edited),
            "--out", str(run_dir),
            "--cache-dir", str(cache_dir),
            "--resolution", "64",
            "--max-steps", "3",
            "--no-copy-check",
            # train runs the memo's file route, so that kills also land in merge_lora.py; the
            # memory route's trainings are killed like any other training (same launcher process)
            *(["--copy-model", "file"] if method == "train" else []),
            *fake_engine.engine_args,
        ]  # fmt: skip
        crash = CRASHES[method] if round_no == 1 else ()  # round 0 aims at every phase first (harness.cover)
        scenario = Scenario(method, argv, run_dir, cache_dir, TARGETS[method], crash, str(run_dir / f"{run_dir.name}-custom.safetensors"))
        harness.soak(scenario, max_kills=min(8, kills - harness.report.total_kills))
        round_no += 1


@pytest.mark.slow
def test_kill_and_resume_train_and_diff(fake_engine, scene, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    original = images / "original.png"
    scene.image.resize((128, 128), Image.Resampling.LANCZOS).save(original)
    edited = images / "edited.png"
    ImageEnhance.Contrast(Image.open(original)).enhance(1.6).save(edited)
    env = dict(os.environ, COPYMACHINE_FAKE_STEP_SECONDS=str(STEP_SECONDS), COPYMACHINE_FAKE_WRITE_SECONDS=str(WRITE_SECONDS), PYTHONUNBUFFERED="1")
    env.pop("COPYMACHINE_FAKE_FAIL", None)
    # a kill aimed at "other" waits at most 0.25 s once start-up is seen: start-up takes ~0.3 s on
    # a fast machine, and a longer wait lands the kill in the copy LoRA's training instead
    windows = {"training": 3 * STEP_SECONDS * 0.8, "merge": 0.05, "write": WRITE_SECONDS * 0.6, "other": 0.25, "any": 3.0}
    print(f"kill harness seed {SEED} (COPYMACHINE_KILL_SEED to change)", file=sys.stderr)
    harnesses = {m: KillHarness(env=env, cwd=tmp_path, seed=SEED + i, windows=windows, timeout_s=60) for i, m in enumerate(("train", "diff"))}
    quota = {"train": (KILLS + 1) // 2, "diff": KILLS // 2}
    for method, harness in harnesses.items():
        harness.cover(COVER[method])
    errors: list[BaseException] = []

    def work(method: str) -> None:
        try:
            soak_method(method, harnesses[method], tmp_path, fake_engine, original, edited, quota[method])
        except BaseException as e:
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=(m,)) for m in harnesses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = Report(seed=SEED)
    for h in harnesses.values():
        report.add(h.report)
    report.wall_s = time.monotonic() - t0
    print(report.summary(), file=sys.stderr)
    for event in report.events:
        print("  " + event, file=sys.stderr)
    if errors:
        raise errors[0]
    assert report.total_kills >= 20
    for phase in PHASES:
        assert report.kills[phase] >= 2, f"too few kills landed in {phase}: {report.summary()}"
    assert report.crashes >= 2, report.summary()
    assert report.orphans_ended >= 1, report.summary()
