"""The sd-scripts engine: where it is, which Python runs it, what that Python has, how to call it.

Found from `--sd-scripts PATH`, then `$SD_SCRIPTS`, then `vendor/sd-scripts` (the git submodule).
Its Python is `--python`, then `$SD_SCRIPTS_PYTHON`, then the `venv` inside the sd-scripts folder
(where sd-scripts' own install instructions put it), then the `venv` beside it in a kohya_ss GUI
install (`<kohya_ss>/venv` next to `<kohya_ss>/sd-scripts`), then the Python running copymachine.
`Engine.python_reason` says which of these it was (doctor and the run print it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from copymachine.errors import EnvironmentProblem
from copymachine.heavy import import_fix

PINNED_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"

# Distributions whose versions the probe reports (doctor prints them).
REPORTED_DISTRIBUTIONS = ("torch", "torchvision", "accelerate", "transformers", "diffusers", "safetensors",
                          "bitsandbytes", "xformers")

# Modules sd-scripts imports (requirements.txt, plus torch/torchvision that users install).
REQUIRED_MODULES = ("torch", "torchvision", "accelerate", "transformers", "diffusers", "safetensors", "toml",
                    "voluptuous", "imagesize", "einops", "cv2", "library")

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
OWNER_VARIABLE = "COPYMACHINE_PARENT_PID"

# Each module is imported, not only found: a venv can hold a module that is there but fails to
# import (numpy 2 beside an opencv built for numpy 1), and sd-scripts would fail on it minutes later.
_PROBE = r"""
import importlib, importlib.util, importlib.metadata, json, sys
info = {"python_version": sys.version.split()[0], "missing": [], "broken": {}, "versions": {}}
for m in json.loads(sys.argv[1]):
    try:
        found = importlib.util.find_spec(m) is not None
    except (ImportError, ValueError):
        found = False
    try:
        if found:
            importlib.import_module(m)
        else:
            info["missing"].append(m)
    except BaseException as e:  # a broken binary raises ImportError, AttributeError, OSError, SystemExit...
        text = (str(e).strip().splitlines() or [""])[0]
        info["broken"][m] = f"{type(e).__name__}: {text}" if text else type(e).__name__
for dist in json.loads(sys.argv[2]):
    try:
        info["versions"][dist] = importlib.metadata.version(dist)
    except Exception:
        pass
if "torch" in info["broken"]:
    info["torch_error"] = info["broken"]["torch"]
elif "torch" not in info["missing"]:
    try:
        import torch
        info["torch"] = torch.__version__
        info["cuda"] = bool(torch.cuda.is_available())
        if info["cuda"]:
            count = torch.cuda.device_count()
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(count)]
            # what torch says; recent torch says true on pre-Ampere cards too (emulated bf16), so
            # copymachine decides by the compute capability (profiles.choose_precision)
            info["bf16"] = bool(torch.cuda.is_bf16_supported())
            info["compute"] = [list(torch.cuda.get_device_capability(i)) for i in range(count)]
            info["vram"] = [[int(f), int(t)] for f, t in (torch.cuda.mem_get_info(i) for i in range(count))]
    except Exception as e:
        info["torch_error"] = f"{type(e).__name__}: {e}"
