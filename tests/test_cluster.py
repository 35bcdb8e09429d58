"""Whole jobs on an engine: the Slurm array script of `copymachine queue --slurm-script` (checked,
and its task line run as Slurm would run it: SLURM_ARRAY_TASK_ID set, SIGTERM to stop), the copy
machine first (two arrays when jobs share a copy LoRA) and the per-host hash cache."""

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

from copymachine import cluster, jobfile
from copymachine.cli import cli
from copymachine.errors import EXIT_INPUT, EXIT_INTERRUPTED, InputError
from copymachine.files import HashCache, host_name
from copymachine.lorafile import validate_lora
from copymachine.progress import Reporter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path, scene):
    """A jobs folder whose path has a space, a quote and Japanese (a shared filesystem's)."""
    root = tmp_path / "lab share's 写真"
    (root / "pictures").mkdir(parents=True)
    small = scene.image.resize((128, 128), Image.Resampling.LANCZOS)
    small.save(root / "pictures/girl.png")
    small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "pictures/cat.png")
    return root


def write_jobs(path: Path, fake_engine, jobs: list[dict]) -> Path:
    data = {"defaults": {"base": str(fake_engine.base), "resolution": 64, "max-steps": 3, "no-copy-check": True, "cache-dir": "cache"}, "job": jobs}
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


JOBS = [
    {"image": "pictures/girl.png", "effect": "contrast", "out": "runs/girl"},
    {"image": "pictures/cat.png", "effect": "contrast", "out": "runs/cat"},
    {"image": "pictures/girl.png", "effect": "posterize", "out": "runs/girl"},  # girl's copy LoRA again
    {"image": "pictures/cat.png", "effect": "flat", "out": "runs/cat"},  # cat's again
]


