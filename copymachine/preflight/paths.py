"""Pre-flight of path lengths: on Windows without long paths, a run that would write a path past MAX_PATH
is refused before any work."""

from __future__ import annotations

import sys
from pathlib import PurePath

from copymachine.errors import OutputError

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

