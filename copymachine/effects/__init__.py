"""The built-in image edits, one module each, in a fixed order. Each is RGB in and out, same size, deterministic, and
moves no pixel: the second LoRA must learn the edit, not a shift."""

from __future__ import annotations

import math

from PIL import Image

from copymachine.effects import contrast, flat, jpeg, outline, posterize
from copymachine.effects.base import Effect, Value, blend
from copymachine.errors import InputError
from copymachine.heavy import numpy as np
from copymachine.images import to_rgb

EFFECTS: dict[str, Effect] = {m.EFFECT.name: m.EFFECT for m in (outline, flat, contrast, posterize, jpeg)}

# |amount| above this only saturates: the blend is linear (1 is the edit itself) and clipped to
# 0-255; at amount 2 the clip already takes 49-50 % of the changed values of outline and contrast
# on the test scene (56-58 % at 3), and -2 takes 37 % of outline's.
AMOUNT_LIMIT = 2.0
AMOUNT_RANGE = f"from -{AMOUNT_LIMIT:g} to {AMOUNT_LIMIT:g}"


def names() -> list[str]:
    return list(EFFECTS)


def get(name: str) -> Effect:
    try:
        return EFFECTS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown effect {name!r}; the effects are: {', '.join(EFFECTS)}") from None


def resolve_params(name: str, overrides: dict[str, Value] | None = None) -> dict[str, Value]:
    """Effect `name`'s defaults updated with `overrides`, checked (InputError) and JSON-serialisable."""
    return get(name).resolve(dict(overrides or {}))


def check_amount(amount: float) -> float:
    try:
        value = float(amount)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or abs(value) > AMOUNT_LIMIT:
        raise InputError(f"--amount {amount!r} must be a number {AMOUNT_RANGE} (1 = the full edit, negative = its "
                         f"opposite; beyond {AMOUNT_LIMIT:g} the edit only saturates)")
    return value


def apply_effect(name: str, image: Image.Image, params: dict | None = None, amount: float = 1.0) -> Image.Image:
    """Effect `name` (`params` may be partial) on an image, as RGB: `original + amount × (edit − original)`."""
    resolved = resolve_params(name, params)
    amount = check_amount(amount)
    rgb = np.ascontiguousarray(np.asarray(to_rgb(image), dtype=np.uint8))
    edited = get(name).run(rgb, resolved)
    if amount != 1.0:
        edited = blend(rgb, edited, amount)
    return Image.fromarray(np.ascontiguousarray(edited), "RGB")
