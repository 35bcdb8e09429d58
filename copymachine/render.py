"""sd-scripts configs from the Jinja templates in templates/. Every value and key goes through tomli-w (the
`toml` and `toml_key` filters), so a Windows path, quote, newline or Japanese name arrives unchanged: nothing
is pasted into TOML as raw text (tests/test_security.py checks every template).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path, PurePath
from typing import Any

import jinja2
import tomli_w

from copymachine.files import atomic_write_text


def toml_value(value: Any) -> str:
    if isinstance(value, PurePath):
        value = str(value)
    if value is None:
        raise ValueError("TOML has no null: leave the key out instead")
    line = tomli_w.dumps({"v": value})
    prefix = "v = "
    assert line.startswith(prefix) and line.endswith("\n"), line
    return line[len(prefix) : -1]


def toml_key(key: Any) -> str:
    """A key written by tomli-w: bare when it is a plain option name, quoted otherwise."""
    line = tomli_w.dumps({str(key): 0})
    assert line.endswith(" = 0\n"), line
    return line[: -len(" = 0\n")]


def _load_template(name: str) -> str:
    return importlib.resources.files("copymachine.templates").joinpath(name).read_text(encoding="utf-8")


_ENV = jinja2.Environment(loader=jinja2.FunctionLoader(_load_template), undefined=jinja2.StrictUndefined,
                          keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
_ENV.filters.update(toml=toml_value, toml_key=toml_key)


def render(template: str, **context: Any) -> str:
    return _ENV.get_template(template).render(**context)


def write_config(path: Path, template: str, **context: Any) -> Path:
    atomic_write_text(path, render(template, **context))
    return path
