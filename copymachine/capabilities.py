"""What the user's sd-scripts (any release from v0.8.7 on) can do, learnt from it once per install: each script's
`--help` options and gen_img.py's per-prompt options (from its prompt-line parser). An option or TOML key a script
lacks is refused before it runs (the TOML would ignore it silently); gen_img.py without `--f` (v0.9.0) renders with
`--sequential_file_name` and its files are renamed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from copymachine.engine import Engine, read_git_commit
from copymachine.errors import EnvironmentProblem, InputError
from copymachine.files import atomic_write_text
from copymachine.runner import StreamWatcher

FORMAT = 3  # of the cache files; bump when what is learnt changes (2: option names ASCII only; 3: family scripts)

# The scripts copymachine calls (relative to the sd-scripts root).
SCRIPTS = ("train_network.py", "sdxl_train_network.py", "gen_img.py", "networks/merge_lora.py",
           "networks/sdxl_merge_lora.py", "networks/svd_merge_lora.py", "networks/resize_lora.py",
           "networks/extract_lora_from_models.py")

# The scripts of the families after SDXL (copymachine/families/): learnt where this sd-scripts has them (v0.8.7 has
# none of them); a run on such a family is refused when its trainer is absent (preflight.check_family_scripts).
FAMILY_SCRIPTS = ("flux_train_network.py", "flux_minimal_inference.py", "sd3_train_network.py",
                  "sd3_minimal_inference.py", "anima_train_network.py", "anima_minimal_inference.py")

# Releases by commit (kohya-ss/sd-scripts tags), and the pinned commit.
RELEASES = {
    "bfb352bc433326a77aca3124248331eb60c49e8c": "v0.8.7",
    "6e3c1d0b58f03522f294dc2b0acbbbecc944d018": "v0.9.0",
    "8f4ee8fc343b047965cd8976fca65c3a35b7593a": "v0.9.1",
    "966e9d7f6bb4058abbddb815dd40462b35ffb1d2": "v0.10.0",
    "ae72efb92babe89ff8e70f057e42db68440e8d61": "v0.10.1",
    "48d368fa557731ad0488c07304dfeba8c07910eb": "v0.10.1+5 (pinned)",
}
# The same releases extracted from their source archive (no .git, GitHub's "Source code"): engine.tree_hash of
# `git archive <tag>` (`python -m copymachine.capabilities DIR` prints a folder's identity).
RELEASE_TREES = {
    "tree:94f3ff593bd65a9e3694d07f63de45f7e53f5c1f575996b8042329aa5f78ef3f": "v0.8.7",
    "tree:a40f135d7d36794033dc55131edfb678e6aca56e4dc6c1bba28b242c77de7bd3": "v0.9.1",
    "tree:c384f419e3970f0f694b47ed7cd9af1dce4f49d2b15284ea9defc40ac652cf1f": "v0.10.1",
    "tree:7f40c31ec6557c4e82ecab7a93a42beb9a704e31e212c7a889ac09d93a6dc240": "v0.10.1+5 (pinned)",
}
# What copymachine's version runs were made against (README "Which sd-scripts").
TESTED = ("v0.8.7", "v0.9.1", "v0.10.1", "v0.10.1+5 (pinned)")

FILE_NAME_OPTION = "f"  # gen_img.py's per-prompt output name (v0.9.0 on)
SEQUENTIAL_NAMES = "--sequential_file_name"

# ASCII: the help texts glue Japanese to option names ("--save_last_n_stepsを上書きする")
_OPTION = re.compile(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)", re.ASCII)
_PROMPT_OPTION = re.compile(r"""re\.match\(\s*r?["']([A-Za-z][A-Za-z0-9]*) """)


@dataclass
class Capabilities:
    identity: str
    version: str
    known: bool  # a release (or the pinned commit) copymachine knows by its commit or tree
    options: dict[str, list[str]] = field(default_factory=dict)  # script -> its --help options
    prompt_options: list[str] = field(default_factory=list)  # gen_img.py's per-prompt options
    errors: dict[str, str] = field(default_factory=dict)  # script -> why its --help failed
    format: int = FORMAT
    root: str = ""  # the install it was learnt from

    @property
    def file_names(self) -> bool:
        """gen_img.py takes a file name per prompt line (`--f NAME`)."""
        return FILE_NAME_OPTION in self.prompt_options

    @property
    def sequential_names(self) -> bool:
        return SEQUENTIAL_NAMES in self.options.get("gen_img.py", [])

    def has(self, script: str, option: str) -> bool:
        return option in self.options.get(script, ())

    def lacking(self, script: str, options: list[str]) -> list[str]:
        """Which of `options` (`--name`) `script` does not list in its --help."""
        if script not in self.options:
            return []  # not learnt (its --help failed): argparse itself will tell
        known = set(self.options[script])
        return [o for o in dict.fromkeys(options) if o not in known]

    def summary(self) -> str:
        sequential = "no per-prompt --f: renders with --sequential_file_name and renames"
        naming = "per-prompt file names (--f)" if self.file_names else (
            sequential if self.sequential_names else "no way to name gen_img.py's files")
        counts = ", ".join(f"{Path(s).name} {len(o)}" for s, o in self.options.items())
        return f"{naming}; options: {counts}"

    def version_text(self) -> str:
        return self.version if self.known else f"{self.version}, not a release copymachine knows"


def cache_dir() -> Path:
    """$COPYMACHINE_ENGINE_CACHE, else the user's cache folder (XDG / %LOCALAPPDATA%)."""
    if os.environ.get("COPYMACHINE_ENGINE_CACHE"):
        return Path(os.environ["COPYMACHINE_ENGINE_CACHE"])
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):  # pragma: no cover - Windows
        return Path(os.environ["LOCALAPPDATA"]) / "copymachine" / "engines"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "copymachine" / "engines"


