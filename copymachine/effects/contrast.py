"""contrast: linear (Pillow's ImageEnhance.Contrast about the mean grey; clips) or scurve (a sigmoid table per channel
rescaled so 0 and 255 stay put: no hard clipping)."""

from __future__ import annotations

from PIL import Image, ImageEnhance

from copymachine.effects.base import Array, Effect, Param, mode_param, to_uint8
from copymachine.heavy import numpy as np

PARAMS: dict[str, Param] = {
    "mode": mode_param(("linear", "scurve"), "linear: contrast about the mean grey (clips); scurve: sigmoid curve (no "
                                             "clipping)"),
    "factor": Param(1.5, float, "linear: contrast multiplier (1 = unchanged, 1.3-2.0 useful)", min=0.0, max=10.0),
    "gain": Param(8.0, float, "scurve: steepness of the curve (higher = stronger)", min=0.1, max=50.0),
    "midpoint": Param(0.5, float, "scurve: the level (0-1) that stays put and where the curve is steepest",
                                  min=0.05, max=0.95),
}


def scurve_lut(gain: float, midpoint: float) -> Array:
    x = np.arange(256, dtype=np.float64) / 255.0
    s = 1.0 / (1.0 + np.exp(-gain * (x - midpoint)))
    lo, hi = s[0], s[-1]
    return to_uint8((s - lo) / (hi - lo) * 255.0)


def run(rgb: Array, params: dict) -> Array:
    if params["mode"] == "scurve":
        return scurve_lut(params["gain"], params["midpoint"])[rgb]
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(rgb, "RGB")).enhance(params["factor"]))


EFFECT = Effect("contrast", "higher contrast: linear about the mean grey (default) or an S-curve without clipping",
                PARAMS, run)