print("COPYMACHINE_PROBE " + json.dumps(info))
"""


@dataclass
class Probe:
    python_version: str
    missing: list[str]
    broken: dict[str, str] = field(default_factory=dict)  # module -> "ImportError: ..." (found, fails to import)
    torch: str | None = None
    cuda: bool = False
    gpus: list[str] = field(default_factory=list)
    bf16: bool = False  # torch.cuda.is_bf16_supported(): true under emulation too
    compute: list[tuple[int, int]] = field(default_factory=list)  # compute capability of each GPU
    vram: list[tuple[int, int]] = field(default_factory=list)  # (free, total) bytes of each GPU
    torch_error: str | None = None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def vram_free(self) -> int | None:  # of GPU 0
        return self.vram[0][0] if self.vram else None

    @property
    def vram_total(self) -> int | None:
        return self.vram[0][1] if self.vram else None


@dataclass
class Engine:
    root: Path
    python: str
    commit: str | None
    python_reason: str = ""  # how `python` was found ("given by --python", "the venv inside the sd-scripts folder")

    @property
    def pinned(self) -> bool:
        return self.commit == PINNED_COMMIT

    @functools.cached_property
    def identity(self) -> str:
        """Which sd-scripts this is, for stage keys and the knowledge cache: `git:<commit>`, or `tree:<sha256>`
        of its Python files when it is not a git checkout (an extracted release, a copied folder)."""
        return f"git:{self.commit}" if self.commit else f"tree:{tree_hash(self.root)}"

    def script(self, relative: str) -> Path:
        return self.root / relative

    def env(self, offline: bool = False) -> dict[str, str]:
        env = dict(os.environ)
        # networks/*.py import `library` from the sd-scripts root.
        env["PYTHONPATH"] = os.pathsep.join([str(self.root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONUNBUFFERED"] = "1"  # live progress through the pipe
        env["PYTHONIOENCODING"] = "utf-8"  # Japanese paths in logs on Windows consoles
        env["PYTHONUTF8"] = "1"
        env["COLUMNS"] = "250"  # rich wraps its log table at 80 columns on a pipe otherwise
        # who started it: a later run ends what a killed copymachine left running (locks.py)
        env[OWNER_VARIABLE] = str(os.getpid())
        env.setdefault("TERM", "dumb")
        if offline:
            env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
        return env

    def launch_training(self, script: str, config: Path, mixed_precision: str,
                        launcher: Path | None = None, network_module: str = "networks.lora") -> list[str]:
        """`accelerate launch` of a training script, every option given so that no `accelerate config` is needed.
        With `launcher` (sd_side/base_weights_launcher.py), accelerate runs that file, which runs the script and
        wraps `network_module` (named only when it is not networks.lora, as older commands were)."""
        module = [network_module] if launcher and network_module != "networks.lora" else []
        target = [str(p) for p in (launcher, *module, self.script(script)) if p]
        return [self.python, "-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "1",
                "--num_processes", "1", "--num_machines", "1", "--mixed_precision", mixed_precision,
                "--dynamo_backend", "no", *target, "--config_file", str(config)]

    def run_script(self, script: str, args: list[str]) -> list[str]:
        return [self.python, str(self.script(script)), *args]

    def probe(self, modules: tuple[str, ...] = REQUIRED_MODULES) -> Probe:
        """Ask the sd-scripts Python which modules it lacks and whether it sees a GPU."""
        try:
            proc = subprocess.run([self.python, "-c", _PROBE, json.dumps(modules), json.dumps(REPORTED_DISTRIBUTIONS)],
                                  check=False, cwd=self.root, env=self.env(), capture_output=True, encoding="utf-8",
                                  errors="replace", timeout=300)
        except FileNotFoundError:
            raise EnvironmentProblem(f"the Python for sd-scripts was not found: {self.python} (set --python or "
                                     "$SD_SCRIPTS_PYTHON)") from None
        except OSError as e:
            raise EnvironmentProblem(f"cannot run the Python for sd-scripts ({self.python}): {e}") from None
        except subprocess.TimeoutExpired:
            raise EnvironmentProblem(f"the Python for sd-scripts did not answer within 5 minutes: "
                                     f"{self.python}") from None
        for line in proc.stdout.splitlines():
            if line.startswith("COPYMACHINE_PROBE "):
                data = json.loads(line.split(" ", 1)[1])
                for key in ("compute", "vram"):
                    data[key] = [tuple(v) for v in data.get(key, [])]
                return Probe(**data)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentProblem(f"the Python for sd-scripts ({self.python}) failed to start: {last}")

    def require(self, probe: Probe) -> None:
        """Refuse to start when the sd-scripts Python lacks something a stage will import."""
        where = f"the Python for sd-scripts ({self.python})"
        if probe.missing:
            hint = "install sd-scripts' requirements into it: pip install -r requirements.txt (and torch)"
            if probe.missing == ["library"]:
                hint = f"run `pip install -e .` in {self.root} (sd-scripts' own package)"
            raise EnvironmentProblem(f"{where} lacks {', '.join(probe.missing)}; {hint}")
        if probe.broken:
            module, error = next(iter(probe.broken.items()))
            raise EnvironmentProblem(f"{module} fails to import in {where}: {error}; {import_fix(module, error)}")
        if probe.torch_error:
            raise EnvironmentProblem(f"torch fails to import in {where}: {probe.torch_error}")


# Folders of a checkout that are not sd-scripts' code: its venv, git's data, byte code, caches.
# bitsandbytes_windows: DLLs and patches the Windows setup copies into the venv, not code sd-scripts runs.
_TREE_SKIP = {".git", "venv", ".venv", "__pycache__", "node_modules", ".cache", "logs", "outputs",
              "bitsandbytes_windows"}
_TREE_HASHES: dict[tuple, str] = {}


def tree_hash(root: Path) -> str:
    """sha256 over the path and content of every .py file (and requirements.txt) of `root`, remembered per
    process by the files' sizes and mtimes."""
    files: list[tuple[str, os.stat_result]] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _TREE_SKIP and not (Path(folder) / d / "pyvenv.cfg").exists())
        for name in sorted(n for n in names if n.endswith(".py") or n == "requirements.txt"):
            path = Path(folder) / name
            files.append((path.relative_to(root).as_posix(), path.stat()))
    signature = (str(root), tuple((rel, st.st_size, st.st_mtime_ns) for rel, st in files))
    if signature not in _TREE_HASHES:
        digest = hashlib.sha256()
        for rel, _ in files:
            digest.update(rel.encode("utf-8") + b"\0")
            digest.update(hashlib.sha256((root / rel).read_bytes()).digest())
        _TREE_HASHES[signature] = digest.hexdigest()
    return _TREE_HASHES[signature]


