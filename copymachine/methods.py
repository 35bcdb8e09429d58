"""The methods of the memo as plans: which stages, in which order, with which parameters.

- copy-machine (`copymachine train`): memo steps 1-5, the optional steps 6-9, and step 9's resize.
- difference extraction (`copymachine diff`): LoRA A on the original, LoRA B on the edit, B - A.
- the style-absorb tip (`--absorb`): style LoRAs merged into the base before any training.

Data flows one way: the CLI builds a `Request`, `plan()` turns it into a `Plan` of stages, the
pipeline runs it. Sign convention for every method: positive strength = more of the edit.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from copymachine import effects as effect_registry
from copymachine.errors import InputError
from copymachine.files import HashCache
from copymachine.models import Family
from copymachine.plan import FileRef, Plan, Planner
from copymachine.recipe import Recipe, TrainingRecipe, split_prompts
from copymachine.stages import Settings, kind_versions
from copymachine.stages.captions import caption_plan
from copymachine.stages.copy_check import CAPTION_PLACEHOLDER
from copymachine.stages.copy_check import planned_outputs as copy_check_outputs
from copymachine.stages.leakage import leakage_params
from copymachine.stages.leakage import planned_outputs as leakage_outputs
from copymachine.stages.merge_model import lora_input_name
from copymachine.stages.preview import planned_outputs as preview_outputs
from copymachine.stages.preview import preview_params
from copymachine.stages.train_lora import base_weight_input_name

CUSTOM = "custom"
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
    absorb: list[tuple[Path, float]] = field(default_factory=list)
    combine: str | None = None  # "merge" (memo steps 7-9) | "svd"; None: the method's default
    sign: str = "edit"
    copy_check: bool = True  # render from the copy machine and stop when it does not copy
    edit_in_place: bool = False  # the user's edits keep every pixel in place: alignment is a note
    preview_model: Path | None = None  # render a strength sweep of each final LoRA on this model
    tagger_dir: Path | None = None  # WD14 tagger folder (model.onnx, selected_tags.csv)


def training_size(width: int, height: int, resolution: int | None) -> tuple[int, int]:
    """The size the LoRAs train at: the image's own size (memo: resolution = the image's, 512),
    scaled so the longer side is `resolution` when given, each side a multiple of 64."""
    scale = resolution / max(width, height) if resolution else 1.0

    def side(v: int) -> int:
        return max(MIN_SIDE, round(v * scale / STEP) * STEP)

    return side(width), side(height)


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
            stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in s.image.stem) or "image"  # type: ignore[union-attr]
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
    stem = first.stem if first else f"generated-s{request.recipe.generate.seed}"
    if len(request.sources) > 1:
        stem += f"-and-{len(request.sources) - 1}"
    return Path("runs") / (stem if request.method == COPY_MACHINE else f"{stem}-diff")


def default_cache(run_dir: Path, option: Path | None) -> Path:
    if option:
        return Path(option)
    if os.environ.get("COPYMACHINE_CACHE"):
        return Path(os.environ["COPYMACHINE_CACHE"])
    return run_dir.parent / "_cache"


def final_name(request: Request, run_dir: Path, effect: str) -> str:
    if request.name and len(request.effects) == 1:
        return request.name
    return f"{request.name or run_dir.name}-{effect}"


def _source_size(source: Source, recipe: Recipe, family: Family) -> tuple[int, int]:
    if source.image is None:
        return recipe.generate.size(family.default_size)
    try:
        with Image.open(source.image) as im:
            return im.size
    except OSError:
        raise InputError(f"image is not a readable image file: {source.image}") from None


class _Builder:
    """Plans one request; a method is a sequence of calls to these helpers."""

    def __init__(self, request: Request, settings: Settings, hashes: HashCache):
        self.request = request
        self.settings = settings
        self.recipe = request.recipe
        self.family = request.family
        self.run_dir = run_folder(request).resolve()
        self.cache_dir = default_cache(self.run_dir, request.cache_dir).resolve()
        self.planner = Planner(self.run_dir, self.cache_dir, hashes, kind_versions(settings.engine))
        self.plan: Plan = self.planner.plan
        self.base = self.planner.external(request.base.resolve())
        self.training_base = self.base
        # memory route: LoRAs sd-scripts merges into training_base in memory (--base_weights), in order
        self.in_memory = request.recipe.merge.copy_model == "memory"
        self.base_weights: list[tuple[FileRef, float]] = []
        self.originals: dict[str, FileRef] = {}
        self.edits: dict[tuple[str, str], FileRef] = {}
        self.captions: dict[str, str] = {}
        self.sizes: dict[str, tuple[int, int]] = {}

    def add(self, *args, **kwargs):
        return self.planner.add(*args, **kwargs)

    def ref(self, stage: str, output: str) -> FileRef:
        return self.plan.ref(stage, output)

    def source_dir(self, source: Source) -> Path:
        return self.run_dir / source.id if source.id else self.run_dir

    # --- shared steps ------------------------------------------------------------------

    def absorb(self) -> None:
        """The tip: style LoRAs merged into the base model; every training uses the result. In
        the memory route they are each training's first --base_weights (and each render's first
        networks) instead of an absorbed-model file."""
        if not self.request.absorb:
            return
        if self.in_memory:
            self.base_weights = [(self.planner.external(path.resolve()), ratio) for path, ratio in self.request.absorb]
            return
        inputs = {"base": self.base}
        for i, (path, _ratio) in enumerate(self.request.absorb):
            inputs[lora_input_name(i)] = self.planner.external(path.resolve())
        self.add(
            "absorbed-model",
            "merge_model",
            "style absorbed into the base model",
            inputs=inputs,
            params={"family": self.family.as_params(), "ratios": [r for _, r in self.request.absorb], **self._merge_precision()},
            outputs={"model": "absorbed-model.safetensors"},
            shared_as="absorbed-model",
        )
        self.training_base = self.ref("absorbed-model", "model")

    def original(self, source: Source) -> None:
        """Memo step 1: the user's image, or one generated from the base model."""
        if source.image is None:
            g = self.recipe.generate
            self.add(
                f"{source.prefix}generate",
                "generate_image",
                "original image (generated)",
                inputs={"base": self.base},
                params={
                    "family_flag": self.family.gen_flag,
                    **dataclasses.asdict(g),
                    **dict(zip(("width", "height"), g.size(self.family.default_size))),
                    "precision": self._gen_precision(),
                },
                outputs={"image": "generated.png", "prompt": "prompt.txt"},
                shared_as="generated",
            )
            image: FileRef = self.ref(f"{source.prefix}generate", "image")
        else:
            image = self.planner.external(source.image.resolve())
        title = f"{source.id}: original image" if source.id else "original image"
        self.add(f"{source.prefix}original", "import_image", title, inputs={"source": image}, params={}, outputs={"image": "original.png"}, workdir=self.source_dir(source))
        self.originals[source.id] = self.ref(f"{source.prefix}original", "image")
        self.sizes[source.id] = training_size(*_source_size(source, self.recipe, self.family), self.request.resolution)

    def edit(self, source: Source, effect: str) -> None:
        """Memo step 4, before any training, so a bad edit stops the run at once."""
        inputs = {"original": self.originals[source.id]}
        if effect == CUSTOM:
            if source.edited is None:
                raise InputError(f"effect custom needs an edited image for {source.image}")
            inputs["edited"] = self.planner.external(source.edited.resolve())
            params: dict[str, Any] = {"effect": CUSTOM, "effect_params": {}, "amount": 1.0}
            if self.request.edit_in_place:  # only when given, so earlier runs' stage keys stay as they were
                params["in_place"] = True
        else:
            params = {
                "effect": effect,
                "effect_params": effect_registry.resolve_params(effect, self.request.effect_params.get(effect, {})),
                "amount": effect_registry.check_amount(self.request.amount),
            }
        name = f"{source.prefix}{effect}/edit"
        self.add(
            name,
            "edit_image",
            f"{source.prefix}{effect}: edited image",
            inputs=inputs,
            params=params,
            outputs={"image": "edited.png", "compare": "compare.png", "check": "check.json"},
            workdir=self.source_dir(source) / effect,
        )
        self.edits[(source.id, effect)] = self.ref(name, "image")

    def caption(self, source: Source) -> None:
        """One caption file per training image: the same text for the original and the edit."""
        name = f"{source.prefix}captions"
        inputs, params = caption_plan(self.recipe.caption, self.originals[source.id], self.request.tagger_dir, self.planner)
        self.add(
            name,
            "captions",
            f"{source.prefix}captions" + (" (WD14 tagger)" if params["method"] == "wd14" else ""),
            inputs=inputs,
            params=params,
            outputs={"original": "original.txt", "edited": "edited.txt"},
            workdir=self.source_dir(source) / "captions",
        )
        self.captions[source.id] = name

    def train(
        self,
        name: str,
        title: str,
        training: TrainingRecipe,
        source: Source,
        base: FileRef,
        image: FileRef,
        caption: str,
        output: str,
        base_weights: list[tuple[FileRef, float]] | None = None,
        **where,
    ) -> FileRef:
        """One training; `base_weights` (LoRA, multiplier) are merged into `base` in memory first."""
        inputs = {"base": base, "image": image, "caption": self.ref(self.captions[source.id], caption)}
        params = self._training_params(training, self.sizes[source.id])
        if base_weights:  # only then, so the stage keys of trainings without them stay as they were
            inputs.update({base_weight_input_name(i): ref for i, (ref, _) in enumerate(base_weights)})
            params["base_weights_multipliers"] = [m for _, m in base_weights]
        self.add(name, "train_lora", title, inputs=inputs, params=params, outputs={"lora": output}, **where)
        return self.ref(name, "lora")

    def _training_params(self, training: TrainingRecipe, size: tuple[int, int]) -> dict[str, Any]:
        steps = training.steps
        max_train_steps = None
        warmup = training.warmup_steps
        if self.request.max_steps is not None and self.request.max_steps < steps:
            max_train_steps = self.request.max_steps
            # keep the recipe's shape: the same share of the run warms up
            warmup = int(training.warmup_steps * self.request.max_steps / steps)
        return {
            "family": self.family.as_params(),
            "training": self._training_dict(training),
            "size": list(size),
            "max_train_steps": max_train_steps,
            "warmup_steps": warmup,
            "mixed_precision": self.settings.mixed_precision,
            "training_options": dict(self.settings.training_options),
        }

    def _training_dict(self, training: TrainingRecipe) -> dict[str, Any]:
        d = dataclasses.asdict(training)
        if self.settings.profile.optimizer:  # the low-VRAM profile's 8-bit AdamW
            d["optimizer"] = self.settings.profile.optimizer
        return d

    def _merge_precision(self) -> dict[str, str]:
        return {"precision": self.recipe.merge.precision, "save_precision": self.recipe.merge.save_precision}

    # --- combining and finishing -------------------------------------------------------

    def svd_merge(self, name: str, title: str, terms: list[tuple[FileRef, float, str]], rank: int, workdir: Path, output: str, term_rank: int) -> FileRef:
        """svd_merge_lora.py: the weighted sum of the LoRAs (each of rank `term_rank`), cut to `rank`."""
        svd = self.recipe.svd
        if rank > term_rank * len(terms):
            raise InputError(
                f"--rank {rank} is above what {len(terms)} LoRA(s) of rank {term_rank} can hold together ({term_rank * len(terms)}); "
                f"svd_merge_lora.py would pad the file with zeros: give --rank {term_rank * len(terms)} or less"
            )
        self.add(
            name,
            "svd_merge",
            title,
            inputs={lora_input_name(i): ref for i, (ref, _, _) in enumerate(terms)},
            params={
                "ratios": [r for _, r, _ in terms],
                "labels": [label for _, _, label in terms],
                "rank": rank,
                "precision": svd.precision,
                "save_precision": svd.save_precision,
                "device": self.settings.device,
            },
            outputs={"lora": output},
            workdir=workdir,
        )
        return self.ref(name, "lora")

    def merge_route(self, effect: str, terms: list[tuple[FileRef, float, str]], workdir: Path) -> FileRef:
        """Memo steps 7-8: the LoRAs merged into the base model (the processed model), then the
        LoRA of base -> processed model extracted. In the memory route with --absorb the base is
        the plain base model: merging is linear, so (base + styles + effects) - (base + styles)
        and (base + effects) - base are the same difference, and no absorbed model is written."""
        inputs = {"base": self.training_base}
        inputs.update({lora_input_name(i): ref for i, (ref, _, _) in enumerate(terms)})
        self.add(
            f"{effect}/processed-model",
            "merge_model",
            f"{effect}: processed model (step 7)",
            inputs=inputs,
            params={"family": self.family.as_params(), "ratios": [r for _, r, _ in terms], **self._merge_precision()},
            outputs={"model": "processed-model.safetensors"},
            workdir=workdir,
        )
        c = self.recipe.combine
        self.add(
            f"{effect}/extract",
            "extract_lora",
            f"{effect}: LoRA of base -> processed model (step 8)",
            inputs={"original": self.training_base, "tuned": self.ref(f"{effect}/processed-model", "model")},
            params={"family": self.family.as_params(), "dim": c.extract_dim, "min_diff": c.min_diff, "precision": c.precision, "device": self.settings.device},
            outputs={"lora": f"extracted-r{c.extract_dim}.safetensors"},
            workdir=workdir,
        )
        return self.ref(f"{effect}/extract", "lora")

    def resize(self, effect: str, lora: FileRef, from_rank: int, rank: int, workdir: Path, precision: str) -> FileRef:
        """Memo step 9: resize_lora.py to `rank` (0 keeps the rank). It runs on the CPU: on CUDA
        it has written corrupt files (sd-scripts issue #904)."""
        if rank > from_rank:
            raise InputError(
                f"--rank {rank} is above the rank the LoRA has before the resize ({from_rank}): resize_lora.py "
                f"cannot add rank; give --rank {from_rank} or less, or --rank 0 to keep rank {from_rank}"
            )
        if not rank or rank == from_rank:
            self.plan.notes.append(
                f"{effect}: the final LoRA keeps rank {from_rank} and the trained precision "
                f"({precision}); resize_lora.py (and its {self.recipe.resize.save_precision}) runs only below rank {from_rank}"
            )
            return lora
        self.add(
            f"{effect}/resize",
            "resize_lora",
            f"{effect}: resize to rank {rank}",
            inputs={"lora": lora},
            params={"rank": rank, "save_precision": self.recipe.resize.save_precision, "device": "cpu"},
            outputs={"lora": f"lora-r{rank}.safetensors"},
            workdir=workdir,
        )
        return self.ref(f"{effect}/resize", "lora")

    def finalize(self, effect: str, lora: FileRef, method: str, trainings: dict[str, Any]) -> None:
        inputs = {"lora": lora}
        for i, source in enumerate(self.request.sources):
            inputs[f"original{i:03d}"] = self.originals[source.id]
            inputs[f"edited{i:03d}"] = self.edits[(source.id, effect)]
            if any(s.name == f"{source.prefix}copy-check" for s in self.plan.stages):
                inputs[f"copycheck{i:03d}"] = self.ref(f"{source.prefix}copy-check", "scores")
        first_edit = self.plan.stage(f"{self.request.sources[0].prefix}{effect}/edit")
        name = final_name(self.request, self.run_dir, effect)
        leakage = self.leakage(effect, lora)
        if leakage is not None:
            inputs["leakage"] = leakage
        self.add(
            f"{effect}/final",
            "finalize",
            f"{effect}: final LoRA",
            inputs=inputs,
            params={
                "method": method,
                "effect": effect,
                "effect_params": first_edit.params["effect_params"],
                "amount": first_edit.params["amount"],
                "sign": self.request.sign,
                "recipe": trainings,
                "absorbed": [[p.name, r] for p, r in self.request.absorb],
                "sd_scripts_commit": self.settings.engine.commit if self.settings.engine else None,
            },
            outputs={"lora": f"{name}.safetensors"},
            workdir=self.run_dir,
        )
        self.plan.finals[effect] = self.run_dir / f"{name}.safetensors"

    def copy_check(self, source: Source, model: FileRef, lora: FileRef | None = None, copy_lora: FileRef | None = None) -> None:
        """Does the copy machine copy? Images from it (the copy model; in the memory route the
        copy LoRA on the base model; for difference extraction LoRA A on the base model) against
        the original; a failed check stops the run before the next training. Not shared: its
        images belong in the run folder."""
        if not self.request.copy_check:
            return
        c = self.recipe.copy_check
        inputs = {"model": model, "original": self.originals[source.id], "caption": self.ref(self.captions[source.id], "original")}
        extra: dict[str, Any] = {}
        if lora is not None:
            inputs["lora"] = lora
        if copy_lora is not None:
            inputs["copy_lora"] = copy_lora
            extra["lora_multiplier"] = self.recipe.merge.ratio
        if self.base_weights:
            inputs.update({base_weight_input_name(i): ref for i, (ref, _) in enumerate(self.base_weights)})
            extra["base_weights_multipliers"] = [m for _, m in self.base_weights]
        prompts = split_prompts(c.prompts) or [CAPTION_PLACEHOLDER]
        params = {
            "family_flag": self.family.gen_flag,
            "prompts": [prompts[i % len(prompts)] for i in range(c.images)],
            "seeds": [c.seed + i for i in range(c.images)],
            "negative_prompt": c.negative_prompt,
            "size": list(self.sizes[source.id]),
            "steps": c.steps,
            "sampler": c.sampler,
            "scale": c.scale,
            "precision": self._gen_precision(),
            **extra,
        }
        self.add(
            f"{source.prefix}copy-check",
            "copy_check",
            f"{source.prefix}copy check",
            inputs=inputs,
            params=params,
            outputs=copy_check_outputs(c.images),
            workdir=self.source_dir(source) / "copy-check",
            gate={"min_ssim": c.min_ssim},
        )

    def leakage(self, effect: str, lora: FileRef) -> FileRef | None:
        """With a preview model: does the LoRA drag its training image into unrelated pictures?
        Measured on the LoRA before its metadata is added (the same weights), so the final LoRA
        can record the score (`copymachine.leakage`)."""
        model = self.request.preview_model
        if model is None:
            return None
        size = self.sizes[self.request.sources[0].id]
        params = leakage_params(self.recipe.leakage, self.family, size, self._gen_precision())
        inputs = {"lora": lora, "model": self.planner.external(model.resolve())}
        for i, source in enumerate(self.request.sources):
            inputs[f"original{i:03d}"] = self.originals[source.id]
        self.add(
            f"{effect}/leakage",
            "leakage",
            f"{effect}: leakage on {model.name}",
            inputs=inputs,
            params=params,
            outputs=leakage_outputs(params, "leakage/"),
            workdir=self.run_dir / effect,
        )
        return self.ref(f"{effect}/leakage", "scores")

    def previews(self) -> None:
        """A strength sweep of every final LoRA on --preview-model, the sheet beside the LoRA."""
        model = self.request.preview_model
        if model is None:
            return
        font = Path(self.recipe.preview.font) if self.recipe.preview.font else None
        if font is not None and not font.is_file():
            raise InputError(f"preview.font not found: {font}")
        for effect, final in self.plan.finals.items():
            params = preview_params(self.recipe.preview, self.family, self._gen_precision())
            inputs = {"lora": self.ref(f"{effect}/final", "lora"), "model": self.planner.external(model.resolve())}
            if font is not None:
                inputs["font"] = self.planner.external(font.resolve())
            if any(s.name == f"{effect}/leakage" for s in self.plan.stages):
                inputs["leakage"] = self.ref(f"{effect}/leakage", "scores")
            self.add(
                f"{effect}/preview",
                "preview",
                f"{effect}: strength sweep on {model.name}",
                inputs=inputs,
                params=params,
                outputs=preview_outputs(params, final.stem),
                workdir=self.run_dir,
            )
        self.plan.info["preview_model"] = str(model)

    def _gen_precision(self) -> str:
        return self.settings.profile.gen_precision

    def weight(self) -> float:
        n = len(self.request.sources)
        return 1.0 / n if self.recipe.combine.normalize else 1.0

    def info(self, method: str) -> None:
        r = self.request
        self.plan.info.update(
            {
                "method": method,
                "base": str(r.base),
                "family": self.family.name,
                "images": [str(s.image) if s.image else None for s in r.sources],
                "edited": [str(s.edited) if s.edited else None for s in r.sources],
                "effects": r.effects,
                "combine": r.combine,
                "sign": r.sign,
                "absorb": [[str(p), ratio] for p, ratio in r.absorb],
                "training_sizes": {s.id or "original": list(self.sizes[s.id]) for s in r.sources},
                "copy_model": self.recipe.merge.copy_model if method == COPY_MACHINE or r.absorb else None,
                "copy_check": {"min_ssim": self.recipe.copy_check.min_ssim} if r.copy_check else "off (--no-copy-check)",
                "recipe": self.recipe.to_dict(),
                "cache_dir": str(self.cache_dir),
            }
        )


