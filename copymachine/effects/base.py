"""What an effect is: a name, its parameters (with defaults, types and ranges) and a function.

An effect function takes an RGB uint8 array (H×W×3) and the complete parameter dict and returns an
RGB uint8 array of the same shape. It must not move a pixel: no resize, crop, warp or even-sized
kernel (an even kernel shifts content by half a pixel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from copymachine.errors import InputError
from copymachine.heavy import numpy as np

Value = int | float | str | bool
_TYPE_NAMES = {int: "integer", float: "number", str: "text", bool: "true/false"}
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


@dataclass(frozen=True)
class Param:
    default: Value
    type: type
    help: str
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    # Extra check on the converted value: returns an error text, or None when the value is fine.
    validate: Callable[[Any], str | None] | None = field(default=None, compare=False, repr=False)

    def range_text(self) -> str:
        if self.choices:
            return " | ".join(self.choices)
        if self.type is bool:
            return "true | false"
        if self.min is not None and self.max is not None:
            return f"{_fmt(self.min)} to {_fmt(self.max)}"
        if self.min is not None:
            return f">= {_fmt(self.min)}"
        if self.max is not None:
            return f"<= {_fmt(self.max)}"
        return _TYPE_NAMES[self.type]

    def convert(self, key: str, raw: Value) -> Value:
        """`raw` (a string from the command line, or a Python value) → a checked value of this type."""
        value = self._coerce(key, raw)
        problem = None
        if self.choices is not None and value not in self.choices:
            problem = f"must be one of {', '.join(self.choices)}"
        elif (self.type in (int, float) and self.min is not None and value < self.min) or (self.type in (int, float) and self.max is not None and value > self.max):
            problem = f"must be {self.range_text()}"
        elif self.validate is not None:
            problem = self.validate(value)
        if problem:
            raise InputError(f"{key}={_fmt(raw)}: {problem}")
        return value

    def _coerce(self, key: str, raw: Value) -> Value:
        bad = InputError(f"{key}={_fmt(raw)}: not a valid {_TYPE_NAMES[self.type]} (expected {self.range_text()})")
        if self.type is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise bad
        if isinstance(raw, bool):
            raise bad
        if self.type is int:
            if isinstance(raw, int):
                return raw
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            try:
                return int(str(raw).strip())
            except ValueError:
                raise bad from None
        if self.type is float:
            try:
                value = float(raw) if isinstance(raw, (int, float)) else float(str(raw).strip())
            except ValueError:
                raise bad from None
            if not math.isfinite(value):
                raise bad
            return value
        return str(raw).strip()


@dataclass(frozen=True)
class Effect:
    name: str
    summary: str
    params: dict[str, Param]
    run: Callable[[np.ndarray, dict], np.ndarray] = field(compare=False, repr=False)

    def defaults(self) -> dict[str, Value]:
        return {key: p.default for key, p in self.params.items()}


def mode_param(choices: tuple[str, ...], help: str) -> Param:
    """The `mode` parameter: the first choice is the default algorithm."""
    return Param(choices[0], str, help, choices=choices)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def format_value(value: Any) -> str:
    """How a parameter value is written on the command line (`--set key=VALUE`)."""
    if isinstance(value, float):
        return repr(value)
    return _fmt(value)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round half up and clip to 0-255: the one rounding rule every effect uses."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def blend(base: np.ndarray, target: np.ndarray, weight: np.ndarray | float) -> np.ndarray:
    """`base + weight × (target − base)` as uint8; `weight` is a scalar or one value per pixel.

    Where the weight is 0 the result is `base`, bit for bit.
    """
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim and w.ndim == base.ndim - 1:
        w = w[..., None]  # one weight per pixel, for all three channels
    a = base.astype(np.float32)
    return to_uint8(a + w * (target.astype(np.float32) - a))
