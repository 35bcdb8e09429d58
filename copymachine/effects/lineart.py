"""The line-art mask of `outline` and `flat`, and `flat`'s helpers to take line art off and lay it back. Line art is
dark *and* thin: a black-hat on the luma marks strokes narrower than the element, not a large dark fill (a pupil);
both tests ramp softly, so antialiased edges get a partial weight."""

from __future__ import annotations

from copymachine.effects.base import Array, Param, blend, project_blend
from copymachine.heavy import cv2
from copymachine.heavy import numpy as np

# The line-mask parameters, exposed by every effect that uses the mask.
LINE_PARAMS: dict[str, Param] = {
    "line_dark": Param(90, int, "luma at or below which a pixel counts as fully dark ink", min=0, max=255),
    "line_soft": Param(40, int, "luma range above line_dark over which darkness fades to none", min=1, max=255),
    "line_radius": Param(3, int, "black-hat radius: strokes thinner than about 2r+1 px count as line art",
                                 min=1, max=15),
    "line_contrast": Param(25, int, "how much darker than its surroundings a stroke must be (luma)", min=1, max=255),
}


def ellipse(radius: int) -> Array:
    """An odd, centred elliptical structuring element of the given radius (size 2r+1)."""
    size = 2 * int(radius) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def luma(rgb: Array) -> Array:
    """Rec. 601 luma as uint8 (what OpenCV's RGB→GRAY computes)."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def line_mask(rgb: Array, params: dict) -> Array:
    """Soft line-art mask in [0, 1] (float32, H×W) from the `line_*` entries of `params`."""
    y = luma(rgb)
    dark, soft = params["line_dark"], params["line_soft"]
    darkness = np.clip((dark + soft - y.astype(np.float32)) / soft, 0.0, 1.0)
    blackhat = cv2.morphologyEx(y, cv2.MORPH_BLACKHAT, ellipse(params["line_radius"])).astype(np.float32)
    t = float(params["line_contrast"])
    thinness = np.clip(blackhat / t - 0.5, 0.0, 1.0)  # 0 below t/2, 1 from 1.5 t
    return darkness * thinness


# --- taking the line art off an image and putting it back (used by `flat`) --------------------
LINE_EPS = 0.05  # line-mask level above which a pixel holds some ink
FRINGE_PX = 2  # how far beside a line antialiasing can reach
FRINGE_DARKER = 4  # luma: a pixel beside a line this much darker than the clean colour is line fringe


def nearest_fill(values: Array, holes: Array) -> Array:
    """Each hole pixel takes the value (a colour, a label) of the nearest pixel that is not a hole."""
    out = values.copy()
    if not holes.any() or holes.all():
        return out
    _, nearest = cv2.distanceTransformWithLabels(holes.astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    sources = np.flatnonzero(~holes.ravel())  # DIST_LABEL_PIXEL numbers the non-hole pixels 1..n in scan order
    flat = out.reshape(holes.size, -1)
    hole_index = np.flatnonzero(holes.ravel())
    flat[hole_index] = flat[sources[nearest.ravel()[hole_index] - 1]]
    return out


def line_holes(rgb: Array, mask: Array) -> Array:
    """The line art's pixels: some ink, plus the fringe (within FRINGE_PX of a line, darker than the clean colour)."""
    ink = mask > LINE_EPS
    beside = cv2.dilate(ink.astype(np.uint8), ellipse(FRINGE_PX)).astype(bool) & ~ink
    clean = nearest_fill(rgb, cv2.dilate(ink.astype(np.uint8), ellipse(FRINGE_PX + 1)).astype(bool))
    darker = luma(rgb).astype(np.int16) < luma(clean).astype(np.int16) - FRINGE_DARKER
    return ink | (beside & darker)


def recomposite_lines(original: Array, background: Array, holes: Array, mask: Array) -> Array:
    """The original line art over a new background: in `holes` the darkest nearby colour at the original's coverage
    (soft edges stay soft), the dark core (`mask`) as it was."""
    out = background.copy()
    ys, xs = np.nonzero(holes)
    if len(ys):
        ink = cv2.erode(original, ellipse(2))[ys, xs].astype(np.float32)
        out[ys, xs] = project_blend(original[ys, xs], background[ys, xs].astype(np.float32), ink)
    return blend(out, original, mask)
