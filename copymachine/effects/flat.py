"""flat: remove shading and texture, keep the line art. The line art first takes the nearest colour beside it (so it
neither forms regions nor bleeds into fills); regions (default) fills each region bounded by line art and colour edges
with its median (a shading changes far less per pixel than a border); the line art is laid back last (keep_lines)."""

from __future__ import annotations

from copymachine.effects.base import Array, Effect, Param, mode_param, project_blend, to_uint8
from copymachine.effects.lineart import LINE_PARAMS, line_holes, line_mask, nearest_fill, recomposite_lines
from copymachine.heavy import cv2
from copymachine.heavy import numpy as np

PARAMS: dict[str, Param] = {
    "mode": mode_param(("regions", "segment", "meanshift", "l0"),
                       "regions: one colour per region bounded by line art and strong colour edges; segment: "
                       "Felzenszwalb segments; meanshift / l0: edge-preserving smoothing"),
    "edge": Param(8.0, float, "regions: colour change per pixel (0-255 scale, after a 1 px blur) that bounds a region; "
                              "a smooth shading changes less", min=0.5, max=255.0),
    "scale": Param(200.0, float, "segment / regions: Felzenszwalb scale (higher = larger regions)",
                                 min=1.0, max=100000.0),
    "sigma": Param(0.5, float, "segment / regions: Gaussian pre-smoothing inside the segmentation, px",
                               min=0.0, max=5.0),
    "min_size": Param(40, int, "segment / regions: smallest region in pixels", min=1, max=1000000),
    "region_min": Param(12, int, "regions: smallest region in pixels (smaller ones join the nearest region)",
                                 min=1, max=1000000),
    "antialias": Param(True, bool, "segment / regions: give the steps between fills the original's antialiased shades"),
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


def segment_medians(rgb: Array, labels: Array, use: Array) -> Array:
    """Per-segment (lower) median colour (n×3 uint8) of its `use` pixels (all of them for a segment with none)."""
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


def restore_antialiasing(original: Array, flat: Array, labels: Array) -> Array:
    """The original's antialiased shades back where fills meet: each boundary pixel projected onto the line from its
    fill colour to the most different one among its 8 neighbours."""
    ys, xs = np.nonzero(label_edges(labels))
    padded = np.pad(flat, ((1, 1), (1, 1), (0, 0)), mode="edge")
    c1 = flat[ys, xs].astype(np.float32)
    around = np.stack([padded[ys + 1 + dy, xs + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]).astype(np.float32)
    c2 = around[((around - c1) ** 2).sum(axis=2).argmax(axis=0), np.arange(len(ys))]  # the first most different
    out = flat.copy()
    out[ys, xs] = project_blend(original[ys, xs], c1, c2)
    return out


def label_edges(labels: Array, cross: bool = False) -> Array:
    """The pixels with another label among their 8 neighbours (the 4 beside them with `cross`)."""
    lab = labels.astype(np.float64)  # exact for any label count; cv2 morphology has no int32
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS if cross else cv2.MORPH_RECT, (3, 3))
    return cv2.dilate(lab, kernel) != cv2.erode(lab, kernel)


def merge_thin_segments(image: Array, labels: Array) -> Array:
    """Each ~2 px wide segment (Felzenszwalb's pre-smoothing blurs sharp boundaries into rims beside every line) joins
    the not-thin neighbour closest to its mean colour, if nearer than THIN_MERGE_DISTANCE (an eye's rim stays)."""
    n = int(labels.max()) + 1
    same_h = labels[:, 1:] == labels[:, :-1]
    same_v = labels[1:, :] == labels[:-1, :]
    interior = ~label_edges(labels, cross=True)
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


def inner_half(labels: Array) -> Array:
    """The inner half of each segment: the fill colour comes from it, so a highlight's antialiased ramp does not pull
    it towards the background."""
    depth = cv2.distanceTransform((~label_edges(labels)).astype(np.uint8), cv2.DIST_L2, 3)
    deepest = np.zeros(int(labels.max()) + 1, np.float32)
    np.maximum.at(deepest, labels.ravel(), depth.ravel())
    return depth >= INNER_SHARE * deepest[labels]


def median_fill(clean: Array, labels: Array, use: Array, antialias: bool) -> Array:
    """Each segment filled with the median of its `use` pixels, the steps between fills antialiased."""
    flat = segment_medians(clean, labels, use)[labels]
    return restore_antialiasing(clean, flat, labels) if antialias else flat


def segment_fill(clean: Array, params: dict, holes: Array) -> Array:
    from skimage.segmentation import felzenszwalb

    labels = felzenszwalb(clean, scale=params["scale"], sigma=params["sigma"], min_size=params["min_size"],
                          channel_axis=-1)
    labels = merge_thin_segments(clean, labels)
    return median_fill(clean, labels, ~holes & inner_half(labels), params["antialias"])


EDGE_SIGMA = 1.0  # px: the blur before the colour-edge measure (grain is not an edge)
EDGE_LOW = 0.5  # Canny's hysteresis: an edge continues down to this share of `edge`
STRONG_EDGE = 6.0  # x `edge`: a change this strong bounds a region over its whole width
_SOBEL_SCALE = 32.0  # int16 Sobel for Canny: 1/32 of a level per pixel


def colour_edges(rgb: Array, edge: float) -> Array:
    """Where regions end: 1 px Canny edges of the blurred colour gradient above `edge`, and the full width of edges
    above STRONG_EDGE x `edge` (closing Canny's gaps where three meet); thin, so a 2 px highlight keeps an inside."""
    blurred = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), EDGE_SIGMA, borderType=cv2.BORDER_REFLECT)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    strong = np.sqrt((gx * gx + gy * gy).sum(axis=2)) > STRONG_EDGE * edge
    ix, iy = (np.clip(g * _SOBEL_SCALE, -32767, 32767).astype(np.int16) for g in (gx, gy))
    high = edge * _SOBEL_SCALE
    return (cv2.Canny(ix, iy, EDGE_LOW * high, high, L2gradient=True) > 0) | strong


