"""WD14 tagging (as the memo captioned), offline, with onnxruntime (an optional extra) on the CPU: a local folder in
SmilingWolf's layout, preprocessed as his demo does; the ONNX exports output probabilities (no sigmoid)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from PIL import Image

from copymachine.errors import EnvironmentProblem, InputError
from copymachine.heavy import numpy as np
from copymachine.images import to_rgb

if TYPE_CHECKING:
    from numpy import ndarray

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING, GENERAL, CHARACTER = 9, 0, 4
DEFAULT_SIZE = 448
# Tags that are emoticons keep their underscores (SmilingWolf's list).
KAOMOJI = {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
           "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}
INSTALL_HINT = "pip install 'copymachine[tagger]' (onnxruntime)"


class Tag(NamedTuple):
    name: str
    category: int


def tagger_files(folder: Path) -> tuple[Path, Path]:
    """model.onnx and selected_tags.csv in `folder`, or an error naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--tagger-dir is not a folder: {folder} (it must hold {MODEL_FILE} and {TAGS_FILE}, "
                         "SmilingWolf's layout)")
    model, tags = folder / MODEL_FILE, folder / TAGS_FILE
    missing = [p.name for p in (model, tags) if not p.is_file()]
    if missing:
        raise InputError(f"the tagger folder {folder} lacks {' and '.join(missing)}; it needs {MODEL_FILE} and "
                         f"{TAGS_FILE}, e.g. huggingface-cli download SmilingWolf/wd-vit-tagger-v3 {MODEL_FILE} "
                         f"{TAGS_FILE} --local-dir \"{folder}\"")
    return model, tags


def read_tags(path: Path) -> list[Tag]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise InputError(f"{path} is not a tagger's {TAGS_FILE} (needs the columns name and category)")
    try:
        return [Tag(r["name"], int(r["category"])) for r in rows]
    except (TypeError, ValueError):
        raise InputError(f"{path}: a category is not a number") from None


def input_size(shape) -> tuple[int, bool]:
    """(side, channels_last) from the ONNX input shape: NHWC [N, 448, 448, 3] or NCHW."""
    dims = list(shape)
    if len(dims) != 4:
        raise InputError(f"the tagger model's input is not an image batch (shape {dims})")
    if dims[-1] == 3:
        side, channels_last = dims[1], True
    elif dims[1] == 3:
        side, channels_last = dims[2], False
    else:
        raise InputError(f"the tagger model's input has no 3-channel axis (shape {dims})")
    return (side if isinstance(side, int) and side > 0 else DEFAULT_SIZE), channels_last


def preprocess(image: Image.Image, side: int, channels_last: bool = True) -> ndarray:
    """A batch of one: over white, padded to a white square (centred), resized, BGR, 0-255."""
    rgb = to_rgb(image)
    w, h = rgb.size
    square = max(w, h)
    canvas = Image.new("RGB", (square, square), (255, 255, 255))
    canvas.paste(rgb, ((square - w) // 2, (square - h) // 2))
    if square != side:
        canvas = canvas.resize((side, side), Image.Resampling.BICUBIC)
    array = np.asarray(canvas, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR
    if not channels_last:
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array[None])


def tag_text(name: str) -> str:
    return name if name in KAOMOJI else name.replace("_", " ")


def select_tags(probabilities: ndarray, tags: list[Tag], general_threshold: float = 0.35,
                character_threshold: float = 0.85, exclude: tuple[str, ...] = ()) -> list[str]:
    """Character tags, then general ones, by falling probability (ties in CSV order); never ratings."""
    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if probs.size != len(tags):
        raise InputError(f"the tagger model gives {probs.size} scores but {TAGS_FILE} lists {len(tags)} tags: "
                         "they do not belong together")
    excluded = {tag_text(e.strip()).lower() for e in exclude if e.strip()}
    out: list[str] = []
    for category, threshold in ((CHARACTER, character_threshold), (GENERAL, general_threshold)):
        chosen = [(-probs[i], i) for i, t in enumerate(tags) if t.category == category and probs[i] >= threshold]
        for _, i in sorted(chosen):
            text = tag_text(tags[i].name)
            if text.lower() not in excluded and text not in out:
                out.append(text)
    return out


class Tagger:
    """A loaded tagger: `tags(image)` gives the caption's tags."""

    def __init__(self, folder: Path):
        model_path, tags_path = tagger_files(folder)
        self.tags = read_tags(tags_path)
        try:
            import onnxruntime as ort
        except ImportError:
            raise EnvironmentProblem(f"WD14 captions need onnxruntime: {INSTALL_HINT}") from None
        try:
            self.session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f"{model_path} is not a model onnxruntime can load: {e}") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.side, self.channels_last = input_size(first.shape)

    def probabilities(self, image: Image.Image) -> ndarray:
        batch = preprocess(image, self.side, self.channels_last)
        return np.asarray(self.session.run(None, {self.input_name: batch})[0])[0]

    def __call__(self, image: Image.Image, general_threshold: float = 0.35, character_threshold: float = 0.85,
                 exclude: tuple[str, ...] = ()) -> list[str]:
        return select_tags(self.probabilities(image), self.tags, general_threshold, character_threshold, exclude)
