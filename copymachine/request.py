"""What the user asks for (`Request`) and what follows before planning: folders, identity, training sizes.
Sign convention for every method: positive strength = more of the edit."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copymachine.errors import InputError
from copymachine.files import HashCache, folder_stem
from copymachine.images import image_info
from copymachine.models import Family, Prediction
from copymachine.recipe import Recipe

COPY_MACHINE = "copy-machine"
DIFFERENCE = "difference-extraction"
MIN_SIDE = 64
STEP = 64  # SD's U-Net halves the latent three times: image sides must be multiples of 64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SIGNS = {"edit": 1.0, "memo": -1.0}  # edit: + = more of the edit; memo: the memo's ratios 1 -1
FAR = 2.0  # a picture with more than twice, or less than half, the training area is "far" from it


@dataclass
class Source:
    """One source image and, for effect custom, the user's edit of it."""

    image: Path | None  # None: generate it (memo step 1)
    edited: Path | None = None
    id: str = ""  # "" when the run has one image; else a unique name (the file's stem)

    @property
    def prefix(self) -> str:
        return f"{self.id}/" if self.id else ""


@dataclass(frozen=True)
class StyleLora:
    """A style LoRA absorbed into the base model (`--absorb STYLE[:RATIO]`)."""

    path: Path
    ratio: float


@dataclass
class Request:
    method: str
    base: Path
    family: Family
    effects: list[str]
    recipe: Recipe
    sources: list[Source]
    out: Path | None = None
    name: str | None = None
    cache_dir: Path | None = None
    effect_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    amount: float = 1.0
    resolution: int | None = None
    max_steps: int | None = None
    absorb: list[StyleLora] = field(default_factory=list)
    combine: str | None = None  # "merge" (memo steps 7-9) | "svd"; None: the method's default
    sign: str = "edit"
    copy_check: bool = True  # render from the copy machine and stop when it does not copy
    edit_in_place: bool = False  # the user's edits keep every pixel in place: alignment is a note
    preview_model: Path | None = None  # render a strength sweep of each final LoRA on this model
    tagger_dir: Path | None = None  # WD14 tagger folder (model.onnx, selected_tags.csv)
    prediction: Prediction = field(default_factory=Prediction)  # the base model's (models.choose_prediction)
    preview_prediction: Prediction | None = None  # --preview-model's; None: as the base model's
    samples: int = 0  # --samples N: sample images every N training steps (0: none)
    tensorboard: bool = False  # --tensorboard: sd-scripts' logging_dir under the run folder
    copy_stop_at: float | None = None  # --copy-stop-at SSIM: the copy LoRA stops when its check reaches it


