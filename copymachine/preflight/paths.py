"""Pre-flight of the output: the run folder and the final LoRAs' paths hold this run or nothing (else --force), the
run and cache folders are writable, and on Windows without long paths no path the run writes is past MAX_PATH."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path, PurePath
from typing import Any

from copymachine.errors import OutputError
from copymachine.files import HashCache
from copymachine.locks import OS_LOCK_NAME

# What a run folder holds before its manifest is first written (a run killed at its start: filelock leaves its file)
_RUN_FOLDER_SCAFFOLD = {".lock", OS_LOCK_NAME, ".stages", ".partial", "logs", "manifest.json"}


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
    """Did copymachine write this final LoRA here? A stamp records its sha256; a run killed between moving it into
    place and writing the stamp still lists it in the manifest's finals."""
    digest = hashes.sha256(final)
    for stamp_file in (run_dir / ".stages").glob("*.json"):
        try:
            stamp = json.loads(stamp_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for out in (stamp.get("outputs") or {}).values():
            if isinstance(out, dict) and Path(out.get("path", "")) == final and out.get("sha256") == digest:
                return True
    return manifest is not None and str(final) in (manifest.get("finals") or {}).values()


def check_output(plan, identity: dict[str, Any], hashes: HashCache, force: bool) -> None:
    """Refuse, unless --force, a run folder holding another run or foreign files; a resume passes."""
    run_dir: Path = plan.run_dir
    hint = "use another --out, or --force to replace"
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"--out {run_dir} is a file, not a folder; give a folder for the run")
    manifest = None
    if (run_dir / "manifest.json").is_file():
        try:
            manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        run = manifest.get("run") if isinstance(manifest, dict) else None
        if not isinstance(run, dict):
            if not force:
                raise OutputError(f"run folder {run_dir} has a manifest.json copymachine cannot read; {hint} it")
            manifest = None
        else:
            previous = run.get("identity")
            if previous is None:  # written before identities were recorded: compare what it has
                previous = {"method": run.get("method"), "base_sha256": identity["base_sha256"],
                            "images": identity["images"]}
            differs = _differences(previous, identity, run)
            if differs and not force:
                raise OutputError(f"run folder {run_dir} holds another run ({'; '.join(differs)}); {hint} its results")
    elif run_dir.is_dir():
        allowed = _RUN_FOLDER_SCAFFOLD | ({plan.cache_dir.name} if plan.cache_dir.parent == run_dir else set())
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in allowed)
        if foreign and not force:
            raise OutputError(f"--out {run_dir} is not empty and is not a copymachine run folder (no manifest.json; "
                              f"it holds {foreign[0]!r}); use a new or empty folder, or --force to write into it")
    for final in plan.finals.values():
        if final.exists() and not force:
            if final.is_dir():
                raise OutputError(f"the final LoRA's path {final} is a folder; use another --name or --out")
            if not made_here(final, run_dir, manifest, hashes):
                raise OutputError(f"{final} exists and was not made by this run; use another --name or --out, or "
                                  "--force to replace it")


def existing_ancestor(path: Path) -> Path:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(folders: dict[str, Path]) -> None:
    """Each folder can be created and written (a probe file, removed at once)."""
    for what, folder in folders.items():
        folder = Path(folder)
        base = existing_ancestor(folder)
        if not base.is_dir():
            raise OutputError(f"cannot create the {what} {folder}: {base} is a file, not a folder")
        target = folder if folder.is_dir() else base
        try:
            fd, probe = tempfile.mkstemp(prefix=".copymachine-write-test-", dir=target)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise OutputError(f"cannot write to the {what} {folder} ({e.strerror or e}); choose another folder or fix "
                              "its permissions") from None


# Windows' MAX_PATH is 260 characters with the terminating NUL; 10 are left for what sd-scripts
# names inside a stage's scratch folder that the plan does not know.
WINDOWS_PATH_LIMIT = 250
LONG_PATHS_KEY = r"SYSTEM\CurrentControlSet\Control\FileSystem"
LONG_PATHS_FIX = (f"enable long paths (PowerShell as administrator: New-ItemProperty -Path 'HKLM:\\{LONG_PATHS_KEY}' "
                  "-Name LongPathsEnabled -Value 1 -PropertyType DWORD -Force, then open a new terminal), or put the "
                  "run and the cache in a shorter folder (--out C:\\runs\\NAME, --cache-dir C:\\runs\\_cache)")
# the files each kind writes in its folder besides its outputs
_KIND_FILES = {"train_lora": ["config/{slug}-training.toml", "config/{slug}-dataset.toml", "dataset/{slug}/image.png"],
               "copy_check": ["config/{slug}-prompts.txt"], "generate_image": ["config/{slug}-prompt.txt"]}


def _temp_of(path: PurePath) -> PurePath:
    """The temporary name files.atomic_* writes `path` under first (mkstemp: 8 random characters)."""
    return path.parent / f".{path.name}.XXXXXXXX.partial"


def written_paths(plan) -> list[PurePath]:
    """Every path the run writes that its plan can name (outputs, temporary names, scratch, configs, stamps, logs)."""
    paths: list[PurePath] = [plan.manifest_path, _temp_of(plan.manifest_path)]
    for stage in plan.stages:
        scratch = stage.workdir / ".partial" / stage.slug
        for out in stage.outputs.values():
            paths += [out, _temp_of(out), scratch / out.name]
        paths += [_temp_of(stage.workdir / ".stages" / f"{stage.slug}.json"),
                  plan.run_dir / "logs" / f"{stage.slug}.log"]
        if stage.shared:
            paths.append(stage.workdir / f"{stage.slug}.log")
        paths += [stage.workdir / name.format(slug=stage.slug) for name in _KIND_FILES.get(stage.kind, [])]
    paths += [_temp_of(p) for p in plan.finals.values()]
    return paths


def windows_long_paths_enabled() -> bool:
    """The registry's LongPathsEnabled (Python declares itself long-path aware). The seam the tests replace."""
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, LONG_PATHS_KEY) as key:  # type: ignore[attr-defined]
            value, _ = winreg.QueryValueEx(key, "LongPathsEnabled")  # type: ignore[attr-defined]
    except OSError:
        return False
    return value == 1


def check_path_lengths(plan, platform: str | None = None) -> None:
    """Refuse a run that would write a path past WINDOWS_PATH_LIMIT (it would fail minutes in, at that file)."""
    if (platform or sys.platform) != "win32":
        return
    longest = max(written_paths(plan), key=lambda p: len(str(p)))
    if len(str(longest)) <= WINDOWS_PATH_LIMIT or windows_long_paths_enabled():
        return
    raise OutputError(f"this run would write paths of up to {len(str(longest))} characters, past Windows' limit of "
                      f"260 (long paths are not enabled): {longest}; {LONG_PATHS_FIX}")

