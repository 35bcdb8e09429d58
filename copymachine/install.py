"""`copymachine setup`: the pinned sd-scripts (given, the submodule, or cloned), its venv, torch and requirements,
with argument lists (no shell) on every system; and the offline tokenizer folder (`--tokenizers DIR`), copied from
the hub's cache or built from CLIP's BPE file (transformers saves one only after fetching it)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path, PurePath

from copymachine.engine import PINNED_COMMIT, is_sd_scripts
from copymachine.errors import EnvironmentProblem, InputError
from copymachine.models import SDXL
from copymachine.runner import command_line

SD_SCRIPTS_URL = "https://github.com/kohya-ss/sd-scripts.git"
DEFAULT_SD_SCRIPTS = Path("vendor") / "sd-scripts"  # the submodule's path in copymachine's repository
DEFAULT_TORCH = "torch torchvision"
NO_TORCH = "none"  # --torch none: torch is already in the venv (or installed by hand): skip it
PYTORCH_INDEX = "https://download.pytorch.org/whl/"
PYTORCH_SITE = "https://pytorch.org/get-started/locally/"

Say = Callable[[str], None]


def venv_python(venv: PurePath, platform: str | None = None) -> PurePath:
    """The Python of a venv: venv\\Scripts\\python.exe on Windows, venv/bin/python elsewhere."""
    parts = ("Scripts", "python.exe") if (platform or sys.platform) == "win32" else ("bin", "python")
    return venv.joinpath(*parts)


def run_step(argv: list[str], say: Say, what: str, cwd: Path | None = None) -> None:
    """Run one step, its output passed on to `say` line by line; a failure ends set-up naming the command."""
    say(f"  $ {command_line(argv)}")
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace")
    except OSError as e:
        raise EnvironmentProblem(f"{what}: cannot run {argv[0]}: {e.strerror or e}") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        say(f"    {line.rstrip()}")
    if proc.wait() != 0:
        raise EnvironmentProblem(f"{what} failed (exit {proc.returncode}): {command_line(argv)}")


def superproject_submodule(folder: Path, cwd: Path) -> Path | None:
    """The git repository at `cwd` when `folder` is one of its submodules (copymachine's vendor/sd-scripts)."""
    gitmodules = cwd / ".gitmodules"
    if not gitmodules.is_file() or shutil.which("git") is None:
        return None
    listed = subprocess.run(["git", "config", "-f", str(gitmodules), "--get-regexp", r"^submodule\..*\.path$"],
                            capture_output=True, text=True, check=False).stdout  # fmt: skip
    paths = [line.partition(" ")[2] for line in listed.splitlines()]
    return cwd if any(path and (cwd / path).absolute() == (cwd / folder).absolute() for path in paths) else None


def fetch_sd_scripts(folder: Path, say: Say, cwd: Path, url: str = SD_SCRIPTS_URL, commit: str = PINNED_COMMIT) -> None:
    """The pinned sd-scripts at `folder`: `git submodule update --init` for a submodule, else clone + checkout."""
    way_out = (f"give an sd-scripts you have with --sd-scripts DIR (make setup SD_SCRIPTS=DIR), or fetch it "
               f"yourself: git clone {url} DIR, then git -C DIR checkout {commit[:8]}")
    if shutil.which("git") is None:
        raise EnvironmentProblem(f"no sd-scripts at {folder} and git is not installed: install git, or {way_out}")
    repo = superproject_submodule(folder, cwd)
    try:
        if repo is not None:
            say(f"sd-scripts: the submodule {folder} (pinned by this repository)")
            relative = Path(os.path.relpath(folder.absolute(), repo.absolute())).as_posix()  # as .gitmodules names it
            run_step(["git", "-C", str(repo), "submodule", "update", "--init", "--", relative], say,
                     "fetching the sd-scripts submodule")
            return
        say(f"sd-scripts: cloning {url} into {folder}, at the pinned commit {commit[:8]}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        run_step(["git", "clone", "--no-checkout", url, str(folder)], say, "cloning sd-scripts")
        run_step(["git", "-C", str(folder), "checkout", "--detach", commit], say,
                 f"checking out sd-scripts at {commit[:8]}")
    except EnvironmentProblem as e:
        raise EnvironmentProblem(f"{e.message} (git's output above); {way_out}") from None


def sd_scripts_folder(option: Path | None, say: Say, cwd: Path, url: str = SD_SCRIPTS_URL) -> Path:
    """The sd-scripts at `option` (default vendor/sd-scripts), fetched into an absent or empty folder."""
    folder = cwd / Path(option or DEFAULT_SD_SCRIPTS).expanduser()  # an absolute path stays as it is
    if is_sd_scripts(folder):
        say(f"sd-scripts: {folder}")
        return folder
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"--sd-scripts {folder} is not an sd-scripts checkout (no train_network.py and networks/) and "
                         "not empty: give the sd-scripts folder, or an empty or new one to fetch it into")
    fetch_sd_scripts(folder, say, cwd, url)
    if not is_sd_scripts(folder):
        raise EnvironmentProblem(f"fetched sd-scripts into {folder}, but it has no train_network.py and networks/")
    return folder


def nvidia_smi() -> str | None:
    """nvidia-smi's report (the seam the tests replace); None without an NVIDIA driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        return subprocess.run([exe], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def driver_cuda(report: str | None) -> tuple[int, int] | None:
    """The newest CUDA the driver supports, from nvidia-smi's header ("CUDA Version: 12.4")."""
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", report or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def torch_args(spec: str, say: Say, platform: str | None = None,
               report: Callable[[], str | None] | None = None) -> list[str] | None:
    """pip's arguments for the torch `spec`, None for --torch none. On Windows the index's torch is CPU-only: a spec
    without an index, where nvidia-smi reports CUDA X.Y, is refused with the build to pick."""
    if spec.strip().lower() == NO_TORCH:
        say("torch: --torch none, not installed (doctor checks the one in the venv)")
        return None
    args = spec.split()
    if not args:
        raise InputError("--torch is empty: give the pip requirement(s) for torch, or none to skip it")
    sources = ("--index-url", "--extra-index-url", "-i", "-f", "--find-links")
    if (platform or sys.platform) != "win32" or any(a.startswith(sources) or a.endswith(".whl") for a in args):
        return args
    cuda = driver_cuda((report or nvidia_smi)())
    if cuda is None:
        say("warning: on Windows the package index's torch is a CPU-only build, and nvidia-smi finds no NVIDIA GPU: "
            f"installing it (for a GPU, rerun with --torch \"torch torchvision --index-url {PYTORCH_INDEX}cu126\", the "
            f"build your driver supports: {PYTORCH_SITE})")  # fmt: skip
        return args
    version = f"{cuda[0]}.{cuda[1]}"
    raise InputError(f"on Windows the package index's default torch is a CPU-only build, and this machine's NVIDIA "
                     f'driver supports CUDA {version}: run copymachine setup --torch "{spec} --index-url '
                     f'{PYTORCH_INDEX}cu{cuda[0]}{cuda[1]}" (if there is no such build, the newest CUDA build up to '
                     f"{version} listed at {PYTORCH_SITE}; for the CPU build anyway: --index-url {PYTORCH_INDEX}cpu)")


