"""`make bench` (benchmarks/bench_pipeline.py) end to end on the recording fake of sd-scripts, on
both copy-model routes, so the script cannot break silently again (issue 26: item 2 crashed with
KeyError 'copy-model' on the default in-memory route). The timings of a fake mean nothing; what is
checked is what each column runs and what the report says."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # not in `make test`; CI runs it (TEST_MARK in .ci/run)

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "bench_pipeline.py"


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


def config_of(call: dict) -> str:
    return Path(call["argv"][call["argv"].index("--config_file") + 1]).read_text(encoding="utf-8")


@pytest.mark.parametrize("route", ["memory", "file"])
def test_bench_runs_both_items_on_either_route(fake_engine, tmp_path, route):
    report = tmp_path / "docs" / "benchmarks.md"
    report.parent.mkdir()
    report.write_text("# Benchmarks\n\nold items\n\n<!-- gpu -->\n## 3. GPU\n\nkept as it is\n", encoding="utf-8")
    work = tmp_path / "work"
    argv = [sys.executable, str(SCRIPT), "--base", str(fake_engine.base), *fake_engine.engine_args, "--copy-model", route, "--repeats", "2", "--effects", "2", "--work", str(work), "--report", str(report)]

    done = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text(encoding="utf-8")
    assert "old items" not in text and "kept as it is" in text
    assert f"copy model {'in memory' if route == 'memory' else 'as a file'} (`--copy-model {route}`), 2 pairs interleaved" in text
    assert "| overhead per pair (copymachine − hand) / hand |" in text and "Goal ≤ 2 %: " in text
    assert "## 2. 2 effects" in text and "| copymachine / by hand |" in text

    # item 2's hand-run is the memo's per effect: copy LoRA, merge_lora.py, effect LoRA on that file, resize
    log = calls(fake_engine.log)
    hand = [c for c in log if str(work / "many") in json.dumps(c)]
    many_run = work / "many" / "run"
    assert len([c for c in hand if c["script"] == "networks/resize_lora.py"]) == 2 + 2  # copymachine, by hand
    merges = [c for c in hand if c["script"] == "networks/merge_lora.py"]
    assert len(merges) == (2 if route == "memory" else 3)  # the file route's copymachine run merged once itself
    trainings = [c for c in hand if c["script"] == "train_network.py"]
    copy_loras = [c for c in trainings if "copy-lora-training" in c["argv"][-1]]
    assert len(copy_loras) == 1 + 2  # copymachine once, by hand once per effect
    effect_loras = [c for c in trainings if "effect-lora-training" in c["argv"][-1]]
    assert len(effect_loras) == 2 + 2
    by_hand = effect_loras[2:]
    for call in by_hand:  # trained on the copy model's file, no copy LoRA merged on the fly
        config = config_of(call)
        assert "copy-model.safetensors" in config and "base_weights" not in config
        assert not any("base_weights_launcher" in a for a in call["launcher"]["argv"])
    assert {Path(c["argv"][-1]).parent.parent.name for c in by_hand} == {"outline", "flat"}
    assert (many_run / "outline" / "effect-lora.safetensors").is_file()

    # item 1 replays the run's own commands: in memory, the effect LoRA through the base-weights launcher
    one = [c for c in log if str(work / "one") in json.dumps(c)]
    one_effect = [c for c in one if c["script"] == "train_network.py" and "effect-lora-training" in c["argv"][-1]]
    assert len(one_effect) == 2 + 2  # 2 copymachine runs, 2 hand-runs (the re-run is up to date)
    assert all(("base_weights" in config_of(c)) == (route == "memory") for c in one_effect)
    assert len([c for c in one if c["script"] == "networks/merge_lora.py"]) == (0 if route == "memory" else 4)


def test_bench_items_run_separately_and_keep_the_others(fake_engine, tmp_path):
    report = tmp_path / "benchmarks.md"
    base = [sys.executable, str(SCRIPT), "--base", str(fake_engine.base), *fake_engine.engine_args, "--report", str(report)]
    for extra in (["--items", "2", "--effects", "1"], ["--items", "1", "--repeats", "1"]):
        done = subprocess.run([*base, *extra, "--work", str(tmp_path / f"work{extra[1]}")], capture_output=True, text=True, encoding="utf-8", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text(encoding="utf-8")
    assert text.count("<!-- item 1 -->") == text.count("<!-- item 2 -->") == 1
    assert "## 2. 1 effects" in text and "1 pairs interleaved" in text and "No GPU figures yet." in text
    note = "A note written by hand.\n"
    report.write_text(text.replace("<!-- /item 1 -->\n", "<!-- /item 1 -->\n" + note), encoding="utf-8")
    done = subprocess.run([*base, "--items", "1", "--repeats", "1", "--work", str(tmp_path / "again")], capture_output=True, text=True, encoding="utf-8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    again = report.read_text(encoding="utf-8")
    assert note in again and "## 2. 1 effects" in again and again.count("<!-- item 1 -->") == 1
