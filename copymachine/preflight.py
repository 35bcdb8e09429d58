"""Pre-flight: everything that can be checked before the first stage runs.

A run takes tens of minutes to hours; a wrong file, a full disk or an output path that holds
something else must stop it at once, with one line that says what is wrong and what to do, and
without touching anything. Checked here, in this order (the CLI calls them):

- the base model: a single-file safetensors checkpoint of a family copymachine trains; a pickle
  (.ckpt) only with --allow-pickle, and then copymachine does not open it (sd-scripts does);
- the images: readable, one frame, not tiny; colour modes that are converted get a note saying
  what happens (the size a picture trains at, and its note, come with the plan:
  `methods.choose_training_size`);
- the output: the run folder holds this run or nothing (another run, or files copymachine did
  not make, need --force), a final LoRA path holds nothing copymachine did not make, and the run
  and cache folders are writable;
- disk space: what the stages still to run will write, against the free space of each disk.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from copymachine import capabilities
from copymachine.engine import PINNED_COMMIT, Engine
from copymachine.errors import EnvironmentProblem, InputError, OutputError
from copymachine.files import HashCache, free_bytes
from copymachine.images import image_info, load_rgb
from copymachine.lorafile import read_safetensors
from copymachine.models import SD1, Family, ModelInfo, inspect_base_model
from copymachine.progress import Reporter
from copymachine.stamps import sized_stamp

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MIN_IMAGE_SIDE = 64  # px: SD's latent is 1/8 of the image; below 64 px there is nothing to learn
GB = 1024**3
MB = 1024**2

# Parameters of a whole checkpoint (used when a pickle cannot be read) and of a networks.lora
# LoRA per unit of rank (sd-scripts' default modules, U-Net + text encoder(s)).
# SD1.5: 1.07e9 parameters (the copy model at float is 4.27 GB, docs/engine-notes.md); its
# dim-64 LoRA is 151 MB at float -> 590k parameters per rank. SDXL: 3.47e9 parameters
# (6.94 GB at fp16); its LoRA ~3.4M parameters per rank.
MODEL_PARAMS = {"sd1": 1_066_000_000, "sd2": 1_300_000_000, "sdxl": 3_470_000_000}
LORA_PARAMS_PER_RANK = {"sd1": 590_000, "sd2": 650_000, "sdxl": 3_400_000}
BYTES = {"float": 4, "fp32": 4, "fp16": 2, "bf16": 2}
SMALL_STAGE_BYTES = 20 * MB  # images, captions, checks, configs, logs of one stage
# sd-scripts' peak memory while merging a LoRA into a model at float (measured here: 13.4 GB for
# SD1.5; SDXL's float merge was killed by the kernel's out-of-memory killer on a 24 GB machine
# while saving, so 28 GB is an estimate, 3.3x SD1.5's parameters). At fp16 SDXL's merge peaked at
# 22.7 GiB (measured here, sdxl_merge_lora.py on the CPU).
MERGE_PEAK_RAM = {"sd1": int(13.4 * GB), "sd2": int(14 * GB), "sdxl": int(28 * GB)}
MERGE_PEAK_RAM_HALF = {"sdxl": int(22.7 * 2**30)}
# sd-scripts' peak RAM training an effect LoRA on the CPU with the copy LoRA merged in memory
# (--base_weights, the default route), measured here at 64 px (SD1.5: 6.8 GiB, the copy LoRA
# alike; on the merged copy model the effect LoRA peaked at 8.8 GiB): the largest need of a default run.
# With a GPU the model sits in VRAM and RAM peaks lower.
TRAINING_PEAK_RAM = {"sd1": int(6.8 * GB), "sd2": int(7.5 * GB), "sdxl": int(22.6 * GB)}


# --- the base model ------------------------------------------------------------------------


def _looks_like_pickle(path: Path) -> bool:
    """torch.save writes a zip (PK\\x03\\x04) since torch 1.6; older files are a bare pickle
    (protocol 2+: 0x80 then the protocol number). Only the first bytes are read."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def check_base_model(path: Path, reporter: Reporter, allow_pickle: bool = False) -> ModelInfo:
    """The base model for train/diff: a safetensors checkpoint of a family copymachine trains.

    A pickle checkpoint (.ckpt) is refused unless `allow_pickle`: copymachine never opens one
    (unpickling can run code hidden in the file); with the flag it hands it to sd-scripts, which
    loads it with torch, and assumes it is Stable Diffusion 1.x (it cannot read the keys).
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
        if not allow_pickle:
            raise InputError(
                f"base model is a pickle file ({path.suffix}): {path}; loading a pickle can run code hidden in it, "
                "so copymachine takes .safetensors only: use a .safetensors download or convert it, "
                "or pass --allow-pickle if you trust this file (sd-scripts then loads it)"
            )
        size = path.stat().st_size
        if size == 0:
            raise InputError(f"base model is empty (0 bytes): {path}")
        if not _looks_like_pickle(path):
            raise InputError(f"base model is not a PyTorch checkpoint (neither a torch zip nor a pickle): {path}")
        reporter.warn(
            f"--allow-pickle: {path.name} is a pickle; copymachine does not open it, so it cannot check its family or "
            f"contents: assuming {SD1.label}; sd-scripts loads it with torch (use only files you trust)"
        )
        return ModelInfo(path=path, family=SD1, size_bytes=size, tensor_count=0)
    if path.is_file() and path.stat().st_size >= 8 and _looks_like_pickle(path):
        raise InputError(
            f"base model is a pickle file with a {path.suffix or 'missing'} suffix, not safetensors: {path}; "
            "use a .safetensors checkpoint (or, if you trust it, rename it .ckpt and pass --allow-pickle)"
        )
    return inspect_base_model(path)


def model_parameters(model: ModelInfo) -> int:
    """Number of parameters of the base model (from its safetensors header; a family's typical
    count for a pickle, which copymachine does not open)."""
    if model.tensor_count == 0:
        return MODEL_PARAMS.get(model.family.name, MODEL_PARAMS["sd1"])
    st = read_safetensors(model.path, "base model")
    return sum(math.prod(int(d) for d in info["shape"]) for info in st.tensors.values())


# --- images --------------------------------------------------------------------------------


_MODE_NOTES = {
    "P": "a palette image: converted to RGB",
    "CMYK": "CMYK: converted to RGB without a colour profile (colours may shift; convert it yourself for exact colours)",
    "YCbCr": "YCbCr: converted to RGB",
    "LAB": "Lab: converted to RGB",
    "HSV": "HSV: converted to RGB",
    "L": "greyscale: converted to RGB",
    "1": "black and white (1 bit): converted to RGB",
}


def check_image(path: Path, what: str, reporter: Reporter) -> tuple[int, int]:
    """One image: readable, one frame, at least 64 px a side. Notes what copymachine converts.
    Returns its size upright (after EXIF orientation). A picture of any larger size trains on a
    copy resized to the training size (the plan says which and why)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} is not a file: {path}")
    try:
        info = image_info(path)
    except InputError as e:
        raise InputError(f"{what}: {e.message}") from None
    width, height = info["size"]
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(
            f"{what} is {width}x{height} px: too small to train on (at least {MIN_IMAGE_SIDE} px a side; the memo used 512): {path}"
        )
    try:
        load_rgb(path)  # truncated, corrupt, animated: one line naming the file
    except InputError as e:
        raise InputError(f"{what}: {e.message}") from None
    notes = []
    if info["has_alpha"]:
        notes.append("has transparency: composited onto white")
    elif info["mode"] in _MODE_NOTES:
        notes.append(_MODE_NOTES[info["mode"]])
    if info["bit_depth"] > 8:
        notes.append(f"{info['bit_depth']}-bit: reduced to 8 bits per channel")
    if info["mode"] == "P" and info["has_alpha"]:
        notes.append("a palette image: converted to RGB")
    if info["orientation"] in (5, 6, 7, 8):
        notes.append(f"EXIF orientation {info['orientation']}: turned upright ({width}x{height} px; stored as {info['stored_size'][0]}x{info['stored_size'][1]})")
    for note in notes:
        reporter.info(f"note: {what} {path.name}: {note}")
    return width, height