def setup(sd_scripts: Path | None, torch: str, say: Say, python: str | None = None, cwd: Path | None = None,
          url: str = SD_SCRIPTS_URL) -> tuple[Path, str]:
    """sd-scripts, its venv (made with `python`), torch, its requirements. Returns its folder and venv Python."""
    cwd = cwd or Path.cwd()
    torch_notes: list[str] = []
    pip_torch = torch_args(torch, torch_notes.append)  # a refused spec stops set-up before anything is fetched
    root = sd_scripts_folder(sd_scripts, say, cwd, url)
    venv = root / "venv"
    py = Path(venv_python(venv))
    if py.is_file():
        say(f"venv: {venv} (already there)")
    else:
        say(f"venv: making {venv}")
        run_step([python or sys.executable, "-m", "venv", str(venv)], say, "making sd-scripts' venv")
        if not py.is_file():
            raise EnvironmentProblem(f"made sd-scripts' venv at {venv}, but it has no {py}")
    for note in torch_notes:
        say(note)
    if pip_torch is not None:
        say(f"torch: {' '.join(pip_torch)}")
        run_step([str(py), "-m", "pip", "install", "-q", *pip_torch], say, "installing torch")
    requirements = root / "requirements.txt"
    if requirements.is_file():
        say(f"sd-scripts' requirements: {requirements}")
        # in sd-scripts' folder: its requirements end with `-e .` (its own `library` package)
        run_step([str(py), "-m", "pip", "install", "-q", "-r", "requirements.txt"], say, "installing sd-scripts' "
            "requirements", cwd=root)
    else:
        say(f"warning: {root} has no requirements.txt: nothing more installed")
    return root, os.fspath(py)


# sd-scripts loads <DIR>/<hub id with "/" as "_"> (library/strategy_sd.py, strategy_sdxl.py): SDXL's two
# are SD1's one and laion's bigG, which pads with "!". Both are CLIP's BPE vocabulary of 49,408 tokens.
PAD_TOKENS = {"laion_CLIP-ViT-bigG-14-laion2B-39B-b160k": "!"}
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's BPE merges, in open-clip-torch (open_clip) and OpenAI's clip
VOCAB_SIZE, BOS, EOS = 49408, "<|startoftext|>", "<|endoftext|>"
WAYS = ("run with --tokenizer-cache-dir DIR once on a machine with hub access and copy DIR here, or install "
        "open-clip-torch in sd-scripts' Python (its wheel holds the vocabulary) and run this again")


