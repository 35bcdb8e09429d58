"""flat: remove shading and texture, keep the line art.

First the line art (the line mask plus its antialiased fringe) is taken off: those pixels take
the colour of the nearest pixel beside the line, so lines neither form regions of their own nor
bleed into the fills. Then:

segment (default): Felzenszwalb graph segmentation (scikit-image) splits the image into regions of
similar colour; each region is filled with the median colour of its pixels that were not line
art. On the boundary between two fills each pixel gets the in-between shade the original had there
(its projection onto the line between the two fill colours), so steps stay antialiased.
meanshift: OpenCV's mean-shift filtering (mild: removes grain and texture, keeps soft shadows).
l0: L0 gradient minimisation (Xu et al. 2011), solved with DCTs (no wrap-around at the borders):
gradients collapse into a few flat steps.

Last the line art is laid back over the new fills with the coverage it had (keep_lines), so the
lines neither vanish nor move.
"""

from __future__ import annotations


from copymachine.heavy import numpy as np
from copymachine.effects.base import Effect, Param, blend, mode_param, to_uint8
from copymachine.effects.lineart import LINE_PARAMS, line_holes, line_mask, nearest_fill, recomposite_lines
from copymachine.heavy import cv2

PARAMS: dict[str, Param] = {
    "mode": mode_param(("segment", "meanshift", "l0"), "segment: flat median fill per region; meanshift / l0: edge-preserving smoothing"),
    "scale": Param(200.0, float, "segment: Felzenszwalb scale (higher = larger regions)", min=1.0, max=100000.0),
    "sigma": Param(0.5, float, "segment: Gaussian pre-smoothing inside the segmentation, px", min=0.0, max=5.0),
    "min_size": Param(40, int, "segment: smallest region in pixels", min=1, max=1000000),
    "antialias": Param(True, bool, "segment: give the steps between fills the original's antialiased shades"),
    "spatial": Param(12, int, "meanshift: spatial window radius, px", min=1, max=100),
    "color": Param(24, int, "meanshift: colour window radius", min=1, max=255),
    "l0_lambda": Param(0.02, float, "l0: smoothing weight (0.005 mild, 0.02 strong)", min=0.0001, max=1.0),
    "l0_kappa": Param(2.0, float, "l0: solver step (larger = faster, coarser)", min=1.1, max=10.0),
    "keep_lines": Param(True, bool, "lay the original line art back over the flattened fills"),
    **LINE_PARAMS,
}

L0_BETA_MAX = 1e5
MEDIAN_HISTOGRAM_SEGMENTS = 1 << 14  # above this many segments, medians are found by sorting
INNER_SHARE = 0.5  # a segment's fill comes from its pixels at least this deep (share of its deepest)
THIN_INTERIOR = 0.2  # share of a segment's pixels with no other segment beside them: less is "thin"
THIN_MERGE_DISTANCE = 24.0  # mean |ΔR|+|ΔG|+|ΔB| (strip colour to the pixels beside it) to merge


