"""`copymachine queue --ray` on a real local Ray cluster (ray.cluster_utils.Cluster: a head without
GPUs and two nodes with two logical GPUs each, small object stores) and the recording fake with a
step delay, so that trainings overlap: no two overlapping trainings share a (node, GPU); a node
removed mid-training -> its job retried on the other node, with valid outputs; ray.cancel -> the
job says interrupted and the next run resumes it. Skipped where Ray is not installed."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from PIL import Image

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402
from ray.exceptions import TaskCancelledError  # noqa: E402

from copymachine import jobfile, rayqueue  # noqa: E402
from copymachine.cli import cli  # noqa: E402
from copymachine.lorafile import validate_lora  # noqa: E402

pytestmark = pytest.mark.slow  # not in `make test`; CI runs it (TEST_MARK in .ci/run)

REPO = Path(__file__).resolve().parents[1]
STORE = 80 * 2**20  # the smallest object store Ray accepts is 75 MiB
NODE = "RAY_RAYLET_PID"  # which node a training ran on: the node's raylet started the Ray worker above it


@pytest.fixture(scope="module")
def cluster():
    # the nodes' workers import this checkout's copymachine, as the driver does
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([previous] if previous else []))
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "object_store_memory": STORE, "include_dashboard": False, "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}},
    )
    for _ in range(2):
        c.add_node(num_cpus=1, num_gpus=2, object_store_memory=STORE)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
    yield c
    ray.shutdown()
    c.shutdown()
    if previous is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = previous


@pytest.fixture
def pictures(tmp_path, scene):
    folder = tmp_path / "pictures"
    folder.mkdir()
    small = scene.image.resize((128, 128), Image.Resampling.LANCZOS)
    for name, picture in {"girl": small, "cat": small.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "boy": small.transpose(Image.Transpose.FLIP_TOP_BOTTOM), "dog": small.rotate(180)}.items():
        picture.save(folder / f"{name}.png")
    return folder


def write_jobs(path: Path, fake_engine, jobs: list[dict], steps: int) -> Path:
    data = {"defaults": {"base": str(fake_engine.base), "resolution": 64, "max-steps": steps, "no-copy-check": True, "cache-dir": "cache"}, "job": jobs}
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def engine(fake_engine) -> dict:
    return {"sd_scripts": fake_engine.root, "python": sys.executable, "tokenizer_cache_dir": fake_engine.tokenizers, "offline": True}


def trainings(fake_engine) -> list[dict]:
    return [c for c in fake_engine.calls() if c["script"].endswith("train_network.py")]


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def after_the_copy_lora(evs: list[dict]) -> bool:
    done = [i for i, e in enumerate(evs) if e["event"] == "stage_done" and e["stage"].endswith("copy-lora")]
    return bool(done) and any(e["event"] == "progress" for e in evs[done[0] :])


def test_jobs_spread_over_the_nodes_gpus_and_never_share_one(cluster, fake_engine, tmp_path, pictures, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0.3")
    monkeypatch.chdir(tmp_path)
    names = ["girl", "cat", "boy", "dog"]
    jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"image": f"pictures/{n}.png", "effect": "contrast", "out": f"runs/{n}"} for n in names], steps=6)
    result = CliRunner().invoke(cli, ["queue", str(jobs_file), "--ray", cluster.address, *fake_engine.engine_args, "--events", str(tmp_path / "events.jsonl")])
    assert result.exit_code == 0, result.output
    assert "4 job(s) on 3 node(s), 4 GPU(s)" in result.output and "queue: 4 of 4 job(s) done" in result.output
    for n in names:
        assert validate_lora(tmp_path / f"runs/{n}/{n}-contrast.safetensors").ranks
    calls = trainings(fake_engine)
    assert len(calls) == 8 and all(c["env"].get(NODE) and c["env"].get("CUDA_VISIBLE_DEVICES") in ("0", "1") for c in calls)
    slots = {(c["env"][NODE], c["env"]["CUDA_VISIBLE_DEVICES"]) for c in calls}
    assert len({node for node, _ in slots}) == 2  # both GPU nodes, not the head
    overlapping = 0
    for i, a in enumerate(calls):
        for b in calls[i + 1 :]:
            if a["started"] < b["finished"] and b["started"] < a["finished"]:
                overlapping += 1
                assert (a["env"][NODE], a["env"]["CUDA_VISIBLE_DEVICES"]) != (b["env"][NODE], b["env"]["CUDA_VISIBLE_DEVICES"])
    assert overlapping >= 3  # they ran side by side
    ends = [e for e in events(tmp_path / "events.jsonl") if e["event"] == "job_end"]
    assert sorted(e["job"] for e in ends) == [1, 2, 3, 4] and all(e["status"] == "done" and e["node"] for e in ends)


def test_jobs_sharing_a_copy_lora_start_after_the_job_that_trains_it(cluster, fake_engine, tmp_path, pictures, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0.2")
    monkeypatch.chdir(tmp_path)
    jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"image": "pictures/girl.png", "effect": e, "out": "runs/girl"} for e in ("contrast", "posterize", "flat")], steps=4)
    result = CliRunner().invoke(cli, ["queue", str(jobs_file), "--ray", cluster.address, *fake_engine.engine_args])
    assert result.exit_code == 0, result.output
    assert "2 job(s) share a copy LoRA with an earlier one: they start once it is made" in result.output
    calls = trainings(fake_engine)
    copies = [c for c in calls if c["config"]["output_name"] == "copy-lora"]
    assert len(copies) == 1 and all(c["started"] >= copies[0]["finished"] for c in calls if c is not copies[0])


def test_ray_cancel_interrupts_the_job_and_the_next_run_resumes_it(cluster, fake_engine, tmp_path, pictures, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0.4")
    monkeypatch.chdir(tmp_path)
    jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"image": "pictures/girl.png", "effect": "contrast", "out": "runs/girl"}], steps=8)
    (job,) = jobfile.load_jobs(jobs_file)
    ref = rayqueue.submit(ray, job, jobs_file, engine(fake_engine), tmp_path)
    job_events = tmp_path / "jobs.queue/job-1.events.jsonl"
    wait_for(lambda: after_the_copy_lora(events(job_events)))
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=60)
    wait_for(lambda: events(job_events)[-1]["event"] == "queue_end", timeout=30)
    assert events(job_events)[-1] == {"event": "queue_end", "status": "interrupted", "exit_code": 130}
    assert "(cancelled)" in (tmp_path / "jobs.queue/job-1.task.log").read_text(encoding="utf-8")
    stopped = trainings(fake_engine)[-1]
    assert stopped["config"]["output_name"] == "effect-lora" and not _alive(stopped["pid"])  # sd-scripts stopped
    # the next run: the copy LoRA is kept, the effect LoRA trained again
    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0")
    result = CliRunner().invoke(cli, ["queue", str(jobs_file), "--ray", cluster.address, *fake_engine.engine_args])
    assert result.exit_code == 0, result.output
    assert [c["config"]["output_name"] for c in trainings(fake_engine)] == ["copy-lora", "effect-lora", "effect-lora"]
    assert validate_lora(tmp_path / "runs/girl/girl-contrast.safetensors").ranks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_job_on_a_node_that_dies_is_retried_on_the_other_node(cluster, fake_engine, tmp_path, pictures, monkeypatch):
    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0.4")
    monkeypatch.chdir(tmp_path)
    jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"image": "pictures/cat.png", "effect": "contrast", "out": "runs/cat"}], steps=8)
    (job,) = jobfile.load_jobs(jobs_file)
    ref = rayqueue.submit(ray, job, jobs_file, engine(fake_engine), tmp_path)
    wait_for(lambda: any(e["event"] == "progress" for e in events(tmp_path / "jobs.queue/job-1.events.jsonl")))
    first_node = (tmp_path / "jobs.queue/job-1.task.log").read_text(encoding="utf-8").split()[4]  # "--- DATE TIME node ID"
    raylets = {n.node_id: str(n.all_processes["raylet"][0].process.pid) for n in cluster.worker_nodes}
    (dying,) = [n for n in cluster.worker_nodes if n.node_id == first_node]
    cluster.remove_node(dying, allow_graceful=False)
    try:
        outcome = ray.get(ref, timeout=240)
        assert outcome["exit_code"] == 0 and outcome["node"] != first_node
        assert validate_lora(tmp_path / "runs/cat/cat-contrast.safetensors").ranks
        log = (tmp_path / "jobs.queue/job-1.task.log").read_text(encoding="utf-8")
        assert log.count("--- 20") == 2 and f"node {first_node}" in log and f"node {outcome['node']}" in log  # two attempts
        assert {c["env"][NODE] for c in trainings(fake_engine)} <= {raylets[first_node], raylets[outcome["node"]]}
    finally:
        cluster.add_node(num_cpus=1, num_gpus=2, object_store_memory=STORE)
        cluster.wait_for_nodes()


def test_ctrl_c_of_queue_ray_cancels_its_tasks_and_the_next_run_resumes(cluster, fake_engine, tmp_path, pictures, monkeypatch):
    import signal
    import subprocess

    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0.4")
    jobs_file = write_jobs(tmp_path / "jobs.toml", fake_engine, [{"image": f"pictures/{n}.png", "effect": "contrast", "out": f"runs/{n}"} for n in ("girl", "cat")], steps=8)
    argv = [sys.executable, "-m", "copymachine", "queue", str(jobs_file), "--ray", cluster.address, *fake_engine.engine_args]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    wait_for(lambda: all(after_the_copy_lora(events(tmp_path / f"jobs.queue/job-{i}.events.jsonl")) for i in (1, 2)))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "stopping 2 running job(s)" in err and "interrupted: run the queue again to resume" in err
    assert err.strip().splitlines()[-1].startswith("copymachine: interrupted;")
    for i in (1, 2):
        assert events(tmp_path / f"jobs.queue/job-{i}.events.jsonl")[-1] == {"event": "queue_end", "status": "interrupted", "exit_code": 130}
    monkeypatch.setenv("COPYMACHINE_FAKE_STEP_SECONDS", "0")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["queue", str(jobs_file), "--ray", cluster.address, *fake_engine.engine_args])
    assert result.exit_code == 0, result.output
    names = [c["config"]["output_name"] for c in trainings(fake_engine)]
    assert names.count("copy-lora") == 2 and names.count("effect-lora") == 4  # the copy LoRAs kept
