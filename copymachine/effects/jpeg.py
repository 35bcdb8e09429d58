"""jpeg: JPEG artefacts, one re-encode (blocks start at the top-left pixel: nothing moves), or passes at *different*
qualities (repeating one changes almost nothing after the first; changing it stacks new artefacts)."""

from __future__ import annotations

import io

from PIL import Image

from copymachine.effects.base import Array, Effect, Param, mode_param
from copymachine.heavy import numpy as np

SUBSAMPLING = ("4:2:0", "4:2:2", "4:4:4")


def parse_qualities(text: str) -> list[int]:
    return [int(part) for part in text.replace(" ", "").split(",") if part]


def _check_qualities(text: str) -> str:
    try:
        qualities = parse_qualities(text)
    except ValueError:
        qualities = []
    if not qualities or any(not 1 <= q <= 95 for q in qualities):
        raise ValueError("must be a comma-separated list of JPEG qualities 1-95, e.g. 15,10,20,8")
    return text


PARAMS: dict[str, Param] = {
    "mode": mode_param(("single", "passes"), "single: one re-encode at `quality`; passes: re-encode at each of "
                                             "`qualities` in turn"),
    "quality": Param(10, int, "single: JPEG quality (5 very strong, 10 strong, 30 mild)", min=1, max=95),
    "subsampling": Param("4:2:0", str, "chroma subsampling (4:2:0 bleeds colour, 4:4:4 keeps it)", choices=SUBSAMPLING),
    "qualities": Param("15,10,20,8", str, "passes: the qualities, in order", validate=_check_qualities),
}


def run(rgb: Array, params: dict) -> Array:
    qualities = parse_qualities(params["qualities"]) if params["mode"] == "passes" else [params["quality"]]
    image = Image.fromarray(rgb, "RGB")
    for quality in qualities:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, subsampling=params["subsampling"], optimize=False)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            image = decoded.convert("RGB")
    return np.asarray(image)


EFFECT = Effect("jpeg", "JPEG artefacts: one re-encode at low quality (default) or passes at changing qualities",
                PARAMS, run)