def hub_cache() -> Path:
    """huggingface_hub's model cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("HF_HOME") or cache_home / "huggingface").expanduser() / "hub"


def cached_tokenizer(hub_id: str, cache: Path) -> Path | None:
    """A snapshot of `hub_id` in the hub's cache with its tokenizer files (what a run online left)."""
    snapshots = cache / f"models--{hub_id.replace('/', '--')}" / "snapshots"
    found = [s for s in sorted(snapshots.glob("*")) if (s / "vocab.json").is_file() and (s / "merges.txt").is_file()]
    return found[-1] if found else None


def find_bpe(pythons: list[str]) -> Path | None:
    """CLIP's BPE file in open_clip or clip in one of these Pythons, found without importing them."""
    probe = ("import importlib.util as u\nfor name in ('open_clip', 'clip'):\n    s = u.find_spec(name)\n"
             "    print(*(s.submodule_search_locations or []) if s else [], sep='\\n')")
    for python in pythons:
        try:
            out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False).stdout
        except OSError:  # no such Python: doctor names it
            continue
        for folder in out.splitlines():
            if (Path(folder) / BPE_FILE).is_file():
                return Path(folder) / BPE_FILE
    return None


def bpe_tokenizer(bpe: Path, pad: str) -> dict[str, str]:
    """A CLIPTokenizer's files from CLIP's BPE file, its vocabulary built as CLIP's SimpleTokenizer does."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    merges = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")[1:VOCAB_SIZE - 512 - 2 + 1]
    vocab = [*chars, *(c + "</w>" for c in chars), *("".join(m.split()) for m in merges), BOS, EOS]
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad}
    config = {**special, "add_prefix_space": False, "clean_up_tokenization_spaces": True, "do_lower_case": True,
              "errors": "replace", "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    return {"vocab.json": json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
            "special_tokens_map.json": json.dumps(special, indent=2),
            "tokenizer_config.json": json.dumps(config, indent=2)}


def check_vocab(folder: Path) -> None:
    """CLIP's vocabulary, whatever made it: 49,408 tokens, the start and end tokens last."""
    try:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EnvironmentProblem(f"{folder / 'vocab.json'} is not a tokenizer's vocabulary: {e}") from None
    if len(vocab) != VOCAB_SIZE or vocab.get(BOS) != VOCAB_SIZE - 2 or vocab.get(EOS) != VOCAB_SIZE - 1:
        raise EnvironmentProblem(f"{folder / 'vocab.json'} is not CLIP's vocabulary ({len(vocab)} tokens, not "
                                 f"{VOCAB_SIZE}): remove {folder} and run this again")


def make_tokenizer(folder: Path, python: str, say: Say, cache: Path) -> None:
    """One tokenizer folder, from the first of: itself, the hub's cache, CLIP's BPE file, the hub (not offline)."""
    hub_id = folder.name.replace("_", "/", 1)
    snapshot, bpe = cached_tokenizer(hub_id, cache), None
    if (folder / "vocab.json").is_file():
        say(f"tokenizer {folder}: there already")
    elif snapshot is not None:
        say(f"tokenizer {folder}: copied from the Hugging Face cache ({snapshot})")
        folder.mkdir(parents=True, exist_ok=True)
        for file in snapshot.iterdir():
            if file.suffix in (".json", ".txt"):
                shutil.copyfile(file, folder / file.name)  # the cache's files are links to its blobs
    elif (bpe := find_bpe([python, sys.executable])) is not None:
        say(f"tokenizer {folder}: built from {bpe}")
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in bpe_tokenizer(bpe, PAD_TOKENS.get(folder.name, EOS)).items():
            (folder / name).write_text(text, encoding="utf-8")
    elif os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise EnvironmentProblem(f"no {hub_id} tokenizer here: not in the Hugging Face cache ({cache}), no "
                                 f"open-clip-torch, and HF_HUB_OFFLINE is set; {WAYS}")
    else:
        say(f"tokenizer {folder}: fetched from the Hugging Face hub by sd-scripts' transformers")
        fetch = ("import sys; from transformers import CLIPTokenizer as T; "
                 "T.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])")
        try:
            run_step([python, "-c", fetch, hub_id, str(folder)], say, f"fetching the {hub_id} tokenizer")
        except EnvironmentProblem as e:
            raise EnvironmentProblem(f"{e.message}; no {hub_id} tokenizer in the Hugging Face cache and no "
                                     f"open-clip-torch either: {WAYS}") from None
    check_vocab(folder)


def make_tokenizers(folder: Path, python: str, say: Say, cache: Path | None = None) -> None:
    """The folder for --tokenizer-cache-dir with every tokenizer sd-scripts loads (SD1.x's and SDXL's)."""
    for name in SDXL.tokenizers:
        make_tokenizer(folder / name, python, say, cache or hub_cache())
