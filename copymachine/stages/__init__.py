"""Stage kinds and their registry (`kinds()`). A kind writes every output to `ctx.scratch_output(name)`, never
to a final path: the pipeline checks each and moves it into place in one rename.
"""

from __future__ import annotations

import functools
import importlib
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from copymachine import capabilities
from copymachine.diagnosis import check_result
from copymachine.errors import EngineError
from copymachine.runner import run_command
from copymachine.settings import Settings, visible_device

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from copymachine.engine import Engine
    from copymachine.files import HashCache
    from copymachine.plan import Plan, Stage
    from copymachine.progress import Reporter

__all__ = ["Settings", "StageContext", "StageKind", "inputs_of", "kind_versions", "kinds", "reset_scratch"]

MODULES = ("generate_image", "captions", "edit_image", "train_lora", "finalize", "copy_check", "preview", "leakage")


@dataclass
class StageContext:
    plan: Plan
    stage: Stage
    settings: Settings
    reporter: Reporter
    hashes: HashCache
    log_path: Path
    dry_run: bool = False
    weak_edit_ok: bool = False  # a too-weak edit is trained on (the run's --weak-edit-ok)
    on_child: Callable[[int, bool], None] | None = None  # (process group, alive)
    gpu: int | None = None  # CUDA device of this job, when each parallel job has its own
    commands: list[list[str]] = field(default_factory=list)
    peak_rss: int = 0  # bytes: the largest sd-scripts process this stage ran

    @property
    def scratch(self) -> Path:
        return self.stage.workdir / ".partial" / self.stage.slug

    def scratch_output(self, name: str) -> Path:
        return self.scratch / self.stage.outputs[name].name

    @property
    def engine(self) -> Engine:
        if self.settings.engine is None:
            raise EngineError("internal: this stage needs sd-scripts but none was located")
        return self.settings.engine

    def run(self, argv: list[str], what: str, expected: list[Path] | None = None,
            collect: Callable[[], None] | None = None, watch: Callable[[], None] | None = None) -> None:
        """Run one sd-scripts command (a dry run records it); `collect` runs before its outputs are checked."""
        self.commands.append(argv)
        if self.dry_run:
            return
        self.check_options(argv)
        env = self.engine.env(offline=self.settings.offline)
        gpu = self.gpu if self.gpu is not None else self.settings.pinned_gpu
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible_device(gpu, env.get("CUDA_VISIBLE_DEVICES"))
        self.reporter.command(argv)
        children: list[int] = []
        job = self.stage.title
        watch = watch or (lambda: None)
        on_child = self.on_child or (lambda pid, alive: None)

        def spawned(pid: int) -> None:
            children.append(pid)
            on_child(pid, True)

        def progressed(p: Any) -> None:
            self.reporter.progress(p, job)
            watch()

        try:
            result = run_command(argv, cwd=self.engine.root, env=env, log_path=self.log_path, on_progress=progressed,
                                 on_spawn=spawned)
        finally:
            self.reporter.end_progress(job)
            for pid in children:
                on_child(pid, False)
        self.peak_rss = max(self.peak_rss, result.peak_rss or 0)
        watch()
        if collect is not None and result.returncode == 0:
            collect()
        check_result(self.stage, what, result, expected or [])

    def check_options(self, argv: list[str]) -> None:
        """Refuse options or training TOML keys (sd-scripts would ignore those silently) not in the script's --help."""
        caps = self.settings.capabilities
        if caps is None:
            return
        root = self.engine.root
        for i, arg in enumerate(argv):
            path = Path(arg)
            if arg.endswith(".py") and path.is_absolute() and path.is_relative_to(root):
                rest = argv[i + 1 :]
                at = rest.index("--config_file") + 1 if "--config_file" in rest else len(rest)
                keys = _toml_keys(Path(rest[at])) if at < len(rest) else []
                capabilities.check_command(caps, caps.version_text(), path.relative_to(root).as_posix(), rest, keys)
                return


def _toml_keys(path: Path) -> list[str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [k for key, value in data.items() for k in (value.keys() if isinstance(value, dict) else [key])]


class StageKind:
    """`validate` checks a produced file and returns facts for the manifest; `conclude` judges a done stage
    against `stage.gate` ({"passed": bool, "message": ...}; the run stops when not passed) or returns None.
    Bump `version` (in stage keys) when a kind produces different results for the same inputs."""

    kind = ""
    version = 1
    needs_engine = False

    def execute(self, stage: Stage, ctx: StageContext) -> None:
        raise NotImplementedError

    def validate(self, stage: Stage, name: str, path: Path, ctx: StageContext) -> dict[str, Any]:
        return {}

    def describe(self, stage: Stage) -> str:
        return stage.title

    def conclude(self, stage: Stage, stamp: dict[str, Any], reporter: Reporter) -> dict[str, Any] | None:
        return None


@functools.cache
def kinds() -> Mapping[str, StageKind]:
    """The kinds of copymachine/stages by name (read-only: a test passes its own to the Pipeline)."""
    modules = [importlib.import_module(f"copymachine.stages.{name}") for name in MODULES]
    return MappingProxyType({kind.kind: kind for m in modules for kind in getattr(m, "KINDS", None) or [m.KIND]})


def kind_versions(engine: Engine | None = None) -> dict[str, Any]:
    """Each kind's version for stage keys, with the engine's identity for a kind that runs sd-scripts."""
    return {
        name: {"version": k.version, "engine": engine.identity} if k.needs_engine and engine is not None else k.version
        for name, k in kinds().items()
    }


def inputs_of(stage: Stage, prefix: str) -> list[Path]:
    return [stage.input(name) for name in sorted(stage.inputs) if name.startswith(prefix)]


def reset_scratch(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    for _ in range(5):
        try:
            path.mkdir(parents=True)
            return
        except FileNotFoundError:
            continue  # a parallel stage removed the emptied .partial/ between the two mkdirs
    path.mkdir(parents=True)