def find_sd_scripts(option: str | os.PathLike | None) -> Path:
    """In the order of the module text; a kohya_ss GUI folder means its `sd-scripts` submodule."""
    given = option or os.environ.get("SD_SCRIPTS")
    if given:
        candidates = [("--sd-scripts" if option else "$SD_SCRIPTS", Path(given))]
    else:
        candidates = [("vendor/sd-scripts", base / "vendor" / "sd-scripts") for base in (_PACKAGE_ROOT, Path.cwd())]
    tried = []
    for source, path in candidates:
        path = path.expanduser()
        if is_kohya_ss(path) and not (path / "train_network.py").is_file():
            path = path / "sd-scripts"  # a kohya_ss GUI folder: its sd-scripts submodule
        if is_sd_scripts(path):
            return path.resolve()
        tried.append(f"{path} ({source})")
    if given:
        raise EnvironmentProblem(f"sd-scripts not found at {tried[0]}: no train_network.py there")
    raise EnvironmentProblem("sd-scripts not found: point --sd-scripts or $SD_SCRIPTS at your checkout, or run "
                             f"`git submodule update --init vendor/sd-scripts` (pinned at {PINNED_COMMIT[:8]})")


def _absolute_python(python: str) -> str:
    """A relative path (`venv/bin/python`) is relative to where copymachine was started, but
    sd-scripts runs with its own root as the working folder: make it absolute. Not resolved (a
    venv's python is a symlink whose target is outside the venv). A bare name stays a PATH lookup."""
    if os.sep in python or (os.altsep and os.altsep in python):
        return str(Path(python).expanduser().absolute())
    return python


def _venv_python(venv: Path) -> Path | None:
    return next((p for p in (venv / "bin" / "python", venv / "Scripts" / "python.exe") if p.is_file()), None)


def is_sd_scripts(folder: Path) -> bool:
    return (folder / "train_network.py").is_file() and (folder / "networks").is_dir()


def is_kohya_ss(folder: Path) -> bool:
    """A kohya_ss GUI install (bmaltais/kohya_ss, sd-scripts as a submodule)."""
    return (folder / "kohya_gui.py").is_file() or (folder / "kohya_gui").is_dir()


def find_python_and_reason(option: str | None, root: Path) -> tuple[str, str]:
    if option:
        return _absolute_python(str(option)), "given by --python"
    if os.environ.get("SD_SCRIPTS_PYTHON"):
        return _absolute_python(os.environ["SD_SCRIPTS_PYTHON"]), "from $SD_SCRIPTS_PYTHON"
    own = _venv_python(root / "venv")
    if own:
        return str(own), "the venv inside the sd-scripts folder"
    beside = _venv_python(root.parent / "venv") if is_kohya_ss(root.parent) else None
    if beside:
        return str(beside), f"the kohya_ss venv beside sd-scripts ({root.parent})"
    return sys.executable, ("copymachine's own Python: no --python, no $SD_SCRIPTS_PYTHON, no venv in or beside the "
                            "sd-scripts folder")


def _git_dir(root: Path) -> Path | None:
    """The .git folder, or where the .git file of a submodule or worktree points."""
    dot_git = root / ".git"
    if dot_git.is_dir():
        return dot_git
    if not dot_git.is_file():
        return None
    text = dot_git.read_text(encoding="utf-8").strip()
    return (root / text.split(":", 1)[1].strip()).resolve() if text.startswith("gitdir:") else None


def read_git_commit(root: Path) -> str | None:
    """HEAD of a git checkout without running git (None: not one)."""
    try:
        git_dir = _git_dir(root)
        if git_dir is None:
            return None
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.split(":", 1)[1].strip()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text(encoding="utf-8").strip()).resolve()
        for base in (git_dir, common):
            if (base / ref).is_file():
                return (base / ref).read_text(encoding="utf-8").strip()
        packed = common / "packed-refs"
        lines = packed.read_text(encoding="utf-8").splitlines() if packed.is_file() else []
        return next((parts[0] for parts in map(str.split, lines) if len(parts) == 2 and parts[1] == ref), None)
    except OSError:
        return None


def locate(sd_scripts: str | os.PathLike | None = None, python: str | None = None) -> Engine:
    root = find_sd_scripts(sd_scripts)
    found, reason = find_python_and_reason(python, root)
    return Engine(root=root, python=found, commit=read_git_commit(root), python_reason=reason)