def cache_path(engine: Engine) -> Path:
    """Per install (its path) and version (commit or tree), in the user's cache: doctor, dry runs and runs share it."""
    where = hashlib.sha256(str(Path(engine.root).resolve()).encode("utf-8")).hexdigest()[:12]
    return cache_dir() / f"{engine.identity.replace(':', '-')}-{where}.json"


def name_version(engine: Engine) -> tuple[str, bool]:
    identity = engine.identity
    if engine.commit:
        if engine.commit in RELEASES:
            return RELEASES[engine.commit], True
        return f"commit {engine.commit[:8]}", False
    if identity in RELEASE_TREES:
        return f"{RELEASE_TREES[identity]} (extracted)", True
    return f"a folder without .git (tree {identity.split(':', 1)[1][:12]})", False


def parse_options(help_text: str) -> list[str]:
    return sorted(set(_OPTION.findall(help_text)))


def parse_prompt_options(source: str) -> list[str]:
    """gen_img.py's per-prompt options, from its own parser of prompt lines."""
    return sorted(set(_PROMPT_OPTION.findall(source)))


def _help(engine: Engine, script: str) -> tuple[str, list[str] | str]:
    path = engine.script(script)
    if not path.is_file():
        return script, f"{script} is not there"
    try:
        proc = subprocess.run([engine.python, str(path), "--help"], check=False, cwd=engine.root, timeout=600,
                              env=engine.env(offline=True), capture_output=True, encoding="utf-8", errors="replace")
    except (OSError, subprocess.TimeoutExpired) as e:
        return script, f"{type(e).__name__}: {e}"
    options = parse_options(proc.stdout)
    if proc.returncode != 0 or "--help" not in options:
        watcher = StreamWatcher()
        for line in (proc.stdout + "\n" + proc.stderr).splitlines():
            watcher.feed(line)
        root = watcher.root_cause
        last = root.exception if root else ((proc.stderr.strip().splitlines() or ["no output"])[-1])
        return script, f"--help exited {proc.returncode}: {last}"
    return script, options


def progress_text(done: int, total: int) -> str:
    return f"learning what this sd-scripts can do, once: {done}/{total} scripts"


