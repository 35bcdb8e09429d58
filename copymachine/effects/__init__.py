"""The built-in image edits: one module per effect, registered here in a fixed order.

    from copymachine.effects import apply_effect, resolve_params
    params = resolve_params("outline", {"width": "2"})   # complete, typed, JSON-serialisable
    edited = apply_effect("outline", image, params, amount=0.8)

Every effect is RGB in, RGB out, the same size, deterministic (same input → same bytes), and moves
no pixel: the second LoRA must learn the edit, not a shift.
"""

from __future__ import annotations

import math

from PIL import Image

from copymachine.effects import contrast, flat, jpeg, outline, posterize
from copymachine.effects.base import Effect, Param, Value, blend
from copymachine.errors import InputError
from copymachine.heavy import numpy as np
from copymachine.images import to_rgb

__all__ = ["AMOUNT_LIMIT", "AMOUNT_RANGE", "EFFECTS", "Effect", "Param", "apply_effect", "check_amount", "get", "names",
           "resolve_params"]

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
    """Defaults of effect `name` updated with `overrides` (strings converted and checked).

    The result is complete and JSON-serialisable, in the order the effect declares its parameters.
    Raises InputError for an unknown effect, an unknown key (naming the valid ones) or a bad value.
    """
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
    """Apply effect `name` to an RGB image: `original + amount × (edit − original)`, clipped to 0-255.

    `params` may be partial (missing keys take their defaults). The result has the same size.
    """
    effect = get(name)
    resolved = resolve_params(name, params)
    amount = check_amount(amount)
    if image.mode != "RGB":
        image = to_rgb(image)
    rgb = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    edited = effect.run(rgb, resolved)
    if edited.shape != rgb.shape or edited.dtype != np.uint8:
        raise AssertionError(f"effect {name} returned {edited.shape} {edited.dtype} for {rgb.shape} uint8")
    if amount != 1.0:
        edited = blend(rgb, edited, amount)
    return Image.fromarray(np.ascontiguousarray(edited), "RGB")

