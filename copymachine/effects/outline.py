"""outline: thicker line art (the mask grown by `width`, filled with the darkest nearby colour per channel, so a
dark-red line stays dark red), or xdog: XDoG contour lines (Winnemöller 2012) at colour edges."""

from __future__ import annotations

from copymachine.effects.base import Array, Effect, Param, blend, mode_param, to_uint8
from copymachine.effects.lineart import LINE_PARAMS, ellipse, line_mask, luma
from copymachine.heavy import cv2
from copymachine.heavy import numpy as np

PARAMS: dict[str, Param] = {
    "mode": mode_param(("thicken", "xdog"), "thicken: grow the existing line art; xdog: add contour lines at colour "
                                            "edges"),
    "width": Param(1, int, "thicken: pixels added on each side of a line (2-3 start to blob pupils)", min=1, max=5),
    "opacity": Param(1.0, float, "how fully the added line covers what was there (1 = the line's own colour)",
                                 min=0.0, max=1.0),
    **LINE_PARAMS,
    "xdog_sigma": Param(0.8, float, "xdog: inner Gaussian sigma in px (line width)", min=0.3, max=5.0),
    "xdog_k": Param(1.6, float, "xdog: outer/inner sigma ratio", min=1.1, max=5.0),
    "xdog_tau": Param(0.98, float, "xdog: weight of the outer Gaussian (edge sensitivity)", min=0.5, max=1.0),
    "xdog_eps": Param(-0.02, float, "xdog: response level below which ink starts", min=-0.5, max=0.5),
    "xdog_phi": Param(60.0, float, "xdog: steepness of the ink ramp", min=1.0, max=500.0),
}


def thicken(rgb: Array, params: dict) -> Array:
    kernel = ellipse(params["width"])
    grown = cv2.dilate(line_mask(rgb, params), kernel)
    darkest = cv2.erode(rgb, kernel)
    return blend(rgb, darkest, grown * params["opacity"])


def xdog(rgb: Array, params: dict) -> Array:
    y = luma(rgb).astype(np.float32) / 255.0
    sigma = params["xdog_sigma"]
    inner = cv2.GaussianBlur(y, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    outer = cv2.GaussianBlur(y, (0, 0), sigma * params["xdog_k"], borderType=cv2.BORDER_REFLECT)
    response = inner - params["xdog_tau"] * outer - params["xdog_eps"]
    ink = np.where(response < 0, -np.tanh(params["xdog_phi"] * response), 0.0).astype(np.float32)
    keep = 1.0 - params["opacity"] * ink
    return to_uint8(rgb.astype(np.float32) * keep[..., None])


def run(rgb: Array, params: dict) -> Array:
    return xdog(rgb, params) if params["mode"] == "xdog" else thicken(rgb, params)


EFFECT = Effect("outline", "thicker line art (the darkest nearby colour grows around existing lines); xdog mode "
                           "adds contour lines", PARAMS, run)
