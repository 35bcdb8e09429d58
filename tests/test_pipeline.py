"""The pipeline's mechanics with stage kinds defined here: keys, skipping, resume, atomic outputs,
the manifest. (Runs of the real stage kinds against the fake sd-scripts are in test_train_fake.py.)"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from copymachine.errors import EngineError
from copymachine.files import HashCache
from copymachine.pipeline import Pipeline
from copymachine.plan import Planner, StageParams
from copymachine.progress import Reporter
from copymachine.stages import Settings, StageKind, kinds
from copymachine.stamps import read_stamp

CALLS: list[str] = []
NONDETERMINISM = {"suffix": ""}  # stands in for a training that gives other bytes each time


class Concat(StageKind):
    """Writes its inputs' bytes plus a parameter; fails on request, after a partial write."""

    kind = "test_concat"

    def execute(self, stage, ctx):
        if ctx.dry_run:
            return
        CALLS.append(stage.name)
        data = b"".join(stage.input(n).read_bytes() for n in sorted(stage.inputs)) + (stage.params["add"] + NONDETERMINISM["suffix"]).encode()
        out = ctx.scratch_output("out")
        if stage.params.get("fail"):
            out.write_bytes(data[: len(data) // 2])
            raise EngineError(f"{stage.name} failed on purpose")
        out.write_bytes(data)


@dataclass(frozen=True)
class ConcatParams(StageParams):
    add: str
    fail: bool = False


def with_kind(kind: StageKind) -> dict[str, StageKind]:
    """The stage kinds a Pipeline is given: copymachine's and the test's own."""
    return {**kinds(), kind.kind: kind}


@pytest.fixture(autouse=True)
def clear_calls():
    CALLS.clear()
    NONDETERMINISM["suffix"] = ""


def build(tmp_path, add_a="a", add_b="b", fail_b=False, source_text="src"):
    source = tmp_path / "source.txt"
    if not source.exists() or source.read_text() != source_text:
        source.write_text(source_text)
    hashes = HashCache(tmp_path / "hashes.json")
    planner = Planner(tmp_path / "run", tmp_path / "cache", hashes, {"test_concat": 1})
    planner.add("a", "test_concat", "stage a", {"src": planner.external(source)}, ConcatParams(add_a), {"out": "a.txt"}, shared_as="a")
    planner.add("b", "test_concat", "stage b", {"a": planner.plan.ref("a", "out")}, ConcatParams(add_b, fail_b), {"out": "b.txt"}, workdir=tmp_path / "run")
    return planner.plan, hashes


def run(tmp_path, **kw):
    plan, hashes = build(tmp_path, **kw)
    Pipeline(plan, Settings(engine=None, probe=None), Reporter(live=False), hashes, argv=["test"], kinds=with_kind(Concat())).run()
    return plan


def test_runs_then_skips(tmp_path):
    plan = run(tmp_path)
    assert CALLS == ["a", "b"]
    assert plan.stage("b").outputs["out"].read_text() == "srcab"
    assert plan.stage("a").workdir.parent == tmp_path / "cache" / "a"  # shared: lives in the cache
    CALLS.clear()
    run(tmp_path)
    assert CALLS == []
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["skipped", "skipped"]
    assert manifest["stages"][1]["outputs"]["out"]["sha256"]


def test_changed_parameter_reruns_it_and_what_depends_on_it(tmp_path):
    run(tmp_path)
    CALLS.clear()
    run(tmp_path, add_b="B")
    assert CALLS == ["b"]
    CALLS.clear()
    run(tmp_path, add_a="A")
    assert CALLS == ["a", "b"]
    CALLS.clear()
    run(tmp_path, add_a="A", source_text="other source")
    assert CALLS == ["a", "b"]


def test_keys_are_known_before_running(tmp_path):
    plan1, _ = build(tmp_path)
    plan2, _ = build(tmp_path, add_b="x")
    assert plan1.stage("a").key == plan2.stage("a").key
    assert plan1.stage("b").key != plan2.stage("b").key
    assert plan1.stage("a").outputs == plan2.stage("a").outputs


def test_failure_leaves_no_partial_file_and_resume_redoes_only_the_failed_stage(tmp_path):
    with pytest.raises(EngineError):
        run(tmp_path, fail_b=True)
    final_b = tmp_path / "run" / "b.txt"
    assert not final_b.exists()
    assert CALLS == ["a", "b"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["done", "failed"]
    CALLS.clear()
    run(tmp_path)
    assert CALLS == ["b"] and final_b.read_text() == "srcab"


def test_damaged_or_replaced_output_is_redone(tmp_path):
    plan = run(tmp_path)
    out_a = plan.stage("a").outputs["out"]
    out_a.write_text("tampered")  # another size
    CALLS.clear()
    run(tmp_path)
    # a is redone; it gives the same bytes again, so b's input is unchanged and b stays done
    assert CALLS == ["a"] and out_a.read_text() == "srca"
    # same size, other content: caught by the hash (the new mtime invalidates the cached hash)
    out_a.write_text("srcX")
    CALLS.clear()
    run(tmp_path)
    assert CALLS == ["a"] and out_a.read_text() == "srca"
    # the output of b replaced by the user: b is redone
    plan.stage("b").outputs["out"].write_text("mine!")
    CALLS.clear()
    run(tmp_path)
    assert CALLS == ["b"]


def _invalidate(stage):
    stamp = read_stamp(stage)
    stamp["inputs"]["src"]["sha256"] = "0" * 64
    (stage.workdir / ".stages" / f"{stage.slug}.json").write_text(json.dumps(stamp))


def test_rebuilt_upstream_with_other_bytes_reruns_downstream(tmp_path):
    plan = run(tmp_path)
    _invalidate(plan.stage("a"))
    CALLS.clear()
    run(tmp_path)
    assert CALLS == ["a"]  # a reran and gave the same bytes: b's input is unchanged
    _invalidate(plan.stage("a"))
    NONDETERMINISM["suffix"] = "!"  # this time the rebuild differs (same key)
    CALLS.clear()
    run(tmp_path)
    assert CALLS == ["a", "b"] and plan.stage("b").outputs["out"].read_text() == "srca!b!"


def test_stamp_is_written_last(tmp_path, monkeypatch):
    """A kill between moving the outputs and writing the stamp re-runs the stage."""
    import copymachine.stamps as stamps_mod

    real = stamps_mod.atomic_write_json

    def die_on_stamp(path, data):
        if ".stages" in str(path):
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(stamps_mod, "atomic_write_json", die_on_stamp)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    monkeypatch.setattr(stamps_mod, "atomic_write_json", real)
    CALLS.clear()
    run(tmp_path)
    assert CALLS == ["a", "b"]


def test_dry_run_runs_nothing(tmp_path, capsys):
    plan, hashes = build(tmp_path)
    Pipeline(plan, Settings(engine=None, probe=None), Reporter(live=False), hashes, argv=["test"], kinds=with_kind(Concat())).run(dry_run=True)
    assert CALLS == []
    assert not (tmp_path / "run" / "manifest.json").exists()
    assert not plan.stage("b").outputs["out"].exists()
    out = capsys.readouterr().out
    assert "# [1/2] stage a" in out and "(done by copymachine itself)" in out


def test_a_cancelled_pipeline_starts_no_new_stage_and_resumes_later(tmp_path):
    """The token cancelled while stage a runs (Ctrl-C, the queue's or the UI's stop): a finishes
    and is kept, b (which waited for it) never starts, the run ends as interrupted; run again,
    a is skipped and b runs. A token cancelled before the run starts nothing at all."""
    from copymachine.supervise import CancelToken

    token = CancelToken()

    class CancelsWhileRunning(Concat):
        def execute(self, stage, ctx):
            super().execute(stage, ctx)
            if stage.name == "a":
                token.cancel()

    plan, hashes = build(tmp_path)
    with pytest.raises(EngineError, match=r"^interrupted: the run was cancelled before it finished"):
        Pipeline(plan, Settings(engine=None, probe=None), Reporter(live=False), hashes, argv=["test"], token=token, kinds=with_kind(CancelsWhileRunning())).run()
    assert CALLS == ["a"]
    assert read_stamp(plan.stage("a")) is not None and plan.stage("a").outputs["out"].exists()
    assert read_stamp(plan.stage("b")) is None and not plan.stage("b").outputs["out"].exists()

    cancelled = CancelToken()
    cancelled.cancel()
    plan, hashes = build(tmp_path)
    with pytest.raises(EngineError, match=r"^interrupted"):
        Pipeline(plan, Settings(engine=None, probe=None), Reporter(live=False), hashes, argv=["test"], token=cancelled, kinds=with_kind(CancelsWhileRunning())).run()
    assert CALLS == ["a"]

    plan = run(tmp_path)
    assert CALLS == ["a", "b"] and plan.stage("b").outputs["out"].read_bytes() == b"srcab"
