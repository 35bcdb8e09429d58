"""What copymachine learns about the user's sd-scripts (copymachine.capabilities): each script's
--help, gen_img.py's prompt options, and what follows from them (against the recording fake)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from copymachine import capabilities
from copymachine.cli import cli
from copymachine.engine import Engine
from copymachine.errors import EXIT_ENVIRONMENT

# gen_img.py of v0.8.7 matches its prompt options like this (read at tag v0.8.7), without `f`
V087_PROMPT_LOOP = '''
                        for parg in prompt_args[1:]:
                            m = re.match(r"w (\\d+)", parg, re.IGNORECASE)
                            m = re.match(r"am ([\\d\\.\\-,]+)", parg, re.IGNORECASE)
                            m = re.match(r"nl ([\\d\\.]+|none|None)", parg, re.IGNORECASE)
'''


def test_parse_prompt_options_and_help():
    assert capabilities.parse_prompt_options(V087_PROMPT_LOOP) == ["am", "nl", "w"]
    assert capabilities.parse_prompt_options(V087_PROMPT_LOOP + '    m = re.match(r"f (.+)", parg, re.IGNORECASE)\n') == ["am", "f", "nl", "w"]
    help_text = "usage: gen_img.py [-h] [--sdxl] [--ckpt CKPT]\n\noptions:\n  -h, --help  show this help\n  --sequential_file_name  sequential output file name\n"
    assert capabilities.parse_options(help_text) == ["--ckpt", "--help", "--sdxl", "--sequential_file_name"]
    # sd-scripts' help texts glue Japanese to an option's name: the name is the ASCII part
    glued = "  --save_every_n_steps N  --save_last_n_stepsを上書きする / overrides --save_last_n_steps\n  --save_last_n_steps N\n"
    assert capabilities.parse_options(glued) == ["--save_every_n_steps", "--save_last_n_steps"]


def v08_tree(fake_engine, dest: Path, commit: str) -> Path:
    """The fake as sd-scripts v0.8.x: its gen_img.py without the per-prompt `--f`."""
    root = fake_engine.tree_copy(dest, without="gen_img.py", commit=commit)
    text = (fake_engine.root / "gen_img.py").read_text(encoding="utf-8")
    start = text.index('    elif mm := re.match(r"f (.+)"')
    end = text.index("\n\n\nif __name__")
    (root / "gen_img.py").write_text(text[:start].rstrip() + text[end:], encoding="utf-8")
    return root


def test_learnt_once_per_checkout(fake_engine, tmp_path, monkeypatch):
    root = fake_engine.tree_copy(tmp_path / "sd", commit="3" * 40)
    engine = Engine(root=root, python=sys.executable, commit="3" * 40)
    caps = capabilities.learn(engine)
    assert caps.file_names and caps.sequential_names and not caps.known and caps.version == "commit 33333333"
    assert "--network_dim" in caps.options["train_network.py"] and "--new_rank" in caps.options["networks/resize_lora.py"]
    monkeypatch.setattr(capabilities, "_help", lambda engine, script: pytest.fail("learnt again"))
    assert capabilities.learn(engine) == caps  # from the cache, by commit
    cached = capabilities.cache_path(engine)  # the user's cache, by install (path) and commit
    assert cached.parent == capabilities.cache_dir() and cached.name.startswith(f"git-{'3' * 40}-")
    data = json.loads(cached.read_text(encoding="utf-8"))
    assert data["identity"] == f"git:{'3' * 40}" and data["root"] == str(root)


def test_v08_without_f_finds_its_images_by_their_sequential_names(fake_engine, tmp_path, scene):
    root = v08_tree(fake_engine, tmp_path / "sd-v08", "4" * 40)
    caps = capabilities.learn(Engine(root=root, python=sys.executable, commit="4" * 40))
    assert not caps.file_names and caps.sequential_names
    image = tmp_path / "original.png"
    scene.image.resize((128, 128)).save(image)
    out = tmp_path / "run"
    args = ["train", "--base", str(fake_engine.base), "--image", str(image), "--out", str(out), "--effect", "contrast",
            "--resolution", "64", "--max-steps", "3", "--set", "copy_check.min_ssim=0", "--sd-scripts", str(root), *fake_engine.engine_args[2:]]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    gen = [c for c in fake_engine.calls() if c["script"] == "gen_img.py"]
    assert gen and all("--sequential_file_name" in c["argv"] for c in gen)
    prompt_file = Path(gen[0]["argv"][gen[0]["argv"].index("--from_file") + 1])
    assert " --f " not in prompt_file.read_text(encoding="utf-8")
    rendered = [Path(i["file"]).name for i in gen[0]["images"]]
    assert rendered == [f"im_{k:06d}.png" for k in range(1, len(rendered) + 1)]
    copies = sorted((out / "copy-check").glob("copy-[0-9].png"))
    assert [p.name for p in copies] == [f"copy-{k}.png" for k in range(1, len(rendered) + 1)]
    # each planned name holds the image of its own prompt line (the fake writes the seed into the PNG)
    seeds = [i["seed"] for i in gen[0]["images"]]
    assert [Image.open(p).text["seed"] for p in copies] == [str(s) for s in seeds]


def test_gen_img_that_cannot_name_its_files_is_refused_before_any_stage(fake_engine, tmp_path, monkeypatch, scene):
    monkeypatch.setenv("COPYMACHINE_FAKE_WITHOUT_OPTIONS", "gen_img.py:--sequential_file_name")
    root = v08_tree(fake_engine, tmp_path / "sd-old", "5" * 40)
    image = tmp_path / "original.png"
    scene.image.resize((128, 128)).save(image)
    args = ["train", "--base", str(fake_engine.base), "--image", str(image), "--out", str(tmp_path / "run"), "--effect", "contrast",
            "--resolution", "64", "--sd-scripts", str(root), *fake_engine.engine_args[2:]]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == EXIT_ENVIRONMENT
    lines = [line for line in result.stderr.splitlines() if line.startswith("copymachine: error:")]
    assert lines == [f"copymachine: error: sd-scripts at {root.resolve()} (commit 55555555, not a release copymachine knows): gen_img.py has neither "
                     "the per-prompt --f (sd-scripts v0.9.0 on) nor --sequential_file_name, so copymachine cannot tell which image it rendered "
                     "for which prompt; use sd-scripts v0.9.1 or later"]
    assert fake_engine.calls() == [] and not (tmp_path / "run").exists()


def test_a_training_key_the_script_does_not_know_is_refused(fake_engine, tmp_path, monkeypatch, scene):
    """sd-scripts ignores an unknown key of the training TOML without a word: refused instead."""
    monkeypatch.setenv("COPYMACHINE_FAKE_WITHOUT_OPTIONS", "train_network.py:--console_log_simple")
    root = fake_engine.tree_copy(tmp_path / "sd-lacking", commit="6" * 40)
    image = tmp_path / "original.png"
    scene.image.resize((128, 128)).save(image)
    args = ["train", "--base", str(fake_engine.base), "--image", str(image), "--out", str(tmp_path / "run"), "--effect", "contrast",
            "--resolution", "64", "--no-copy-check", "--sd-scripts", str(root), *fake_engine.engine_args[2:]]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == EXIT_ENVIRONMENT
    assert ("copymachine: error: sd-scripts commit 66666666, not a release copymachine knows: train_network.py has no --console_log_simple, "
            "which copymachine passes; use a newer sd-scripts") in result.stderr
    assert [c["script"] for c in fake_engine.calls()] == []


def test_doctor_reports_a_v08_engine(fake_engine, tmp_path):
    root = v08_tree(fake_engine, tmp_path / "sd-v08", "7" * 40)
    result = CliRunner().invoke(cli, ["doctor", "--sd-scripts", str(root), "--python", sys.executable, "--out", str(tmp_path / "runs")], catch_exceptions=False)
    engine_row = [line for line in result.stdout.splitlines() if line.split()[1:2] == ["engine"]]
    assert engine_row == [f"  warn  engine        commit 77777777, not a release copymachine knows: no per-prompt --f: renders with --sequential_file_name and renames; "
                          f"options: {', '.join(f'{Path(s).name} {len(o)}' for s, o in capabilities.learn(Engine(root=root, python=sys.executable, commit='7' * 40)).options.items())}; "
                          f"copymachine is tested with {', '.join(capabilities.TESTED)}"]
