"""The methods of the memo as plans: which stages, in which order, with which parameters.

- copy-machine (`copymachine train`): memo steps 1-5, the optional steps 6-9, and step 9's resize.
- difference extraction (`copymachine diff`): LoRA A on the original, LoRA B on the edit, B - A.
- the style-absorb tip (`--absorb`): style LoRAs merged into the base before any training.

Data flows one way: the CLI builds a `Request`, `plan()` turns it into a `Plan` of stages, the
pipeline runs it. Sign convention for every method: positive strength = more of the edit.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copymachine import capabilities
from copymachine.copystop import CopyStop
from copymachine.errors import InputError
from copymachine.files import HashCache, folder_stem
from copymachine.images import image_info
from copymachine.models import BaseOptions, Family, Prediction, base_options
from copymachine.plan import FileRef, LoraTerm, Plan, Planner, WeightedLora, stage_name
from copymachine.recipe import MEMO, Recipe, TrainingRecipe
from copymachine.stages import Settings, kind_versions
from copymachine.stages.captions import OUTPUTS as CAPTION_OUTPUTS
from copymachine.stages.captions import caption_plan
from copymachine.stages.copy_check import copy_check_plan
from copymachine.stages.edit_image import CUSTOM, edit_plan
from copymachine.stages.edit_image import OUTPUTS as EDIT_OUTPUTS
from copymachine.stages.extract_lora import ExtractParams
from copymachine.stages.finalize import FinalizeParams
from copymachine.stages.generate_image import generate_params
from copymachine.stages.import_image import ImportParams
from copymachine.stages.leakage import leakage_params
from copymachine.stages.leakage import planned_outputs as leakage_outputs
from copymachine.stages.merge_model import merge_plan
from copymachine.stages.preview import planned_outputs as preview_outputs
from copymachine.stages.preview import preview_params
from copymachine.stages.resize_lora import ResizeParams
from copymachine.stages.svd_merge import svd_merge_plan
from copymachine.stages.train_lora import check_sd_args, training_plan

COPY_MACHINE = "copy-machine"
DIFFERENCE = "difference-extraction"
MIN_SIDE = 64
STEP = 64  # SD's U-Net halves the latent three times: image sides must be multiples of 64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SIGNS = {"edit": 1.0, "memo": -1.0}  # edit: + = more of the edit; memo: the memo's ratios 1 -1


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
    absorb: list[StyleLora] = field(default_factory=list)  # (path, ratio) pairs are taken too
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

    def __post_init__(self) -> None:
        self.absorb = [a if isinstance(a, StyleLora) else StyleLora(Path(a[0]), a[1]) for a in self.absorb]


def training_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The size a picture of `width` x `height` trains at, about `resolution`² pixels (sd-scripts'
    bucket rule at that area): of the sizes whose sides are multiples of 64 and whose area is at
    most `resolution`², the one whose aspect ratio is closest to the picture's (on a log scale;
    a tie goes to the larger area, then the wider). 2048x1536 at 512 trains at 576x448."""
    area = resolution * resolution
    aspect = math.log(width / height)
    best: tuple[float, int, int] | None = None
    for w in range(MIN_SIDE, area // MIN_SIDE + 1, STEP):
        h = (area // w) // STEP * STEP
        if h < MIN_SIDE:
            break
        rank = (abs(math.log(w / h) - aspect), -w * h, -w)
        if best is None or rank < best:
            best = rank
    assert best is not None  # resolution >= 64: 64x64 is always a candidate
    w = -best[2]
    return w, -best[1] // w


FAR = 2.0  # a picture with more than twice, or less than half, the training area is "far" from it


@dataclass(frozen=True)
class SizeChoice:
    """The size one source trains at and why (shown by --dry-run, recorded in the manifest)."""

    size: tuple[int, int]
    picture: tuple[int, int]  # the upright picture's own size
    why: str
    note: str | None = None  # one line for the user when the picture is resized by default


def choose_training_size(picture: tuple[int, int], generated: bool, resolution: int | None, family: Family, name: str = "") -> SizeChoice:
    """The training size of a source: `--resolution N` trains at about N x N px; by default a
    picture trains at the model family's native area (SD1.x/SD2 512x512, SDXL 1024x1024), its
    aspect kept, and a generated original at its own size (it already is native)."""
    width, height = picture
    native = family.default_size
    rule = "aspect kept, sides multiples of 64"
    if resolution is not None:
        return SizeChoice(training_size(width, height, resolution), picture, f"--resolution {resolution}: about {resolution}x{resolution} px, {rule}")
    if generated and width % STEP == 0 and height % STEP == 0:
        return SizeChoice((width, height), picture, "the generated original's own size (the model's native size)")
    size = training_size(width, height, native)
    why = f"the native {native}x{native} px area of {family.label}, {rule} (--resolution N trains at about NxN px)"
    note = None
    if size != (width, height) and not generated:
        ratio = (width * height) / (size[0] * size[1])
        far = f", far from the native {native}x{native} px area of {family.label}" if ratio > FAR or ratio < 1 / FAR else ""
        note = (
            f"{name} is {width}x{height} px{far}: it trains on a copy resized to {size[0]}x{size[1]} "
            f"({'the native area, ' if not far else ''}{rule}; its edits alike); --resolution N trains at about NxN px instead"
        )
    return SizeChoice(size, picture, why, note)


def make_sources(images: list[Path], edited: list[Path]) -> list[Source]:
    """Pair images with their edits and give each a unique id when there are several."""
    if edited and len(edited) != len(images):
        raise InputError(f"{len(images)} image(s) but {len(edited)} edited image(s): give one --edited per --image, in the same order")
    if not images:
        return [Source(image=None)]
    sources = [Source(image=img, edited=edited[i] if edited else None) for i, img in enumerate(images)]
    if len(sources) > 1:
        seen: dict[str, int] = {}
        for s in sources:
            stem = folder_stem("".join(c if c.isalnum() or c in "-_" else "_" for c in s.image.stem) or "image")  # type: ignore[union-attr]
            seen[stem] = seen.get(stem, 0) + 1
            s.id = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
    return sources


def images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"--images is not a folder: {folder}")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return found


def match_edits(images: list[Path], folder: Path) -> list[Path]:
    """Custom edits for `images` from `folder`, matched by file name (any image suffix)."""
    if not folder.is_dir():
        raise InputError(f"--edited-dir is not a folder: {folder}")
    by_stem = {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
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
    if option:
        return Path(option)
    if os.environ.get("COPYMACHINE_CACHE"):
        return Path(os.environ["COPYMACHINE_CACHE"])
    return run_dir.parent / "_cache"


@dataclass(frozen=True)
class Folders:
    """A run's folder and the cache its shared stages live in, resolved: computed once, by
    `run_folders`, for the CLI's checks, the hash cache and the plan."""

    run: Path
    cache: Path


def run_folders(request: Request) -> Folders:
    run = run_folder(request).resolve()
    return Folders(run=run, cache=default_cache(run, request.cache_dir).resolve())


def run_identity(request: Request, hashes: HashCache) -> dict[str, Any]:
    """What makes a run folder's results *this* run's: the method, the base model and the
    original images (content, not names). Effects, edits and recipe numbers are parameters:
    changing them re-runs stages in the same folder."""
    images: list[Any] = []
    for source in request.sources:
        if source.image is None:
            g = request.recipe.generate
            images.append({"generated": {"prompt": g.prompt, "seed": g.seed, "size": [g.width, g.height]}})
        else:
            images.append(hashes.sha256(source.image))
    return {
        "method": request.method,
        "base_sha256": hashes.sha256(request.base),
        "images": images,
    }


def final_name(request: Request, run_dir: Path, effect: str) -> str:
    if request.name and len(request.effects) == 1:
        return request.name
    return f"{request.name or run_dir.name}-{effect}"


def source_size(source: Source, recipe: Recipe, family: Family) -> tuple[int, int]:
    """The source's size upright (after its EXIF orientation: what original.png holds)."""
    if source.image is None:
        return recipe.generate.size(family.default_size)
    try:
        width, height = image_info(source.image)["size"]
    except InputError:
        raise InputError(f"image is not a readable image file: {source.image}") from None
    return width, height


# --- planning: the per-source state, the steps, the methods ------------------------------------


@dataclass
class SourcePlan:
    """What the plan has of one source image: its original, the size it trains at, its
    captions stage, its edit per effect and its copy check."""

    source: Source
    original: FileRef
    size: tuple[int, int]
    captions: str = ""  # the captions stage's name
    edits: dict[str, FileRef] = field(default_factory=dict)
    copy_check: FileRef | None = None  # the copy check's scores
    size_choice: SizeChoice | None = None  # why it trains at `size`

    @property
    def id(self) -> str:
        return self.source.id


class _Context:
    """One request being planned: its folders, the planner and what the steps have added."""

    def __init__(self, request: Request, settings: Settings, hashes: HashCache, folders: Folders):
        self.request = request
        self.settings = settings
        self.recipe = request.recipe
        self.family = request.family
        self.run_dir = folders.run
        self.cache_dir = folders.cache
        self.planner = Planner(self.run_dir, self.cache_dir, hashes, kind_versions(settings.engine))
        self.plan: Plan = self.planner.plan
        self.base = self.external(request.base)
        self.training_base = self.base
        # memory route: LoRAs sd-scripts merges into training_base in memory (--base_weights), in order
        self.in_memory = request.recipe.merge.copy_model == "memory"
        self.base_weights: list[WeightedLora] = []
        self.sources: list[SourcePlan] = []
        # clip skip, prediction type, SDXL's float32 VAE: every training and render
        self.model: BaseOptions = base_options(self.family, self.recipe.model.clip_skip, request.prediction)
        self.preview_model_options = base_options(self.family, self.recipe.model.clip_skip, request.preview_prediction or request.prediction)
        self.sd_args = dict(self.recipe.sd_args)
        if self.sd_args:
            check_sd_args(self.sd_args)
            script = self.family.train_script
            if not capabilities.check_training_keys(settings.capabilities, script, list(self.sd_args)):
                self.plan.notes.append(f"--sd-arg {', '.join(self.sd_args)}: not checked against {script} --help yet (a dry run learns nothing); a run checks it before any work")

    def add(self, name: str, kind: str, title: str, inputs: dict[str, FileRef], params, outputs: dict[str, str], **where) -> FileRef | None:
        """Add a stage; returns a reference to its first output."""
        self.planner.add(name, kind, title, inputs=inputs, params=params, outputs=outputs, **where)
        return self.ref(name, next(iter(outputs)))

    def ref(self, stage: str, output: str) -> FileRef:
        return self.plan.ref(stage, output)

    def has(self, stage: str) -> bool:
        return any(s.name == stage for s in self.plan.stages)

    def external(self, path: Path) -> FileRef:
        return self.planner.external(Path(path).resolve())

    def source_dir(self, source: Source) -> Path:
        return self.run_dir / source.id if source.id else self.run_dir

    @property
    def gen_precision(self) -> str:
        return self.settings.profile.gen_precision

    def weight(self) -> float:
        n = len(self.request.sources)
        return 1.0 / n if self.recipe.combine.normalize else 1.0

    def merge(self, name: str, title: str, base: FileRef, loras: list[WeightedLora], output: str, **where) -> FileRef:
        m = self.recipe.merge
        inputs, params = merge_plan(self.family, base, loras, m.precision, m.save_precision)
        return self.add(name, "merge_model", title, inputs, params, {"model": output}, **where)  # type: ignore[return-value]

    def info(self, method: str) -> None:
        r = self.request
        self.plan.info.update(
            {
                "method": method,
                "base": str(r.base),
                "family": self.family.name,
                "images": [str(s.image) if s.image else None for s in r.sources],
                "edited": [str(s.edited) if s.edited else None for s in r.sources],
                # each image's folder (its stem, capped at FOLDER_STEM_MAX characters) and its full name
                "image_folders": {s.id: s.image.name for s in r.sources if s.id and s.image},
                "effects": r.effects,
                "combine": r.combine,
                "sign": r.sign,
                "absorb": [[str(a.path), a.ratio] for a in r.absorb],
                "training_sizes": {s.id or "original": list(s.size) for s in self.sources},
                "training_size": {
                    s.id or "original": {"size": list(s.size), "picture": list(s.size_choice.picture), "why": s.size_choice.why}
                    for s in self.sources
                    if s.size_choice is not None
                },
                "copy_model": self.recipe.merge.copy_model if method == COPY_MACHINE or r.absorb else None,
                "clip_skip": self.model.clip_skip,
                "prediction": {"type": r.prediction.label, "why": r.prediction.why},
                **({"preview_prediction": {"type": r.preview_prediction.label, "why": r.preview_prediction.why}} if r.preview_prediction else {}),
                "sd_args": self.sd_args,
                "copy_check": {"min_ssim": self.recipe.copy_check.min_ssim} if r.copy_check else "off (--no-copy-check)",
                "recipe": self.recipe.to_dict(),
                "cache_dir": str(self.cache_dir),
            }
        )


# --- the shared first steps: absorb, original, edits, captions


def _absorb(c: _Context) -> None:
    """The tip: style LoRAs merged into the base model; every training uses the result. In
    the memory route they are each training's first --base_weights (and each render's first
    networks) instead of an absorbed-model file."""
    styles = [WeightedLora(c.external(a.path), a.ratio) for a in c.request.absorb]
    if not styles:
        return
    if c.in_memory:
        c.base_weights = styles
        return
    name = stage_name("absorbed-model")
    c.training_base = c.merge(name, "style absorbed into the base model", c.base, styles, "absorbed-model.safetensors", shared_as=name)


def _original(c: _Context, source: Source) -> SourcePlan:
    """Memo step 1: the user's image, or one generated from the base model."""
    if source.image is None:
        name = stage_name("generate", source=source.id)
        params = generate_params(c.recipe.generate, c.family, c.gen_precision, c.model)
        image = c.add(name, "generate_image", "original image (generated)", {"base": c.base}, params, {"image": "generated.png", "prompt": "prompt.txt"}, shared_as="generated")
    else:
        image = c.external(source.image)
    title = f"{source.id}: original image" if source.id else "original image"
    original = c.add(stage_name("original", source=source.id), "import_image", title, {"source": image}, ImportParams(), {"image": "original.png"}, workdir=c.source_dir(source))
    name = source.image.name if source.image is not None else "the generated original"
    choice = choose_training_size(source_size(source, c.recipe, c.family), source.image is None, c.request.resolution, c.family, name)
    if choice.note:
        c.plan.notes.append(choice.note)
    return SourcePlan(source=source, original=original, size=choice.size, size_choice=choice)  # type: ignore[arg-type]


def _edit(c: _Context, sp: SourcePlan, effect: str) -> None:
    """Memo step 4, before any training, so a bad edit stops the run at once."""
    source = sp.source
    if effect == CUSTOM and source.edited is None:
        raise InputError(f"effect custom needs an edited image for {source.image}")
    edited = c.external(source.edited) if effect == CUSTOM and source.edited is not None else None
    inputs, params = edit_plan(effect, sp.original, edited, c.request.effect_params.get(effect, {}), c.request.amount, c.request.edit_in_place)
    name = stage_name("edit", effect, source.id)
    sp.edits[effect] = c.add(name, "edit_image", f"{source.prefix}{effect}: edited image", inputs, params, dict(EDIT_OUTPUTS), workdir=c.source_dir(source) / effect)  # type: ignore[assignment]


def _caption(c: _Context, sp: SourcePlan) -> None:
    """One caption file per training image: the same text for the original and the edit."""
    source = sp.source
    sp.captions = stage_name("captions", source=source.id)
    inputs, params = caption_plan(c.recipe.caption, sp.original, c.request.tagger_dir, c.planner)
    title = f"{source.prefix}captions" + (" (WD14 tagger)" if params.method == "wd14" else "")
    c.add(sp.captions, "captions", title, inputs, params, dict(CAPTION_OUTPUTS), workdir=c.source_dir(source) / "captions")


def _prepare(c: _Context) -> None:
    _absorb(c)
    for source in c.request.sources:
        sp = _original(c, source)
        c.sources.append(sp)
        for effect in c.request.effects:
            _edit(c, sp, effect)
        _caption(c, sp)


# --- trainings and the copy check


def _copy_stop(c: _Context, sp: SourcePlan) -> CopyStop | None:
    """--copy-stop-at: the copy LoRA's segments (the save interval) and the check after each (the
    recipe's [copy_check] prompts, the copy LoRA at the merge ratio on the base)."""
    if c.request.copy_stop_at is None:
        return None
    _, check, _ = copy_check_plan(c.recipe.copy_check, c.family.gen_flag, sp.size, c.gen_precision, {}, None, c.base_weights, c.model)
    return CopyStop(
        min_ssim=float(c.request.copy_stop_at),
        segment=c.recipe.watch.save_every_n_steps or MEMO.watch.save_every_n_steps,
        check=dataclasses.replace(check, lora_multiplier=c.recipe.merge.ratio),
    )


def _train(c: _Context, name: str, title: str, training: TrainingRecipe, sp: SourcePlan, base: FileRef, image: FileRef, caption: str, output: str, base_weights: list[WeightedLora], copy_stop: CopyStop | None = None, **where) -> FileRef:
    """One training; `base_weights` (LoRA, multiplier) are merged into `base` in memory first."""
    inputs = {"base": base, "image": image, "caption": c.ref(sp.captions, caption)}
    inputs, params = training_plan(
        training, c.family, sp.size, c.settings, c.request.max_steps, inputs, base_weights, c.model, c.sd_args,
        save_every_n_steps=c.recipe.watch.save_every_n_steps, samples=c.request.samples, watch=c.recipe.watch,
        logging_dir=c.run_dir / "tensorboard" if c.request.tensorboard else None, copy_stop=copy_stop,
    )  # fmt: skip
    return c.add(name, "train_lora", title, inputs, params, {"lora": output}, **where)  # type: ignore[return-value]


def _copy_check(c: _Context, sp: SourcePlan, model: FileRef, lora: FileRef | None = None, copy_lora: FileRef | None = None) -> None:
    """Does the copy machine copy? Images from it (the copy model; in the memory route the
    copy LoRA on the base model; for difference extraction LoRA A on the base model) against
    the original; a failed check stops the run before the next training. Not shared: its
    images belong in the run folder."""
    if not c.request.copy_check:
        return
    cc = c.recipe.copy_check
    inputs = {"model": model, "original": sp.original, "caption": c.ref(sp.captions, "original")}
    if lora is not None:
        inputs["lora"] = lora
    weighted = WeightedLora(copy_lora, c.recipe.merge.ratio) if copy_lora is not None else None
    inputs, params, outputs = copy_check_plan(cc, c.family.gen_flag, sp.size, c.gen_precision, inputs, weighted, c.base_weights, c.model)
    name = stage_name("copy-check", source=sp.id)
    c.planner.add(name, "copy_check", f"{sp.source.prefix}copy check", inputs=inputs, params=params, outputs=outputs, workdir=c.source_dir(sp.source) / "copy-check", gate={"min_ssim": cc.min_ssim})
    sp.copy_check = c.ref(name, "scores")


# --- combining and finishing


def _svd_merge(c: _Context, effect: str, title: str, terms: list[LoraTerm], rank: int, output: str, term_rank: int) -> FileRef:
    """svd_merge_lora.py: the weighted sum of the LoRAs (each of rank `term_rank`), cut to `rank`."""
    if rank > term_rank * len(terms):
        raise InputError(
            f"--rank {rank} is above what {len(terms)} LoRA(s) of rank {term_rank} can hold together ({term_rank * len(terms)}); "
            f"svd_merge_lora.py would pad the file with zeros: give --rank {term_rank * len(terms)} or less"
        )
    svd = c.recipe.svd
    inputs, params = svd_merge_plan(terms, rank, svd.precision, svd.save_precision, c.settings.device)
    return c.add(stage_name("svd-merge", effect), "svd_merge", title, inputs, params, {"lora": output}, workdir=c.run_dir / effect)  # type: ignore[return-value]


def _merge_route(c: _Context, effect: str, terms: list[LoraTerm]) -> FileRef:
    """Memo steps 7-8: the LoRAs merged into the base model (the processed model), then the
    LoRA of base -> processed model extracted. In the memory route with --absorb the base is
    the plain base model: merging is linear, so (base + styles + effects) - (base + styles)
    and (base + effects) - base are the same difference, and no absorbed model is written."""
    workdir = c.run_dir / effect
    processed = c.merge(stage_name("processed-model", effect), f"{effect}: processed model (step 7)", c.training_base, list(terms), "processed-model.safetensors", workdir=workdir)
    cb = c.recipe.combine
    params = ExtractParams(family=c.family, dim=cb.extract_dim, min_diff=cb.min_diff, precision=cb.precision, device=c.settings.device)
    inputs = {"original": c.training_base, "tuned": processed}
    return c.add(stage_name("extract", effect), "extract_lora", f"{effect}: LoRA of base -> processed model (step 8)", inputs, params, {"lora": f"extracted-r{cb.extract_dim}.safetensors"}, workdir=workdir)  # type: ignore[return-value]


def _resize(c: _Context, effect: str, lora: FileRef, from_rank: int, rank: int, precision: str) -> FileRef:
    """Memo step 9: resize_lora.py to `rank` (0 keeps the rank). It runs on the CPU: on CUDA
    it has written corrupt files (sd-scripts issue #904)."""
    if rank > from_rank:
        raise InputError(
            f"--rank {rank} is above the rank the LoRA has before the resize ({from_rank}): resize_lora.py "
            f"cannot add rank; give --rank {from_rank} or less, or --rank 0 to keep rank {from_rank}"
        )
    save_precision = c.recipe.resize.save_precision
    if not rank or rank == from_rank:
        c.plan.notes.append(
            f"{effect}: the final LoRA keeps rank {from_rank} and the trained precision "
            f"({precision}); resize_lora.py (and its {save_precision}) runs only below rank {from_rank}"
        )
        return lora
    params = ResizeParams(rank=rank, save_precision=save_precision)
    return c.add(stage_name("resize", effect), "resize_lora", f"{effect}: resize to rank {rank}", {"lora": lora}, params, {"lora": f"lora-r{rank}.safetensors"}, workdir=c.run_dir / effect)  # type: ignore[return-value]


def _finalize(c: _Context, effect: str, lora: FileRef, method: str, trainings: dict[str, Any]) -> None:
    inputs = {"lora": lora}
    for i, sp in enumerate(c.sources):
        inputs[f"original{i:03d}"] = sp.original
        inputs[f"edited{i:03d}"] = sp.edits[effect]
        if sp.copy_check is not None:
            inputs[f"copycheck{i:03d}"] = sp.copy_check
    edit = c.plan.stage(stage_name("edit", effect, c.sources[0].id)).spec
    name = final_name(c.request, c.run_dir, effect)
    leakage = _leakage(c, effect, lora)
    if leakage is not None:
        inputs["leakage"] = leakage
    params = FinalizeParams(
        method=method,
        effect=effect,
        effect_params=edit.effect_params,
        amount=edit.amount,
        sign=c.request.sign,
        recipe=trainings,
        absorbed=[[a.path.name, a.ratio] for a in c.request.absorb],
        sd_scripts_commit=c.settings.engine.commit if c.settings.engine else None,
        model=c.model.for_training(),
    )
    c.plan.finals[effect] = c.add(stage_name("final", effect), "finalize", f"{effect}: final LoRA", inputs, params, {"lora": f"{name}.safetensors"}, workdir=c.run_dir).path  # type: ignore[union-attr]


def _leakage(c: _Context, effect: str, lora: FileRef) -> FileRef | None:
    """With a preview model: does the LoRA drag its training image into unrelated pictures?
    Measured on the LoRA before its metadata is added (the same weights), so the final LoRA
    can record the score (`copymachine.leakage`)."""
    model = c.request.preview_model
    if model is None:
        return None
    params = leakage_params(c.recipe.leakage, c.family, c.sources[0].size, c.gen_precision, c.preview_model_options)
    inputs = {"lora": lora, "model": c.external(model)}
    for i, sp in enumerate(c.sources):
        inputs[f"original{i:03d}"] = sp.original
    name = stage_name("leakage", effect)
    c.add(name, "leakage", f"{effect}: leakage on {model.name}", inputs, params, leakage_outputs(params, "leakage/"), workdir=c.run_dir / effect)
    return c.ref(name, "scores")


def _previews(c: _Context) -> None:
    """A strength sweep of every final LoRA on --preview-model, the sheet beside the LoRA."""
    model = c.request.preview_model
    if model is None:
        return
    font = Path(c.recipe.preview.font) if c.recipe.preview.font else None
    if font is not None and not font.is_file():
        raise InputError(f"preview.font not found: {font}")
    for effect, final in c.plan.finals.items():
        params = preview_params(c.recipe.preview, c.family, c.gen_precision, c.preview_model_options)
        inputs = {"lora": c.ref(stage_name("final", effect), "lora"), "model": c.external(model)}
        if font is not None:
            inputs["font"] = c.external(font)
        if c.has(stage_name("leakage", effect)):
            inputs["leakage"] = c.ref(stage_name("leakage", effect), "scores")
        c.add(stage_name("preview", effect), "preview", f"{effect}: strength sweep on {model.name}", inputs, params, preview_outputs(params, final.stem), workdir=c.run_dir)
    c.plan.info["preview_model"] = str(model)


# --- the methods


def _copy_machines(c: _Context) -> dict[str, list[FileRef]]:
    """Memo steps 2-5 per image: the copy LoRA, the copy model (a file, or in memory), its
    check, and each effect's LoRA on it. Returns the effect LoRAs by effect."""
    effect_loras: dict[str, list[FileRef]] = {e: [] for e in c.request.effects}
    ratio = c.recipe.merge.ratio
    for sp in c.sources:
        source = sp.source
        # steps 2-3, the copy machine: shared by every effect and run with the same inputs
        name = stage_name("copy-lora", source=source.id)
        copy_lora = _train(c, name, f"{source.prefix}copy LoRA", c.recipe.copy, sp, c.training_base, sp.original, "original", "copy-lora.safetensors", c.base_weights, copy_stop=_copy_stop(c, sp), shared_as="copy-lora")
        if c.in_memory:
            # the copy model is the base + the copy LoRA, merged in memory by each training and render
            copy_model, effect_weights = c.training_base, [*c.base_weights, WeightedLora(copy_lora, ratio)]
            _copy_check(c, sp, copy_model, copy_lora=copy_lora)
        else:
            name = stage_name("copy-model", source=source.id)
            copy_model = c.merge(name, f"{source.prefix}copy model", c.training_base, [WeightedLora(copy_lora, ratio)], "copy-model.safetensors", shared_as="copy-model")
            effect_weights = []
            _copy_check(c, sp, copy_model)
        for effect in c.request.effects:
            name = stage_name("effect-lora", effect, source.id)
            training = c.recipe.effect_training(effect)
            lora = _train(c, name, f"{source.prefix}{effect}: effect LoRA", training, sp, copy_model, sp.edits[effect], "edited", "effect-lora.safetensors", effect_weights, workdir=c.source_dir(source) / effect)
            effect_loras[effect].append(lora)
    return effect_loras


def plan_copy_machine(request: Request, settings: Settings, hashes: HashCache, folders: Folders | None = None) -> Plan:
    """Memo steps 1-5 per image, 6-9 when there are several, 9 (resize) always."""
    c = _Context(request, settings, hashes, folders or run_folders(request))
    _prepare(c)
    effect_loras = _copy_machines(c)
    combine = request.combine or ("merge" if len(request.sources) > 1 else None)
    r = c.recipe
    for effect in request.effects:
        training = r.effect_training(effect)
        loras = effect_loras[effect]
        terms = [LoraTerm(ref, c.weight(), sp.id or "effect") for ref, sp in zip(loras, c.sources)]
        if combine == "svd":  # svd_merge_lora.py makes the final rank itself
            rank = r.resize.rank or training.network_dim
            lora = _svd_merge(c, effect, f"{effect}: effect LoRAs combined (svd_merge_lora)", terms, rank, f"combined-r{rank}.safetensors", training.network_dim)
        elif combine == "merge":
            lora = _merge_route(c, effect, terms)
            lora = _resize(c, effect, lora, r.combine.extract_dim, r.resize.rank, r.combine.precision)
        else:
            lora = _resize(c, effect, loras[0], training.network_dim, r.resize.rank, training.save_precision)
        trainings = {"name": r.name, "copy": dataclasses.asdict(r.copy), "effect": dataclasses.asdict(training), "resize": dataclasses.asdict(r.resize), "combine": combine}
        _finalize(c, effect, lora, COPY_MACHINE, trainings)
    _previews(c)
    c.info(COPY_MACHINE)
    return c.plan


def plan_difference(request: Request, settings: Settings, hashes: HashCache, folders: Folders | None = None) -> Plan:
    """Difference extraction: A = copy LoRA of the original, B = copy LoRA of the edit, both on
    the base model; the result is B - A (memo: A - B, `--sign memo`), by svd_merge_lora.py."""
    c = _Context(request, settings, hashes, folders or run_folders(request))
    _prepare(c)
    sign = SIGNS[request.sign]
    r = c.recipe
    terms_by_effect: dict[str, list[LoraTerm]] = {e: [] for e in request.effects}
    for sp in c.sources:
        source = sp.source
        # LoRA A depends only on base + image + caption + recipe: shared by every effect
        name = stage_name("lora-a", source=source.id)
        lora_a = _train(c, name, f"{source.prefix}LoRA A (original)", r.diff, sp, c.training_base, sp.original, "original", "lora-a.safetensors", c.base_weights, shared_as="copy-lora")
        _copy_check(c, sp, c.training_base, lora_a)  # A is the copy machine: checked on the base at 1.0
        for effect in request.effects:
            name = stage_name("lora-b", effect, source.id)
            lora_b = _train(c, name, f"{source.prefix}{effect}: LoRA B (edited)", r.diff, sp, c.training_base, sp.edits[effect], "edited", "lora-b.safetensors", c.base_weights, workdir=c.source_dir(source) / effect)
            w = c.weight()
            label = f"{source.id}:" if source.id else ""
            terms_by_effect[effect] += [LoraTerm(lora_a, -sign * w, f"{label}A"), LoraTerm(lora_b, sign * w, f"{label}B")]
    combine = request.combine or "svd"
    rank = r.svd.rank
    for effect in request.effects:
        terms = terms_by_effect[effect]
        if combine == "svd":
            title = f"{effect}: difference B - A" if sign > 0 else f"{effect}: difference A - B (memo sign)"
            lora = _svd_merge(c, effect, title, terms, rank, f"diff-r{rank}.safetensors", r.diff.network_dim)
        else:
            lora = _merge_route(c, effect, terms)
            lora = _resize(c, effect, lora, r.combine.extract_dim, rank, r.combine.precision)
        _finalize(c, effect, lora, DIFFERENCE, {"name": r.name, "diff": dataclasses.asdict(r.diff), "svd": dataclasses.asdict(r.svd), "combine": combine})
    _previews(c)
    c.info(DIFFERENCE)
    return c.plan


def plan(request: Request, settings: Settings, hashes: HashCache, folders: Folders | None = None) -> Plan:
    """The request's Plan (in `folders`, by default `run_folders(request)`); the plan's info
    records the run's identity (`run_identity`) for the manifest and the output checks."""
    if request.combine not in (None, "merge", "svd"):
        raise InputError(f"--combine must be merge or svd, not {request.combine!r}")
    if request.sign not in SIGNS:
        raise InputError(f"--sign must be edit or memo, not {request.sign!r}")
    folders = folders or run_folders(request)
    if request.method == COPY_MACHINE:
        the_plan = plan_copy_machine(request, settings, hashes, folders)
    elif request.method == DIFFERENCE:
        the_plan = plan_difference(request, settings, hashes, folders)
    else:
        raise ValueError(request.method)
    the_plan.info["identity"] = run_identity(request, hashes)
    return the_plan
