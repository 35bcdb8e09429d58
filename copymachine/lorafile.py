"""safetensors files through the safetensors library, and kohya LoRA validation. Own code only where it does not
fit: one tensor read by its offsets (safe_open parses the whole header again for each, 20 ms on an SDXL LoRA,
and numpy has no bfloat16), a metadata change copying the tensor bytes untouched, and a refused file read by
hand to say what is wrong with it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from copymachine.errors import InputError
from copymachine.files import replace_file, require_file
from copymachine.heavy import numpy as np

if TYPE_CHECKING:
    from numpy import ndarray

_MAX_HEADER = 100 * 1024 * 1024
# BF16, which numpy lacks, is widened to float32 by hand
_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1",
          "BOOL": "?"}


@dataclass
class SafetensorsFile:
    path: Path
    tensors: dict[str, dict[str, Any]]  # name -> {"dtype", "shape"}
    metadata: dict[str, str]

    def keys(self) -> list[str]:
        return list(self.tensors)

    @functools.cached_property
    def _header(self) -> tuple[int, dict[str, Any]]:
        return raw_header(self.path)

    @property
    def data_start(self) -> int:
        return 8 + self._header[0]

    def read(self, name: str) -> ndarray:
        dtype = self.tensors[name]["dtype"]
        if dtype != "BF16" and dtype not in _NUMPY:
            raise InputError(f"{self.path}: tensor {name} has unsupported dtype {dtype}")
        start, end = self._header[1][name]["data_offsets"]
        with open(self.path, "rb") as f:
            f.seek(self.data_start + start)
            raw = f.read(end - start)
        if dtype == "BF16":
            return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(
                self.tensors[name]["shape"])
        return np.frombuffer(raw, dtype=np.dtype(_NUMPY[dtype])).reshape(self.tensors[name]["shape"])


def raw_header(path: Path, what: str = "file") -> tuple[int, dict[str, Any]]:
    """(header length, header) read by hand; InputError naming what is wrong."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            problem = "not a safetensors file (too short)" if size else "empty (0 bytes)"
            raise InputError(f"{what} is {problem}: {path}")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > _MAX_HEADER or 8 + n > size:
            raise InputError(f"{what} is not a safetensors file (no valid header): {path}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{what} is not a safetensors file (header is not JSON): {path}") from None
    if isinstance(header, dict):
        header.pop("__metadata__", None)
    if not isinstance(header, dict) or not all(isinstance(v, dict) and "data_offsets" in v for v in header.values()):
        raise InputError(f"{what} is not a safetensors file (bad header): {path}")
    return n, header


def _refused(path: Path, what: str, error: Exception) -> InputError:
    n, header = raw_header(path, what)
    missing = 8 + n + max((int(v["data_offsets"][1]) for v in header.values()), default=0) - path.stat().st_size
    if missing > 0:
        return InputError(f"{what} is truncated ({missing} bytes missing; copy or download it again): {path}")
    return InputError(f"{what} is not a safetensors file ({error}): {path}")


def read_safetensors(path: Path, what: str = "file") -> SafetensorsFile:
    """Keys, shapes, dtypes and metadata; InputError naming the file and the problem."""
    path = Path(path)
    require_file(path, what)
    try:
        with safe_open(path, framework="numpy") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            tensors = {k: {"dtype": s.get_dtype(), "shape": s.get_shape()} for k, s in slices.items()}
            metadata = f.metadata() or {}
    except SafetensorError as e:
        raise _refused(path, what, e) from None
    return SafetensorsFile(path, tensors, {str(k): str(v) for k, v in metadata.items()})