def test_array_spec():
    assert cluster.array_spec([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"
    assert cluster.array_spec([4]) == "4" and cluster.array_spec([]) == ""


def test_the_copy_machine_first_one_job_per_copy_lora(fake_engine, folder):
    jobs = jobfile.load_jobs(write_jobs(folder / "jobs.toml", fake_engine, JOBS), {"sd-scripts": fake_engine.root, "python": sys.executable, "tokenizer-cache-dir": fake_engine.tokenizers, "offline": True})
    split = cluster.waves(jobs, Reporter(live=False))
    assert [j.index for j in split.first] == [1, 2] and [j.index for j in split.rest] == [3, 4]
    assert split.after == {3: {1}, 4: {2}} and split.copies == {1: 1, 2: 1} and split.same_folder == {3: 1, 4: 2}
    assert fake_engine.calls() == [] or all("--help" in " ".join(c.get("argv", [])) for c in fake_engine.calls())  # planned, nothing trained


def test_slurm_script_for_the_example_jobs_file(fake_engine, tmp_path, scene):
    """docs/jobs.example.toml, with the models and pictures it names: the script and the two
    arrays (jobs 2 and 3 share job 1's copy LoRA of girl.png: the memo's dim 64 is job 1's too)."""
    root = tmp_path / "example"
    (root / "pictures").mkdir(parents=True)
    (root / "models").mkdir()
    example = root / "jobs.example.toml"
    example.write_text((REPO / "docs/jobs.example.toml").read_text(encoding="utf-8"), encoding="utf-8")
    picture = scene.image.resize((512, 512))
    picture.save(root / "pictures/girl.png")
    picture.save(root / "pictures/girl-inked.png")
    picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "pictures/cat.png")
    fake_engine.make_checkpoint(root / "models/sd15.safetensors", family="sd15", seed=0)
    fake_engine.make_checkpoint(root / "models/other-sd15.safetensors", family="sd15", seed=1)
    script = tmp_path / "jobs.sbatch"
    args = ["queue", str(example), "--slurm-script", str(script), "--jobs", "2", "--sbatch", "--partition=gpu", "--sbatch", "--time=04:00:00", *fake_engine.engine_args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = script.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash" and os.access(script, os.X_OK)
    for directive in ["--array=1-4%2", "--gres=gpu:1", "--requeue", "--open-mode=append", "--partition=gpu", "--time=04:00:00", f"--output={root / 'jobs.example.queue'}/slurm-%A_%a.out"]:
        assert f"#SBATCH {directive}" in lines, directive
    engine = f"--sd-scripts {fake_engine.root} --python {sys.executable} --tokenizer-cache-dir {fake_engine.tokenizers.resolve()} --offline"
    assert lines[-1] == f'exec {sys.executable} -m copymachine queue {example} --only "$SLURM_ARRAY_TASK_ID" {engine}'
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert result.stdout.strip().splitlines() == [
        f"first=$(sbatch --parsable --array=1,4%2 {script})",
        f'sbatch --array=2-3%2 --dependency=afterok:"${{first%%;*}}" --kill-on-invalid-dep=yes {script}',
    ]
    assert cluster.STOP_S < cluster.SLURM_KILL_WAIT_S  # a scancel'led job stops its sd-scripts before SIGKILL


def test_a_job_to_fix_is_refused_before_a_script_is_written(fake_engine, folder):
    jobs_file = write_jobs(folder / "jobs.toml", fake_engine, [*JOBS[:1], {"image": "pictures/gone.png", "effect": "flat"}])
    result = CliRunner().invoke(cli, ["queue", str(jobs_file), "--slurm-script", str(folder / "x.sbatch"), *fake_engine.engine_args])
    assert result.exit_code == EXIT_INPUT and result.output.strip().endswith(f"job 2 (gone-flat): image not found: {folder / 'pictures/gone.png'}")
    assert not (folder / "x.sbatch").exists()


def test_a_host_that_cannot_plan_writes_one_array(fake_engine, folder, tmp_path):
    jobs_file = write_jobs(folder / "jobs.toml", fake_engine, JOBS)
    script = folder / "jobs.sbatch"
    result = CliRunner().invoke(cli, ["queue", str(jobs_file), "--slurm-script", str(script), "--sd-scripts", str(tmp_path / "no-sd-scripts")])
    assert result.exit_code == 0, result.output
    assert "cannot plan the jobs on this host" in result.output and result.stdout.strip().startswith("sbatch ")


def test_slurm_two_arrays_and_a_task_run_as_slurm_runs_it(fake_engine, folder, tmp_path):
    jobs_file = write_jobs(folder / "jobs.toml", fake_engine, JOBS)
    script = folder / "jobs.sbatch"
    result = CliRunner().invoke(cli, ["queue", str(jobs_file), "--slurm-script", str(script), *fake_engine.engine_args])
    assert result.exit_code == 0, result.output
    assert "2 job(s) share a copy LoRA with an earlier one: two arrays, jobs 3-4 after 1-2" in result.output
    quoted = "'" + str(script).replace("'", "'\"'\"'") + "'"
    assert result.stdout.strip().splitlines() == [
        f"first=$(sbatch --parsable --array=1-2 {quoted})",
        f'sbatch --array=3-4 --dependency=afterok:"${{first%%;*}}" --kill-on-invalid-dep=yes {quoted}',
    ]
    text = script.read_text(encoding="utf-8")
    assert "#SBATCH --array=1-4\n" in text and f'#SBATCH --chdir="{Path.cwd()}"' not in text  # no spaces here: unquoted
    assert f"--python {sys.executable}" in text and "--offline" in text
    # the task as Slurm starts it: the script run by bash with SLURM_ARRAY_TASK_ID set, in --chdir
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="2", SLURM_JOB_ID="77", COPYMACHINE_FAKE_STEP_SECONDS="0")
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr
    final = folder / "runs/cat/cat-contrast.safetensors"
    assert validate_lora(final).ranks and not (folder / "runs/girl").exists()
    assert "job 2/4: cat-contrast (train)" in (folder / "jobs.queue/job-2.log").read_text(encoding="utf-8")


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def _training_after_the_copy_lora(events: list[dict]) -> bool:
    done = [i for i, e in enumerate(events) if e["event"] == "stage_done" and e["stage"].endswith("copy-lora")]
    return bool(done) and any(e["event"] == "progress" for e in events[done[0] :])


def test_scancel_sigterm_stops_the_task_as_ctrl_c_and_a_requeued_task_resumes(fake_engine, folder):
    jobs_file = write_jobs(folder / "jobs.toml", fake_engine, JOBS[:1])
    script = folder / "jobs.sbatch"
    assert CliRunner().invoke(cli, ["queue", str(jobs_file), "--slurm-script", str(script), *fake_engine.engine_args]).exit_code == 0
    events = folder / "jobs.queue/job-1.events.jsonl"
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="1", COPYMACHINE_FAKE_STEP_SECONDS="0.5")
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _training_after_the_copy_lora(_events(events)):
        time.sleep(0.05)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # scancel, a preemption: to the task's process (bash exec'ed copymachine)
    _, err = proc.communicate(timeout=cluster.SLURM_KILL_WAIT_S)
    assert time.monotonic() - t0 < cluster.SLURM_KILL_WAIT_S
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert _events(events)[-1] == {"event": "queue_end", "status": "interrupted", "exit_code": 130}
    assert err.strip().splitlines()[-1].startswith("copymachine: interrupted; sd-scripts was stopped")
    # requeued: the same task again finishes, the stages that were done are skipped
    env["COPYMACHINE_FAKE_STEP_SECONDS"] = "0"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr
    assert (folder / "runs/girl/girl-contrast.safetensors").is_file()
    names = [c["config"]["output_name"] for c in fake_engine.calls() if c["script"].endswith("train_network.py")]
    assert names.count("copy-lora") == 1 and len(names) == 3  # the effect LoRA twice: stopped, then again