def check_images(images: list[Path], edited: list[Path], reporter: Reporter) -> None:
    for path in images:
        check_image(path, "image", reporter)
    for path in edited:
        check_image(path, "edited image", reporter)


# --- the output ----------------------------------------------------------------------------

# What a run folder holds before its manifest is first written (a run killed at its start).
_RUN_FOLDER_SCAFFOLD = {".lock", ".stages", ".partial", "logs", "manifest.json"}


def _differences(previous: dict[str, Any], current: dict[str, Any], prev_run: dict[str, Any]) -> list[str]:
    out = []
    if previous.get("method") != current["method"]:
        out.append(f"method {previous.get('method')}")
    if previous.get("base_sha256") != current["base_sha256"]:
        out.append(f"another base model ({Path(str(prev_run.get('base', '?'))).name})")
    if previous.get("images") != current["images"]:
        names = [Path(p).name if p else "generated" for p in prev_run.get("images") or []]
        out.append(f"other images ({', '.join(names) or '?'})")
    return out


def made_here(final: Path, run_dir: Path, manifest: dict[str, Any] | None, hashes: HashCache) -> bool:
    """Did copymachine write this final LoRA in this run folder? Its stage's stamp records its
    sha256; a run killed between moving it into place and writing the stamp still lists it in the
    manifest's finals."""
    digest = hashes.sha256(final)
    for stamp_file in (run_dir / ".stages").glob("*.json"):
        try:
            stamp = json.loads(stamp_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for out in (stamp.get("outputs") or {}).values():
            if isinstance(out, dict) and Path(out.get("path", "")) == final and out.get("sha256") == digest:
                return True
    return bool(manifest) and str(final) in (manifest.get("finals") or {}).values()


def check_output(plan, identity: dict[str, Any], hashes: HashCache, force: bool) -> None:
    """Refuse to write into a run folder that holds another run or files copymachine did not
    make, unless --force. The same command run again (a resume) passes."""
    run_dir: Path = plan.run_dir
    hint = "use another --out, or --force to replace"
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"--out {run_dir} is a file, not a folder; give a folder for the run")
    manifest = None
    if run_dir.is_dir():
        manifest_path = run_dir / "manifest.json"
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                manifest = None
            if not isinstance(manifest, dict) or not isinstance(manifest.get("run"), dict):
                if not force:
                    raise OutputError(f"run folder {run_dir} has a manifest.json copymachine cannot read; {hint} it")
                manifest = None
            else:
                previous = manifest["run"].get("identity")
                if previous is None:  # written before identities were recorded: compare what it has
                    previous = {"method": manifest["run"].get("method"), "base_sha256": identity["base_sha256"], "images": identity["images"]}
                differs = _differences(previous, identity, manifest["run"])
                if differs and not force:
                    raise OutputError(f"run folder {run_dir} holds another run ({'; '.join(differs)}); {hint} its results")
        else:
            allowed = set(_RUN_FOLDER_SCAFFOLD)
            if plan.cache_dir.parent == run_dir:
                allowed.add(plan.cache_dir.name)
            foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in allowed)
            if foreign and not force:
                raise OutputError(
                    f"--out {run_dir} is not empty and is not a copymachine run folder (no manifest.json; it holds {foreign[0]!r}); "
                    f"use a new or empty folder, or --force to write into it"
                )
    for final in plan.finals.values():
        if final.exists() and not force:
            if final.is_dir():
                raise OutputError(f"the final LoRA's path {final} is a folder; use another --name or --out")
            if not made_here(final, run_dir, manifest, hashes):
                raise OutputError(f"{final} exists and was not made by this run; use another --name or --out, or --force to replace it")


