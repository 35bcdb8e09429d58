"""`copymachine setup` (copymachine/install.py), for real on this machine and offline: venvs made,
local wheels installed by pip (PIP_NO_INDEX), sd-scripts from a folder given, from the
repository's submodule and from a git clone, each from local git repositories. Torch's
Windows decision (the CPU-only default) with nvidia-smi behind its seam."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from click.testing import CliRunner

from copymachine import install
from copymachine.cli import cli
from copymachine.errors import EXIT_ENVIRONMENT, EXIT_INPUT, EnvironmentProblem, InputError


def wheel(folder: Path, name: str) -> Path:
    """A pure-Python wheel of one module `name` (`name.VALUE == name`), built by hand: pip installs
    it with no index and no build step."""
    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {name!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: copymachine-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in files.items():
            z.writestr(arc, text)
        z.writestr(f"{info}/RECORD", "".join(f"{arc},,\n" for arc in [*files, f"{info}/RECORD"]))
    return path


@pytest.fixture
def offline(monkeypatch):
    """pip may use no index (this machine has no network; the test must not need one)."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    for name in ("SD_SCRIPTS", "SD_SCRIPTS_PYTHON", "PIP_FIND_LINKS", "PIP_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)


def setup(*args: str):
    return CliRunner().invoke(cli, ["setup", *args])