def training_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """sd-scripts' bucket rule at `resolution`²: of the sizes with sides multiples of 64 and at most that area, the
    closest in log aspect (ties: larger area, then wider). 2048x1536 at 512 trains at 576x448."""
    area, aspect = resolution * resolution, math.log(width / height)
    sizes = [(w, area // w // STEP * STEP) for w in range(MIN_SIDE, area // MIN_SIDE + 1, STEP)]
    return min(((w, h) for w, h in sizes if h >= MIN_SIDE),  # resolution >= 64: 64x64 is always one
               key=lambda s: (abs(math.log(s[0] / s[1]) - aspect), -s[0] * s[1], -s[0]))


@dataclass(frozen=True)
class SizeChoice:
    """The size one source trains at and why (shown by --dry-run, recorded in the manifest)."""

    size: tuple[int, int]
    picture: tuple[int, int]  # the upright picture's own size
    why: str
    note: str | None = None  # one line for the user when the picture is resized by default


def choose_training_size(picture: tuple[int, int], generated: bool, resolution: int | None, family: Family,
                         name: str = "") -> SizeChoice:
    """About N x N px with --resolution N, else the family's native area; a generated original keeps its size."""
    width, height = picture
    native, rule = family.default_size, "aspect kept, sides multiples of 64"
    if resolution is not None:
        why = f"--resolution {resolution}: about {resolution}x{resolution} px, {rule}"
        return SizeChoice(training_size(width, height, resolution), picture, why)
    if generated and width % STEP == 0 and height % STEP == 0:
        return SizeChoice((width, height), picture, "the generated original's own size (the model's native size)")
    size = training_size(width, height, native)
    area = f"the native {native}x{native} px area of {family.label}"
    why = f"{area}, {rule} (--resolution N trains at about NxN px)"
    note = None
    if size != (width, height) and not generated:
        ratio = (width * height) / (size[0] * size[1])
        far = ratio > FAR or ratio < 1 / FAR
        note = (f"{name} is {width}x{height} px{', far from ' + area if far else ''}: it trains on a copy resized to "
                f"{size[0]}x{size[1]} ({'the native area, ' if not far else ''}{rule}; its edits alike); "
                "--resolution N trains at about NxN px instead")
    return SizeChoice(size, picture, why, note)


def source_size(source: Source, recipe: Recipe, family: Family) -> tuple[int, int]:
    """The source's size upright (after its EXIF orientation: what original.png holds)."""
    if source.image is None:
        return recipe.generate.size(family.default_size)
    try:
        width, height = image_info(source.image)["size"]
    except InputError:
        raise InputError(f"image is not a readable image file: {source.image}") from None
    return width, height


def make_sources(images: list[Path], edited: list[Path]) -> list[Source]:
    """Pair images with their edits and give each a unique id when there are several."""
    if edited and len(edited) != len(images):
        raise InputError(f"{len(images)} image(s) but {len(edited)} edited image(s): "
                         "give one --edited per --image, in the same order")
    if not images:
        return [Source(image=None)]
    sources = [Source(image=img, edited=edited[i] if edited else None) for i, img in enumerate(images)]
    if len(sources) > 1:
        seen: dict[str, int] = {}
        for s, img in zip(sources, images):
            stem = folder_stem("".join(c if c.isalnum() or c in "-_" else "_" for c in img.stem) or "image")
            seen[stem] = seen.get(stem, 0) + 1
            s.id = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
    return sources


def _images(folder: Path, option: str) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{option} is not a folder: {folder}")
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def images_in(folder: Path) -> list[Path]:
    found = sorted(_images(folder, "--images"))
    if not found:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return found


def match_edits(images: list[Path], folder: Path) -> list[Path]:
    """Custom edits for `images` from `folder`, matched by file name (any image suffix)."""
    by_stem = {p.stem: p for p in _images(folder, "--edited-dir")}
    missing = [img.name for img in images if img.stem not in by_stem]
    if missing:
        raise InputError(f"--edited-dir {folder} has no edit named like {missing[0]} (edits are matched by file name)")
    return [by_stem[img.stem] for img in images]


def run_folder(request: Request) -> Path:
    if request.out:
        return Path(request.out)
    first = request.sources[0].image
    stem = folder_stem(first.stem) if first else f"generated-s{request.recipe.generate.seed}"
    if len(request.sources) > 1:
        stem += f"-and-{len(request.sources) - 1}"
    return Path("runs") / (stem if request.method == COPY_MACHINE else f"{stem}-diff")


def default_cache(run_dir: Path, option: Path | None) -> Path:
    return Path(option or os.environ.get("COPYMACHINE_CACHE") or run_dir.parent / "_cache")


@dataclass(frozen=True)
class Folders:
    """A run's folder and its cache of shared stages, resolved once (`run_folders`)."""

    run: Path
    cache: Path


def run_folders(request: Request) -> Folders:
    run = run_folder(request).resolve()
    return Folders(run=run, cache=default_cache(run, request.cache_dir).resolve())


def run_identity(request: Request, hashes: HashCache) -> dict[str, Any]:
    """What makes a run folder this run's (method, base, images' content); other changes re-run stages in it."""
    images: list[Any] = []
    for source in request.sources:
        if source.image is None:
            g = request.recipe.generate
            images.append({"generated": {"prompt": g.prompt, "seed": g.seed, "size": [g.width, g.height]}})
        else:
            images.append(hashes.sha256(source.image))
    return {"method": request.method, "base_sha256": hashes.sha256(request.base), "images": images}
