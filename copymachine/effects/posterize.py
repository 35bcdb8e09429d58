"""posterize: fewer colours in flat bands. levels: `levels` values per channel including 0 and 255, as Photoshop/GIMP
do (Pillow's ImageOps.posterize keeps the top bits: white becomes 192); kmeans: a k-means palette in CIE Lab."""

from __future__ import annotations

import math

from copymachine.effects.base import Array, Effect, Param, mode_param, to_uint8
from copymachine.heavy import cv2
from copymachine.heavy import numpy as np

PARAMS: dict[str, Param] = {
    "mode": mode_param(("levels", "kmeans"), "levels: N values per channel; kmeans: a palette of N colours chosen in "
                                             "Lab"),
    "levels": Param(6, int, "levels: values per channel, 0 and 255 included (4 strong, 8 mild)", min=2, max=128),
    "colors": Param(24, int, "kmeans: palette size (16 drops thin strands, 24-32 keep them)", min=2, max=256),
    "seed": Param(0, int, "kmeans: seed of the palette search", min=0, max=2**31 - 1),
    "smooth": Param(True, bool, "kmeans: choose each pixel's colour on a bilateral-filtered copy (less speckle)"),
}

KMEANS_SAMPLE = 40000  # pixels the palette is fitted on (an even grid); every pixel is then assigned
KMEANS_ITERATIONS = 30


def levels_lut(levels: int) -> Array:
    step = (levels - 1) / 255.0
    return to_uint8(np.floor(np.arange(256) * step + 0.5) / step)


def to_lab(rgb: Array) -> Array:
    """CIE Lab (L 0-100) as float32, one row per pixel."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def nearest(points: Array, centres: Array, chunk: int = 1 << 16) -> Array:
    out = np.empty(len(points), np.int32)
    c2 = (centres * centres).sum(axis=1)
    for start in range(0, len(points), chunk):
        p = points[start:start + chunk]
        out[start:start + chunk] = np.argmin(c2[None, :] - 2.0 * p @ centres.T, axis=1)
    return out


def kmeans(points: Array, k: int, seed: int) -> Array:
    """Lloyd's k-means with k-means++ seeding, in NumPy with a seeded generator: deterministic."""
    rng = np.random.default_rng(seed)
    points32 = points.astype(np.float32)  # distances in float32: 3x faster, the same labels but for exact ties
    points = points.astype(np.float64)
    k = min(k, len(np.unique(points, axis=0)))
    centres = [points[rng.integers(len(points))]]
    d2 = ((points - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        pick = rng.choice(len(points), p=d2 / total) if total > 0 else rng.integers(len(points))
        centres.append(points[pick])
        d2 = np.minimum(d2, ((points - points[pick]) ** 2).sum(axis=1))
    centres = np.array(centres)
    for _ in range(KMEANS_ITERATIONS):
        label = nearest(points32, centres.astype(np.float32))
        sums = np.stack([np.bincount(label, weights=points[:, c], minlength=k) for c in range(3)], axis=1)
        counts = np.bincount(label, minlength=k)[:, None]
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
        converged = np.allclose(moved, centres, atol=1e-3)
        centres = moved
        if converged:
            break
    return centres


def kmeans_posterize(rgb: Array, colors: int, seed: int, smooth: bool) -> Array:
    h, w = rgb.shape[:2]
    stride = max(1, math.ceil(math.sqrt(h * w / KMEANS_SAMPLE)))
    sample = to_lab(np.ascontiguousarray(rgb[stride // 2::stride, stride // 2::stride]))
    centres = kmeans(sample, colors, seed)
    source = cv2.bilateralFilter(rgb, 5, 20, 3) if smooth else rgb
    labels = nearest(to_lab(source), centres.astype(np.float32))
    palette = cv2.cvtColor(centres.astype(np.float32).reshape(1, -1, 3), cv2.COLOR_Lab2RGB).reshape(-1, 3)
    return to_uint8(palette * 255.0)[labels].reshape(h, w, 3)


def run(rgb: Array, params: dict) -> Array:
    if params["mode"] == "kmeans":
        return kmeans_posterize(rgb, params["colors"], params["seed"], params["smooth"])
    return levels_lut(params["levels"])[rgb]


EFFECT = Effect("posterize", "fewer colours in flat bands: N levels per channel (default) or a k-means palette in Lab",
                PARAMS, run)
