"""flat: remove shading and texture, keep the line art.

First the line art (the line mask plus its antialiased fringe) is taken off: those pixels take
the colour of the nearest pixel beside the line, so lines neither form regions of their own nor
bleed into the fills. Then:

regions (default): the regions bounded by the line art and by strong colour edges (Canny on the
colour gradient, stronger than `edge` per pixel; the whole width of an edge six times stronger),
each filled with the median colour of its own pixels. A smooth shading changes far less per pixel
than the border between two fills, so a shaded ball inside its outline becomes one colour while the
lines and the borders between differently coloured regions stay where they are. The steps between
fills get the original's antialiased shades, as in segment.
segment: Felzenszwalb graph segmentation (scikit-image) splits the image into regions of
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

from copymachine.effects.base import Array, Effect, Param, blend, mode_param, to_uint8
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


def restore_antialiasing(original: Array, flat: Array, labels: Array) -> Array:
    """Where a fill meets another fill, put back the original's in-between (antialiased) shades.

    Each pixel's own fill colour c1 and the most different fill colour among its 8 neighbours c2
    span a line in RGB; the original pixel is projected onto it (clamped to c1..c2). Inside a fill
    c2 == c1 and nothing changes; on a boundary the step gets the coverage the original had.
    """
    _h, _w = flat.shape[:2]
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


def merge_thin_segments(image: Array, labels: Array) -> Array:
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


def inner_half(labels: Array) -> Array:
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


def segment_fill(clean: Array, params: dict, holes: Array) -> Array:
    from skimage.segmentation import felzenszwalb

    labels = felzenszwalb(clean, scale=params["scale"], sigma=params["sigma"], min_size=params["min_size"],
                          channel_axis=-1)
    labels = merge_thin_segments(clean, labels)
    flat = segment_medians(clean, labels, ~holes & inner_half(labels))[labels]
    return restore_antialiasing(clean, flat, labels) if params["antialias"] else flat


EDGE_SIGMA = 1.0  # px: the blur before the colour-edge measure (grain is not an edge)
EDGE_LOW = 0.5  # Canny's hysteresis: an edge continues down to this share of `edge`
STRONG_EDGE = 6.0  # x `edge`: a change this strong bounds a region over its whole width
_SOBEL_SCALE = 32.0  # int16 Sobel for Canny: 1/32 of a level per pixel


def colour_edges(rgb: Array, edge: float) -> Array:
    """Where regions end: thin (1 px) Canny edges of the colour gradient stronger than `edge`
    levels per pixel (continued down to EDGE_LOW x `edge`), and the whole width of an edge
    stronger than STRONG_EDGE x `edge` (where three edges meet, Canny's thinning leaves gaps; a
    strong edge closes them). Thin where it can be, so that a 2 px highlight keeps an inside.
    The gradient is the centred Sobel (/8: levels per pixel) after a Gaussian blur of EDGE_SIGMA."""
    blurred = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), EDGE_SIGMA, borderType=cv2.BORDER_REFLECT)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    strong = np.sqrt((gx * gx + gy * gy).sum(axis=2)) > STRONG_EDGE * edge
    ix, iy = (np.clip(g * _SOBEL_SCALE, -32767, 32767).astype(np.int16) for g in (gx, gy))
    high = edge * _SOBEL_SCALE
    return (cv2.Canny(ix, iy, EDGE_LOW * high, high, L2gradient=True) > 0) | strong


def nearest_labels(labels: Array, unassigned: Array) -> Array:
    """Each unassigned pixel takes the label of the nearest assigned one."""
    out = labels.copy()
    if not unassigned.any() or unassigned.all():
        return out
    _, nearest = cv2.distanceTransformWithLabels(unassigned.astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    sources = np.flatnonzero(~unassigned.ravel())
    flat = out.ravel()
    index = np.flatnonzero(unassigned.ravel())
    flat[index] = flat[sources[nearest.ravel()[index] - 1]]
    return out


def region_labels(holes: Array, edges: Array, min_size: int) -> Array:
    """Regions bounded by the line art (`holes`) and by colour edges (`edges`, 8-connected): the
    connected areas between them (4-connected, so a diagonal edge closes). The boundary pixels
    and regions smaller than `min_size` join the nearest region. Labels 0..n-1."""
    n, labels = cv2.connectedComponents((~(holes | edges)).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    sizes = np.bincount(labels.ravel(), minlength=n)
    small = sizes < min_size
    small[0] = True  # the boundary itself
    unassigned = small[labels]
    if unassigned.all():  # no region at all (an image of edges): one region
        return np.zeros(labels.shape, np.int32)
    labels = nearest_labels(labels, unassigned)
    _, compact = np.unique(labels, return_inverse=True)
    return compact.reshape(labels.shape).astype(np.int32)


def region_fill(rgb: Array, clean: Array, params: dict, holes: Array) -> Array:
    """Each region filled with the median colour of its own pixels (not line art, not on an edge).
    The edges are found in the original (`rgb`): there a fill's edge meets the line art without a
    gap; in `clean` (line art filled in) it may not."""
    edges = colour_edges(rgb, params["edge"])
    labels = region_labels(holes, edges, params["region_min"])
    flat = segment_medians(clean, labels, ~holes & ~edges)[labels]
    return restore_antialiasing(clean, flat, labels) if params["antialias"] else flat


def l0_smooth(rgb: Array, lam: float, kappa: float, beta_max: float = L0_BETA_MAX) -> Array:
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
        smoothed = (spectrum + beta * dctn(div, axes=(0, 1), norm="ortho")) / (1.0 + beta * laplacian)
        s = idctn(smoothed, axes=(0, 1), norm="ortho")
        s = s.astype(np.float32)
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


EFFECT = Effect(
    name="flat",
    summary="flat colours: each region filled with one colour, shading and texture removed, line art kept",
    params=PARAMS,
    run=run,
)
