"""Rendering sd-scripts configs from the Jinja templates in templates/.

Every value reaches the TOML through the `toml` filter, which writes it with a TOML library
(tomli-w): a Windows path such as G:\\sd\\x.safetensors, a quote or a Japanese name arrives at
sd-scripts unchanged. Nothing is pasted into TOML as raw text.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path, PurePath
from typing import Any

import jinja2
import tomli_w


class AttrDict(dict):
    """A dict whose keys templates can read as attributes (`training.network_dim`)."""

    __getattr__ = dict.__getitem__


def toml_value(value: Any) -> str:
    """One TOML value (string, number, bool, list, path) written by tomli-w."""
    if isinstance(value, PurePath):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    if value is None:
        raise ValueError("TOML has no null: leave the key out instead")
    line = tomli_w.dumps({"v": value})
    prefix = "v = "
    assert line.startswith(prefix) and line.endswith("\n"), line
    return line[len(prefix) : -1]


def _environment() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(_load_template)
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["toml"] = toml_value
    return env


def _load_template(name: str) -> str:
    return importlib.resources.files("copymachine.templates").joinpath(name).read_text(encoding="utf-8")


_ENV = _environment()


def render(template: str, **context: Any) -> str:
    return _ENV.get_template(template).render(**context)


def write_config(path: Path, template: str, **context: Any) -> Path:
    """Render `template` to `path` (written whole or not at all)."""
    from copymachine.files import atomic_write_text

    text = render(template, **context)
    atomic_write_text(path, text)
    return path