def learn(engine: Engine, refresh: bool = False, on_progress: Callable[[int, int], None] | None = None) -> Capabilities:
    """From the cache, or learnt now (each script's --help, in parallel), calling `on_progress(done, total)`."""
    path = cache_path(engine)
    version, known = name_version(engine)
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if not refresh and path.is_file() else {}
        if data.get("format") == FORMAT and data.get("identity") == engine.identity and not data.get("errors"):
            return Capabilities(**{**data, "version": version, "known": known})
    except (OSError, ValueError, TypeError):
        pass  # a damaged cache entry is learnt again
    caps = Capabilities(identity=engine.identity, version=version, known=known, root=str(engine.root))
    progress = on_progress or (lambda done, total: None)
    scripts = [*SCRIPTS, *(s for s in FAMILY_SCRIPTS if engine.script(s).is_file())]
    progress(0, len(scripts))
    results: dict[str, list[str] | str] = {}
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for future in as_completed([pool.submit(_help, engine, s) for s in scripts]):
            results.update([future.result()])
            progress(len(results), len(scripts))
    # in SCRIPTS' order; a family script that fails its --help only stays unlearnt (an SD run does not need it)
    caps.errors = {s: r for s in SCRIPTS if isinstance(r := results[s], str)}
    caps.options = {s: r for s in scripts if not isinstance(r := results[s], str)}
    gen_img = engine.script("gen_img.py")
    if gen_img.is_file():
        caps.prompt_options = parse_prompt_options(gen_img.read_text(encoding="utf-8", errors="replace"))
    if not caps.errors:  # a failure is not remembered: the next run tries again
        try:
            atomic_write_text(path, json.dumps(asdict(caps), indent=1))
        except OSError:
            pass  # no cache folder: learnt again next time
    return caps


def require(engine: Engine, caps: Capabilities) -> None:
    """Refuse, before any stage, an sd-scripts copymachine cannot drive."""
    where = f"sd-scripts at {engine.root} ({caps.version_text()})"
    if caps.errors:
        script, error = next(iter(caps.errors.items()))
        raise EnvironmentProblem(f"{where}: {script} {error}" if "not there" not in error else f"{where} lacks "
            f"{script}, which copymachine runs")
    if not caps.file_names and not caps.sequential_names:
        raise EnvironmentProblem(f"{where}: gen_img.py has neither the per-prompt --f (sd-scripts v0.9.0 on) nor "
                                 f"{SEQUENTIAL_NAMES}, so copymachine cannot tell which image it rendered for which "
                                 "prompt; use sd-scripts v0.9.1 or later")


def option_names(argv: list[str]) -> list[str]:
    """The `--options` of a command line (values that look like options are not expected)."""
    return [a.split("=", 1)[0] for a in argv if a.startswith("--") and len(a) > 2]


def check_command(caps: Capabilities | None, version: str, script: str, argv: list[str],
                  toml_keys: list[str] | tuple[str, ...] = ()) -> None:
    """Refuse a command whose options (or training TOML keys) `script` does not know."""
    if caps is None:
        return
    lacking = caps.lacking(script, option_names(argv) + [f"--{k}" for k in toml_keys])
    if lacking:
        raise EnvironmentProblem(f"sd-scripts {version}: {script} has no {', '.join(lacking)}, which copymachine "
                                 f"passes; use a newer sd-scripts (copymachine is tested with {', '.join(TESTED)})")


def check_training_keys(caps: Capabilities | None, script: str, keys: list[str], what: str = "--sd-arg") -> bool:
    """Refuse a training option `script` does not list, naming the closest; False: not checked (nothing learnt)."""
    if caps is None or script not in caps.options:
        return False
    known = [o[2:] for o in caps.options[script]]
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else "; `python " + script + " --help` lists them"
            raise InputError(f"{what} {key}: {Path(script).name} of sd-scripts {caps.version_text()} has no option "
                             f"--{key}{hint}")
    return True


def _main() -> None:  # pragma: no cover - a maintainer's tool
    """python -m copymachine.capabilities SD_SCRIPTS_DIR: print the tree identity of a folder."""
    root = Path(sys.argv[1]).resolve()
    print(Engine(root=root, python=sys.executable, commit=read_git_commit(root)).identity)


if __name__ == "__main__":  # pragma: no cover
    _main()
