"""Shared machinery of the recording fake of sd-scripts: argv parsing from options.json, recording,
failure injection, console style, and safetensors reading/writing with numpy only.

Needs only the standard library, numpy and (for PNGs) pillow. Every behaviour that imitates the real
scripts says where it was seen: "(code: file)" for sd-scripts at the pinned commit, "(run)" for what
docs/engine-notes.md measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import hashlib
import json
import os
import signal
import struct
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the fake sd-scripts tree
DATA = ROOT / "data"
OPTIONS_FILE = ROOT / "options.json"

ENV_LOG = "COPYMACHINE_FAKE_LOG"
ENV_FAIL = "COPYMACHINE_FAKE_FAIL"
ENV_STEP_SECONDS = "COPYMACHINE_FAKE_STEP_SECONDS"
ENV_WRITE_SECONDS = "COPYMACHINE_FAKE_WRITE_SECONDS"
# Environment variables a call records (what copymachine hands sd-scripts about the network).
RECORDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "CUDA_VISIBLE_DEVICES", "COLUMNS", "PYTHONIOENCODING", "RAY_RAYLET_PID")
ENV_STATE = "COPYMACHINE_FAKE_STATE"
ENV_LAUNCHER = "COPYMACHINE_FAKE_LAUNCHER"  # set by the fake accelerate launch for its child
ENV_WITHOUT = "COPYMACHINE_FAKE_WITHOUT_OPTIONS"  # "gen_img.py:--sequential_file_name,...": an older version's parser

FAIL_MODES = ("exit1", "no-output", "nan", "oom", "die-mid-write")


def load_json(name: str):
    path = DATA / name if not name.endswith("options.json") else OPTIONS_FILE
    with open(path, encoding="utf-8") as f:
        return json.load(f)


_OPTIONS = None


def options() -> dict:
    global _OPTIONS
    if _OPTIONS is None:
        with open(OPTIONS_FILE, encoding="utf-8") as f:
            _OPTIONS = json.load(f)
    return _OPTIONS


def sd_scripts_commit() -> str:
    return options().get("sd_scripts_commit") or "(unknown)"


# --------------------------------------------------------------------------------------------------
# argv parsing: a real argparse parser rebuilt from the pinned script's options (options.json), so
# unknown options, missing values and wrong choices fail exactly as argparse fails there (exit 2).


def _int_or_float(value: str):
    # (code: library/train_util.py add_optimizer_arguments.int_or_float)
    if value.endswith("%"):
        try:
            return float(value[:-1]) / 100.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"Value '{value}' is not a valid percentage")
    try:
        f = float(value)
        return int(value) if f >= 1 else f
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not an int or float")


_TYPES = {"str": str, "int": int, "float": float, "Path": str, "int_or_float": _int_or_float, None: None}
_ACTIONS = {
    "_StoreAction": "store",
    "_StoreTrueAction": "store_true",
    "_StoreFalseAction": "store_false",
    "_StoreConstAction": "store_const",
    "_AppendAction": "append",
    "_CountAction": "count",
}


def build_parser(script: str, prog: str | None = None) -> argparse.ArgumentParser:
    spec = options()["scripts"][script]
    parser = argparse.ArgumentParser(prog=prog or os.path.basename(script), allow_abbrev=spec.get("allow_abbrev", True))
    groups: dict[str, list[str]] = {}  # one add_argument per action: its option strings share one info
    without = {item.split(":", 1)[1] for item in os.environ.get(ENV_WITHOUT, "").split(",") if item.startswith(f"{script}:")}
    for opt, info in spec["prog_options"].items():
        if info["action"] != "_HelpAction" and opt not in without:
            groups.setdefault(json.dumps(info, sort_keys=True), []).append(opt)
    for key, names in groups.items():
        parser.add_argument(*names, **_kwargs(json.loads(key)))
    for info in spec["positionals"]:
        kw = _kwargs(info)
        kw.pop("dest")
        kw.pop("required", None)
        parser.add_argument(info["dest"], **kw)
    return parser


def _kwargs(info: dict) -> dict:
    action = _ACTIONS.get(info["action"], "store")
    kw = {"dest": info["dest"], "action": action}
    default = info["default"]
    kw["default"] = argparse.SUPPRESS if default == "==SUPPRESS==" else default
    if action in ("store", "append"):
        t = info["type"]
        kw["type"] = _TYPES.get(t, str)
        if info["nargs"] is not None:
            kw["nargs"] = info["nargs"]
        if info["choices"] is not None:
            kw["choices"] = info["choices"]
    if action == "store_const":
        kw["const"] = info["const"]
    if info.get("required"):
        kw["required"] = True
    return kw


def namespace_json(ns) -> dict:
    return {k: jsonable(v) for k, v in sorted(vars(ns).items())}


def jsonable(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return str(v)


# --------------------------------------------------------------------------------------------------
# recording and failure injection


class FakeRun:
    """One call of one fake script: counts the call, knows its injected failure, records it once."""

    def __init__(self, script: str):
        if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
            # the real scripts print their help and exit 0, touching nothing: not a call to record or count
            build_parser(script).parse_args(["--help"])
        self.script = script  # path relative to the sd-scripts root, e.g. "networks/merge_lora.py"
        self.stem = Path(script).stem
        self.argv = list(sys.argv[1:])
        self.record: dict = {
            "script": script,
            "argv": self.argv,
            "cwd": os.getcwd(),
            "pid": os.getpid(),
            "started": time.time(),
            "outputs": [],
            # what the caller set for sd-scripts (offline hub, the GPU of a parallel job, console)
            "env": {k: os.environ[k] for k in RECORDED_ENV if k in os.environ},
        }
        if os.environ.get(ENV_LAUNCHER):
            self.record["launcher"] = json.loads(os.environ[ENV_LAUNCHER])
        self.call_no = _count_call(self.stem)
        self.record["call"] = self.call_no
        self.fail = failure_for(self.stem, self.call_no)
        if self.fail:
            self.record["injected_failure"] = self.fail
        self._written = False

    # what the script parsed / read / wrote
    def set(self, **kw) -> None:
        self.record.update({k: jsonable(v) for k, v in kw.items()})

    def output(self, path) -> None:
        self.record["outputs"].append(str(Path(path).resolve()))

    def write_record(self, exit_code: int) -> None:
        if self._written:
            return
        self._written = True
        self.record["exit_code"] = exit_code
        self.record["finished"] = time.time()
        log = os.environ.get(ENV_LOG)
        if not log:
            return
        line = json.dumps(self.record, ensure_ascii=False) + "\n"
        with open(log, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(line)
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)

    def parse(self, parser: argparse.ArgumentParser, namespace=None):
        """argparse on this call's argv; its errors (usage + exit 2) and --help end the call, recorded."""
        try:
            return parser.parse_args(self.argv, namespace=namespace)
        except SystemExit as e:
            self.exit(e.code if isinstance(e.code, int) else 1)

    def guard(self, fn, *a, **kw):
        """Run the script body; an unexpected exception still gets recorded (exit 1, like Python)."""
        try:
            fn(*a, **kw)
        except SystemExit:
            raise
        except BaseException:
            traceback.print_exc()
            self.exit(1)

    def exit(self, code: int):
        self.write_record(code)
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(code)

    # ---- injected failures
    def maybe_fail_early(self) -> None:
        """exit1 and oom fail before any output is written (as a crash in the middle would)."""
        if self.fail == "exit1":
            traceback_lines(self.script, "RuntimeError: copymachine fake: injected failure (exit1)")
            self.exit(1)
        if self.fail == "oom":
            traceback_lines(
                self.script,
                # the wording of torch's CUDA OOM error (torch.OutOfMemoryError, torch >= 2.5)
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of "
                "7.75 GiB of which 3.56 MiB is free. Including non-PyTorch memory, this process has 7.74 GiB memory in use. "
                "Of the allocated memory 7.40 GiB is allocated by PyTorch, and 151.32 MiB is reserved by PyTorch but "
                "unallocated. If reserved but unallocated memory is large try setting "
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
                "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
            )
            self.exit(1)

    def save(self, path, tensors: dict, metadata: dict | None) -> None:
        """Write a safetensors output the way the real scripts do: straight to its final path (no temp file)."""
        if self.fail == "nan":
            tensors = {k: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v for k, v in tensors.items()}
        self.save_bytes(path, serialize_safetensors(tensors, metadata))

    def save_bytes(self, path, data: bytes) -> None:
        """no-output: nothing written; die-mid-write: half the bytes at the final path, then SIGKILL."""
        path = Path(path)
        if self.fail == "no-output":
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.fail == "die-mid-write":
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            self.output(path)
            self.record["killed"] = "SIGKILL"
            self.write_record(-9)
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        seconds = write_seconds()
        if seconds:  # written in pieces at the final path, as a large real save is (to kill it mid-write)
            pieces = 10
            step = -(-len(data) // pieces)
            with open(path, "wb") as f:
                for i in range(0, len(data), step):
                    f.write(data[i : i + step])
                    f.flush()
                    time.sleep(seconds / pieces)
        else:
            path.write_bytes(data)
        self.output(path)


def run_main(script: str, body) -> None:
    """The common frame of a fake script: count and record the call, parse argv against the pinned
    options, apply an early injected failure, then body(run, args)."""
    run = FakeRun(script)

    def go():
        args = run.parse(build_parser(script))
        run.set(args=namespace_json(args))
        run.maybe_fail_early()
        body(run, args)

    run.guard(go)


def _count_call(stem: str) -> int:
    """Calls per script stem, counted in a small JSON file beside the log (or $COPYMACHINE_FAKE_STATE)."""
    state = os.environ.get(ENV_STATE) or (os.environ[ENV_LOG] + ".counts" if os.environ.get(ENV_LOG) else None)
    if not state:
        return 1
    with open(state, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read()
        counts = json.loads(text) if text.strip() else {}
        counts[stem] = counts.get(stem, 0) + 1
        f.seek(0)
        f.truncate()
        f.write(json.dumps(counts))
        f.flush()  # before unlocking: in "a+" mode a later flush would append after the next writer's counts
        fcntl.flock(f, fcntl.LOCK_UN)
    return counts[stem]


def parse_fail_spec(spec: str) -> list[tuple[str, str, int | None]]:
    """'train_network:nan:2,merge_lora:exit1' -> [(stem, mode, nth or None)]"""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        bits = part.split(":")
        if len(bits) not in (2, 3) or bits[1] not in FAIL_MODES:
            raise SystemExit(f"copymachine fake: bad {ENV_FAIL} entry {part!r} (want <script-stem>:<{'|'.join(FAIL_MODES)}>[:<nth call>])")
        out.append((bits[0].removesuffix(".py"), bits[1], int(bits[2]) if len(bits) == 3 else None))
    return out


def failure_for(stem: str, call_no: int) -> str | None:
    for s, mode, nth in parse_fail_spec(os.environ.get(ENV_FAIL, "")):
        if s == stem and (nth is None or nth == call_no):
            return mode
    return None


def step_seconds() -> float:
    try:
        return float(os.environ.get(ENV_STEP_SECONDS) or 0)
    except ValueError:
        return 0.0


def write_seconds() -> float:
    try:
        return float(os.environ.get(ENV_WRITE_SECONDS) or 0)
    except ValueError:
        return 0.0


def traceback_lines(script: str, last: str) -> None:
    """A Python-looking traceback on stderr, ending in the exception line."""
    print("Traceback (most recent call last):", file=sys.stderr)
    print(f'  File "{ROOT / script}", line 1, in <module>', file=sys.stderr)
    print("    (copymachine fake sd-scripts)", file=sys.stderr)
    print(last, file=sys.stderr, flush=True)


def crash(run: FakeRun, exc_line: str, code: int = 1):
    traceback_lines(run.script, exc_line)
    run.exit(code)


# --------------------------------------------------------------------------------------------------
# console: sd-scripts logs through rich.logging.RichHandler on stderr (code: library/utils.py
# setup_logging): "YYYY-mm-dd HH:MM:SS LEVEL    message    file.py:line". The fake writes the same
# columns on one row (it does not imitate Rich's wrapping at 80 columns on a pipe; see engine-notes).


class Console:
    def __init__(self, simple: bool = False, file: str | None = None):
        self.simple = simple
        self.file = open(file, "w", encoding="utf-8") if file else None

    def log(self, level: str, msg: str, where: str = "") -> None:
        if self.file:
            print(msg, file=self.file, flush=True)
        elif self.simple:  # (code: setup_logging with console_log_simple: StreamHandler(sys.stdout), "%(message)s")
            print(msg, flush=True)
        else:
            now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            print(f"{now} {level:<8} {msg}    {where}", file=sys.stderr, flush=True)

    def info(self, msg: str, where: str = "") -> None:
        self.log("INFO", msg, where)

    def warning(self, msg: str, where: str = "") -> None:
        self.log("WARNING", msg, where)

    def error(self, msg: str, where: str = "") -> None:
        self.log("ERROR", msg, where)


# --------------------------------------------------------------------------------------------------
# safetensors with numpy only (F32, F16, BF16, I64 ...), written in the real file layout


_DT_TO_ST = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("float64"): "F64", np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("uint8"): "U8"}
_ST_TO_DT = {v: k for k, v in _DT_TO_ST.items()}
PRECISIONS = {None: np.float32, "float": np.float32, "fp16": np.float16, "bf16": "bf16"}


class BF16(np.ndarray):
    """float32 values that are to be stored as bfloat16 (numpy has no bfloat16)."""


def as_precision(a: np.ndarray, precision: str | None) -> np.ndarray:
    dt = PRECISIONS[precision]
    if dt == "bf16":
        # (np.asarray: on a 0-d alpha, numpy's arithmetic gives a scalar, which would be saved as F32)
        return np.asarray(bf16_round(a.astype(np.float32)), dtype=np.float32).view(BF16)
    return a.astype(dt)


def bf16_round(a: np.ndarray) -> np.ndarray:
    u = np.array(a, dtype=np.float32).view(np.uint32)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32)


