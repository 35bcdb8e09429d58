"""copymachine/run.py under every face: its table of job keys agrees exactly with the click options
of `train` / `diff` (so a jobs file and the web UI take what the CLI takes), RunOptions' defaults
are the CLI's, the keys convert as click converts, and no module below the faces imports the CLI."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import click
import pytest

from copymachine import run
from copymachine.cli import cli

PACKAGE = Path(run.__file__).resolve().parent


def click_kind(param: click.Option) -> str:
    if param.is_flag:
        return "flag"
    if isinstance(param.type, click.Path):
        return "path"
    if isinstance(param.type, click.Choice):
        return "choice"
    if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)):
        return "number"
    assert isinstance(param.type, click.types.StringParamType), (param.name, param.type)
    return "text"


def click_options(command: str) -> dict[str, click.Option]:
    out = {}
    for param in cli.commands[command].params:
        if isinstance(param, click.Option) and param.name != "help":
            longs = [o for o in param.opts if o.startswith("--")]
            out[longs[0][2:]] = param
    return out


@pytest.mark.parametrize("command", ["train", "diff"])
def test_the_job_keys_are_the_click_options_exactly(command):
    options = click_options(command)
    keys = run.job_keys(command)
    assert list(keys) == list(options)  # the same keys, in --help order
    context_defaults = cli.commands[command].make_context(command, ["--base", "x"], resilient_parsing=True).params
    fields = {f.name: f for f in dataclasses.fields(run.RunOptions)}
    for name, param in options.items():
        key = keys[name]
        assert key.field == param.name, name
        assert key.kind == click_kind(param), name
        assert key.multiple == param.multiple, name
        assert key.required == param.required, name
        if key.kind == "choice":
            assert key.choices == tuple(param.type.choices), name
        if key.kind == "number":
            assert key.number is (int if isinstance(param.type, click.types.IntParamType) else float), name
            assert (key.min, key.max) == (getattr(param.type, "min", None), getattr(param.type, "max", None)), name
        if name != "base":
            assert fields[key.field].default == context_defaults[param.name] or (param.multiple and context_defaults[param.name] == ()), name
    # RunOptions: one field per option of train and diff, plus the parsed `set` tables
    every = set(click_options("train")) | set(click_options("diff"))
    assert set(fields) == {run.JOB_KEYS[k].field for k in every} | {"set_tables"}


def test_run_options_defaults_are_the_cli_defaults():
    params = cli.commands["diff"].make_context("diff", ["--base", "m.safetensors"]).params
    assert run.RunOptions(**params) == run.RunOptions(base=Path("m.safetensors"))


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("resolution", 512, 512),
        ("resolution", "512", 512),
        ("resolution", 512.0, 512),
        ("amount", 1, 1.0),
        ("image", ["a.png", "b.png"], (Path("a.png"), Path("b.png"))),
        ("image", "a.png", (Path("a.png"),)),
        ("effect", "outline", ("outline",)),
        ("name", 7, "7"),
        ("combine", "svd", "svd"),
        ("force", True, True),
    ],
)
def test_a_key_converts_as_its_click_option(name, value, expected):
    assert run.JOB_KEYS[name].cast(value) == expected


@pytest.mark.parametrize(
    "name, value",
    [
        ("resolution", 32),
        ("resolution", 99999),
        ("resolution", "big"),
        ("resolution", True),
        ("max-steps", 0),
        ("general-threshold", 1.5),
        ("amount", "x"),
        ("combine", "mean"),
        ("device", "tpu"),
        ("force", "yes"),
    ],
)
def test_a_key_refuses_what_its_click_option_refuses(name, value):
    key = run.JOB_KEYS[name]
    with pytest.raises(ValueError) as ours:
        key.cast(value)
    param = click_options("diff")[name]
    with pytest.raises(click.BadParameter) as theirs:
        param.type.convert(value, param, None) if not param.is_flag else _flag(value)
    if key.kind != "flag" and not (key.kind == "number" and isinstance(value, (str, bool))):
        assert str(ours.value) == theirs.value.message  # the same words (click says 'integer range' for 'big')


def test_a_fractional_integer_is_refused_not_truncated():
    # click's int() would make 512.5 into 512; a jobs file's 512.5 is a mistake to report
    with pytest.raises(ValueError, match=r"512\.5 is not a valid integer"):
        run.JOB_KEYS["resolution"].cast(512.5)


def _flag(value):
    if not isinstance(value, bool):
        raise click.BadParameter("not a bool")


def test_no_module_outside_the_cli_imports_the_cli():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "cli" or relative == Path("__main__.py"):  # the faces of the command line
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "copymachine" else [])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]  # importlib.import_module("copymachine.cli…")
            offenders += [f"{relative}: {n}" for n in names if n == "copymachine.cli" or n.startswith("copymachine.cli.")]
    assert offenders == []
