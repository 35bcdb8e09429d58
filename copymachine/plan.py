"""Plans: a run's stages. A stage's key hashes its kind, parameters, external inputs' sha256, producers' keys and the
engine (stages.kind_versions), known before anything runs: --dry-run prints real paths, and shared stages (the copy
LoRA and copy model) live in the cache under their key, where every run and effect finds them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copymachine.files import HashCache, sha256_json

# StageParams field metadata: left out of the key while None (an option added later: old keys stay) ...
OPTIONAL = {"optional": True}
# ... or never in the key: what only names or describes (it is kept in `StageParams.record`).
COSMETIC = {"cosmetic": True}


def stage_name(step: str, effect: str | None = None, source: str = "") -> str:
    """A stage's name: `[source/][effect/]step` ("girl/outline/effect-lora"); the one place stage names are made."""
    return "/".join(part for part in (source, effect, step) if part)


class StageParams:
    """Base of each stage kind's typed parameters; `as_key()` is what the key, the stamp and the manifest hold."""

    def as_key(self) -> dict[str, Any]:
        return _serialise(self, for_key=True)

    def record(self) -> dict[str, Any]:
        """Every field, cosmetic ones included (what a tool's output LoRA records)."""
        return _serialise(self, for_key=False)


def _serialise(value: Any, for_key: bool) -> Any:
    """JSON-able form: dataclasses field by field, a value with its own `as_key()` (a Family) by that."""
    if hasattr(value, "as_key") and not isinstance(value, StageParams):
        return _serialise(value.as_key(), for_key)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if (f.metadata.get("optional") and v is None) or (for_key and f.metadata.get("cosmetic")):
                continue
            out[f.name] = _serialise(v, for_key)
        return out
    if isinstance(value, dict):
        return {k: _serialise(v, for_key) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_serialise(v, for_key) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class FileRef:
    """An input: an external file, or the output `output` of the stage `producer`."""

    path: Path
    producer: str | None = None
    output: str | None = None

    @property
    def external(self) -> bool:
        return self.producer is None


@dataclass(frozen=True)
class WeightedLora:
    """A LoRA and its ratio in a merge; `lora` is a FileRef in a plan, a Path in a tool's inputs."""

    lora: Any
    ratio: float


@dataclass(frozen=True)
class LoraTerm(WeightedLora):
    """One term of a LoRA combination: the ratio carries the sign (B - A: A at -1); the label only names it."""

    label: str = ""


@dataclass
class Stage:
    name: str  # unique in the plan: "copy-lora", "outline/effect-lora"
    kind: str  # the module in copymachine/stages/ that runs it
    title: str  # what the user reads
    workdir: Path
    inputs: dict[str, FileRef]
    params: dict[str, Any]  # the serialised `spec` (StageParams.as_key): what the key holds
    outputs: dict[str, Path]
    shared: bool = False
    key: str = ""
    # whether the run goes on after it (a check's threshold): not in the key, so a change re-judges without re-running
    gate: dict[str, Any] = field(default_factory=dict)
    spec: Any = None  # the kind's typed parameters (a StageParams), which the kind reads

    @property
    def slug(self) -> str:
        return self.name.replace("/", "--")

    def input(self, name: str) -> Path:
        return self.inputs[name].path


@dataclass
class RunInfo:
    """The manifest's "run" object: the planned run (methods), its identity and pre-flight's estimates."""

    method: str | None = None
    base: str | None = None
    family: str | None = None
    images: list[str | None] | None = None
    edited: list[str | None] | None = None
    image_folders: dict[str, str] | None = None  # each image's folder (its capped stem) -> its file name
    effects: list[str] | None = None
    combine: str | None = None  # recorded as given (None: the method's default)
    sign: str | None = None
    absorb: list[list[Any]] | None = None  # [path, ratio] of each absorbed style LoRA
    training_sizes: dict[str, list[int]] | None = None
    training_size: dict[str, dict[str, Any]] | None = None  # source -> size, picture, why
    copy_model: str | None = None  # "file" | "memory"; None where there is no copy model
    clip_skip: int | None = None
    prediction: dict[str, str] | None = None  # type, why
    preview_prediction: dict[str, str] | None = None
    sd_args: dict[str, Any] | None = None
    copy_check: dict[str, float] | str | None = None  # {"min_ssim": ...} or "off (--no-copy-check)"
    recipe: dict[str, Any] | None = None
    cache_dir: str | None = None
    preview_model: str | None = None
    identity: dict[str, Any] | None = None
    disk_space: dict[str, Any] | None = None
    stage_bytes: dict[str, int] | None = None  # what each stage still to run writes
    vram: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The manifest's form: what is known (a planned run's combine and copy model even when None)."""
        kept = ("combine", "copy_model") if self.method is not None else ()
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k in kept}


@dataclass
class Plan:
    run_dir: Path
    cache_dir: Path
    stages: list[Stage] = field(default_factory=list)
    finals: dict[str, Path] = field(default_factory=dict)  # effect -> final LoRA
    info: RunInfo = field(default_factory=RunInfo)  # what the manifest records about the run
    manifest_name: str = "manifest.json"
    notes: list[str] = field(default_factory=list)  # what the user should know before it runs

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / self.manifest_name

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def ref(self, stage_name: str, output: str) -> FileRef:
        s = self.stage(stage_name)
        return FileRef(path=s.outputs[output], producer=s.name, output=output)


class Planner:
    """Adds stages in dependency order, computing each key as it goes."""

    def __init__(self, run_dir: Path, cache_dir: Path, hashes: HashCache, kind_versions: dict[str, Any]):
        self.plan = Plan(run_dir=run_dir, cache_dir=cache_dir)
        self.hashes = hashes
        self.kind_versions = kind_versions

    def external(self, path: Path) -> FileRef:
        return FileRef(path=Path(path))

    def add(self, name: str, kind: str, title: str, inputs: dict[str, FileRef], params: StageParams,
            outputs: dict[str, str], workdir: Path | None = None, shared_as: str | None = None,
            gate: dict[str, Any] | None = None) -> Stage:
        """`outputs`: output name -> file name in its folder; a shared stage lives in <cache>/<shared_as>/<key>/."""
        if any(s.name == name for s in self.plan.stages):
            raise ValueError(f"stage {name} planned twice")
        as_key = params.as_key()
        key = self._key(kind, as_key, inputs)
        if shared_as:
            workdir = self.plan.cache_dir / shared_as / key[:16]
        assert workdir is not None
        stage = Stage(name=name, kind=kind, title=title, workdir=workdir, inputs=inputs, params=as_key,
                      outputs={k: workdir / v for k, v in outputs.items()}, shared=shared_as is not None, key=key,
                      gate=dict(gate or {}), spec=params)
        self.plan.stages.append(stage)
        return stage

    def _key(self, kind: str, params: dict[str, Any], inputs: dict[str, FileRef]) -> str:
        identity: dict[str, Any] = {}
        for name, ref in sorted(inputs.items()):
            if ref.external:
                identity[name] = {"sha256": self.hashes.sha256(ref.path)}
            else:
                producer = self.plan.stage(ref.producer)  # type: ignore[arg-type]
                identity[name] = {"stage": producer.key, "output": ref.output}
        version = self.kind_versions.get(kind, 1)
        return sha256_json({"kind": kind, "version": version, "params": params, "inputs": identity})