def imports(python: Path, *modules: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {', '.join(modules)}"], capture_output=True, check=False).returncode == 0


def test_setup_of_a_given_sd_scripts_makes_its_venv_installs_torch_and_requirements_then_runs_doctor(fake_engine, tmp_path, offline, monkeypatch):
    monkeypatch.chdir(tmp_path)  # doctor's run folders
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    torch_wheel, req_wheel = wheel(wheels, "tinytorch"), wheel(wheels, "tinyreq")
    sd = fake_engine.tree_copy(tmp_path / "my sd-scripts")
    (sd / "requirements.txt").write_text(f"# what sd-scripts needs\n{req_wheel}\n", encoding="utf-8")

    result = setup("--sd-scripts", str(sd), "--torch", str(torch_wheel))
    python = sd / "venv" / "bin" / "python"
    assert python.is_file() and (sd / "venv" / "pyvenv.cfg").is_file()
    assert imports(python, "tinytorch", "tinyreq")  # torch's spec, then the requirements, installed in the venv
    assert not imports(Path(sys.executable), "tinytorch")  # and nowhere else
    err = result.stderr
    assert f"venv: making {sd / 'venv'}" in err and f"torch: {torch_wheel}" in err and f"sd-scripts' requirements: {sd / 'requirements.txt'}" in err
    assert err.index("torch: ") < err.index("sd-scripts' requirements: ")
    assert f"set up: sd-scripts {sd}, its Python {python}; doctor:" in err
    # then doctor, on that sd-scripts and that Python; its exit code is setup's
    assert result.stdout.startswith("copymachine doctor\n")
    rows = {line[8:21].strip(): line[:8].strip() + " " + line[22:] for line in result.stdout.splitlines()[1:-1]}
    assert rows["sd-scripts"].startswith(f"warn {sd} is not a git checkout")
    assert rows["python"].startswith(f"ok {python} (Python ")
    # the fake sd-scripts' stand-in torch & co. are in its tree; safetensors and cv2 are not in the venv
    assert rows["packages"].startswith(f"FAIL the Python for sd-scripts ({python}) lacks safetensors, cv2")
    assert result.stdout.splitlines()[-1] == "not ready: 1 problem(s) would stop a run (packages)"
    assert result.exit_code == EXIT_ENVIRONMENT

    # again: the venv is kept, --torch none installs no torch, the requirements are pip's no-op
    again = setup("--sd-scripts", str(sd), "--torch", "none")
    assert f"venv: {sd / 'venv'} (already there)" in again.stderr
    assert "torch: --torch none, not installed" in again.stderr and "installing torch" not in again.stderr
    assert again.exit_code == result.exit_code


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def sd_repo(tmp_path, monkeypatch):
    """A local git repository standing in for sd-scripts' (two commits); git may clone local
    submodules (protocol.file.allow, off by default since git 2.38.1) in this test."""
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.file.allow")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "always")
    repo = tmp_path / "sd-scripts.git-source"
    (repo / "networks").mkdir(parents=True)
    (repo / "train_network.py").write_text("# train\n", encoding="utf-8")
    (repo / "networks" / "lora.py").write_text("# lora\n", encoding="utf-8")
    git("init", "-q", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-qm", "first", cwd=repo)
    first = git("rev-parse", "HEAD", cwd=repo)
    (repo / "train_network.py").write_text("# train, later\n", encoding="utf-8")
    git("commit", "-qam", "second", cwd=repo)
    return repo, first


def test_the_pinned_sd_scripts_is_cloned_at_its_commit(sd_repo, tmp_path):
    repo, first = sd_repo
    said = []
    dest = tmp_path / "elsewhere" / "sd-scripts"
    install.fetch_sd_scripts(dest, said.append, cwd=tmp_path, url=str(repo), commit=first)
    assert git("rev-parse", "HEAD", cwd=dest) == first  # the pinned commit, not the branch's head
    assert (dest / "train_network.py").read_text(encoding="utf-8") == "# train\n"
    assert said[0] == f"sd-scripts: cloning {repo} into {dest}, at the pinned commit {first[:8]}"


def test_setup_in_copymachines_checkout_fetches_the_submodule(sd_repo, tmp_path, offline, monkeypatch):
    repo, first = sd_repo
    origin = tmp_path / "copymachine-origin"
    origin.mkdir()
    git("init", "-q", cwd=origin)
    git("submodule", "add", "-q", str(repo), "vendor/sd-scripts", cwd=origin)
    git("-C", "vendor/sd-scripts", "checkout", "-q", first, cwd=origin)
    git("commit", "-qam", "pin sd-scripts", cwd=origin)
    checkout = tmp_path / "copymachine"
    git("clone", "-q", str(origin), str(checkout), cwd=tmp_path)  # what a user clones: vendor/sd-scripts empty
    assert not any((checkout / "vendor" / "sd-scripts").iterdir())
    monkeypatch.chdir(checkout)

    result = setup("--torch", "none")
    sd = checkout / "vendor" / "sd-scripts"
    assert "sd-scripts: the submodule " in result.stderr and "submodule update --init" in result.stderr
    assert git("rev-parse", "HEAD", cwd=sd) == first  # the commit this repository pins
    assert (sd / "venv" / "bin" / "python").is_file()
    assert f"{sd} has no requirements.txt" in result.stderr
    assert result.stdout.startswith("copymachine doctor\n") and result.exit_code in (0, EXIT_ENVIRONMENT)


def test_a_folder_that_is_not_sd_scripts_is_refused_and_left_alone(tmp_path, offline, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    result = setup("--sd-scripts", str(folder), "--torch", "none")
    assert result.exit_code == EXIT_INPUT
    assert result.stderr.strip().splitlines()[-1] == (f"copymachine: error: --sd-scripts {folder} is not an sd-scripts checkout (no train_network.py and networks/) "
                                                       "and not empty: give the sd-scripts folder, or an empty or new one to fetch it into")  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


NVIDIA_SMI = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 552.22                 Driver Version: 552.22         CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""


def test_torch_on_windows_with_a_gpu_is_refused_with_the_cuda_build_to_pick():
    said = []
    with pytest.raises(InputError) as e:
        install.torch_args("torch torchvision", said.append, platform="win32", report=lambda: NVIDIA_SMI)
    assert e.value.message.startswith("on Windows the package index's default torch is a CPU-only build, and this machine's NVIDIA driver supports CUDA 12.4: "
                                      'run copymachine setup --torch "torch torchvision --index-url https://download.pytorch.org/whl/cu124"')  # fmt: skip
    # no GPU: the CPU build, said
    assert install.torch_args("torch torchvision", said.append, platform="win32", report=lambda: None) == ["torch", "torchvision"]
    assert said[-1].startswith("warning: on Windows the package index's torch is a CPU-only build, and nvidia-smi finds no NVIDIA GPU")
    # an index given (or a wheel file): as given, nvidia-smi not asked; elsewhere than Windows the same
    asked = lambda: pytest.fail("nvidia-smi asked")  # noqa: E731
    spec = "torch==2.6.0 torchvision==0.21.0 --index-url https://download.pytorch.org/whl/cu124"
    assert install.torch_args(spec, said.append, platform="win32", report=asked) == spec.split()
    assert install.torch_args("torch torchvision", said.append, platform="linux", report=asked) == ["torch", "torchvision"]
    assert install.torch_args("none", said.append, platform="win32", report=asked) is None
    with pytest.raises(InputError):
        install.torch_args("  ", said.append, platform="linux")
    assert install.driver_cuda("CUDA Version: 13.0") == (13, 0) and install.driver_cuda("no driver") is None


def test_the_refusal_comes_before_anything_is_fetched(tmp_path, offline, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(install, "sys", SimpleNamespace(platform="win32", executable=sys.executable))
    monkeypatch.setattr(install, "nvidia_smi", lambda: NVIDIA_SMI)
    target = tmp_path / "sd"
    result = setup("--sd-scripts", str(target))
    assert result.exit_code == EXIT_INPUT and "--index-url https://download.pytorch.org/whl/cu124" in result.stderr
    assert not target.exists()


def test_the_venv_python_on_each_system():
    assert install.venv_python(PureWindowsPath(r"C:\sd-scripts\venv"), "win32") == PureWindowsPath(r"C:\sd-scripts\venv\Scripts\python.exe")
    assert install.venv_python(PurePosixPath("/opt/sd-scripts/venv"), "linux") == PurePosixPath("/opt/sd-scripts/venv/bin/python")
    assert install.venv_python(PurePosixPath("/opt/sd-scripts/venv"), "darwin") == PurePosixPath("/opt/sd-scripts/venv/bin/python")


def test_a_failed_fetch_prints_gits_output_once_and_names_the_way_out(tmp_path, offline):
    said = []
    missing = tmp_path / "no-such-repository.git"
    with pytest.raises(EnvironmentProblem) as e:
        install.setup(tmp_path / "sd", "none", said.append, cwd=tmp_path, url=str(missing))
    message = e.value.message
    assert message.startswith(f"cloning sd-scripts failed (exit 128): git clone --no-checkout {missing} {tmp_path / 'sd'} (git's output above); ")
    assert "give an sd-scripts you have with --sd-scripts DIR (make setup SD_SCRIPTS=DIR)" in message
    assert f"git clone {missing} DIR, then git -C DIR checkout {install.PINNED_COMMIT[:8]}" in message
    # git's error streamed once, as it came, and not again under the error line
    assert sum("fatal:" in line for line in said) == 1 and not e.value.details


def fake_bpe(path: Path) -> Path:
    """A BPE file of CLIP's shape (a header, then the merges the vocabulary takes), not CLIP's merges."""
    merges = [f"x{i} y{i}" for i in range(install.VOCAB_SIZE - 512 - 2)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\nnot taken\n").encode()))
    return path


CLIP_L, BIG_G = "openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"


def test_the_tokenizer_folder_comes_from_the_hub_cache_then_open_clip_then_the_hub(tmp_path, monkeypatch):
    # the hub's cache holds CLIP-L (a run online left it); open_clip, on sd-scripts' Python's path, has the BPE file
    cache = tmp_path / "hub"
    snapshot = cache / "models--openai--clip-vit-large-patch14" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    vocab = {f"t{i}": i for i in range(install.VOCAB_SIZE - 2)} | {install.BOS: install.VOCAB_SIZE - 2, install.EOS: install.VOCAB_SIZE - 1}
    (snapshot / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    for name in ("merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (snapshot / name).write_text("{}", encoding="utf-8")
    (snapshot / "model.safetensors").write_bytes(b"weights")  # not a tokenizer's: not copied
    site = tmp_path / "site"
    fake_bpe(site / "open_clip" / install.BPE_FILE)
    (site / "open_clip" / "__init__.py").write_text("raise ImportError('imports torch')\n", encoding="utf-8")  # found, not imported
    monkeypatch.setenv("PYTHONPATH", str(site))
    said = []
    out = tmp_path / "tokenizers"
    install.make_tokenizers(out, sys.executable, said.append, cache)
    assert said == [f"tokenizer {out / CLIP_L}: copied from the Hugging Face cache ({snapshot})",
                    f"tokenizer {out / BIG_G}: built from {site / 'open_clip' / install.BPE_FILE}"]
    assert sorted(p.name for p in (out / CLIP_L).iterdir()) == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    assert json.loads((out / BIG_G / "special_tokens_map.json").read_text(encoding="utf-8"))["pad_token"] == "!"  # bigG pads with "!"
    built = json.loads((out / BIG_G / "vocab.json").read_text(encoding="utf-8"))
    assert len(built) == install.VOCAB_SIZE and built["x0y0"] == 512 and built[install.EOS] == install.VOCAB_SIZE - 1
    # again: both there already, nothing made
    said.clear()
    install.make_tokenizers(out, sys.executable, said.append, cache)
    assert said == [f"tokenizer {out / CLIP_L}: there already", f"tokenizer {out / BIG_G}: there already"]


def test_no_tokenizer_offline_says_the_ways_and_a_wrong_vocabulary_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    out = tmp_path / "tokenizers"
    with pytest.raises(EnvironmentProblem) as e:
        install.make_tokenizers(out, sys.executable, [].append, tmp_path / "empty-cache")
    assert e.value.message.startswith(f"no openai/clip-vit-large-patch14 tokenizer here: not in the Hugging Face cache ({tmp_path / 'empty-cache'}), "
                                      "no open-clip-torch, and HF_HUB_OFFLINE is set; run with --tokenizer-cache-dir DIR once on a machine with hub access")
    assert not out.exists()
    # a folder that holds another vocabulary is not taken for CLIP's
    (out / CLIP_L).mkdir(parents=True)
    (out / CLIP_L / "vocab.json").write_text('{"a": 0}', encoding="utf-8")
    with pytest.raises(EnvironmentProblem, match=r"is not CLIP's vocabulary \(1 tokens, not 49408\): remove "):
        install.make_tokenizers(out, sys.executable, [].append, tmp_path / "empty-cache")


def test_setup_tokenizers_makes_the_folder_then_doctor_checks_it(fake_engine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    site = tmp_path / "site"
    fake_bpe(site / "clip" / install.BPE_FILE)  # OpenAI's clip package ships the same file
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "tok"
    result = setup("--sd-scripts", str(fake_engine.root), "--tokenizers", str(out))
    assert f"tokenizer {out / CLIP_L}: built from {site / 'clip' / install.BPE_FILE}" in result.stderr
    assert f"tokenizers: {out} (--tokenizer-cache-dir {out} --offline); doctor:" in result.stderr
    assert f"{out} has {CLIP_L}" in result.stdout  # doctor's tokenizer row
    assert not (fake_engine.root / "venv").exists()  # nothing else set up


def test_setup_ps1_and_the_makefile_give_setup_only_its_own_options():
    # Windows' one command (never run on Windows here) and `make setup` call `copymachine setup`
    import re

    from copymachine.cli.install import setup as setup_command

    options = {o for p in setup_command.params for o in p.opts}
    repo = Path(__file__).resolve().parent.parent
    ps1 = (repo / "setup.ps1").read_text(encoding="utf-8")
    assert set(re.findall(r'"(--[a-z-]+)"', ps1)) == {"--torch", "--sd-scripts", "--base-python"} <= options
    make_setup = next(line for line in (repo / "Makefile").read_text(encoding="utf-8").splitlines() if line.startswith("\t$(BIN)/copymachine setup"))
    assert set(re.findall(r"(--[a-z-]+)", make_setup)) == {"--sd-scripts", "--torch", "--base-python"}