def _existing_ancestor(path: Path) -> Path:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(folders: dict[str, Path]) -> None:
    """Each folder can be created and written (a probe file, removed at once)."""
    for what, folder in folders.items():
        folder = Path(folder)
        base = _existing_ancestor(folder)
        if not base.is_dir():
            raise OutputError(f"cannot create the {what} {folder}: {base} is a file, not a folder")
        target = folder if folder.is_dir() else base
        try:
            fd, probe = tempfile.mkstemp(prefix=".copymachine-write-test-", dir=target)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise OutputError(f"cannot write to the {what} {folder} ({e.strerror or e}); choose another folder or fix its permissions") from None


# --- disk space ----------------------------------------------------------------------------


@dataclass
class SpaceNeed:
    folder: Path  # the stage folder (its disk is what counts)
    bytes: int
    what: str
    stage: str = ""  # the stage's name (a need of a plan's stage)


def lora_bytes(family: str, rank: int, precision: str) -> int:
    return LORA_PARAMS_PER_RANK.get(family, LORA_PARAMS_PER_RANK["sd1"]) * max(int(rank), 1) * BYTES.get(precision, 4)


def estimate_space(plan, model: ModelInfo, params: int) -> list[SpaceNeed]:
    """Bytes each stage that is not done yet will write."""
    family = model.family.name
    estimate: dict[str, int] = {}
    needs = []
    for stage in plan.stages:
        p = stage.spec
        kind = stage.kind
        if kind == "merge_model":
            size = params * BYTES.get(p.save_precision, 4)
            what = "a merged model"
        elif kind == "train_lora":
            size = lora_bytes(family, p.training.network_dim, p.training.save_precision)
            what = "a LoRA"
        elif kind == "extract_lora":
            size = lora_bytes(family, p.dim, "float")
            what = "a LoRA"
        elif kind in ("resize_lora", "svd_merge"):
            size = lora_bytes(family, p.rank, p.save_precision)
            what = "a LoRA"
        elif kind == "finalize":
            ref = stage.inputs.get("lora")
            size = estimate.get(ref.producer, lora_bytes(family, 64, "float")) if ref is not None and ref.producer else lora_bytes(family, 64, "float")
            what = "the final LoRA"
        else:
            size = 0
            what = "images and notes"
        estimate[stage.name] = size  # its file, which a later stage may copy (the final LoRA)
        size += SMALL_STAGE_BYTES
        if sized_stamp(stage) is None:
            needs.append(SpaceNeed(stage.workdir, size, what, stage.name))
    return needs