def test_slurm_options_that_do_not_go_together(fake_engine, folder):
    jobs_file = write_jobs(folder / "jobs.toml", fake_engine, JOBS[:1])
    result = CliRunner().invoke(cli, ["queue", str(jobs_file), "--slurm-script", "x.sbatch", "--only", "1"])
    assert result.exit_code == EXIT_INPUT and "give one of them" in result.output
    result = CliRunner().invoke(cli, ["queue", str(jobs_file), "--sbatch", "--partition=gpu"])
    assert result.exit_code == EXIT_INPUT and "give --slurm-script too" in result.output


def test_each_host_keeps_its_own_hash_cache(tmp_path, monkeypatch):
    picture = tmp_path / "a.bin"
    picture.write_bytes(b"x" * 100)
    legacy = HashCache(tmp_path / "hashes.json")
    digest = legacy.sha256(picture)
    legacy.save()
    here = host_name()
    mine = HashCache.for_host(tmp_path)
    assert mine.path == tmp_path / f"hashes.{here}.json" and mine.sha256(picture) == digest  # seeded from hashes.json
    monkeypatch.setattr("socket.gethostname", lambda: "node 2/b")
    other = HashCache.for_host(tmp_path)
    assert other.path.name == "hashes.node_2_b.json"
    other.remember(picture, digest)
    other.save()
    mine.remember(picture, digest)
    mine.save()
    assert {p.name for p in tmp_path.glob("hashes.*.json")} == {f"hashes.{here}.json", "hashes.node_2_b.json"}


def test_without_ray_installed_the_option_says_how_to_install_it(fake_engine, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"image": "x.png", "effect": "contrast"}])
    result = CliRunner().invoke(cli, ["queue", str(jobs_file), "--ray"])
    assert result.exit_code == 4 and "--ray needs Ray, on this machine and on every node: pip install 'copymachine[ray]'" in result.output


def test_the_ui_hands_ray_to_every_job():
    from copymachine.cli.ui import queue_options

    engine = {"sd_scripts": Path("/sd"), "python": None, "tokenizer_cache_dir": None, "device": "auto", "offline": True, "verbose": False}
    assert queue_options(engine, "auto") == (["--sd-scripts", "/sd", "--offline", "--ray", "auto"], {"sd-scripts": Path("/sd"), "offline": True})
    assert queue_options(engine)[0] == ["--sd-scripts", "/sd", "--offline"]


def test_the_gpus_key_asks_an_engine_for_more_gpus(fake_engine, tmp_path):
    jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"image": "x.png", "effect": "contrast", "gpus": 2}, {"image": "y.png", "effect": "flat"}])
    assert [j.gpus for j in jobfile.load_jobs(jobs_file)] == [2, 1]
    for bad in (0, 1.5, True, "2"):
        jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"image": "x.png", "effect": "contrast", "gpus": bad}])
        with pytest.raises(InputError, match="gpus must be a whole number from 1"):
            jobfile.load_jobs(jobs_file)
