"""Pre-flight of the images: readable, one frame, not tiny; a note for each conversion."""

from __future__ import annotations

from pathlib import Path

from copymachine.errors import InputError
from copymachine.files import require_file
from copymachine.images import image_info, load_rgb
from copymachine.progress import Reporter

MIN_IMAGE_SIDE = 64  # px: SD's latent is 1/8 of the image; below 64 px there is nothing to learn

_MODE_NOTES = {
    "P": "a palette image: converted to RGB", "YCbCr": "YCbCr: converted to RGB", "LAB": "Lab: converted to RGB",
    "HSV": "HSV: converted to RGB", "L": "greyscale: converted to RGB",
    "1": "black and white (1 bit): converted to RGB",
    "CMYK": "CMYK: converted to RGB without a colour profile (colours may shift; convert it yourself for exact "
            "colours)"}


def check_image(path: Path, what: str, reporter: Reporter) -> tuple[int, int]:
    """One image: readable, one frame, at least 64 px a side; notes what is converted. Returns its upright size."""
    path = Path(path)
    require_file(path, what)
    try:
        info = image_info(path)
    except InputError as e:
        raise InputError(f"{what}: {e.message}") from None
    width, height = info["size"]
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(f"{what} is {width}x{height} px: too small to train on (at least {MIN_IMAGE_SIDE} px a side; "
                         f"the memo used 512): {path}")
    try:
        load_rgb(path)  # truncated, corrupt, animated: one line naming the file
    except InputError as e:
        raise InputError(f"{what}: {e.message}") from None
    notes = []
    if info["has_alpha"]:
        notes.append("has transparency: composited onto white")
    elif info["mode"] in _MODE_NOTES:
        notes.append(_MODE_NOTES[info["mode"]])
    if info["bit_depth"] > 8:
        notes.append(f"{info['bit_depth']}-bit: reduced to 8 bits per channel")
    if info["mode"] == "P" and info["has_alpha"]:
        notes.append("a palette image: converted to RGB")
    if info["orientation"] in (5, 6, 7, 8):
        notes.append(f"EXIF orientation {info['orientation']}: turned upright ({width}x{height} px; stored as "
                     f"{info['stored_size'][0]}x{info['stored_size'][1]})")
    for note in notes:
        reporter.info(f"note: {what} {path.name}: {note}")
    return width, height


def check_images(images: list[Path], edited: list[Path], reporter: Reporter) -> None:
    for path in images:
        check_image(path, "image", reporter)
    for path in edited:
        check_image(path, "edited image", reporter)