def _device(path: Path) -> int:
    return os.stat(_existing_ancestor(path)).st_dev


def by_disk(needs: list[SpaceNeed]) -> list[list[SpaceNeed]]:
    """The needs grouped by the disk their folders are on (a folder not made yet: its nearest
    existing parent's), in the order first named."""
    groups: dict[int, list[SpaceNeed]] = {}
    for need in needs:
        groups.setdefault(_device(need.folder), []).append(need)
    return list(groups.values())


def one_image_run_needs(family: str, run_dir: Path, cache_dir: Path) -> list[SpaceNeed]:
    """What a default one-image run writes, before there is a plan (doctor): the cache the copy
    LoRA (the copy model stays in memory: the default route), the run folder the effect LoRA, its
    resized copy and the final LoRA, each stage's small files too (as estimate_space counts them)."""
    lora = lora_bytes(family, 64, "float")
    return [
        SpaceNeed(run_dir, 3 * lora + 6 * SMALL_STAGE_BYTES, "run folders"),
        SpaceNeed(cache_dir, lora + 2 * SMALL_STAGE_BYTES, "cache"),
    ]


def human(n: int) -> str:
    if n >= GB:
        return f"{n / GB:.1f} GB"
    return f"{max(n, 0) / MB:.0f} MB"


def check_space(plan, model: ModelInfo, reporter: Reporter, needs: list[SpaceNeed] | None = None) -> dict[str, Any]:
    """Refuse to start when a disk has less free space than what the stages still to run will
    write there (with a 5 % + 200 MB margin). Returns the estimate (for the manifest)."""
    needs = estimate_space(plan, model, model_parameters(model)) if needs is None else needs
    summary = {}
    for items in by_disk(needs):
        total = sum(n.bytes for n in items)
        required = int(total * 1.05) + 200 * MB
        folder = min((n.folder for n in items), key=lambda p: len(p.parts))
        free = free_bytes(folder)
        summary[str(folder)] = {"needed": required, "free": free}
        if free < required:
            largest = max(items, key=lambda n: n.bytes)
            raise OutputError(
                f"not enough disk space at {_existing_ancestor(folder)}: this run still writes ~{human(required)} there "
                f"(largest: {largest.what}, {human(largest.bytes)}), {human(free)} free; free some space, "
                f"or put the cache (--cache-dir) or the run (--out) on another disk"
            )
    return summary


# --- path lengths (Windows) ------------------------------------------------------------------

# Windows' MAX_PATH is 260 characters with the terminating NUL; 10 are left for what sd-scripts
# names inside a stage's scratch folder that the plan does not know.
WINDOWS_PATH_LIMIT = 250
LONG_PATHS_KEY = r"SYSTEM\CurrentControlSet\Control\FileSystem"
LONG_PATHS_FIX = (
    "enable long paths (PowerShell as administrator: New-ItemProperty -Path 'HKLM:\\" + LONG_PATHS_KEY
    + "' -Name LongPathsEnabled -Value 1 -PropertyType DWORD -Force, then open a new terminal), "
    "or put the run and the cache in a shorter folder (--out C:\\runs\\NAME, --cache-dir C:\\runs\\_cache)"
)
# the files each kind writes in its folder besides its outputs: (sub-folder, name after the stage's slug)
_KIND_FILES = {
    "train_lora": [("config", "-training.toml"), ("config", "-dataset.toml"), ("dataset/{slug}", "image.png")],
    "copy_check": [("config", "-prompts.txt")],
    "generate_image": [("config", "-prompt.txt")],
}


