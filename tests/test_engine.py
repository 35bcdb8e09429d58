"""Finding sd-scripts and its Python, reading its commit, asking what it lacks."""

import os
import sys
from pathlib import Path

import pytest

from copymachine import engine
from copymachine.errors import EnvironmentProblem

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"


def make_sd(path: Path) -> Path:
    (path / "networks").mkdir(parents=True)
    (path / "train_network.py").write_text("# fake\n")
    return path


def test_precedence_option_env_vendor(tmp_path, monkeypatch):
    a, b = make_sd(tmp_path / "a"), make_sd(tmp_path / "b")
    monkeypatch.setenv("SD_SCRIPTS", str(b))
    assert engine.find_sd_scripts(a) == a.resolve()
    assert engine.find_sd_scripts(None) == b.resolve()
    monkeypatch.delenv("SD_SCRIPTS")
    monkeypatch.setattr(engine, "_PACKAGE_ROOT", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    make_sd(tmp_path / "vendor" / "sd-scripts")
    assert engine.find_sd_scripts(None) == (tmp_path / "vendor" / "sd-scripts").resolve()


def test_not_found_messages(tmp_path, monkeypatch):
    monkeypatch.delenv("SD_SCRIPTS", raising=False)
    with pytest.raises(EnvironmentProblem, match=r"no train_network.py"):
        engine.find_sd_scripts(tmp_path)
    monkeypatch.setattr(engine, "_PACKAGE_ROOT", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EnvironmentProblem, match="submodule update"):
        engine.find_sd_scripts(None)


def test_python_precedence(tmp_path, monkeypatch):
    root = make_sd(tmp_path / "sd")
    monkeypatch.delenv("SD_SCRIPTS_PYTHON", raising=False)
    assert engine.find_python_and_reason(None, root)[0] == sys.executable
    venv_python = root / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("")
    assert engine.find_python_and_reason(None, root)[0] == str(venv_python)
    monkeypatch.setenv("SD_SCRIPTS_PYTHON", "/env/python")
    assert engine.find_python_and_reason(None, root)[0] == "/env/python"
    assert engine.find_python_and_reason("/opt/py", root)[0] == "/opt/py"


def test_git_commit_plain_detached_packed_and_gitfile(tmp_path):
    root = make_sd(tmp_path / "sd")
    assert engine.read_git_commit(root) is None
    git = root / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text(COMMIT + "\n")
    assert engine.read_git_commit(root) == COMMIT
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text(f"# pack-refs\n{COMMIT} refs/heads/main\n")
    assert engine.read_git_commit(root) == COMMIT
    (git / "refs" / "heads" / "main").write_text("1" * 40 + "\n")
    assert engine.read_git_commit(root) == "1" * 40
    # a submodule / worktree: .git is a file pointing elsewhere
    moved = tmp_path / "modules" / "sd"
    os.makedirs(moved.parent, exist_ok=True)
    git.rename(moved)
    (root / ".git").write_text(f"gitdir: {os.path.relpath(moved, root)}\n")
    assert engine.read_git_commit(root) == "1" * 40


def test_probe_names_missing_modules(tmp_path):
    root = make_sd(tmp_path / "sd")
    e = engine.Engine(root=root, python=sys.executable, commit=None)
    probe = e.probe(("json", "surely_not_a_module_xyz"))
    assert probe.missing == ["surely_not_a_module_xyz"]
    with pytest.raises(EnvironmentProblem, match="lacks surely_not_a_module_xyz"):
        e.require(probe)
    with pytest.raises(EnvironmentProblem, match="was not found"):
        engine.Engine(root=root, python=str(tmp_path / "no-python"), commit=None).probe()


def test_probe_imports_each_module(tmp_path):
    root = make_sd(tmp_path / "sd")
    (root / "found_but_broken").mkdir()
    (root / "found_but_broken" / "__init__.py").write_text("import no_such_dependency_xyz\n", encoding="utf-8")
    e = engine.Engine(root=root, python=sys.executable, commit=None)
    probe = e.probe(("json", "found_but_broken"))
    assert probe.missing == [] and probe.broken == {"found_but_broken": "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"}
    with pytest.raises(EnvironmentProblem) as raised:
        e.require(probe)
    assert raised.value.message == (f"found_but_broken fails to import in the Python for sd-scripts ({sys.executable}): "
                                    "ModuleNotFoundError: No module named 'no_such_dependency_xyz'; pip install no_such_dependency_xyz in that venv")


def test_env_and_launch(tmp_path):
    root = make_sd(tmp_path / "sd dir")
    e = engine.Engine(root=root, python="/py", commit=COMMIT)
    env = e.env(offline=True)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(root)
    assert env["HF_HUB_OFFLINE"] == "1" and env["COLUMNS"] == "250"
    argv = e.launch_training("train_network.py", tmp_path / "c.toml", "no")
    assert argv[:3] == ["/py", "-m", "accelerate.commands.launch"]
    assert argv[-3:] == [str(root / "train_network.py"), "--config_file", str(tmp_path / "c.toml")]
    assert e.pinned


def test_identity_is_the_commit_or_a_hash_of_the_tree(tmp_path):
    root = make_sd(tmp_path / "sd")
    assert engine.Engine(root=root, python="py", commit=COMMIT).identity == f"git:{COMMIT}"

    def identity() -> str:
        return engine.Engine(root=root, python="py", commit=None).identity

    first = identity()
    assert first.startswith("tree:") and identity() == first
    # its venv, byte code and non-code files are not the engine
    (root / "venv" / "lib").mkdir(parents=True)
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (root / "venv" / "lib" / "x.py").write_text("x = 1\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "t.pyc").write_bytes(b"\0")
    (root / "notes.md").write_text("mine\n")
    assert identity() == first
    # an edited script, or a new module, is another engine
    (root / "networks" / "lora.py").write_text("# lora\n")
    second = identity()
    assert second != first
    (root / "networks" / "lora.py").write_text("# lora, edited\n")
    assert identity() not in (first, second)
