"""Files: atomic writes and content hashes (with a cache so multi-GB models are hashed once)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from copymachine.errors import InputError, OutputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_CHUNK = 8 * 1024 * 1024

# A picture's name is a folder name two or three times in a run's paths (runs/<stem>/<stem>/<effect>/.partial/
# <stem>--<effect>--effect-lora/...): capped, so a booru file name stays under Windows' 260 characters.
FOLDER_STEM_MAX = 32


def folder_stem(name: str, limit: int = FOLDER_STEM_MAX) -> str:
    """`name` as a folder name: a longer one is cut and ends in 8 hex digits of its hash, so two long names that
    start alike stay apart. No trailing dot or space (Windows drops them from folder names)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip(' .')}-{digest}"

# On Windows a rename onto a file another process has open (the UI reading state.json, an
# antivirus scan, Explorer's thumbnails) fails with PermissionError for a moment: retry.
REPLACE_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)


def replace_file(src: Path | str, dst: Path | str) -> None:
    """os.replace, retried while the target is held open (about 6 s in all), then one line (OutputError)."""
    for delay in (*REPLACE_DELAYS_S, None):
        try:
            os.replace(src, dst)
            return
        except PermissionError as e:
            if delay is None:
                raise OutputError(f"cannot replace {dst}: another program holds it open ({e.strerror}); close it (an "
                                  "editor, a viewer, an antivirus scan) and run the same command again") from None
            time.sleep(delay)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` that replaces it in one rename on success (else no partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        replace_file(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


_STALE_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(?:partial|tmp)$")
_PROCESS_STARTED = time.time()


def remove_stale_temps(folder: Path) -> None:
    """Remove the temporary files of killed writes in `folder` (atomic_path's, images.save_png's), when older than
    this process (a write under way in another thread is left alone). Only call it holding the folder's lock."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if _STALE_TEMP.match(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < _PROCESS_STARTED:
                    os.unlink(entry.path)


def atomic_write_text(path: Path, text: str) -> None:
    # newline="\n": the same bytes on Windows, so configs and manifests hash the same everywhere.
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def move_into_place(src: Path, dst: Path) -> None:
    """Move a finished file to its final path in one rename (copy + rename across devices)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        replace_file(src, dst)  # retried while held open
    except OSError:  # another device
        copy_into_place(src, dst)
        src.unlink()
    _fsync_dir(dst.parent)


def copy_into_place(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def host_name() -> str:
    """This machine's name, safe in a file name."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
    return name[:64]


class HashCache:
    """sha256 of files, remembered by (absolute path, size, mtime) in a JSON file: hashing a 4 GB
    checkpoint takes ~10 s, a re-run must not pay that for every input."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if path is not None and path.exists():
            with contextlib.suppress(OSError, ValueError):  # a damaged cache only costs re-hashing
                loaded = json.loads(path.read_text(encoding="utf-8"))
                self._data = loaded if isinstance(loaded, dict) else {}

    @classmethod
    def for_host(cls, folder: Path) -> HashCache:
        """`hashes.<host>.json` in `folder`: machines sharing a cache folder (a cluster) do not overwrite each
        other's file. Seeded from a `hashes.json` of an earlier version."""
        cache = cls(Path(folder) / f"hashes.{host_name()}.json")
        legacy = Path(folder) / "hashes.json"
        if not cache._data and legacy.is_file():
            cache._data = cls(legacy)._data
        return cache

    def sha256(self, path: Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        with self._lock:
            entry = self._data.get(str(path))
            if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
                return entry["sha256"]
        digest = sha256_file(path)
        self.remember(path, digest, st)
        return digest

    def remember(self, path: Path, digest: str, st: os.stat_result | None = None) -> None:
        path = Path(path).resolve()
        st = st or path.stat()
        with self._lock:
            self._data[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
            self._dirty = True

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        with self._lock:
            data = dict(self._data)
            self._dirty = False
        with contextlib.suppress(OSError):  # the cache is an optimisation; a read-only folder must not stop a run
            atomic_write_json(self.path, data)


def free_bytes(path: Path) -> int:
    """Free disk space at `path` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} is not a file: {path}")


def read_toml(path: Path, what: str, hint: str = "") -> dict[str, Any]:
    """A TOML file the user named (a recipe, a jobs file): one line when it is missing, unreadable or not TOML."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}{hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {what} {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{what} {path} is not valid TOML: {e}") from None