def _temp_of(path: PurePath) -> PurePath:
    """The temporary name files.atomic_* writes `path` under first (mkstemp: 8 random characters)."""
    return path.parent / f".{path.name}.XXXXXXXX.partial"


def written_paths(plan) -> list[PurePath]:
    """Every path the run writes that its plan can name: each stage's outputs and their temporary
    names, its scratch folder's files, configs, dataset, stamp and log, the manifest."""
    paths: list[PurePath] = [plan.manifest_path, _temp_of(plan.manifest_path)]
    for stage in plan.stages:
        scratch = stage.workdir / ".partial" / stage.slug
        for out in stage.outputs.values():
            paths += [out, _temp_of(out), scratch / out.name]
        paths += [_temp_of(stage.workdir / ".stages" / f"{stage.slug}.json"), plan.run_dir / "logs" / f"{stage.slug}.log"]
        if stage.shared:
            paths.append(stage.workdir / f"{stage.slug}.log")
        for folder, name in _KIND_FILES.get(stage.kind, []):
            if "{slug}" in folder:
                paths.append(stage.workdir / folder.format(slug=stage.slug) / name)
            else:
                paths.append(stage.workdir / folder / f"{stage.slug}{name}")
    paths += [_temp_of(p) for p in plan.finals.values()]
    return paths


def windows_long_paths_enabled() -> bool:
    """Whether Windows lets programs past MAX_PATH (the registry's LongPathsEnabled; Python
    declares itself long-path aware). The seam the tests replace."""
    import winreg  # type: ignore[import-not-found]

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, LONG_PATHS_KEY) as key:  # type: ignore[attr-defined]
            value, _ = winreg.QueryValueEx(key, "LongPathsEnabled")  # type: ignore[attr-defined]
    except OSError:
        return False
    return value == 1


def check_path_lengths(plan, platform: str | None = None) -> None:
    """On Windows without long paths, refuse before any work a run that would write a path
    past WINDOWS_PATH_LIMIT characters (it would fail minutes in, at the first such file)."""
    if (platform or sys.platform) != "win32":
        return
    longest = max(written_paths(plan), key=lambda p: len(str(p)))
    if len(str(longest)) <= WINDOWS_PATH_LIMIT or windows_long_paths_enabled():
        return
    raise OutputError(
        f"this run would write paths of up to {len(str(longest))} characters, past Windows' limit of 260 "
        f"(long paths are not enabled): {longest}; {LONG_PATHS_FIX}"
    )


# --- memory --------------------------------------------------------------------------------

FP16_MERGE = "--set merge.precision=fp16 --set merge.save_precision=fp16"


