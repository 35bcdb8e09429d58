"""docs/benchmarks.md item 5: 8 jobs (2 pictures x 4 effects, the recording fake of sd-scripts with
a fixed step time) one after another on one machine (`copymachine queue`) against `queue --ray` on
a local Ray cluster (ray.cluster_utils.Cluster: a head without GPUs, two nodes with two logical GPUs
each); the wall time ratio (ideal 0.25 for 4 GPUs; the copy machine first makes it more) and the
resident memory of the Ray processes (head, nodes) while the jobs run.

    PYTHONPATH=. python benchmarks/bench_ray.py [--steps 20] [--step-seconds 0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def setup(root: Path, steps: int) -> Path:
    import importlib.util

    import imagekit
    import tomli_w
    from PIL import Image

    spec = importlib.util.spec_from_file_location("mk", REPO / "tests/fake_sdscripts/make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_checkpoint(root / "base.safetensors", family="sd15", seed=0)
    (root / "tokenizers/openai_clip-vit-large-patch14").mkdir(parents=True, exist_ok=True)
    (root / "pictures").mkdir(exist_ok=True)
    small = imagekit.scene(256).image.resize((128, 128), Image.Resampling.LANCZOS)
    small.save(root / "pictures/girl.png")
    small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "pictures/cat.png")
    # each job its own run folder: jobs sharing one run one after the other (its lock)
    jobs = [{"image": f"pictures/{p}.png", "effect": e, "out": f"runs/{p}-{e}"} for p in ("girl", "cat") for e in ("outline", "flat", "contrast", "posterize")]
    data = {"defaults": {"base": str(root / "base.safetensors"), "resolution": 64, "max-steps": steps, "no-copy-check": True, "cache-dir": "cache"}, "job": jobs}
    (root / "jobs.toml").write_text(tomli_w.dumps(data), encoding="utf-8")
    return root / "jobs.toml"


def engine_args(root: Path) -> list[str]:
    return ["--sd-scripts", str(REPO / "tests/fake_sdscripts"), "--python", sys.executable, "--tokenizer-cache-dir", str(root / "tokenizers"), "--offline"]


def _procs() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command line, RSS MiB), from /proc (Linux)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
        out[int(entry.name)] = (int(fields["PPid"]), cmd, rss)
    return out


def ray_memory(cluster, stop: threading.Event, peaks: dict[str, float]) -> None:
    """Peak summed RSS of each Ray node's processes (the head's: gcs, raylet and helpers; a node's:
    its raylet and the workers under it), our jobs' own processes (copymachine, the fake) left out."""

    def rss(node, procs) -> float:
        todo = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process is not None]
        seen: set[int] = set()
        total = 0.0
        while todo:
            pid = todo.pop()
            if pid in seen or pid not in procs:
                continue
            seen.add(pid)
            _, cmd, mib = procs[pid]
            if "copymachine" in cmd or "fake_sdscripts" in cmd:
                continue
            total += mib
            todo += [child for child, (parent, _, _) in procs.items() if parent == pid]
        return total

    while not stop.is_set():
        procs = _procs()
        nodes = {"head": rss(cluster.head_node, procs)}
        for i, node in enumerate(cluster.worker_nodes):
            nodes[f"node {i + 1}"] = rss(node, procs)
        for k, v in nodes.items():
            peaks[k] = max(peaks.get(k, 0.0), v)
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--step-seconds", type=float, default=0.25)
    args = ap.parse_args()
    env = dict(os.environ, COPYMACHINE_FAKE_STEP_SECONDS=str(args.step_seconds), PYTHONPATH=str(REPO))
    os.environ.update(env)
    with tempfile.TemporaryDirectory() as tmp:
        one, two = Path(tmp) / "one", Path(tmp) / "ray"
        one.mkdir()
        two.mkdir()
        jobs_one, jobs_two = setup(one, args.steps), setup(two, args.steps)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "copymachine", "queue", str(jobs_one), *engine_args(one)], cwd=one, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sequential = time.monotonic() - t0

        from ray.cluster_utils import Cluster

        store = 80 * 2**20
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "object_store_memory": store, "include_dashboard": False})
        for _ in range(2):
            c.add_node(num_cpus=1, num_gpus=2, object_store_memory=store)
        c.wait_for_nodes()
        peaks: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=ray_memory, args=(c, stop, peaks), daemon=True)
        watcher.start()
        t0, wall0 = time.monotonic(), time.time()
        env["COPYMACHINE_FAKE_LOG"] = str(two / "fake-calls.jsonl")
        subprocess.run([sys.executable, "-m", "copymachine", "queue", str(jobs_two), "--ray", c.address, *engine_args(two)], cwd=two, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spread = time.monotonic() - t0
        timeline = []
        for line in (two / "fake-calls.jsonl").read_text(encoding="utf-8").splitlines():
            call = json.loads(line)
            if call["script"].endswith("train_network.py"):
                where = (call["env"].get("COPYMACHINE_NODE", "?")[:6], call["env"].get("CUDA_VISIBLE_DEVICES", "?"))
                timeline.append((call["started"] - wall0, call["finished"] - wall0, call["config"]["output_name"], where))
        stop.set()
        watcher.join()
        c.shutdown()
        trainings = 2 + 8
        print(f"8 jobs, {trainings} trainings of {args.steps} steps x {args.step_seconds} s (the fake)")
        print(f"one after another, one machine: {sequential:.1f} s")
        print(f"--ray, 2 nodes x 2 GPUs:        {spread:.1f} s  (ratio {spread / sequential:.2f})")
        print("--ray trainings (start-end s after the queue started, node, GPU):")
        for start, end, name, (node, gpu) in sorted(timeline):
            print(f"  {start:6.1f} - {end:6.1f}  {name:<12} node {node} GPU {gpu}")
        print("Ray memory (peak RSS): " + ", ".join(f"{k} {v:.0f} MiB" for k, v in peaks.items()))


if __name__ == "__main__":
    main()
