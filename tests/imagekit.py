"""Test images drawn by the tests themselves: an anime-style scene with flat fills, antialiased 3 px
black outlines, 1 px hair strands, a cel-shade step, soft airbrush shading, a gradient sky, a
coloured (dark red) line and faint grain; plus the masks the property tests need.

Shapes are drawn at 4× and block-averaged down (`Image.reduce`), which antialiases without moving
anything. Everything is seeded: the same call gives the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4
INK = (20, 20, 28)
SKIN = (245, 216, 196)
HAIR = (112, 70, 160)
STRAND = (62, 32, 100)
SHIRT = (218, 78, 92)
SHIRT_SHADE = (172, 48, 72)
GROUND = (150, 200, 120)
STAR = (250, 218, 60)
MOUTH = (150, 40, 52)
IRIS = (48, 110, 200)
PUPIL = (18, 28, 80)


@dataclass
class Scene:
    image: Image.Image  # RGB
    lines: np.ndarray  # bool H×W: drawn line art (coverage >= 1/2)
    regions: dict[str, np.ndarray]  # bool H×W: interiors of fills, at least 2 px away from any line


class _Canvas:
    def __init__(self, size: int):
        self.size = size
        self.hi = size * SUPERSAMPLE
        self.rgb = np.zeros((self.hi, self.hi, 3), np.float32)
        self.line_cover = Image.new("L", (self.hi, self.hi), 0)
        self.fills: list[tuple[str | None, Image.Image]] = []  # in drawing order

    def xy(self, points):
        return [(x * self.hi, y * self.hi) for x, y in points]

    def box(self, cx, cy, rx, ry):
        return [(cx - rx) * self.hi, (cy - ry) * self.hi, (cx + rx) * self.hi, (cy + ry) * self.hi]

    def paint(self, mask: Image.Image, colour) -> None:
        m = np.asarray(mask, np.float32)[..., None] / 255.0
        self.rgb = self.rgb * (1.0 - m) + np.asarray(colour, np.float32) * m

    def shape(self, name, draw_fn, colour, outline=INK, width=3.0, clip: Image.Image | None = None):
        """Fill a shape (drawn by draw_fn on an L image), then stroke its outline."""
        fill = Image.new("L", (self.hi, self.hi), 0)
        draw_fn(ImageDraw.Draw(fill), 255, None, 0)
        if clip is not None:
            fill = Image.fromarray(np.minimum(np.asarray(fill), np.asarray(clip)))
        if colour is not None:
            self.paint(fill, colour)
            self.fills.append((name, fill))
            hidden = np.asarray(self.line_cover, np.float32) * (1.0 - np.asarray(fill, np.float32) / 255.0)
            self.line_cover = Image.fromarray(np.floor(hidden + 0.5).astype(np.uint8))
        if outline is not None:
            self.stroke(lambda d, ink: draw_fn(d, None, ink, round(width * SUPERSAMPLE)), outline)
        return fill

    def stroke(self, draw_fn, colour):
        layer = Image.new("L", (self.hi, self.hi), 0)
        draw_fn(ImageDraw.Draw(layer), 255)
        self.paint(layer, colour)
        self.line_cover = Image.fromarray(np.maximum(np.asarray(self.line_cover), np.asarray(layer)))

    def gradient(self, mask: Image.Image, top, bottom, y0, y1, axis=0):
        """Linear gradient from `top` to `bottom` between y0 and y1 (unit coordinates) inside mask."""
        t = (np.arange(self.hi, dtype=np.float32) / self.hi - y0) / (y1 - y0)
        t = np.clip(t, 0, 1)[:, None] if axis == 0 else np.clip(t, 0, 1)[None, :]
        t = np.broadcast_to(t, (self.hi, self.hi))[..., None]
        colour = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
        m = np.asarray(mask, np.float32)[..., None] / 255.0
        self.rgb = self.rgb * (1 - m) + colour * m

    def airbrush(self, cx, cy, radius, colour, strength, clip: Image.Image):
        yy, xx = np.mgrid[0:self.hi, 0:self.hi].astype(np.float32) / self.hi
        w = strength * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
        w = (w * np.asarray(clip, np.float32) / 255.0)[..., None]
        self.rgb = self.rgb * (1 - w) + np.asarray(colour, np.float32) * w

    def finish(self, seed: int, grain: float) -> Scene:
        hi = Image.fromarray(np.clip(self.rgb + 0.5, 0, 255).astype(np.uint8), "RGB")
        rgb = np.asarray(hi.reduce(SUPERSAMPLE), np.float32)
        if grain:
            rgb = rgb + np.random.default_rng(seed).normal(0.0, grain, rgb.shape)
        image = Image.fromarray(np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8), "RGB")
        lines = np.asarray(self.line_cover.reduce(SUPERSAMPLE)) >= 128
        near_line = _grow(np.asarray(self.line_cover.reduce(SUPERSAMPLE)) > 0, 2)
        regions = {}
        covered = np.zeros(lines.shape, bool)  # by fills drawn later
        for name, fill in reversed(self.fills):
            full = np.asarray(fill.reduce(SUPERSAMPLE)) == 255
            if name:
                regions[name] = full & ~covered & ~near_line
            covered |= np.asarray(fill.reduce(SUPERSAMPLE)) > 0
        return Scene(image, lines, regions)


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def scene(size: int = 256, seed: int = 0, grain: float = 1.0) -> Scene:
    """The anime-style test scene at size×size."""
    c = _Canvas(size)
    full = Image.new("L", (c.hi, c.hi), 255)
    c.gradient(full, (112, 168, 232), (222, 236, 250), 0.0, 0.8)
    c.fills.append(("sky", Image.fromarray(np.where(np.arange(c.hi)[:, None] < 0.62 * c.hi, 255, 0).astype(np.uint8).repeat(c.hi, 1))))
    c.shape("ground", lambda d, f, o, w: d.rectangle(c.box(0.5, 0.91, 0.49, 0.08), fill=f, outline=o, width=w), GROUND)
    body = c.shape("shirt", lambda d, f, o, w: d.polygon(c.xy([(0.3, 0.72), (0.7, 0.72), (0.76, 1.03), (0.24, 1.03)]), fill=f, outline=o, width=w), SHIRT, outline=None)
    c.shape("shirt_shade", lambda d, f, o, w: d.polygon(c.xy([(0.6, 0.7), (0.8, 0.7), (0.8, 1.03), (0.64, 1.03)]), fill=f), SHIRT_SHADE, outline=None, clip=body)
    c.stroke(lambda d, ink: d.polygon(c.xy([(0.3, 0.72), (0.7, 0.72), (0.76, 1.03), (0.24, 1.03)]), outline=ink, width=3 * SUPERSAMPLE), INK)
    c.shape(None, lambda d, f, o, w: d.rectangle(c.box(0.5, 0.66, 0.04, 0.06), fill=f, outline=o, width=w), SKIN)
    face = c.shape("face", lambda d, f, o, w: d.ellipse(c.box(0.5, 0.43, 0.19, 0.2), fill=f, outline=o, width=w), SKIN, outline=None)
    c.airbrush(0.36, 0.55, 0.09, (226, 180, 170), 0.7, face)  # soft shadow
    c.airbrush(0.40, 0.51, 0.025, (250, 160, 170), 0.8, face)  # blush
    c.airbrush(0.60, 0.51, 0.025, (250, 160, 170), 0.8, face)
    c.stroke(lambda d, ink: d.ellipse(c.box(0.5, 0.43, 0.19, 0.2), outline=ink, width=3 * SUPERSAMPLE), INK)
    hair = [(0.29, 0.42), (0.3, 0.2), (0.5, 0.13), (0.7, 0.2), (0.71, 0.42), (0.64, 0.3), (0.56, 0.34), (0.5, 0.27), (0.44, 0.34), (0.36, 0.3)]
    c.shape("hair", lambda d, f, o, w: d.polygon(c.xy(hair), fill=f, outline=o, width=w), HAIR)
    for strand in ([(0.42, 0.17), (0.39, 0.31)], [(0.5, 0.15), (0.5, 0.25)], [(0.58, 0.17), (0.62, 0.29)]):
        c.stroke(lambda d, ink, s=strand: d.line(c.xy(s), fill=ink, width=SUPERSAMPLE), STRAND)
    c.shape(None, lambda d, f, o, w: d.line(c.xy([(0.43, 0.19), (0.54, 0.17)]), fill=f, width=2 * SUPERSAMPLE), (205, 185, 235), outline=None)
    for ex in (0.42, 0.58):
        c.shape(None, lambda d, f, o, w, ex=ex: d.ellipse(c.box(ex, 0.45, 0.04, 0.055), fill=f, outline=o, width=w), (250, 250, 252), width=2)
        c.shape(None, lambda d, f, o, w, ex=ex: d.ellipse(c.box(ex, 0.455, 0.028, 0.04), fill=f), IRIS, outline=None)
        c.shape(None, lambda d, f, o, w, ex=ex: d.ellipse(c.box(ex, 0.46, 0.014, 0.022), fill=f), PUPIL, outline=None)
        c.shape(None, lambda d, f, o, w, ex=ex: d.ellipse(c.box(ex - 0.01, 0.435, 0.008, 0.008), fill=f), (255, 255, 255), outline=None)
    c.stroke(lambda d, ink: d.arc(c.box(0.5, 0.52, 0.04, 0.025), 20, 160, fill=ink, width=2 * SUPERSAMPLE), MOUTH)
    star = [(0.85 + r * np.sin(a), 0.16 - r * np.cos(a)) for a, r in zip(np.arange(10) * np.pi / 5, [0.07, 0.03] * 5)]
    c.shape("star", lambda d, f, o, w: d.polygon(c.xy(star), fill=f, outline=o, width=w), STAR)
    return c.finish(seed, grain)


def shifted(image: Image.Image, dx: int, dy: int) -> Image.Image:
    """The image moved by whole pixels; the uncovered border repeats the edge."""
    a = np.asarray(image)
    h, w = a.shape[:2]
    ys = np.clip(np.arange(h) - dy, 0, h - 1)
    xs = np.clip(np.arange(w) - dx, 0, w - 1)
    return Image.fromarray(np.ascontiguousarray(a[ys][:, xs]), image.mode)


def unrelated(size: int = 256, seed: int = 1) -> Image.Image:
    """A different picture: random soft blobs of colour with black rings."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), (240, 230, 200))
    d = ImageDraw.Draw(img)
    for _ in range(25):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 20, size // 6))
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)), outline=(0, 0, 0), width=3)
    return img