def region_labels(holes: Array, edges: Array, min_size: int) -> Array:
    """Labels 0..n-1 of the areas between line art and edges (4-connected: a diagonal edge closes); the boundary and
    regions under `min_size` join the nearest region."""
    n, labels = cv2.connectedComponents((~(holes | edges)).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    sizes = np.bincount(labels.ravel(), minlength=n)
    small = sizes < min_size
    small[0] = True  # the boundary itself
    unassigned = small[labels]
    if unassigned.all():  # no region at all (an image of edges): one region
        return np.zeros(labels.shape, np.int32)
    labels = nearest_fill(labels, unassigned)
    _, compact = np.unique(labels, return_inverse=True)
    return compact.reshape(labels.shape).astype(np.int32)


def region_fill(rgb: Array, clean: Array, params: dict, holes: Array) -> Array:
    """The edges are found in the original (`rgb`): there a fill's edge meets the line art without a gap."""
    edges = colour_edges(rgb, params["edge"])
    return median_fill(clean, region_labels(holes, edges, params["region_min"]), ~holes & ~edges, params["antialias"])


def l0_smooth(rgb: Array, lam: float, kappa: float, beta_max: float = L0_BETA_MAX) -> Array:
    """L0 gradient minimisation with Neumann borders: the DCT diagonalises the Laplacian."""
    from scipy.fft import dctn, idctn

    image = rgb.astype(np.float32) / 255.0
    h, w = image.shape[:2]
    eig_y, eig_x = (2.0 - 2.0 * np.cos(np.pi * np.arange(n) / n) for n in (h, w))
    laplacian = (eig_y[:, None] + eig_x[None, :]).astype(np.float32)[..., None]
    spectrum = dctn(image, axes=(0, 1), norm="ortho")
    s = image
    beta = 2.0 * lam
    while beta < beta_max:
        gx = np.diff(s, axis=1, append=s[:, -1:])  # forward differences, 0 at the last column / row
        gy = np.diff(s, axis=0, append=s[-1:, :])
        small = (gx * gx + gy * gy).sum(axis=2) < lam / beta
        gx[small] = 0.0
        gy[small] = 0.0
        # D^T applied to (gx, gy): the transpose of the forward differences above.
        div = -np.diff(gx, axis=1, prepend=np.float32(0)) - np.diff(gy, axis=0, prepend=np.float32(0))
        smoothed = (spectrum + beta * dctn(div, axes=(0, 1), norm="ortho")) / (1.0 + beta * laplacian)
        s = idctn(smoothed, axes=(0, 1), norm="ortho").astype(np.float32)
        beta *= kappa
    return to_uint8(s * 255.0)


def run(rgb: Array, params: dict) -> Array:
    lines = line_mask(rgb, params)
    holes = line_holes(rgb, lines)
    clean = nearest_fill(rgb, holes)
    mode = params["mode"]
    if mode == "meanshift":
        flat = cv2.pyrMeanShiftFiltering(clean, params["spatial"], params["color"], maxLevel=0)
    elif mode == "l0":
        flat = l0_smooth(clean, params["l0_lambda"], params["l0_kappa"])
    elif mode == "regions":
        flat = region_fill(rgb, clean, params, holes)
    else:
        flat = segment_fill(clean, params, holes)
    return recomposite_lines(rgb, flat, holes, lines) if params["keep_lines"] else flat


EFFECT = Effect("flat", "flat colours: each region filled with one colour, shading and texture removed, line art kept",
                PARAMS, run)
