"""Options and set-up shared by the commands that run sd-scripts: click options made from the run's
schema (copymachine/options.py), so that the CLI, a jobs file and the web UI take the same keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args, get_origin

import click

from copymachine.engine_setup import make_settings
from copymachine.options import ENGINE, RunOptions, bounds, commands, option_name, shape

__all__ = ["engine_options", "make_settings", "run_options"]

PATH_KINDS = {"dir": {"file_okay": False}, "file": {"dir_okay": False}, None: {}}


def click_option(name: str) -> Callable:
    """The click option of RunOptions' field `name`: its type, range, default and help."""
    info = RunOptions.model_fields[name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    kind, multiple = shape(info)
    decls = ([str(extra["short"])] if "short" in extra else []) + [f"--{option_name(name)}", name]
    kw: dict = {"help": info.description, "multiple": multiple, "metavar": extra.get("metavar")}
    if kind is bool:
        kw["is_flag"] = True
    elif kind is Path:
        kw["type"] = click.Path(path_type=Path, **PATH_KINDS[extra.get("path")])  # type: ignore[index]
    elif get_origin(kind) is Literal:
        kw["type"] = click.Choice(get_args(kind))
    elif kind in (int, float):
        low, high = bounds(info)
        ranged = click.IntRange if kind is int else click.FloatRange
        kw["type"] = ranged(low, high) if (low, high) != (None, None) else kind
    if info.is_required():
        kw["required"] = True
    elif info.default not in (None, False, ()):
        kw.update(default=info.default, show_default=True)
    return click.option(*decls, **kw)


def _apply(f: Callable, names: list[str]) -> Callable:
    for name in reversed(names):
        f = click_option(name)(f)
    return f


def run_options(command: str) -> Callable[[Callable], Callable]:
    """The options of `train` or `diff`, in RunOptions' order (the method's, the checks', the engine's)."""
    return lambda f: _apply(f, [name for name in RunOptions.model_fields if command in commands(name)])


def engine_options(f: Callable) -> Callable:
    """--sd-scripts, --python, --device, --tokenizer-cache-dir, --offline, -v/--verbose."""
    return _apply(f, list(ENGINE))
