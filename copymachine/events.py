"""The event stream of a run and a queue for their readers (the web UI, a queue on Ray or Slurm): one typed
model per kind, as JSON lines. Readers key stage events by `stage` (the plan's name), never by a title."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    time: float | None = Field(default_factory=lambda: round(time.time(), 3))
    job: int | None = None  # the queue's job it belongs to


class Info(_Event):
    event: Literal["info"] = "info"
    text: str


class Warned(_Event):
    event: Literal["warning"] = "warning"
    text: str


class PlanMade(_Event):
    event: Literal["plan"] = "plan"
    run_dir: str = ""
    stages: list[str] = []  # titles, in plan order
    names: list[str] = []  # the same stages' names
    kinds: list[str] = []  # and their kinds
    finals: dict[str, str] = {}


class OfStage(_Event):
    stage: str = ""  # its name in the plan: what readers key by
    kind: str = ""
    title: str = ""
    index: int | None = None  # [index/total] in the plan's order
    total: int | None = None


class StageStart(OfStage):
    event: Literal["stage_start"] = "stage_start"
    description: str = ""
    log: str | None = None


class StageSkip(OfStage):
    event: Literal["stage_skip"] = "stage_skip"
    where: str = ""


class StageDone(OfStage):
    event: Literal["stage_done"] = "stage_done"
    seconds: float = 0.0
    outputs: list[str] = []
    peak_gib: float | None = None


class ProgressMade(_Event):
    event: Literal["progress"] = "progress"
    stage: str = ""  # what is counted: a stage's title, or a count before any stage
    desc: str = ""
    step: int = 0
    total: int = 0
    rate: str = ""
    eta: str = ""
    loss: float | None = None
    text: str = ""


class Sample(_Event):
    event: Literal["sample"] = "sample"
    path: str
    title: str = ""


class Summary(_Event):
    event: Literal["summary"] = "summary"
    rows: list[list[str]]


class JobStart(_Event):
    event: Literal["job_start"] = "job_start"
    label: str = ""
    command: str = ""


class JobEnd(_Event):
    event: Literal["job_end"] = "job_end"
    label: str = ""
    status: str = "failed"
    exit_code: int = 1
    finals: list[str] = []
    message: str | None = None
    seconds: float = 0.0
    node: str | None = None


class QueueStart(_Event):
    event: Literal["queue_start"] = "queue_start"
    jobs: list[dict[str, Any]] = []
    slots: int = 1
    engine: str | None = None


class QueueEnd(_Event):
    event: Literal["queue_end"] = "queue_end"
    time: float | None = None  # the last line, as written since the first queue
    status: str
    exit_code: int


Event = Annotated[
    Info | Warned | PlanMade | StageStart | StageSkip | StageDone | ProgressMade | Sample | Summary | JobStart
    | JobEnd | QueueStart | QueueEnd,
    Field(discriminator="event"),
]
_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse(data: dict[str, Any]) -> Event:
    """An event from its fields (`{"event": "stage_done", ...}`)."""
    return _ADAPTER.validate_python(data)


class JsonLines:
    """Events appended and flushed one at a time (read while written)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 -- closed by close()
        self._lock = threading.Lock()

    def __call__(self, event: _Event) -> None:
        with self._lock:
            self._file.write(event.model_dump_json(exclude_none=True) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_events(path: Path, latest: bool = True) -> list[Event]:
    """The events of a file; with `latest`, of its latest attempt (after the last `queue_start`). A line being
    written, or of an unknown kind, is passed over."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    events: list[Event] = []
    for line in lines:
        try:
            events.append(_ADAPTER.validate_json(line))
        except ValidationError:
            continue
    starts = [i for i, e in enumerate(events) if isinstance(e, QueueStart)]
    return events[starts[-1] :] if latest and starts else events


def last_job_end(path: Path) -> JobEnd | None:
    return next((e for e in reversed(read_events(path)) if isinstance(e, JobEnd)), None)
