"""Reading and writing images: everything downstream sees 8-bit RGB as on screen (EXIF orientation applied,
transparency composited onto a background); output is an RGB PNG, written atomically, its bytes the pixels'."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

from copymachine.errors import InputError, OutputError
from copymachine.files import atomic_path
from copymachine.heavy import numpy as np

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)

# Modes that carry an alpha channel (premultiplied ones included).
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Bits per sample for the modes Pillow reports; PNG and TIFF are looked up in the file itself.
_MODE_BITS = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}


def parse_color(text: str) -> RGB:
    """`white`, `#rrggbb`, `#rgb`, `rgb(1,2,3)`: any colour Pillow knows, as an RGB triple."""
    try:
        value = ImageColor.getrgb(text.strip())
    except (ValueError, AttributeError):
        hint = "use a name such as 'white' or a hex value such as '#808080'"
        raise InputError(f"unknown colour {text!r}: {hint}") from None
    return tuple(value[:3])  # type: ignore[return-value]


def _open(path: str | os.PathLike) -> Image.Image:
    p = Path(path)
    if not p.exists():
        raise InputError(f"image not found: {p}")  # the wording train and diff use
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not an image")
    try:
        return Image.open(p)
    except UnidentifiedImageError:
        raise InputError(f"{p}: not an image Pillow can read (PNG, JPEG, WebP, TIFF, BMP, ...)") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{p}: refused by Pillow as a possible decompression bomb ({e})") from None
    except OSError as e:
        raise InputError(f"{p}: cannot be read ({e})") from None


def _frames(im: Image.Image) -> int:
    return int(getattr(im, "n_frames", 1) or 1)


def _bit_depth(path: Path, im: Image.Image) -> int:
    if im.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(26)
        # signature (8) + IHDR length (4) + b"IHDR" (4) + width (4) + height (4) + bit depth (1)
        if len(head) >= 25 and head[12:16] == b"IHDR" and head[24]:
            return head[24]
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        if bits:
            return int(bits[0] if isinstance(bits, tuple) else bits)
    return _MODE_BITS.get(im.mode, 8)


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block is not worth refusing the image for
        return 1


def image_info(path: str | os.PathLike) -> dict:
    """What the file holds, without decoding it: `size` after EXIF orientation, `stored_size` as stored."""
    p = Path(path)
    with _open(p) as im:
        w, h = im.size
        orientation = _orientation(im)
        oriented = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
        return {
            "path": str(p), "format": im.format, "mode": im.mode, "size": list(oriented), "stored_size": [w, h],
            "frames": _frames(im), "has_alpha": im.mode in _ALPHA_MODES or "transparency" in im.info,
            "bit_depth": _bit_depth(p, im), "orientation": orientation,
        }


def _scale_to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float grey images → 8-bit L (Pillow's own convert clips instead of scaling)."""
    a = np.nan_to_num(np.asarray(im).astype(np.float64))
    if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
        a = np.floor(a / 257.0 + 0.5)
    elif im.mode == "F" and a.size and a.max() <= 1.0:
        a = np.floor(a * 255.0 + 0.5)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image, background: RGB = WHITE) -> Image.Image:
    """Any Pillow image → 8-bit RGB; transparent pixels are composited onto `background`."""
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        im = _scale_to_8bit(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def load_rgb(path: str | os.PathLike, background: RGB = WHITE) -> Image.Image:
    """An image as 8-bit RGB, upright, alpha composited onto `background`; InputError for a bad or animated file."""
    p = Path(path)
    with _open(p) as im:
        # an MPO (phone/camera JPEG) holds the photo plus preview or stereo frames: the first is the picture
        if _frames(im) > 1 and im.format != "MPO":
            raise InputError(f"{p}: has {_frames(im)} frames (animated); save the one frame you want as a PNG")
        try:
            im.load()
            rgb = to_rgb(ImageOps.exif_transpose(im), background)
            rgb.load()
        except Image.DecompressionBombError as e:
            raise InputError(f"{p}: refused by Pillow as a possible decompression bomb ({e})") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise InputError(f"{p}: truncated or corrupt image ({e})") from None
    # A fresh image: no info dict (ICC, EXIF, DPI) travels on to the output.
    return Image.frombytes("RGB", rgb.size, rgb.tobytes())


# A render whose every channel spans at most this many levels is one colour (a NaN VAE output
# comes out all black; a broken VAE, one flat colour): no picture to train on or to score.
BLANK_LEVELS = 2


def blank_colour(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The colour of an image that is one colour throughout (within BLANK_LEVELS), else None."""
    with Image.open(path) as im:
        extrema = im.convert("RGB").getextrema()
    if all(high - low <= BLANK_LEVELS for low, high in extrema):
        return tuple(int(low) for low, _ in extrema)
    return None


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """`image` as an RGB PNG, atomically, with the usual permissions; no metadata, no timestamps."""
    p = Path(path)
    rgb = to_rgb(image)
    clean = Image.frombytes("RGB", rgb.size, rgb.tobytes())
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{p}: folder {folder} does not exist")
    mask = os.umask(0)
    os.umask(mask)
    try:
        with atomic_path(p) as tmp:
            clean.save(tmp, format="PNG", compress_level=6)
            os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it private
    except OSError as e:
        raise OutputError(f"{p}: cannot write ({e.strerror or e})") from None