def _prepare(b: _Builder) -> None:
    b.absorb()
    for source in b.request.sources:
        b.original(source)
        for effect in b.request.effects:
            b.edit(source, effect)
        b.caption(source)


def plan_copy_machine(request: Request, settings: Settings, hashes: HashCache) -> Plan:
    """Memo steps 1-5 per image, 6-9 when there are several, 9 (resize) always."""
    b = _Builder(request, settings, hashes)
    _prepare(b)
    effect_loras: dict[str, list[FileRef]] = {e: [] for e in request.effects}
    for source in request.sources:
        # steps 2-3, the copy machine: shared by every effect and run with the same inputs
        copy_lora = b.train(
            f"{source.prefix}copy-lora",
            f"{source.prefix}copy LoRA",
            b.recipe.copy,
            source,
            b.training_base,
            b.originals[source.id],
            "original",
            "copy-lora.safetensors",
            base_weights=b.base_weights,
            shared_as="copy-lora",
        )
        if b.in_memory:
            # the copy model is the base + the copy LoRA, merged in memory by each training and render
            copy_model, effect_weights = b.training_base, [*b.base_weights, (copy_lora, b.recipe.merge.ratio)]
            b.copy_check(source, copy_model, copy_lora=copy_lora)
        else:
            b.add(
                f"{source.prefix}copy-model",
                "merge_model",
                f"{source.prefix}copy model",
                inputs={"base": b.training_base, lora_input_name(0): copy_lora},
                params={"family": b.family.as_params(), "ratios": [b.recipe.merge.ratio], **b._merge_precision()},
                outputs={"model": "copy-model.safetensors"},
                shared_as="copy-model",
            )
            copy_model, effect_weights = b.ref(f"{source.prefix}copy-model", "model"), []
            b.copy_check(source, copy_model)
        for effect in request.effects:
            lora = b.train(
                f"{source.prefix}{effect}/effect-lora",
                f"{source.prefix}{effect}: effect LoRA",
                b.recipe.effect_training(effect),
                source,
                copy_model,
                b.edits[(source.id, effect)],
                "edited",
                "effect-lora.safetensors",
                base_weights=effect_weights,
                workdir=b.source_dir(source) / effect,
            )
            effect_loras[effect].append(lora)
    combine = request.combine or ("merge" if len(request.sources) > 1 else None)
    for effect in request.effects:
        training = b.recipe.effect_training(effect)
        workdir = b.run_dir / effect
        loras = effect_loras[effect]
        terms = [(ref, b.weight(), s.id or "effect") for ref, s in zip(loras, request.sources)]
        if combine == "svd":  # svd_merge_lora.py makes the final rank itself
            rank = b.recipe.resize.rank or training.network_dim
            lora = b.svd_merge(f"{effect}/svd-merge", f"{effect}: effect LoRAs combined (svd_merge_lora)", terms, rank, workdir, f"combined-r{rank}.safetensors", training.network_dim)
        elif combine == "merge":
            lora = b.merge_route(effect, terms, workdir)
            lora = b.resize(effect, lora, b.recipe.combine.extract_dim, b.recipe.resize.rank, workdir, b.recipe.combine.precision)
        else:
            lora = b.resize(effect, loras[0], training.network_dim, b.recipe.resize.rank, workdir, training.save_precision)
        b.finalize(effect, lora, COPY_MACHINE, {"copy": dataclasses.asdict(b.recipe.copy), "effect": dataclasses.asdict(training), "resize": dataclasses.asdict(b.recipe.resize), "combine": combine})
    b.previews()
    b.info(COPY_MACHINE)
    return b.plan


