"""An effect: a name, its parameters and a function (RGB uint8 H×W×3, params) -> same shape. It must move no pixel:
no resize, crop, warp or even-sized kernel (an even kernel shifts content by half a pixel)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import ErrorDetails

from copymachine.errors import InputError
from copymachine.heavy import numpy as np

if TYPE_CHECKING:
    from numpy import ndarray as Array
else:
    Array = Any  # numpy is imported when first used (copymachine/heavy.py)

Value = int | float | str | bool
_TYPE_NAMES = {int: "integer", float: "number", str: "text", bool: "true/false"}


@dataclass(frozen=True)
class Param:
    """One parameter of an effect: its default, type, help and range; checked as a pydantic field."""

    default: Value
    type: type
    help: str
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    # Extra check on the converted value: returns it, or raises ValueError saying what is wrong.
    validate: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)

    def range_text(self) -> str:
        if self.choices:
            return " | ".join(self.choices)
        if self.type is bool:
            return "true | false"
        if self.min is not None and self.max is not None:  # (every numeric parameter has both)
            return f"{_fmt(self.min)} to {_fmt(self.max)}"
        return _TYPE_NAMES[self.type]

    def field(self) -> tuple[Any, Any]:
        """The pydantic field: a Literal of the choices or the type, the range (finite floats only), the help."""
        kind: Any = Literal[self.choices] if self.choices else self.type
        if self.validate is not None:
            kind = Annotated[kind, AfterValidator(self.validate)]
        limits: dict[str, Any] = {"allow_inf_nan": False} if self.type is float else {}
        return kind, Field(self.default, ge=self.min, le=self.max, description=self.help, **limits)

    def problem(self, error: ErrorDetails) -> str:
        if error["type"] in ("greater_than_equal", "less_than_equal"):
            return f"must be {self.range_text()}"
        if error["type"] == "literal_error":
            return f"must be one of {', '.join(self.choices or ())}"
        if error["type"] == "value_error":
            return str(error["ctx"]["error"])
        return f"not a valid {_TYPE_NAMES[self.type]} (expected {self.range_text()})"


@dataclass(frozen=True)
class Effect:
    name: str
    summary: str
    params: dict[str, Param]
    run: Callable[[Array, dict], Array] = field(compare=False, repr=False)

    @cached_property
    def model(self) -> type[BaseModel]:
        fields: dict[str, Any] = {key: p.field() for key, p in self.params.items()}
        config = ConfigDict(extra="forbid", str_strip_whitespace=True, coerce_numbers_to_str=True)
        return create_model(f"{self.name}_params", __config__=config, **fields)

    def resolve(self, overrides: dict[str, Any]) -> dict[str, Value]:
        """The defaults updated with `overrides`, checked; InputError `name: key=value: problem`."""
        unknown = [key for key in overrides if key not in self.params]
        if unknown:
            known = ", ".join(self.params)
            raise InputError(f"{self.name} has no parameter {unknown[0]!r}; its parameters are: {known}")
        try:
            return self.model.model_validate(overrides).model_dump()
        except ValidationError as e:
            error = e.errors()[0]
            key = str(error["loc"][0])
            raise InputError(f"{self.name}: {key}={_fmt(overrides[key])}: {self.params[key].problem(error)}") from None


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
    return repr(value) if isinstance(value, float) else _fmt(value)


def to_uint8(values: Array) -> Array:
    """Round half up and clip to 0-255: the one rounding rule every effect uses."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def blend(base: Array, target: Array, weight: Array | float) -> Array:
    """`base + weight × (target − base)` as uint8 (weight: scalar or per pixel; 0 gives `base` bit for bit)."""
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim and w.ndim == base.ndim - 1:
        w = w[..., None]  # one weight per pixel, for all three channels
    a = base.astype(np.float32)
    return to_uint8(a + w * (target.astype(np.float32) - a))


def project_blend(original: Array, a: Array, b: Array) -> Array:
    """Each `original` pixel projected onto the RGB line a..b as that blend: an antialiased step keeps its coverage."""
    span = b - a
    t = ((original.astype(np.float32) - a) * span).sum(axis=1) / np.maximum((span * span).sum(axis=1), 1e-6)
    return blend(a, b, np.clip(t, 0.0, 1.0))