def segment_medians(rgb: np.ndarray, labels: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Per-segment (lower) median colour, from the pixels where `use` is true.

    A segment with no usable pixel takes the median of all its pixels. Returns an (n, 3) uint8 array.
    """
    n = int(labels.max()) + 1
    lab = labels.ravel()
    has_use = np.bincount(lab[use.ravel()], minlength=n) > 0
    sel = use.ravel() | ~has_use[lab]
    lab = lab[sel]
    counts = np.bincount(lab, minlength=n)
    out = np.empty((n, 3), np.uint8)
    for c in range(3):
        keys = lab.astype(np.int64) * 256 + rgb[..., c].ravel()[sel]
        if n <= MEDIAN_HISTOGRAM_SEGMENTS:  # a 256-bin histogram per segment: fast, n × 256 memory
            cumulative = np.cumsum(np.bincount(keys, minlength=n * 256).reshape(n, 256), axis=1)
            out[:, c] = np.argmax(cumulative > ((counts - 1) // 2)[:, None], axis=1)
        else:  # many segments: sort (segment, value) pairs instead
            keys.sort()
            starts = np.cumsum(counts) - counts
            out[:, c] = keys[np.minimum(starts + (counts - 1) // 2, len(keys) - 1)] % 256
    return out


def restore_antialiasing(original: np.ndarray, flat: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Where a fill meets another fill, put back the original's in-between (antialiased) shades.

    Each pixel's own fill colour c1 and the most different fill colour among its 8 neighbours c2
    span a line in RGB; the original pixel is projected onto it (clamped to c1..c2). Inside a fill
    c2 == c1 and nothing changes; on a boundary the step gets the coverage the original had.
    """
    h, w = flat.shape[:2]
    square = np.ones((3, 3), np.uint8)
    lab = labels.astype(np.float64)  # exact for any label count; cv2 morphology has no int32
    edge = cv2.dilate(lab, square) != cv2.erode(lab, square)
    ys, xs = np.nonzero(edge)
    padded = np.pad(flat, ((1, 1), (1, 1), (0, 0)), mode="edge")
    c1 = flat[ys, xs].astype(np.float32)
    c2 = c1.copy()
    best = np.zeros(len(ys), np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            candidate = padded[ys + 1 + dy, xs + 1 + dx].astype(np.float32)
            d = ((candidate - c1) ** 2).sum(axis=1)
            better = d > best
            best[better] = d[better]
            c2[better] = candidate[better]
    t = ((original[ys, xs].astype(np.float32) - c1) * (c2 - c1)).sum(axis=1) / np.maximum(best, 1e-6)
    out = flat.copy()
    out[ys, xs] = blend(c1, c2, np.clip(t, 0.0, 1.0))
    return out


def merge_thin_segments(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Merge each segment that is only about 2 px wide into the neighbour it continues.

    Felzenszwalb's Gaussian pre-smoothing blurs every sharp boundary, and the blurred pixels can
    form thin strips of their own along it; filled with their own median they would draw a rim
    beside every line. A thin segment joins the neighbouring (not thin) segment whose pixels just
    across the shared boundary are closest to the thin segment's mean colour, when that difference
    is below THIN_MERGE_DISTANCE: the strip continues the neighbour. A genuinely thin detail (an
    eye's white rim, a highlight) differs from what lies beside it and stays.
    """
    n = int(labels.max()) + 1
    same_h = labels[:, 1:] == labels[:, :-1]
    same_v = labels[1:, :] == labels[:-1, :]
    interior = np.ones(labels.shape, bool)
    interior[:, 1:] &= same_h
    interior[:, :-1] &= same_h
    interior[1:, :] &= same_v
    interior[:-1, :] &= same_v
    # A strip w px wide has about (w-2)/w of its pixels inside; below THIN_INTERIOR it is ~2 px wide.
    sizes = np.bincount(labels.ravel(), minlength=n)
    thin = np.bincount(labels[interior], minlength=n) < THIN_INTERIOR * sizes
    if not thin.any():
        return labels
    img = image.astype(np.float64)
    means = np.stack([np.bincount(labels.ravel(), weights=img[..., c].ravel(), minlength=n) for c in range(3)], axis=1)
    means /= np.maximum(sizes, 1)[:, None]
    # each boundary pixel pair, both ways: (segment, neighbouring segment, pixel on the neighbour's side)
    left, right = labels[:, :-1][~same_h], labels[:, 1:][~same_h]
    up, down = labels[:-1, :][~same_v], labels[1:, :][~same_v]
    src = np.concatenate([left, right, up, down])
    dst = np.concatenate([right, left, down, up])
    across = np.concatenate([img[:, 1:][~same_h], img[:, :-1][~same_h], img[1:, :][~same_v], img[:-1, :][~same_v]])
    diff = np.abs(means[src] - across).sum(axis=1)
    keep = thin[src] & ~thin[dst]
    if not keep.any():
        return labels
    pairs, inverse = np.unique(src[keep].astype(np.int64) * n + dst[keep], return_inverse=True)
    mean = np.bincount(inverse, weights=diff[keep]) / np.bincount(inverse)
    order = np.lexsort((mean, pairs // n))  # per thin segment, the closest neighbour first
    first = order[np.r_[True, np.diff(pairs[order] // n) != 0]]
    first = first[mean[first] < THIN_MERGE_DISTANCE]
    mapping = np.arange(n)
    mapping[pairs[first] // n] = pairs[first] % n
    return mapping[labels]


def inner_half(labels: np.ndarray) -> np.ndarray:
    """The pixels in the inner half of their segment (by distance to its boundary).

    A segment's fill colour is taken from these, so the antialiased ramp around a thin light stroke
    (a highlight) does not pull its colour towards the background.
    """
    lab = labels.astype(np.float64)
    square = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(lab, square) != cv2.erode(lab, square)
    depth = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)
    deepest = np.zeros(int(labels.max()) + 1, np.float32)
    np.maximum.at(deepest, labels.ravel(), depth.ravel())
    return depth >= INNER_SHARE * deepest[labels]


def segment_fill(clean: np.ndarray, params: dict, holes: np.ndarray) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    labels = felzenszwalb(clean, scale=params["scale"], sigma=params["sigma"], min_size=params["min_size"], channel_axis=-1)
    labels = merge_thin_segments(clean, labels)
    flat = segment_medians(clean, labels, ~holes & inner_half(labels))[labels]
    return restore_antialiasing(clean, flat, labels) if params["antialias"] else flat


def l0_smooth(rgb: np.ndarray, lam: float, kappa: float, beta_max: float = L0_BETA_MAX) -> np.ndarray:
    """L0 gradient minimisation with Neumann borders: the DCT diagonalises the Laplacian."""
    from scipy.fft import dctn, idctn

    image = rgb.astype(np.float32) / 255.0
    h, w = image.shape[:2]
    eig_x = 2.0 - 2.0 * np.cos(np.pi * np.arange(w) / w)
    eig_y = 2.0 - 2.0 * np.cos(np.pi * np.arange(h) / h)
    laplacian = (eig_y[:, None] + eig_x[None, :]).astype(np.float32)[..., None]
    spectrum = dctn(image, axes=(0, 1), norm="ortho")
    s = image
    beta = 2.0 * lam
    while beta < beta_max:
        gx = np.zeros_like(s)
        gy = np.zeros_like(s)
        gx[:, :-1] = s[:, 1:] - s[:, :-1]
        gy[:-1, :] = s[1:, :] - s[:-1, :]
        small = (gx * gx + gy * gy).sum(axis=2) < lam / beta
        gx[small] = 0.0
        gy[small] = 0.0
        # D^T applied to (gx, gy): the transpose of the forward differences above.
        div = np.zeros_like(s)
        div[:, 0] -= gx[:, 0]
        div[:, 1:] += gx[:, :-1] - gx[:, 1:]
        div[0, :] -= gy[0, :]
        div[1:, :] += gy[:-1, :] - gy[1:, :]
        s = idctn((spectrum + beta * dctn(div, axes=(0, 1), norm="ortho")) / (1.0 + beta * laplacian), axes=(0, 1), norm="ortho")
        s = s.astype(np.float32)
        beta *= kappa
    return to_uint8(s * 255.0)


def run(rgb: np.ndarray, params: dict) -> np.ndarray:
    lines = line_mask(rgb, params)
    holes = line_holes(rgb, lines)
    clean = nearest_fill(rgb, holes)
    mode = params["mode"]
    if mode == "meanshift":
        flat = cv2.pyrMeanShiftFiltering(clean, params["spatial"], params["color"], maxLevel=0)
    elif mode == "l0":
        flat = l0_smooth(clean, params["l0_lambda"], params["l0_kappa"])
    else:
        flat = segment_fill(clean, params, holes)
    return recomposite_lines(rgb, flat, holes, lines) if params["keep_lines"] else flat


EFFECT = Effect(
    name="flat",
    summary="flat colours: each region filled with one colour, shading and texture removed, line art kept",
    params=PARAMS,
    run=run,
)
