"""`copymachine queue JOBS.toml` against the recording fake of sd-scripts: several jobs in order,
a bad job reported while the others run, --jobs 2 (one GPU each), a killed queue resumed, and
the commented example jobs file in docs/ loaded as the documentation says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from PIL import Image

from copymachine import jobfile
from copymachine.cli import cli
from copymachine.errors import EXIT_INPUT, EXIT_INTERRUPTED
from copymachine.lorafile import validate_lora

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "jobs.example.toml"


@pytest.fixture
def pictures(tmp_path, scene):
    folder = tmp_path / "pictures"
    folder.mkdir()
    small = scene.image.resize((128, 128), Image.Resampling.LANCZOS)
    small.save(folder / "girl.png")
    small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "cat.png")
    return folder


def write_jobs(path: Path, fake_engine, jobs: list[dict], **defaults) -> Path:
    data = {
        "defaults": {"base": str(fake_engine.base), "resolution": 64, "max-steps": 3, "no-copy-check": True, "cache-dir": "cache", **defaults},
        "job": jobs,
    }
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def queue_args(fake_engine, jobs_file: Path, *extra: str) -> list[str]:
    return ["queue", str(jobs_file), *fake_engine.engine_args, *extra]


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def trainings(fake_engine) -> list[dict]:
    return [c for c in fake_engine.calls() if c["script"].endswith("train_network.py")]


def test_the_example_jobs_file_loads_as_documented():
    jobs = jobfile.load_jobs(EXAMPLE)
    assert [j.command for j in jobs] == ["train", "train", "train", "diff"]
    first, second, custom, diff = (j.options for j in jobs)
    folder = EXAMPLE.parent
    assert first.base == folder / "models/sd15.safetensors" and first.resolution == 512  # [defaults], relative to the file
    assert first.images == (folder / "pictures/girl.png",) and first.effects == ("outline",)
    assert first.set_tables == {"outline": {"width": 2}, "copy": {"network_dim": 64}}
    assert second.effects == ("flat", "contrast") and second.amount == 0.8
    assert second.set_tables == {"effect.flat": {"epochs": 8}}
    assert custom.edited == (folder / "pictures/girl-inked.png",) and custom.edit_in_place is True and custom.name == "girl-inked"
    assert diff.sets == ("svd.rank=8",) and len(diff.images) == 2 and jobs[3].options.sign == "edit"
    assert diff.preview_model == folder / "models/other-sd15.safetensors"
    # every key of the example is an option of its command, or method / set
    assert [j.label for j in jobs] == ["girl-outline", "girl-flat+contrast", "girl-inked", "girl-posterize"]


@pytest.mark.parametrize(
    "job, message",
    [
        ({"image": "x.png", "effect": "outline", "resolutoin": 64}, "job 1: unknown key 'resolutoin'; valid keys: method, set, effect, base, image"),
        ({"image": "x.png", "effect": "outline", "resolution": 32}, "job 1: resolution: 32 is not in the range 64<=x<=4096."),
        ({"image": "x.png", "effect": "outline", "sign": "memo"}, "job 1: unknown key 'sign' (an option of diff, not of train)"),
        ({"image": "x.png", "method": "lora", "effect": "outline"}, "job 1: method must be train or diff, not 'lora'"),
        ({"image": "x.png", "effect": "outline", "force": "maybe"}, "job 1: force: must be true or false, not 'maybe'"),
        ({"image": "x.png", "effect": "outline", "set": {"width": 2}}, "job 1: set.width = … names no section"),
    ],
    ids=["unknown key", "out of range", "other method's option", "bad method", "flag not a bool", "set without section"],
)
def test_a_bad_jobs_file_is_refused_before_any_work(fake_engine, tmp_path, job, message):
    jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"effect": "contrast", "image": "x.png"}, job])
    result = invoke(queue_args(fake_engine, jobs_file))
    assert result.exit_code == EXIT_INPUT, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("copymachine: error: ") and message.replace("job 1", "job 2") in line, line
    assert fake_engine.calls() == []


def test_jobs_run_in_order_and_a_bad_job_is_reported_while_the_others_run(fake_engine, tmp_path, pictures):
    jobs_file = write_jobs(
        tmp_path / "jobs.toml",
        fake_engine,
        [
            {"image": "pictures/girl.png", "effect": "contrast", "out": "runs/girl"},
            {"image": "pictures/missing.png", "effect": "outline", "out": "runs/missing"},
            {"method": "diff", "image": "pictures/cat.png", "effect": "posterize", "out": "runs/cat", "set": {"svd": {"rank": 4}}},
            {"image": "pictures/girl.png", "effect": "outline", "out": "runs/girl", "set": {"outline": {"width": 2}}},
        ],
    )
    events = tmp_path / "events.jsonl"
    result = invoke(queue_args(fake_engine, jobs_file, "--events", str(events)))
    assert result.exit_code == EXIT_INPUT, result.output  # the first failed job's code
    out = result.output
    assert "job missing-outline failed: image not found: " in out
    finals = [tmp_path / "runs/girl/girl-contrast.safetensors", tmp_path / "runs/cat/cat-posterize.safetensors", tmp_path / "runs/girl/girl-outline.safetensors"]
    assert all(p.is_file() for p in finals)
    assert validate_lora(finals[1]).ranks == [4]  # the job's set table reached the recipe
    assert result.stdout.strip().splitlines()[-3:] == [str(p) for p in finals]
    summary = out[out.index("summary:") :]
    assert f"girl-outline     done: {finals[2]}" in summary and "missing-outline  failed (exit 3): image not found" in summary
    assert "queue: 3 of 4 job(s) done" in out
    # the copy machine of girl.png was trained once, shared by jobs 1 and 4 (cache-dir in [defaults])
    assert [c["config"]["output_name"] for c in fake_engine.calls() if "config" in c].count("copy-lora") == 1  # girl.png (job 2 is a diff: LoRA A)
    # the machine-readable events name each job, its stages and its progress
    lines = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    ends = [e for e in lines if e["event"] == "job_end"]
    assert [(e["job"], e["status"]) for e in ends] == [(1, "done"), (2, "failed"), (3, "done"), (4, "done")]
    assert ends[1]["message"].startswith("image not found: ")
    assert any(e["event"] == "progress" and e["job"] == 1 and e["step"] == 3 for e in lines)
    assert any(e["event"] == "stage_start" and e["job"] == 3 and "LoRA B" in e["description"] for e in lines)
    assert lines[-1] == {"event": "queue_end", "status": "failed", "exit_code": 3}

    # the same command again: the good jobs skip every stage, nothing is trained
    before = len(fake_engine.calls())
    result = invoke(queue_args(fake_engine, jobs_file))
    assert result.exit_code == EXIT_INPUT
    assert len(fake_engine.calls()) == before
    assert "queue: 3 of 4 job(s) done" in result.output


def test_two_jobs_side_by_side_each_on_its_own_gpu(fake_engine, tmp_path, pictures, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_CUDA", "2")
    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0.3")
    jobs_file = write_jobs(
        tmp_path / "jobs.toml",
        fake_engine,
        [{"image": "pictures/girl.png", "effect": "contrast", "out": "runs/girl"}, {"image": "pictures/cat.png", "effect": "contrast", "out": "runs/cat"}],
    )
    result = invoke(queue_args(fake_engine, jobs_file, "--jobs", "2"))
    assert result.exit_code == 0, result.output
    assert "2 jobs side by side, each on its own GPU (2 GPUs)" in result.output
    assert "[girl-contrast] " in result.output and "[cat-contrast] " in result.output  # lines name their job
    calls = trainings(fake_engine)
    by_gpu = {}
    for c in calls:
        by_gpu.setdefault(c["env"].get("CUDA_VISIBLE_DEVICES"), set()).add(Path(c["dataset_config"]["datasets"][0]["subsets"][0]["image_dir"]).parts[-4])
    assert set(by_gpu) == {"0", "1"}
    first_copy = [c for c in calls if c["config"]["output_name"] == "copy-lora"]
    assert len(first_copy) == 2
    a, b = first_copy
    assert a["started"] < b["finished"] and b["started"] < a["finished"]  # they overlapped


def test_cpu_queue_stays_sequential(fake_engine, tmp_path, pictures):
    jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"image": "pictures/girl.png", "effect": "contrast", "out": "runs/girl"}])
    result = invoke(queue_args(fake_engine, jobs_file, "--jobs", "2"))
    assert result.exit_code == 0, result.output
    assert "warning: --jobs: CPU runs stay sequential" in result.output


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


@pytest.mark.slow
def test_a_killed_queue_resumes_where_it_stopped(fake_engine, tmp_path, pictures):
    jobs_file = write_jobs(
        tmp_path / "jobs.toml",
        fake_engine,
        [
            {"image": "pictures/girl.png", "effect": "contrast", "out": "runs/girl"},
            {"image": "pictures/cat.png", "effect": "contrast", "out": "runs/cat"},
            {"image": "pictures/girl.png", "effect": "posterize", "out": "runs/girl"},
        ],
    )
    events = tmp_path / "events.jsonl"
    argv = [sys.executable, "-m", "copymachine", *queue_args(fake_engine, jobs_file, "--events", str(events))]
    env = dict(os.environ, COPYMACHINE_FAKE_STEP_SECONDS="0.4")
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any(e["event"] == "progress" and e.get("job") == 2 for e in _events(events)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)  # the queue and its sd-scripts, as a power cut would
    proc.wait(timeout=10)
    proc.stderr.close()
    done_before = [e["job"] for e in _events(events) if e["event"] == "job_end"]
    assert done_before == [1]
    calls_before = len(fake_engine.calls())

    env["COPYMACHINE_FAKE_STEP_SECONDS"] = "0"
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr
    again = [c for c in fake_engine.calls()[calls_before:] if c.get("exit_code") == 0]
    # job 1 ran nothing again; job 2 resumed in its copy LoRA (killed there): copy LoRA, effect
    # LoRA (the copy model in memory), resize; job 3 found girl.png's copy LoRA done: effect LoRA, resize
    assert [(Path(c["script"]).name, c["config"]["output_name"] if "config" in c else "") for c in again] == [
        ("train_network.py", "copy-lora"), ("train_network.py", "effect-lora"), ("resize_lora.py", ""),
        ("train_network.py", "effect-lora"), ("resize_lora.py", ""),
    ]  # fmt: skip
    job1 = result.stderr[result.stderr.index("job 1/3") : result.stderr.index("job 2/3")]
    assert job1.count("up to date, skipped") == 7 and "done in" not in job1  # no copy-model stage in memory
    for path in ("runs/girl/girl-contrast.safetensors", "runs/cat/cat-contrast.safetensors", "runs/girl/girl-posterize.safetensors"):
        assert (tmp_path / path).is_file()
    assert "queue: 3 of 3 job(s) done" in result.stderr


def test_ctrl_c_stops_the_queue_and_says_how_to_resume(fake_engine, tmp_path, pictures):
    jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"image": "pictures/girl.png", "effect": "contrast", "out": "runs/girl"}, {"image": "pictures/cat.png", "effect": "contrast", "out": "runs/cat"}])
    events = tmp_path / "events.jsonl"
    argv = [sys.executable, "-m", "copymachine", *queue_args(fake_engine, jobs_file, "--events", str(events))]
    env = dict(os.environ, COPYMACHINE_FAKE_STEP_SECONDS="2")
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(e["event"] == "progress" for e in _events(events)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert err.strip().splitlines()[-1].startswith("copymachine: interrupted; sd-scripts was stopped")
    assert _events(events)[-1] == {"event": "queue_end", "status": "interrupted", "exit_code": 130}


def test_ctrl_c_on_a_parallel_queue_reports_both_jobs_interrupted_and_the_next_run_resumes(fake_engine, tmp_path, pictures):
    jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"image": "pictures/girl.png", "effect": "contrast", "out": "runs/girl"}, {"image": "pictures/cat.png", "effect": "contrast", "out": "runs/cat"}])
    events = tmp_path / "events.jsonl"
    argv = [sys.executable, "-m", "copymachine", *queue_args(fake_engine, jobs_file, "--jobs", "2", "--events", str(events))]
    env = dict(os.environ, COPYMACHINE_FAKE_CUDA="2", COPYMACHINE_FAKE_STEP_SECONDS="2")
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and {e.get("job") for e in _events(events) if e["event"] == "progress"} != {1, 2}:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    ends = {e["job"]: e["status"] for e in _events(events) if e["event"] == "job_end"}
    assert ends == {1: "interrupted", 2: "interrupted"}, err
    assert "failed" not in err
    env["COPYMACHINE_FAKE_STEP_SECONDS"] = "0"
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "queue: 2 of 2 job(s) done" in result.stderr
    for path in ("runs/girl/girl-contrast.safetensors", "runs/cat/cat-contrast.safetensors"):
        assert (tmp_path / path).is_file()


def test_only_runs_the_nth_job_with_its_events_and_log_in_the_queue_folder(fake_engine, tmp_path, pictures):
    jobs_file = write_jobs(
        tmp_path / "jobs.toml",
        fake_engine,
        [
            {"image": "pictures/girl.png", "effect": "contrast", "out": "runs/girl"},
            {"image": "pictures/cat.png", "effect": "contrast", "out": "runs/cat"},
            {"image": "pictures/missing.png", "effect": "contrast", "out": "runs/missing"},
        ],
    )
    result = invoke(queue_args(fake_engine, jobs_file, "--only", "2"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs/cat/cat-contrast.safetensors").is_file() and not (tmp_path / "runs/girl").exists()
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "runs/cat/cat-contrast.safetensors")
    folder = tmp_path / "jobs.queue"
    events = [json.loads(line) for line in (folder / "job-2.events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["job"] for e in events if e["event"] == "job_end"] == [2] and events[-1]["status"] == "done"
    log = (folder / "job-2.log").read_text(encoding="utf-8")
    assert "job 2/3: cat-contrast (train)" in log and "queue: 1 of 1 job(s) done" in log
    # the job's own exit code; a number beyond the file is refused before any work
    calls = len(fake_engine.calls())
    result = invoke(queue_args(fake_engine, jobs_file, "--only", "3"))
    assert result.exit_code == EXIT_INPUT and "image not found" in (folder / "job-3.log").read_text(encoding="utf-8")
    result = invoke(queue_args(fake_engine, jobs_file, "--only", "4"))
    assert result.exit_code == EXIT_INPUT and result.output.strip().endswith(f"--only 4: {jobs_file} has 3 job(s) (1 to 3)")
    assert len(fake_engine.calls()) == calls