def write_safetensors(path: Path, tensors: dict[str, ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write numpy arrays as safetensors, synced (not atomic)."""
    from safetensors.numpy import save  # numpy, loaded when a file is written: `--help` starts without it

    data = save({k: np.ascontiguousarray(v) if np.ndim(v) else np.asarray(v) for k, v in tensors.items()},
                {str(k): str(v) for k, v in metadata.items()} if metadata else None)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def copy_with_metadata(src: Path, dst: Path, extra: dict[str, str]) -> None:
    """Copy a safetensors file byte for byte, adding/replacing metadata keys."""
    st = read_safetensors(src)
    header: dict[str, Any] = {"__metadata__": {**st.metadata, **{k: str(v) for k, v in extra.items()}}}
    header.update(raw_header(src)[1])
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(struct.pack("<Q", len(raw)))
        fout.write(raw)
        fin.seek(st.data_start)
        while chunk := fin.read(8 * 1024 * 1024):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())


_LORA_KEY = re.compile(r"^(lora_(?:unet|te\d?)_[A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)$")


@dataclass
class LoraSummary:
    path: Path
    modules: dict[str, dict[str, Any]]  # module name -> {"rank", "alpha", "dtype"}
    metadata: dict[str, str]
    file: SafetensorsFile = field(repr=False)

    @property
    def ranks(self) -> list[int]:
        return sorted({m["rank"] for m in self.modules.values()})

    @property
    def unet_modules(self) -> int:
        return sum(1 for n in self.modules if n.startswith("lora_unet_"))

    @property
    def text_encoder_modules(self) -> int:
        return sum(1 for n in self.modules if n.startswith("lora_te"))

    def facts(self) -> dict[str, Any]:
        return {"ranks": self.ranks, "unet_modules": self.unet_modules,
                "text_encoder_modules": self.text_encoder_modules}


def summarize_lora(path: Path, what: str = "LoRA") -> LoraSummary:
    """A kohya LoRA's modules with their ranks, alphas and dtypes."""
    st = read_safetensors(path, what)
    modules: dict[str, dict[str, Any]] = {}
    for key in st.tensors:
        m = _LORA_KEY.match(key)
        if m:
            modules.setdefault(m.group(1), {})[m.group(2)] = st.tensors[key]
    if not modules:
        sample = ", ".join(list(st.tensors)[:3]) or "no tensors"
        raise InputError(f"{what} is not a kohya LoRA (no lora_unet_/lora_te keys; found {sample}): {path}")
    out: dict[str, dict[str, Any]] = {}
    for name, parts in modules.items():
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise InputError(f"{what} is incomplete: module {name} lacks lora_down or lora_up: {path}")
        down = parts["lora_down.weight"]
        rank = int(down["shape"][0])
        alpha = float(st.read(f"{name}.alpha").reshape(-1)[0]) if "alpha" in parts else float(rank)
        out[name] = {"rank": rank, "alpha": alpha, "dtype": down["dtype"]}
    return LoraSummary(Path(path), out, st.metadata, st)


def write_uniform_rank(src: Path, dst: Path, extra: dict[str, str]) -> int:
    """Copy a LoRA giving every module the largest rank, adding metadata keys; how many were padded (0: copied
    byte for byte). resize_lora.py gives a module with no gradient rank 1, and mixed ranks trip diffusers 0.32's
    loader (the whole U-Net scaled wrongly, 2x measured). Zero rows/columns and alpha x R/r keep the delta."""
    summary = summarize_lora(src)
    common = max(m["rank"] for m in summary.modules.values())
    short = {name: m for name, m in summary.modules.items() if m["rank"] < common}
    if not short:
        copy_with_metadata(src, dst, extra)
        return 0
    st = summary.file
    tensors = {key: st.read(key) for key in st.tensors}  # (BF16 is read widened to float32 and written so)
    for name, m in short.items():
        r = m["rank"]
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        tensors[f"{name}.lora_down.weight"] = np.pad(down, [(0, common - r)] + [(0, 0)] * (down.ndim - 1))
        tensors[f"{name}.lora_up.weight"] = np.pad(up, [(0, 0), (0, common - r)] + [(0, 0)] * (up.ndim - 2))
        alpha_dtype = tensors[f"{name}.alpha"].dtype if f"{name}.alpha" in tensors else down.dtype
        tensors[f"{name}.alpha"] = np.asarray(m["alpha"] * common / r, dtype=alpha_dtype)
    tmp = dst.with_name(dst.name + ".padding")
    write_safetensors(tmp, tensors, {**st.metadata, **extra})
    replace_file(tmp, dst)
    return len(short)


def validate_lora(path: Path, what: str = "LoRA", expected_rank: int | None = None) -> LoraSummary:
    """A LoRA file loads, has kohya keys, the expected rank and only finite values."""
    summary = summarize_lora(path, what)
    if expected_rank is not None:
        wrong = [n for n, m in summary.modules.items() if m["rank"] > expected_rank]
        if wrong:
            raise InputError(f"{what} has rank {summary.modules[wrong[0]]['rank']} in {wrong[0]}, expected at most "
                             f"{expected_rank}: {path}")
    for key in summary.file.tensors:
        arr = summary.file.read(key)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputError(f"{what} holds NaN or infinite values ({key}): {path}")
    return summary