def plan_difference(request: Request, settings: Settings, hashes: HashCache) -> Plan:
    """Difference extraction: A = copy LoRA of the original, B = copy LoRA of the edit, both on
    the base model; the result is B - A (memo: A - B, `--sign memo`), by svd_merge_lora.py."""
    b = _Builder(request, settings, hashes)
    _prepare(b)
    sign = SIGNS[request.sign]
    terms_by_effect: dict[str, list[tuple[FileRef, float, str]]] = {e: [] for e in request.effects}
    for source in request.sources:
        # LoRA A depends only on base + image + caption + recipe: shared by every effect
        lora_a = b.train(
            f"{source.prefix}lora-a",
            f"{source.prefix}LoRA A (original)",
            b.recipe.diff,
            source,
            b.training_base,
            b.originals[source.id],
            "original",
            "lora-a.safetensors",
            base_weights=b.base_weights,
            shared_as="copy-lora",
        )
        b.copy_check(source, b.training_base, lora_a)  # A is the copy machine: checked on the base at 1.0
        for effect in request.effects:
            lora_b = b.train(
                f"{source.prefix}{effect}/lora-b",
                f"{source.prefix}{effect}: LoRA B (edited)",
                b.recipe.diff,
                source,
                b.training_base,
                b.edits[(source.id, effect)],
                "edited",
                "lora-b.safetensors",
                base_weights=b.base_weights,
                workdir=b.source_dir(source) / effect,
            )
            w = b.weight()
            label = f"{source.id}:" if source.id else ""
            terms_by_effect[effect] += [(lora_a, -sign * w, f"{label}A"), (lora_b, sign * w, f"{label}B")]
    combine = request.combine or "svd"
    rank = b.recipe.svd.rank
    for effect in request.effects:
        workdir = b.run_dir / effect
        terms = terms_by_effect[effect]
        if combine == "svd":
            lora = b.svd_merge(f"{effect}/svd-merge", f"{effect}: difference B - A" if sign > 0 else f"{effect}: difference A - B (memo sign)", terms, rank, workdir, f"diff-r{rank}.safetensors", b.recipe.diff.network_dim)
        else:
            lora = b.merge_route(effect, terms, workdir)
            lora = b.resize(effect, lora, b.recipe.combine.extract_dim, rank, workdir, b.recipe.combine.precision)
        b.finalize(effect, lora, DIFFERENCE, {"diff": dataclasses.asdict(b.recipe.diff), "svd": dataclasses.asdict(b.recipe.svd), "combine": combine})
    b.previews()
    b.info(DIFFERENCE)
    return b.plan


def plan(request: Request, settings: Settings, hashes: HashCache) -> Plan:
    if request.combine not in (None, "merge", "svd"):
        raise InputError(f"--combine must be merge or svd, not {request.combine!r}")
    if request.sign not in SIGNS:
        raise InputError(f"--sign must be edit or memo, not {request.sign!r}")
    if request.method == COPY_MACHINE:
        return plan_copy_machine(request, settings, hashes)
    if request.method == DIFFERENCE:
        return plan_difference(request, settings, hashes)
    raise ValueError(request.method)