BALL = (230, 96, 80)  # its lit colour
BALL_RIM = (250, 214, 90)  # a patch of another colour on it, with its own shading


def ball(size: int = 256, seed: int = 0, grain: float = 1.0) -> Scene:
    """A ball lit from the upper left (Lambert shading, from its lit colour down to a quarter of it,
    smooth: no step), with a patch of another colour on it and a black outline, on a floor with
    a soft gradient: the picture `flat` must empty of its shading. Regions: "ball" (the red part),
    "band" (the yellow patch) and "floor"."""
    c = _Canvas(size)
    full = Image.new("L", (c.hi, c.hi), 255)
    c.gradient(full, (214, 222, 236), (168, 180, 204), 0.0, 1.0)
    c.fills.append(("floor", full))
    cx, cy, r = 0.5, 0.5, 0.34
    disc = Image.new("L", (c.hi, c.hi), 0)
    ImageDraw.Draw(disc).ellipse(c.box(cx, cy, r, r), fill=255)
    yy, xx = np.mgrid[0:c.hi, 0:c.hi].astype(np.float32) / c.hi
    nx, ny = (xx - cx) / r, (yy - cy) / r
    nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
    light = np.array([-0.55, -0.55, 0.63], np.float32)
    light /= np.linalg.norm(light)
    lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, 1.0)
    shade = (0.25 + 0.75 * lambert)[..., None]
    band = Image.new("L", (c.hi, c.hi), 0)
    ImageDraw.Draw(band).ellipse(c.box(cx + 0.04, cy + 0.12, 0.2, 0.06), fill=255)
    band = Image.fromarray(np.minimum(np.asarray(band), np.asarray(disc)))
    m = np.asarray(disc, np.float32)[..., None] / 255.0
    c.rgb = c.rgb * (1 - m) + np.asarray(BALL, np.float32) * shade * m
    c.fills.append(("ball", disc))
    m = np.asarray(band, np.float32)[..., None] / 255.0
    c.rgb = c.rgb * (1 - m) + np.asarray(BALL_RIM, np.float32) * shade * m
    c.fills.append(("band", band))
    c.stroke(lambda d, ink: d.ellipse(c.box(cx, cy, r, r), outline=ink, width=3 * SUPERSAMPLE), INK)
    return c.finish(seed, grain)
