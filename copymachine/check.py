"""Is an edited image a usable training target? The effect LoRA learns every difference, so `check_pair`
measures: size (identical, else refused); alignment (an affine ECC fit, coarse to fine, and how far it moves
the corners; ECC ignores brightness and contrast, and no convergence means "not the same picture"); strength
(PSNR, SSIM, the share of pixels with CIE76 ΔE > 2.3, about one just-noticeable difference).

The ECC fit weighs pixels by how much they changed, so a strong local edit pulls it: lines thickened by 2 px
read as the picture growing (test scene at 512 px: outline width 2 1.6 px, width 3 3.1 px, no pixel moved).
With `in_place=True` (a built-in effect, or `--edit-in-place`) that reading is a note.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from copymachine.heavy import cv2
from copymachine.heavy import numpy as np
from copymachine.images import save_png, to_rgb
from copymachine.sheet import BACKGROUND, Fonts, draw_fitted, line_height

if TYPE_CHECKING:
    from numpy import ndarray

# the largest corner movement under the fitted warp, px, rounded to 0.1 px (the fit's precision)
SHIFT_WARN_PX = 1.0
SHIFT_REFUSE_PX = 3.0
WEAK_PSNR_DB = 45.0  # above: the edit is too weak to learn
WEAK_CHANGED_FRACTION = 0.005  # below: too few pixels changed
DIFFERENT_SSIM = 0.5  # below: the edit changes the picture, not just a property of it
CHANGED_DELTA_E = 2.3  # CIE76 ΔE above which a pixel counts as changed (≈ 1 JND)
ECC_LEVELS = 3  # pyramid levels at most
ECC_MIN_SIDE = 64  # px: no pyramid level smaller than this
ECC_ITERATIONS = 100
ECC_EPS = 1e-5
ECC_GAUSS = 5  # Gaussian pre-filter size inside findTransformECC (odd)
# A fit that "converges" with a weak correlation, or by moving the picture by a quarter of its size,
# has matched nothing: the built-in edits reach 0.9 or more, unrelated pictures about 0.35.
ECC_MIN_CORRELATION = 0.5
ECC_MAX_SHIFT_FRACTION = 0.25


@dataclass
class PairReport:
    size_ok: bool
    corner_shift_px: float | None  # None: sizes differ or ECC did not converge
    psnr_db: float | None  # inf for identical images; None when sizes differ
    ssim: float | None
    changed_fraction: float | None
    verdict: str  # "ok" | "warn" | "refuse"
    messages: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)
    edited_size: tuple[int, int] = (0, 0)
    mean_delta_e: float | None = None
    ecc_correlation: float | None = None
    notes: list[str] = field(default_factory=list)  # what was measured but does not count against the edit

    @property
    def reads_as_moved(self) -> bool:
        return self.corner_shift_px is not None and _rounded(self.corner_shift_px) >= SHIFT_WARN_PX

    def as_dict(self) -> dict:
        """JSON-serialisable (an infinite PSNR becomes null, with `identical` true)."""
        d = asdict(self) | {"original_size": list(self.original_size), "edited_size": list(self.edited_size)}
        d["identical"] = self.psnr_db is not None and math.isinf(self.psnr_db)
        for key, value in d.items():
            if isinstance(value, float):
                d[key] = round(value, 4) if math.isfinite(value) else None
        return d


def _grey(rgb: ndarray) -> ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


def _pyramid(image: ndarray) -> list[ndarray]:
    levels = [image]
    while len(levels) < ECC_LEVELS and min(levels[-1].shape[:2]) // 2 >= ECC_MIN_SIDE:
        levels.append(cv2.pyrDown(levels[-1]))
    return levels[::-1]  # coarse first


def _ecc(template: ndarray, image: ndarray, warp: ndarray, motion: int) -> tuple[float, ndarray] | None:
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPS)
    try:
        rho, fitted = cv2.findTransformECC(template, image, warp.copy(), motion, criteria, None, ECC_GAUSS)
    except cv2.error:  # "iterations do not converge"
        return None
    if not (math.isfinite(rho) and np.all(np.isfinite(fitted))):
        return None
    return float(rho), fitted


def ecc_align(original: ndarray, edited: ndarray) -> tuple[ndarray, float] | None:
    """Affine warp (2×3) from the original onto the edited image and its ECC correlation; None: no match.
    Each level tries a translation and an affine fit and keeps the affine one only when it correlates at least
    as well: on sparse pictures (thin lines on a flat ground) the affine fit alone can wander off."""
    warp = np.eye(2, 3, dtype=np.float32)
    rho = None
    for i, (a, b) in enumerate(zip(_pyramid(_grey(original)), _pyramid(_grey(edited)))):
        if i:
            warp[:, 2] *= 2.0  # pyrDown halves coordinates about pixel 0: only the translation scales
        shift_only = np.eye(2, 3, dtype=np.float32)
        shift_only[:, 2] = warp[:, 2]
        fits = [f for f in (_ecc(a, b, shift_only, cv2.MOTION_TRANSLATION), _ecc(a, b, warp, cv2.MOTION_AFFINE))
                if f and f[0] >= ECC_MIN_CORRELATION]
        # ties keep the translation (listed first)
        rho, warp = max(fits, key=lambda f: f[0]) if fits else (None, warp)
    h, w = original.shape[:2]
    if rho is None or rho < ECC_MIN_CORRELATION or corner_shift(warp, w, h) > ECC_MAX_SHIFT_FRACTION * max(w, h):
        return None
    return warp, rho


def corner_shift(warp: ndarray, width: int, height: int) -> float:
    corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [-0.5, height - 0.5], [width - 0.5, height - 0.5]])
    moved = corners @ warp[:, :2].T.astype(np.float64) + warp[:, 2].astype(np.float64)
    return float(np.max(np.hypot(*(moved - corners).T)))


def delta_e(a: ndarray, b: ndarray) -> ndarray:
    """CIE76 colour difference per pixel (H×W float32)."""
    lab_a = cv2.cvtColor(a.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    lab_b = cv2.cvtColor(b.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    return np.sqrt(((lab_a - lab_b) ** 2).sum(axis=2))


def psnr(a: ndarray, b: ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(a: ndarray, b: ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def _size_message(original: tuple[int, int], edited: tuple[int, int], name: str) -> str:
    (ow, oh), (ew, eh) = original, edited
    sizes = f"edited {ew}x{eh}, original {ow}x{oh}"
    if ew % ow == 0 and eh % oh == 0 and ew // ow == eh // oh:
        k = ew // ow
        stem = name[:-4] if name.lower().endswith(".png") else name
        return (f"size differs ({sizes}): the edit is exactly {k}x the original; shrink it by averaging {k}x{k} "
                f"blocks, e.g. python -c \"from PIL import Image; Image.open('{name}').reduce({k}).save('{stem}-{ow}"
                ".png')\" (any other resize moves pixels)")
    if ow % ew == 0 and oh % eh == 0 and ow // ew == oh // eh:
        k = ow // ew
        return (f"size differs ({sizes}): the original is exactly {k}x the edit; make the edit at full size, "
                f"or shrink the original the same way: Image.open('ORIGINAL').reduce({k})")
    return f"size differs ({sizes}): make the edit on the original at its size, without cropping or resizing"


def _rounded(x: float) -> float:
    return math.floor(x * 10.0 + 0.5) / 10.0


def _arrays(original: Image.Image, edited: Image.Image) -> tuple[ndarray, ndarray]:
    return np.asarray(to_rgb(original), np.uint8), np.asarray(to_rgb(edited), np.uint8)


def check_pair(original: Image.Image, edited: Image.Image, *, edited_name: str = "EDITED.png",
               in_place: bool = False) -> PairReport:
    """Compare an edited image with its original (module text); `edited_name` only appears in a size hint."""
    a, b = _arrays(original, edited)
    if a.shape != b.shape:
        message = _size_message(original.size, edited.size, edited_name)
        return PairReport(False, None, None, None, None, "refuse", [message], original_size=original.size,
                          edited_size=edited.size)
    de = delta_e(a, b)
    psnr_db, changed = psnr(a, b), float(np.mean(de > CHANGED_DELTA_E))
    report = PairReport(True, None, psnr_db, ssim(a, b) if min(a.shape[:2]) >= 7 else None, changed, "ok",
                        original_size=original.size, edited_size=edited.size, mean_delta_e=float(de.mean()))
    refuse: list[str] = []
    warn: list[str] = []
    if math.isinf(psnr_db):
        report.corner_shift_px = 0.0
        refuse.append("the edited image is identical to the original: there is nothing for the effect LoRA to learn")
    else:
        _alignment(report, a, b, in_place, refuse, warn)
        warn += [w for w in [weak_message(psnr_db, changed)] if w]
        if report.ssim is not None and report.ssim < DIFFERENT_SSIM:
            warn.append(f"edit too different: SSIM {report.ssim:.2f} (< {DIFFERENT_SSIM:g}); the LoRA will learn a "
                        "new picture rather than an effect; make the edit milder")
    report.messages = refuse + warn
    report.verdict = "refuse" if refuse else "warn" if warn else "ok"
    return report


def _alignment(report: PairReport, a: ndarray, b: ndarray, in_place: bool, refuse: list[str], warn: list[str]) -> None:
    fit = ecc_align(a, b)
    if fit is None:
        refuse.append("not the same picture: the alignment fit found no match (an unrelated image, or an edit "
                      "that changed the picture itself); edit a copy of the original, in place")
        return
    warp, report.ecc_correlation = fit
    shift = report.corner_shift_px = corner_shift(warp, a.shape[1], a.shape[0])
    moved = (f"the edit is out of alignment: its corners move {shift:.1f} px against the original (an offset, "
             f"rotation, crop or resize); ")
    if in_place and report.reads_as_moved:
        report.notes.append(f"the alignment fit reads the corners as moving {shift:.1f} px; the edit is taken as "
                            "keeping every pixel in place, and then that reading is the pull of its strong local "
                            "changes (thicker lines, say) on the fit, not a shift")
    elif _rounded(shift) >= SHIFT_REFUSE_PX:
        refuse.append(moved + f"above {SHIFT_REFUSE_PX:g} px the LoRA would learn the shift; "
                      "redo the edit on the original without moving, rotating or resizing it")
    elif report.reads_as_moved:
        warn.append(moved + "the LoRA may learn a shift; check that the edit tool did not move the layer")


def weak_message(psnr_db: float, changed: float) -> str | None:
    """The warning for an edit too weak to learn from (a run refuses it unless --weak-edit-ok), else None."""
    if math.isinf(psnr_db) or (psnr_db <= WEAK_PSNR_DB and changed >= WEAK_CHANGED_FRACTION):
        return None
    return (f"edit too weak: PSNR {psnr_db:.1f} dB, {changed:.2%} of pixels changed noticeably (want PSNR <= "
            f"{WEAK_PSNR_DB:g} dB and >= {WEAK_CHANGED_FRACTION:.1%}); make the edit stronger")


def strength(original: Image.Image, edited: Image.Image) -> tuple[float, float] | None:
    """PSNR and the changed share alone (None when the sizes differ): cheap beside the alignment fit."""
    a, b = _arrays(original, edited)
    return None if a.shape != b.shape else (psnr(a, b), float(np.mean(delta_e(a, b) > CHANGED_DELTA_E)))


def format_report(report: PairReport, original_name: str = "original", edited_name: str = "edited") -> str:
    (ow, oh), (ew, eh) = report.original_size, report.edited_size
    lines = [f"original   {original_name} ({ow}x{oh})", f"edited     {edited_name} ({ew}x{eh})",
             f"size       {'same' if report.size_ok else 'DIFFERENT'}"]
    if report.size_ok:
        shift = report.corner_shift_px
        lines.append("alignment  no fit" if shift is None else f"alignment  corners move {shift:.2f} px (warn from "
                     f"{SHIFT_WARN_PX:g}, refuse from {SHIFT_REFUSE_PX:g})")
        psnr_db = report.psnr_db if report.psnr_db is not None else math.inf
        lines.append(f"PSNR       {'identical' if math.isinf(psnr_db) else f'{psnr_db:.1f} dB'}")
        if report.ssim is not None:
            lines.append(f"SSIM       {report.ssim:.3f}")
        lines.append(f"changed    {report.changed_fraction:.1%} of pixels (colour difference dE > {CHANGED_DELTA_E:g})")
    lines.append(f"verdict    {report.verdict}")
    lines.extend(f"  - {m}" for m in report.messages)
    lines.extend(f"  note: {n}" for n in report.notes)
    return "\n".join(lines)


SHEET_MARGIN = 12


def heat_map(original: ndarray, edited: ndarray) -> tuple[ndarray, float]:
    """ΔE as an inferno heat map on a square-root scale up to the 99.5th percentile (at least 5); and that top."""
    de = delta_e(original, edited)
    top = max(5.0, float(np.percentile(de, 99.5)))
    level = np.sqrt(np.clip(de / top, 0.0, 1.0))
    grey = np.floor(level * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB), top


def compare_sheet(original: Image.Image, edited: Image.Image, path: str | os.PathLike,
                  title: str | None = None) -> None:
    """Write original | edit | difference heat map side by side, labelled, as a PNG (atomically)."""
    a, b = _arrays(original, edited)
    if a.shape != b.shape:
        raise ValueError(f"compare_sheet needs images of one size, got {original.size} and {edited.size}")
    heat, top = heat_map(a, b)
    h, w = a.shape[:2]
    fonts = Fonts()
    size = max(12, min(24, w // 24))
    label_h = line_height(fonts.get(size)) + SHEET_MARGIN + 2
    title_h = label_h if title else 0
    sheet = Image.new("RGB", (3 * w + 4 * SHEET_MARGIN, title_h + h + label_h + SHEET_MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw_fitted(draw, fonts, (SHEET_MARGIN, 0, sheet.width - SHEET_MARGIN, title_h), [title], size)
    labels = ("original", "edit", f"difference (dE 0-{top:.0f}, sqrt scale)")
    for i, (panel, label) in enumerate(zip((a, b, heat), labels)):
        x = SHEET_MARGIN + i * (w + SHEET_MARGIN)
        sheet.paste(Image.fromarray(panel, "RGB"), (x, title_h))
        draw_fitted(draw, fonts, (x, title_h + h, x + w, title_h + h + label_h), [label], size, pad=0)
    save_png(sheet, path)