def memory_bytes(platform: str | None = None) -> dict[str, int | None]:
    """Total and available RAM and total swap (None: unknown): from psutil when it is importable
    (copymachine does not depend on it), else from the system: /proc/meminfo (Linux),
    GlobalMemoryStatusEx (Windows), sysctl and vm_stat (macOS), sysconf (other Unixes)."""
    platform = platform or sys.platform
    out: dict[str, int | None] = {"total": None, "available": None, "swap": None}
    try:
        import psutil  # type: ignore[import-not-found]

        vm = psutil.virtual_memory()
        return {"total": int(vm.total), "available": int(vm.available), "swap": int(psutil.swap_memory().total)}
    except Exception:  # absent, or one that cannot read this system: the system's own source
        pass
    try:
        if platform == "win32":
            return windows_memory(global_memory_status())
        if platform == "darwin":
            return mac_memory(_command_text(["sysctl", "-n", "hw.memsize", "vm.swapusage"]), _command_text(["vm_stat"]))
    except (OSError, ValueError, IndexError, AttributeError, subprocess.SubprocessError):
        return out
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2] and line.split()[1].isdigit()}
        out["total"] = fields.get("MemTotal")
        out["available"] = fields.get("MemAvailable")
        out["swap"] = fields.get("SwapTotal")
        return out
    except (OSError, ValueError, IndexError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        out["total"] = page * os.sysconf("SC_PHYS_PAGES")
        out["available"] = page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return out


class _MEMORYSTATUSEX(ctypes.Structure):
    """Windows' MEMORYSTATUSEX (64 bytes): two DWORDs, then byte counts."""

    _fields_ = [("dwLength", ctypes.c_uint32), ("dwMemoryLoad", ctypes.c_uint32)] + [
        (name, ctypes.c_uint64) for name in ("ullTotalPhys", "ullAvailPhys", "ullTotalPageFile", "ullAvailPageFile",
                                             "ullTotalVirtual", "ullAvailVirtual", "ullAvailExtendedVirtual")]  # fmt: skip


def global_memory_status() -> dict[str, int]:
    """Windows' GlobalMemoryStatusEx (the seam the tests replace): its fields by name."""
    status = _MEMORYSTATUSEX()
    status.dwLength = ctypes.sizeof(_MEMORYSTATUSEX)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
        raise OSError("GlobalMemoryStatusEx failed")
    return {name: int(getattr(status, name)) for name, _ in _MEMORYSTATUSEX._fields_}


def windows_memory(status: dict[str, int]) -> dict[str, int | None]:
    """RAM and swap from GlobalMemoryStatusEx's fields. Its "page file" total is the commit limit,
    RAM + page files: the swap is what it adds to the RAM."""
    total = status["ullTotalPhys"]
    return {"total": total, "available": status["ullAvailPhys"], "swap": max(0, status["ullTotalPageFile"] - total)}


def _command_text(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout


def mac_memory(sysctl: str, vm_stat: str) -> dict[str, int | None]:
    """RAM and swap from `sysctl -n hw.memsize vm.swapusage` ("17179869184" and "total = 2048.00M
    used = ..."), the available RAM from `vm_stat` (free + inactive + speculative pages)."""
    lines = sysctl.splitlines()
    total = int(lines[0].strip())
    swap = None
    match = re.search(r"total\s*=\s*([\d.]+)([KMGT])", sysctl)
    if match:
        swap = int(float(match.group(1)) * 1024 ** ("KMGT".index(match.group(2)) + 1))
    available = None
    page = re.search(r"page size of (\d+) bytes", vm_stat)
    if page:
        pages = dict(re.findall(r"^Pages (free|inactive|speculative):\s+(\d+)\.", vm_stat, re.MULTILINE))
        available = int(page.group(1)) * sum(int(n) for n in pages.values()) if pages else None
    return {"total": total, "available": available, "swap": swap}


def ram_and_swap(mem: dict[str, int | None]) -> int:
    """What a process can use before the kernel kills it (0: unknown)."""
    return (mem["total"] or 0) + (mem["swap"] or 0)


def merge_ram(family: str, half: bool = False) -> int:
    """sd-scripts' peak RAM merging a LoRA into a `family` checkpoint, at float or half precision."""
    return MERGE_PEAK_RAM_HALF.get(family, MERGE_PEAK_RAM[family] // 2) if half else MERGE_PEAK_RAM[family]


def fp16_merge_fits(family: str, have: int) -> int | None:
    """The measured fp16 merge peak of `family` when it fits in `have` bytes (the way out of a
    float merge that does not)."""
    half = MERGE_PEAK_RAM_HALF.get(family)
    return half if half and half <= have else None


def check_resources(plan, model: ModelInfo, reporter: Reporter) -> None:
    """Before a run: the disk space (refused when short; the estimate is recorded in the plan's
    info, for the manifest) and the RAM a merge needs (a warning)."""
    needs = estimate_space(plan, model, model_parameters(model))
    plan.info.disk_space = check_space(plan, model, reporter, needs)
    # what each stage still to run writes: a stage that meets a full disk says what it needs
    plan.info.stage_bytes = {n.stage: n.bytes for n in needs}
    check_memory(plan, model, reporter)


def disk_full(folder: Path, stage_title: str, needed: int | None, cause: str = "", log: Path | None = None) -> OutputError:
    """The error of a stage that met a full disk (sd-scripts' write or copymachine's own): one
    line naming the folder, what the stage needs there and what is free, and how to go on."""
    folder = Path(folder)
    try:
        free = f", {human(free_bytes(folder))} free"
    except OSError:
        free = ""
    need = f" ~{human(needed)} ({needed:,} bytes)" if needed else ""
    return OutputError(
        f"not enough disk space at {folder}{f' ({cause})' if cause else ''}: stage '{stage_title}' writes{need or ' its outputs'} there{free}; "
        f"free some space (or put --cache-dir / --out on another disk) and run the same command again: it resumes at this stage"
        + (f". Log: {log}" if log else "")
    )


def check_memory(plan, model: ModelInfo, reporter: Reporter) -> None:
    """Say before starting when a merge into the checkpoint will likely not fit in RAM (+ swap):
    the kernel then kills sd-scripts minutes into the run."""
    have = ram_and_swap(memory_bytes())
    if not have:
        return
    for stage in plan.stages:
        if stage.kind != "merge_model" or sized_stamp(stage) is not None:
            continue
        family = stage.spec.family.name
        half = stage.spec.precision != "float"
        need = merge_ram(family, half)
        if need <= have:
            continue
        fp16 = None if half else fp16_merge_fits(family, have)
        hint = f"; merging at fp16 peaks at ~{human(fp16)}: {FP16_MERGE}" if fp16 else ""
        reporter.warn(
            f"'{stage.title}' merges into a {model.family.label} checkpoint at {stage.spec.precision} precision, which needs "
            f"~{human(need)} of RAM; this machine has {human(have)} (RAM + swap), so sd-scripts will likely be killed{hint}"
        )
        return


# --- sd-scripts and its tokenizers ---------------------------------------------------------


def engine_warning(engine: Engine) -> str | None:
    """What to say about the sd-scripts checkout's commit (after "sd-scripts at "): not the
    pinned one, or not a git checkout and not a release copymachine knows; None when it is fine."""
    if engine.commit and not engine.pinned:
        return f"{engine.root} is at commit {engine.commit[:8]}, not the pinned {PINNED_COMMIT[:8]}; copymachine is tested against the pinned one"
    if engine.commit is None and engine.identity not in capabilities.RELEASE_TREES:
        return f"{engine.root} is not a git checkout; cannot tell its commit"
    return None


def tokenizer_problem(folder: Path | None, offline: bool, family: Family) -> tuple[bool, str] | None:
    """sd-scripts loads the family's CLIP tokenizer(s) from --tokenizer-cache-dir, else from the
    hub. Returns (whether it stops the run, what to say), or None when they will be found."""
    if folder is None:
        if offline:
            return False, f"offline without --tokenizer-cache-dir: sd-scripts needs the tokenizer(s) {', '.join(family.tokenizers)} in the Hugging Face cache, or it fails"
        return None
    missing = [name for name in family.tokenizers if not (Path(folder) / name).is_dir()]
    if missing and offline:
        return True, f"--tokenizer-cache-dir {folder} lacks {', '.join(missing)} ({family.label} needs {', '.join(family.tokenizers)}); offline, sd-scripts cannot fetch it"
    if missing:
        return False, f"--tokenizer-cache-dir {folder} lacks {', '.join(missing)}: sd-scripts will download it there from the hub"
    return None


def check_tokenizers(settings, family: Family, reporter: Reporter) -> None:
    """Name a missing tokenizer now instead of letting the hub error (or, offline, a misleading
    protobuf ImportError) surface minutes later."""
    problem = tokenizer_problem(settings.tokenizer_cache_dir, settings.offline, family)
    if problem is None:
        return
    fatal, text = problem
    if fatal:
        raise EnvironmentProblem(text)
    reporter.warn(text)


# --- GPU memory ------------------------------------------------------------------------------


LOW_VRAM_TEXT = "gradient checkpointing, 8-bit AdamW; for SDXL also the text encoders' outputs cached and the U-Net trained alone"


def gpu_memory(settings) -> tuple[int | None, int | None, str]:
    """(free, total, which GPU) of the GPU the run uses: the pinned one, else the one with the
    least free memory (each parallel job may land on any)."""
    probe = settings.probe
    if probe is None:
        return None, None, ""
    names = probe.gpus or []
    vram = list(probe.vram) or ([(probe.vram_free, probe.vram_total)] if probe.vram_free is not None else [])
    if not vram:
        return None, None, ""
    index = settings.pinned_gpu if settings.pinned_gpu is not None and settings.pinned_gpu < len(vram) else min(range(len(vram)), key=lambda i: vram[i][0])
    name = names[index] if index < len(names) else "a CUDA GPU"
    return vram[index][0], vram[index][1], f"GPU {index} ({name})"


def vram_advice(plan, free: int, low_vram: bool) -> str | None:
    """What to say when the plan's largest GPU stage will not fit in `free` bytes; None when it fits."""
    from copymachine import vram

    ranked = vram.largest(plan)
    if not ranked or ranked[0][1].total <= free:
        return None
    stage, need = ranked[0]
    text = f"'{stage.title}' ({need.what}) needs ~{human(need.total)} of GPU memory by copymachine's estimate"
    if low_vram:
        return text + " even with --low-vram; use a smaller --resolution or network dim (--set copy.network_dim=N, --set effect.network_dim=N), or a GPU with more memory"
    lighter = vram.largest(plan, low_vram=True)[0][1]
    if lighter.total <= free:
        return text + f"; --low-vram needs ~{human(lighter.total)} ({LOW_VRAM_TEXT})"
    return text + f"; even --low-vram ({LOW_VRAM_TEXT}) needs ~{human(lighter.total)}: also lower --resolution or the network dim, or use a GPU with more memory"


def check_vram(plan, settings, requested_jobs: int | None, trainings: int, reporter: Reporter) -> int:
    """Before any work, on the GPU: how many stages share the GPU (--jobs, else what its free
    memory holds by the estimate of copymachine/vram.py), and a warning when the run will likely
    not fit. The estimate is recorded in the plan's info (the manifest). Returns the jobs."""
    from copymachine import vram

    if any(s.kind == "train_lora" and s.spec.training_options.get("network_train_unet_only") and s.spec.training_options.get("cache_text_encoder_outputs") for s in plan.stages):
        reporter.note("--low-vram on SDXL: the text encoders' outputs are cached once and the U-Net trains alone, so the LoRAs have "
                      "no text-encoder part (the memo trains both) and the caption is not shuffled")
    free, total, which = gpu_memory(settings)
    gpus = settings.gpus
    jobs = requested_jobs or vram.default_jobs(plan, gpus, free, trainings)
    per_gpu = 1 if gpus > 1 else jobs  # several GPUs: one stage on each
    ranked = vram.largest(plan)
    if not ranked:
        return jobs
    peak = vram.side_by_side(plan, per_gpu)
    plan.info.vram = {
        "estimate_bytes": peak,
        "largest_stage": ranked[0][0].name,
        "largest_bytes": ranked[0][1].total,
        "parts": ranked[0][1].parts,
        "side_by_side": per_gpu,
        "free_bytes": free,
        "total_bytes": total,
        "basis": "estimate (copymachine/vram.py): weights and optimizer from parameter counts, activations and CUDA context not measured on a GPU",
    }
    if free is None:
        return jobs
    where = f"{which} has {human(free)} free of {human(total or 0)}"
    advice = vram_advice(plan, free, settings.profile.name == "gpu-low-vram")
    if advice:
        reporter.warn(f"{advice}; {where}: it will likely run out of memory")
    elif peak > free:
        fits = vram.fitting_jobs(plan, free, jobs)
        reporter.warn(f"--jobs {jobs}: {per_gpu} stages side by side need ~{human(peak)} of GPU memory by copymachine's estimate; {where}: use --jobs {fits}")
    else:
        stage, need = ranked[0]
        together = f"; {per_gpu} side by side ~{human(peak)}" if per_gpu > 1 else ""
        reporter.info(f"GPU memory by copymachine's estimate: the largest stage, '{stage.title}' ({need.what}), ~{human(need.total)}{together}; {where}")
    return jobs


def eight_bit_optimizers(plan) -> list[str]:
    return sorted({s.spec.training.optimizer for s in plan.stages if s.kind == "train_lora" and "8bit" in s.spec.training.optimizer.lower()})


def check_bitsandbytes(plan, settings) -> None:
    """An 8-bit optimizer (--low-vram's AdamW8bit, or the recipe's) needs bitsandbytes in the
    Python for sd-scripts: refused before any work when it is missing or fails to import."""
    optimizers = eight_bit_optimizers(plan)
    if not optimizers or settings.engine is None:
        return
    probe = settings.engine.probe(("bitsandbytes",))
    problem = "lacks it" if probe.missing else (f"fails to import it ({probe.broken['bitsandbytes']})" if probe.broken else None)
    if problem:
        why = "--low-vram trains" if settings.profile.optimizer in optimizers else "the recipe trains"
        raise EnvironmentProblem(
            f"{why} with {', '.join(optimizers)}, which needs bitsandbytes; the Python for sd-scripts ({settings.engine.python}) {problem}: "
            "pip install bitsandbytes into it" + (", or train without --low-vram" if settings.profile.optimizer in optimizers else "")
        )
