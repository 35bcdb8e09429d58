"""Pre-flight of the inputs: the base model, a safetensors checkpoint of a family copymachine trains (a pickle only
with --allow-pickle, and then only sd-scripts opens it); the images, readable, one frame, not tiny, each conversion
noted."""

from __future__ import annotations

import math
from pathlib import Path

from copymachine.errors import InputError
from copymachine.files import require_file
from copymachine.images import image_info, load_rgb
from copymachine.lorafile import read_safetensors
from copymachine.models import PICKLE_SUFFIXES, SD1, ModelInfo, inspect_base_model
from copymachine.progress import Reporter

# Parameters of a whole checkpoint, for a pickle copymachine does not open (preflight/disk.py says where from).
MODEL_PARAMS = {"sd1": 1_066_000_000, "sd2": 1_300_000_000, "sdxl": 3_470_000_000}
MIN_IMAGE_SIDE = 64  # px: SD's latent is 1/8 of the image; below 64 px there is nothing to learn

_MODE_NOTES = {
    "P": "a palette image: converted to RGB", "YCbCr": "YCbCr: converted to RGB", "LAB": "Lab: converted to RGB",
    "HSV": "HSV: converted to RGB", "L": "greyscale: converted to RGB",
    "1": "black and white (1 bit): converted to RGB",
    "CMYK": "CMYK: converted to RGB without a colour profile (colours may shift; convert it yourself for exact "
            "colours)"}


def _looks_like_pickle(path: Path) -> bool:
    """A torch zip (PK\\x03\\x04, torch 1.6 on) or a bare pickle (protocol 2+: 0x80 then the protocol number)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def check_base_model(path: Path, reporter: Reporter, allow_pickle: bool = False) -> ModelInfo:
    """The base model for train/diff. A pickle is refused unless `allow_pickle` (unpickling can run code): then
    copymachine never opens it, hands it to sd-scripts and assumes SD1.x (it cannot read the keys)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
        if not allow_pickle:
            raise InputError(f"base model is a pickle file ({path.suffix}): {path}; loading a pickle can run code "
                             "hidden in it, so copymachine takes .safetensors only: use a .safetensors download or "
                             "convert it, or pass --allow-pickle if you trust this file (sd-scripts then loads it)")
        size = path.stat().st_size
        if size == 0:
            raise InputError(f"base model is empty (0 bytes): {path}")
        if not _looks_like_pickle(path):
            raise InputError(f"base model is not a PyTorch checkpoint (neither a torch zip nor a pickle): {path}")
        reporter.warn(f"--allow-pickle: {path.name} is a pickle; copymachine does not open it, so it cannot check its "
                      f"family or contents: assuming {SD1.label}; sd-scripts loads it with torch (use only files you "
                      "trust)")
        return ModelInfo(path=path, family=SD1, size_bytes=size, tensor_count=0)
    if path.is_file() and path.stat().st_size >= 8 and _looks_like_pickle(path):
        raise InputError(f"base model is a pickle file with a {path.suffix or 'missing'} suffix, not safetensors: "
                         f"{path}; use a .safetensors checkpoint (or, if you trust it, rename it .ckpt and pass "
                         "--allow-pickle)")
    return inspect_base_model(path)


def model_parameters(model: ModelInfo) -> int:
    """The base model's parameter count, from its safetensors header (a pickle: its family's typical count)."""
    if model.tensor_count == 0:
        return MODEL_PARAMS.get(model.family.name, MODEL_PARAMS["sd1"])
    st = read_safetensors(model.path, "base model")
    return sum(math.prod(int(d) for d in info["shape"]) for info in st.tensors.values())


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

