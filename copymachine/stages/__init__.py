"""Stage kinds: one module per step of the method, each knowing how to produce its outputs.

A kind writes every output to `ctx.scratch_output(name)` (a scratch folder beside the final
files); the pipeline checks that each exists and is valid, then moves it into place in one
rename. A kind never writes a final path itself.
"""

from __future__ import annotations

import importlib
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copymachine.errors import DiskFull, EngineError, is_disk_full
from copymachine.profiles import CPU, Profile

if TYPE_CHECKING:
    from copymachine.capabilities import Capabilities
    from copymachine.engine import Engine, Probe
    from copymachine.files import HashCache
    from copymachine.plan import Plan, Stage
    from copymachine.progress import Reporter

KIND_MODULES = (
    "generate_image",
    "import_image",
    "captions",
    "edit_image",
    "train_lora",
    "merge_model",
    "svd_merge",
    "extract_lora",
    "resize_lora",
    "finalize",
    "copy_check",
    "preview",
    "leakage",
)


def visible_device(index: int, inherited: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for a child that is to use the `index`-th GPU this process sees. The
    user's own mask (or Slurm's, Ray's) lists the physical GPUs, indices or UUIDs (GPU-..., MIG-...),
    and index 0 is its first entry: with CUDA_VISIBLE_DEVICES=2,3, GPU 1 is "3". CUDA ignores the
    entries from the first invalid one on (an empty one included), so only those before it count.
    Unset: the index itself. Set but empty (no GPU visible): kept empty."""
    if inherited is None:
        return str(index)
    if not inherited.strip():
        return inherited
    entries: list[str] = []
    for entry in inherited.split(","):
        entry = entry.strip()
        if not entry or (entry.lstrip("-").isdigit() and int(entry) < 0):
            break
        entries.append(entry)
    if index >= len(entries):
        raise EngineError(f"internal: GPU {index} asked for, but CUDA_VISIBLE_DEVICES={inherited!r} lists {len(entries)}")
    return entries[index]


@dataclass
class Settings:
    """How this machine runs sd-scripts: the engine, the device profile, parallel jobs.
    Only what changes results (precision, the profile's training options) enters stage keys."""

    engine: Engine | None
    probe: Probe | None
    profile: Profile = CPU
    tokenizer_cache_dir: Path | None = None
    offline: bool = False
    jobs: int = 1
    gpus: int = 0  # CUDA devices; with several, each parallel job gets its own
    pinned_gpu: int | None = None  # every sd-scripts call on this CUDA device (a queue's job slot)
    capabilities: Capabilities | None = None  # what this sd-scripts can do (copymachine.capabilities)

    @property
    def mixed_precision(self) -> str:
        return self.profile.mixed_precision

    @property
    def device(self) -> str:
        return self.profile.device

    @property
    def training_options(self) -> dict[str, Any]:
        return self.profile.training_options


@dataclass
class StageContext:
    plan: Plan
    stage: Stage
    settings: Settings
    reporter: Reporter
    hashes: HashCache
    log_path: Path
    dry_run: bool = False
    on_child: Callable[[int, bool], None] | None = None  # (process group, alive)
    gpu: int | None = None  # CUDA device of this job, when each parallel job has its own
    commands: list[list[str]] = field(default_factory=list)
    peak_rss: int = 0  # bytes: the largest sd-scripts process this stage ran

    @property
    def scratch(self) -> Path:
        return self.stage.workdir / ".partial" / self.stage.slug

    def scratch_output(self, name: str) -> Path:
        """Where the kind writes output `name` (same file name as the final one)."""
        return self.scratch / self.stage.outputs[name].name

    @property
    def engine(self) -> Engine:
        if self.settings.engine is None:
            raise EngineError("internal: this stage needs sd-scripts but none was located")
        return self.settings.engine

    def run(
        self, argv: list[str], what: str, expected: list[Path] | None = None, collect: Callable[[], None] | None = None, watch: Callable[[], None] | None = None
    ) -> None:
        """Run one sd-scripts command, or in a dry run only record it. `collect` runs after the
        command and before its outputs are checked (to rename what it named itself); `watch` on
        every progress line and once at the end (to pick up what it writes on the way)."""
        from copymachine.runner import run_command

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

        def spawned(pid: int) -> None:
            children.append(pid)
            if self.on_child:
                self.on_child(pid, True)

        job = self.stage.title

        def progressed(p) -> None:
            self.reporter.progress(p, job)
            if watch is not None:
                watch()

        try:
            result = run_command(
                argv,
                cwd=self.engine.root,
                env=env,
                log_path=self.log_path,
                on_progress=progressed,
                on_spawn=spawned,
            )
        finally:
            self.reporter.end_progress(job)
            if self.on_child:
                for pid in children:
                    self.on_child(pid, False)
        self.peak_rss = max(self.peak_rss, result.peak_rss or 0)
        if watch is not None:
            watch()
        if collect is not None and result.returncode == 0:
            collect()
        check_result(self.stage, what, result, expected or [])

    def check_options(self, argv: list[str]) -> None:
        """Refuse a command whose options, or training TOML keys (which sd-scripts would ignore
        silently), the script does not list in its --help."""
        from copymachine import capabilities

        caps = self.settings.capabilities
        if caps is None:
            return
        root = self.engine.root
        for i, arg in enumerate(argv):
            path = Path(arg)
            if arg.endswith(".py") and path.is_absolute() and path.is_relative_to(root):
                script = path.relative_to(root).as_posix()
                rest = argv[i + 1 :]
                keys: list[str] = []
                if "--config_file" in rest and rest.index("--config_file") + 1 < len(rest):
                    keys = _toml_keys(Path(rest[rest.index("--config_file") + 1]))
                capabilities.check_command(caps, caps.version_text(), script, rest, keys)
                return


def _toml_keys(path: Path) -> list[str]:
    """The keys sd-scripts reads from a training TOML: top-level scalars and one level of tables."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    keys: list[str] = []
    for key, value in data.items():
        keys.extend(value.keys() if isinstance(value, dict) else [key])
    return keys


def check_result(stage: Stage, what: str, result, expected: list[Path]) -> None:
    """Turn sd-scripts' ways of failing into one clear message with the log's tail."""
    w = result.watcher
    where = f"stage '{stage.title}' ({what})"
    tail = w.tail_lines(12)
    if w.oom:
        raise EngineError(
            f"{where} ran out of memory; close other programs, use a smaller --resolution, or --low-vram where offered. Log: {result.log_path}",
            details=tail,
        )
    if result.returncode != 0 and (w.no_space or is_disk_full(getattr(result, "log_error", None))):
        raise DiskFull(f"{where} failed: the disk is full. Log: {result.log_path}", folder=stage.workdir, log=result.log_path)
    killed_by = _killed_by(result.returncode, tail)
    if killed_by:
        hint = " (the system's out-of-memory killer does this when RAM runs out: close other programs, or add swap)" if killed_by == "SIGKILL" else ""
        raise EngineError(f"{where} was killed by {killed_by}{hint}. Log: {result.log_path}", details=tail)
    if result.returncode != 0:
        cause, details = _root_cause(w, tail)
        raise EngineError(f"{where} failed with exit code {result.returncode}{cause}. Log: {result.log_path}", details=details)
    if w.nan:
        raise EngineError(
            f"{where} produced NaN loss (training diverged); lower the learning rate or use bf16/fp32. Log: {result.log_path}",
            details=tail,
        )
    missing = [p for p in expected if not p.exists()]
    if missing:
        hint = "sd-scripts does that when it finds no images"
        if what == "gen_img.py":
            folder = missing[0].parent
            found = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            hint = f"it wrote {', '.join(found[:4]) + (' ...' if len(found) > 4 else '') if found else 'no file'} in {folder}"
        raise EngineError(f"{where} exited 0 but wrote no {missing[0].name} ({hint}). Log: {result.log_path}", details=tail)


def _root_cause(watcher, tail: list[str]) -> tuple[str, list[str]]:
    """': <first exception>[; <usual fix>]' for the message, and the log excerpt with that
    exception's frame and line above the tail unless the tail shows both (the launcher's
    traceback pushes the child's out of the last lines)."""
    from copymachine.heavy import import_fix, known_import_failure

    root = watcher.root_cause
    if root is None:
        return "", tail
    cause = f": {root.exception}"
    kind = root.exception.split(":")[0].rsplit(".", 1)[-1]
    if kind in ("ImportError", "ModuleNotFoundError") and known_import_failure(root.exception):
        cause += "; " + import_fix(root.failed_module(), root.exception, where="sd-scripts' venv")
    shown = [*root.frame(), root.exception]
    if all(line in tail for line in shown):
        return cause, tail
    return cause, [*shown, "…", *tail]


def _killed_by(returncode: int, tail: list[str]) -> str | None:
    """The signal that ended sd-scripts: its own exit status, or (under `accelerate launch`,
    which exits 1) the launcher's `died with <Signals.SIGKILL: 9>`."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    for line in tail:
        m = re.search(r"died with <Signals\.(SIG[A-Z0-9]+)", line)
        if m:
            return m.group(1)
    return None


class StageKind:
    """What every kind provides. `version` goes into stage keys: bump it when a kind starts
    producing different results for the same inputs."""

    kind = ""
    version = 1
    needs_engine = False

    def execute(self, stage: Stage, ctx: StageContext) -> None:
        raise NotImplementedError

    def validate(self, stage: Stage, name: str, path: Path, ctx: StageContext) -> dict[str, Any]:
        """Check one produced file before it is moved into place; return facts for the manifest."""
        return {}

    def describe(self, stage: Stage) -> str:
        """One line for the plan listing."""
        return stage.title

    def conclude(self, stage: Stage, stamp: dict[str, Any], reporter: Reporter) -> dict[str, Any] | None:
        """After the stage is done (run now or earlier): report what it found and judge it
        against `stage.gate`. Returns a verdict for the manifest ({"passed": bool, "message":
        ...}; the pipeline stops the run when it did not pass), or None."""
        return None


_KINDS: dict[str, StageKind] = {}


def kinds() -> dict[str, StageKind]:
    if not _KINDS:
        for module_name in KIND_MODULES:
            module = importlib.import_module(f"copymachine.stages.{module_name}")
            kind: StageKind = module.KIND
            _KINDS[kind.kind] = kind
    return _KINDS


def kind_versions(engine: Engine | None = None) -> dict[str, Any]:
    """What of the code decides each kind's results, for stage keys: the kind's version, and for a
    kind that runs sd-scripts also the engine (`Engine.identity`: its commit, or a hash of its
    tree), so that another sd-scripts computes anew instead of reusing. The keys of kinds that do
    not run sd-scripts stay as they are."""
    versions: dict[str, Any] = {}
    for name, k in kinds().items():
        if k.needs_engine and engine is not None:
            versions[name] = {"version": k.version, "engine": engine.identity}
        else:
            versions[name] = k.version
    return versions


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
