"""The files of `copymachine ui`: uploads (by content), the images the previews decode, the models listed, and the
one rule for what the page may read: files under the runs folder."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from copymachine.errors import CopymachineError, InputError
from copymachine.files import atomic_path
from copymachine.images import load_rgb
from copymachine.models import V_PRED_KEY, inspect_base_model
from copymachine.request import IMAGE_SUFFIXES

MAX_UPLOAD = 64 * 2**20
# an upload's pixels at most (read from its header before decoding: a small file may claim a huge
# image, a decompression bomb); a 50 MP phone photo passes
MAX_PIXELS = 64_000_000
PREVIEW_CACHE = 8
# a larger picture is scaled to this many pixels for the previews (the run decides its training size
# itself, from the uploaded file: a preview never needs the full picture)
PREVIEW_PIXELS = 16_000_000


# where the UIs users keep beside sd-scripts hold their checkpoints, from the folder above sd-scripts
# (kohya_ss/sd-scripts) or the one above that: kohya_ss, A1111, Forge, ComfyUI
MODEL_LAYOUTS = ("models", "models/Stable-diffusion", "models/checkpoints",
                 "stable-diffusion-webui/models/Stable-diffusion",
                 "stable-diffusion-webui-forge/models/Stable-diffusion", "ComfyUI/models/checkpoints")


def model_folders_near(sd_scripts: Path | None) -> list[Path]:
    """The model folders of kohya_ss / A1111 / Forge / ComfyUI found next to the sd-scripts in use."""
    if sd_scripts is None:
        return []
    here = Path(sd_scripts).expanduser().resolve()
    return [up / layout for up in (here.parent, here.parent.parent) for layout in MODEL_LAYOUTS
            if (up / layout).is_dir()]


def safe_name(name: str) -> str:
    stem = Path(name).stem
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem).strip("_") or "image"
    return clean[:60]


class RunsFiles:
    """Uploads, decoded images and served files, all under the runs folder."""

    def __init__(self, runs: Path):
        self.runs = Path(runs).resolve()
        self.uploads = self.runs / "_ui" / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)

    def upload(self, name: str, data: bytes) -> dict[str, object]:
        if len(data) > MAX_UPLOAD:
            raise InputError(f"{name}: larger than {MAX_UPLOAD // 2**20} MB")
        digest = hashlib.sha256(data).hexdigest()[:16]
        folder = self.uploads / digest
        folder.mkdir(parents=True, exist_ok=True)
        suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in IMAGE_SUFFIXES else ".png"
        path = folder / f"{safe_name(name)}{suffix}"
        if not path.exists():
            with atomic_path(path) as tmp:  # a refused upload leaves no file
                tmp.write_bytes(data)
                try:
                    with Image.open(tmp) as im:
                        pixels = im.width * im.height
                        if pixels <= MAX_PIXELS:
                            im.verify()
                except Exception:
                    raise InputError(f"{name} is not a picture (PNG, JPEG, WebP …) or cannot be read") from None
                if pixels > MAX_PIXELS:
                    limit = f"above the UI's {MAX_PIXELS / 1e6:.0f}; scale it down first"
                    raise InputError(f"{name}: {pixels / 1e6:.0f} megapixels, {limit}")
        image = self.image(str(path))
        with Image.open(path) as im:
            width, height = im.size
        return {"path": str(path), "name": path.name, "width": width, "height": height,
                "preview": [image.width, image.height], "url": self.url(path)}

    def image(self, path: str) -> Image.Image:
        resolved = Path(path).resolve()
        if not self.allowed(resolved):
            raise InputError(f"not an uploaded image: {path}")
        return preview_image(resolved)

    def allowed(self, path: Path) -> bool:
        """Files the page may read: under the runs folder (uploads, run folders, cache sheets)."""
        return path.resolve().is_relative_to(self.runs)

    def url(self, path: Path, download: bool = False) -> str:
        return "/file?path=" + quote(str(Path(path).resolve())) + ("&download=1" if download else "")


@functools.lru_cache(maxsize=PREVIEW_CACHE)
def preview_image(path: Path) -> Image.Image:
    """The picture the previews edit, decoded once (a few kept)."""
    image = load_rgb(path)
    if image.width * image.height > PREVIEW_PIXELS:
        scale = (PREVIEW_PIXELS / (image.width * image.height)) ** 0.5
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


@functools.cache
def checkpoint_family(path: Path, mtime: float) -> str:
    """A checkpoint's family from its header (v-pred when marked), or why not; read once per `mtime`."""
    try:
        info = inspect_base_model(path, for_training=False)
    except CopymachineError:
        return "not a checkpoint copymachine knows"
    return info.family.label + (" v-pred" if V_PRED_KEY in info.markers else "")


class ModelFolders:
    """The models folders: what the page lists (each model with its family) and what Add takes."""

    SUFFIXES = (".safetensors", ".ckpt")

    def __init__(self, folders: list[Path]):
        self.folders = list(dict.fromkeys(Path(m).expanduser().resolve() for m in folders))

    def linked(self, path: Path) -> bool:
        """A model file (a link, maybe) in a models folder: its folder, links followed, is one of them."""
        if ".." in path.parts or path.suffix.lower() not in self.SUFFIXES:
            return False
        folder = path.absolute().parent.resolve()
        return any(folder.is_relative_to(r) for r in self.folders)

    def listed(self) -> list[dict[str, str]]:
        """The models in the folders (links to files included), each with its family."""
        found = sorted({p for folder in self.folders if folder.is_dir() for p in folder.rglob("*")
                        if p.suffix.lower() in self.SUFFIXES and p.is_file() and self.linked(p)})
        return [{"path": str(path), "family": checkpoint_family(path, path.stat().st_mtime)} for path in found]