def serialize_safetensors(tensors: dict, metadata: dict | None = None) -> bytes:
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        a = tensors[name]
        # (np.ascontiguousarray would turn a 0-d alpha into shape [1]; tobytes() is C order anyway)
        if isinstance(a, BF16):
            raw = (np.asarray(a, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
            st = "BF16"
        else:
            a = np.asarray(a)
            st = _DT_TO_ST[a.dtype]
            raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": st, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(chunks)


def read_header(path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def load_safetensors(path) -> tuple[dict, dict]:
    """(tensors as float32/int numpy arrays, metadata). Like safetensors' loader, fails on a truncated file."""
    header, start = read_header(path)
    meta = header.pop("__metadata__", {}) or {}
    data = Path(path).read_bytes()
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        if start + e > len(data):
            raise ValueError(f"Error while deserializing header: incomplete data for {name}")
        raw = data[start + b : start + e]
        if info["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype=_ST_TO_DT[info["dtype"]].newbyteorder("<")).astype(_ST_TO_DT[info["dtype"]])
        out[name] = a.reshape(info["shape"])
    return out, meta


def file_dtype_name(path) -> str | None:
    header, _ = read_header(path)
    for k, v in header.items():
        if k != "__metadata__":
            return v["dtype"]
    return None


def sshs_hashes(tensors: dict, metadata: dict) -> tuple[str, str]:
    """sshs_model_hash / sshs_legacy_hash computed the way sd-scripts does (code: library/train_util.py
    precalculate_safetensors_hashes: serialise with only the ss_* metadata, sha256 of the bytes after the
    header; legacy = sha256 of 64 KiB at 1 MiB, first 8 hex). The serialisation is this fake's, so the
    values are self-consistent, not byte-identical to what torch's safetensors would give."""
    data = serialize_safetensors(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    (n,) = struct.unpack("<Q", data[:8])
    model_hash = hashlib.sha256(data[8 + n :]).hexdigest()
    legacy = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy


def file_hashes(path) -> tuple[str, str]:
    """(sha256 of the whole file, the legacy 8-hex model hash) as train_util.model_hash / calculate_sha256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
        f.seek(0)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest(), legacy


def seeded_rng(*parts) -> np.random.Generator:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
        h.update(b"\0")
    return np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))


def iso_now() -> str:
    return _dt.datetime.now().replace(microsecond=0).isoformat()
