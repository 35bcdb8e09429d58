"""The memo's methods as plans (`plan()`: Request -> Plan): copy-machine (`train`, memo steps 1-9), difference
extraction (`diff`: LoRA A on the original, B on the edit, B - A), and the style-absorb tip (`--absorb`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copymachine import capabilities
from copymachine.copystop import CopyStop
from copymachine.errors import InputError
from copymachine.files import HashCache
from copymachine.models import BaseOptions, base_options
from copymachine.plan import FileRef, LoraTerm, Plan, Planner, StageParams, WeightedLora, stage_name
from copymachine.recipe import MEMO, TrainingRecipe

from copymachine.request import (  # isort: skip
    COPY_MACHINE, DIFFERENCE, SIGNS, Folders, Request, SizeChoice, Source, choose_training_size, default_cache,
    images_in, make_sources, match_edits, run_folder, run_folders, run_identity, source_size, training_size,
)
from copymachine.stages import (  # isort: skip
    Settings, captions, copy_check, edit_image, finalize, generate_image, kind_versions, leakage, preview, train_lora,
)
from copymachine.stages.edit_image import CUSTOM

# the request's names the CLI imports from here
__all__ = ["CUSTOM", "default_cache", "images_in", "make_sources", "match_edits", "plan", "run_folder", "training_size"]

# The memo's step of each stage (by its name's last part), per method: every stage title ends with it ("copy LoRA
# (memo step 2)"), as `train --help` and `diff --help` list them; copymachine's own stages have none.
MEMO_STEPS = {
    COPY_MACHINE: {"generate": 1, "original": 1, "captions": 2, "copy-lora": 2, "copy-model": 3, "copy-check": 3,
                   "edit": 4, "effect-lora": 5, "processed-model": 7, "extract": 8, "resize": 9},
    DIFFERENCE: {"generate": 1, "original": 1, "captions": 2, "lora-a": 2, "copy-check": 2, "edit": 3, "lora-b": 4,
                 "svd-merge": 5},
}


@dataclass
class SourcePlan:
    """One source image in the plan: its original, training size, captions stage, edit per effect, copy check."""

    source: Source
    original: FileRef
    size_choice: SizeChoice
    captions: str = ""  # the captions stage's name
    edits: dict[str, FileRef] = field(default_factory=dict)
    copy_check: FileRef | None = None  # the copy check's scores

    @property
    def id(self) -> str:
        return self.source.id

    @property
    def size(self) -> tuple[int, int]:
        return self.size_choice.size


class _Context:
    """One request being planned: its folders, the planner and what the steps have added."""

    def __init__(self, request: Request, settings: Settings, hashes: HashCache, folders: Folders):
        self.request, self.settings, self.recipe, self.family = request, settings, request.recipe, request.family
        self.run_dir, self.cache_dir = folders.run, folders.cache
        self.planner = Planner(self.run_dir, self.cache_dir, hashes, kind_versions(settings.engine))
        self.plan: Plan = self.planner.plan
        self.base = self.training_base = self.external(request.base)
        # memory route: LoRAs sd-scripts merges into training_base in memory (--base_weights), in order
        self.in_memory = request.recipe.merge.copy_model == "memory"
        if not self.in_memory and request.family.no_file_merge:
            raise InputError(f"--copy-model file: {request.family.no_file_merge}; leave merge.copy_model at memory")
        self.base_weights: list[WeightedLora] = []
        self.sources: list[SourcePlan] = []
        self.gen_precision = settings.profile.gen_precision
        self.weight = 1.0 / len(request.sources) if self.recipe.combine.normalize else 1.0  # each image's LoRA
        # clip skip, prediction type, SDXL's float32 VAE: every training and render
        clip_skip = self.recipe.model.clip_skip
        self.model: BaseOptions = base_options(self.family, clip_skip, request.prediction)
        preview_prediction = request.preview_prediction or request.prediction
        self.preview_model_options = base_options(self.family, clip_skip, preview_prediction)
        self.sd_args = dict(self.recipe.sd_args)
        if self.sd_args:
            train_lora.check_sd_args(self.sd_args)
            script = self.family.train_script
            if not capabilities.check_training_keys(settings.capabilities, script, list(self.sd_args)):
                self.plan.notes.append(f"--sd-arg {', '.join(self.sd_args)}: not checked against {script} --help "
                                       "here (nothing learnt from this sd-scripts); a run or a dry run checks it "
                                       "before any work")

    def add(self, name: str, kind: str, title: str, inputs: dict[str, FileRef], params: StageParams,
            outputs: dict[str, str], **where: Any) -> FileRef:
        """Add a stage, its title ending with its memo step; returns a reference to its first output."""
        step = MEMO_STEPS[self.request.method].get(name.rpartition("/")[2])
        title = f"{title} (memo step {step})" if step else title
        self.planner.add(name, kind, title, inputs=inputs, params=params, outputs=outputs, **where)
        return self.plan.ref(name, next(iter(outputs)))

    def external(self, path: Path) -> FileRef:
        return self.planner.external(Path(path).resolve())

    def source_dir(self, source: Source) -> Path:
        return self.run_dir / source.id if source.id else self.run_dir

    def merge(self, name: str, title: str, base: FileRef, loras: list[WeightedLora], output: str,
              **where: Any) -> FileRef:
        m = self.recipe.merge
        inputs, params = finalize.merge_plan(self.family, base, loras, m.precision, m.save_precision)
        return self.add(name, "merge_model", title, inputs, params, {"model": output}, **where)

    def describe(self, method: str) -> None:
        r, info = self.request, self.plan.info
        info.method, info.base, info.family, info.effects = method, str(r.base), self.family.name, r.effects
        info.images = [str(s.image) if s.image else None for s in r.sources]
        info.edited = [str(s.edited) if s.edited else None for s in r.sources]
        info.image_folders = {s.id: s.image.name for s in r.sources if s.id and s.image}
        info.combine, info.sign, info.absorb = r.combine, r.sign, [[str(a.path), a.ratio] for a in r.absorb]
        info.training_sizes = {s.id or "original": list(s.size) for s in self.sources}
        info.training_size = {s.id or "original": {"size": list(s.size), "picture": list(s.size_choice.picture),
                                                   "why": s.size_choice.why} for s in self.sources}
        info.copy_model = self.recipe.merge.copy_model if method == COPY_MACHINE or r.absorb else None
        info.clip_skip = self.model.clip_skip
        info.prediction = {"type": r.prediction.label, "why": r.prediction.why}
        if r.preview_prediction:
            info.preview_prediction = {"type": r.preview_prediction.label, "why": r.preview_prediction.why}
        info.sd_args = self.sd_args
        info.copy_check = {"min_ssim": self.recipe.copy_check.min_ssim} if r.copy_check else "off (--no-copy-check)"
        info.recipe, info.cache_dir = self.recipe.to_dict(), str(self.cache_dir)


# --- the shared first steps: absorb, original, edits, captions
def _absorb(c: _Context) -> None:
    """The tip: style LoRAs merged into the base model for every training (memory route: the first --base_weights)."""
    styles = [WeightedLora(c.external(a.path), a.ratio) for a in c.request.absorb]
    if styles and c.in_memory:
        c.base_weights = styles
    elif styles:
        name = stage_name("absorbed-model")
        c.training_base = c.merge(name, "style absorbed into the base model", c.base, styles,
                                  "absorbed-model.safetensors", shared_as=name)


def _original(c: _Context, source: Source) -> SourcePlan:
    """Memo step 1: the user's image, or one generated from the base model."""
    if source.image is None:
        params = generate_image.generate_params(c.recipe.generate, c.family, c.gen_precision, c.model)
        outputs = {"image": "generated.png", "prompt": "prompt.txt"}
        image = c.add(stage_name("generate", source=source.id), "generate_image", "generated original image",
                      {"base": c.base}, params, outputs, shared_as="generated")
    else:
        image = c.external(source.image)
    title = f"{source.id}: original image" if source.id else "original image"
    original = c.add(stage_name("original", source=source.id), "import_image", title, {"source": image},
                     generate_image.ImportParams(), {"image": "original.png"}, workdir=c.source_dir(source))
    name = source.image.name if source.image is not None else "the generated original"
    picture = source_size(source, c.recipe, c.family)
    choice = choose_training_size(picture, source.image is None, c.request.resolution, c.family, name)
    if choice.note:
        c.plan.notes.append(choice.note)
    return SourcePlan(source=source, original=original, size_choice=choice)


def _edit(c: _Context, sp: SourcePlan, effect: str) -> None:
    """Memo step 4, before any training, so a bad edit stops the run at once."""
    source, r = sp.source, c.request
    if effect == CUSTOM and source.edited is None:
        raise InputError(f"effect custom needs an edited image for {source.image}")
    edited = c.external(source.edited) if effect == CUSTOM and source.edited is not None else None
    inputs, params = edit_image.edit_plan(effect, sp.original, edited, r.effect_params.get(effect, {}), r.amount,
                                          r.edit_in_place)
    title = f"{source.prefix}{effect}: edited image"
    sp.edits[effect] = c.add(stage_name("edit", effect, source.id), "edit_image", title, inputs, params,
                             dict(edit_image.OUTPUTS), workdir=c.source_dir(source) / effect)


def _caption(c: _Context, sp: SourcePlan) -> None:
    """One caption file per training image: the same text for the original and the edit."""
    source = sp.source
    sp.captions = stage_name("captions", source=source.id)
    inputs, params = captions.caption_plan(c.recipe.caption, sp.original, c.request.tagger_dir, c.planner)
    title = f"{source.prefix}captions" + (" (WD14 tagger)" if params.method == "wd14" else "")
    c.add(sp.captions, "captions", title, inputs, params, dict(captions.OUTPUTS),
          workdir=c.source_dir(source) / "captions")


# --- trainings and the copy check
def _copy_stop(c: _Context, sp: SourcePlan) -> CopyStop | None:
    """--copy-stop-at: the copy LoRA in segments of the save interval, [copy_check] after each (at the merge ratio)."""
    if c.request.copy_stop_at is None:
        return None
    _, check, _ = copy_check.copy_check_plan(c.recipe.copy_check, c.family, sp.size, c.gen_precision, {},
                                             None, c.base_weights, c.model)
    segment = c.recipe.watch.save_every_n_steps or MEMO.watch.save_every_n_steps
    return CopyStop(min_ssim=float(c.request.copy_stop_at), segment=segment,
                    check=dataclasses.replace(check, lora_multiplier=c.recipe.merge.ratio))


def _train(c: _Context, sp: SourcePlan, step: str, title: str, training: TrainingRecipe, base: FileRef,
           base_weights: list[WeightedLora], effect: str | None = None, copy_stop: CopyStop | None = None,
           **where: Any) -> FileRef:
    """One training (`step`: stage and file name) on the original, or on `effect`'s edit; `base_weights` in memory."""
    image, caption = (sp.original, "original") if effect is None else (sp.edits[effect], "edited")
    if effect is not None:
        where["workdir"] = c.source_dir(sp.source) / effect
    inputs = {"base": base, "image": image, "caption": c.plan.ref(sp.captions, caption)}
    r = c.request
    inputs, params = train_lora.training_plan(
        training, c.family, sp.size, c.settings, r.max_steps, inputs, base_weights, c.model, c.sd_args,
        save_every_n_steps=c.recipe.watch.save_every_n_steps, samples=r.samples, watch=c.recipe.watch,
        logging_dir=c.run_dir / "tensorboard" if r.tensorboard else None, copy_stop=copy_stop,
    )
    return c.add(stage_name(step, effect, sp.id), "train_lora", f"{sp.source.prefix}{title}", inputs, params,
                 {"lora": f"{step}.safetensors"}, **where)


def _copy_check(c: _Context, sp: SourcePlan, model: FileRef, lora: FileRef | None = None,
                copy_lora: FileRef | None = None) -> None:
    """Does the copy machine (copy model, copy LoRA in memory, or LoRA A) copy? A failure stops the run before the next
    training. Not shared: its images belong in the run folder."""
    if not c.request.copy_check:
        return
    cc = c.recipe.copy_check
    inputs = {"model": model, "original": sp.original, "caption": c.plan.ref(sp.captions, "original")}
    if lora is not None:
        inputs["lora"] = lora
    weighted = WeightedLora(copy_lora, c.recipe.merge.ratio) if copy_lora is not None else None
    inputs, params, outputs = copy_check.copy_check_plan(cc, c.family, sp.size, c.gen_precision, inputs,
                                                         weighted, c.base_weights, c.model)
    name = stage_name("copy-check", source=sp.id)
    c.add(name, "copy_check", f"{sp.source.prefix}copy check", inputs, params, outputs,
          workdir=c.source_dir(sp.source) / "copy-check", gate={"min_ssim": cc.min_ssim})
    sp.copy_check = c.plan.ref(name, "scores")


# --- combining and finishing
def _svd_merge(c: _Context, effect: str, title: str, terms: list[LoraTerm], rank: int, output: str,
               term_rank: int) -> FileRef:
    """svd_merge_lora.py: the weighted sum of the LoRAs (each of rank `term_rank`), cut to `rank`."""
    most = term_rank * len(terms)
    if rank > most:
        raise InputError(f"--rank {rank} is above what {len(terms)} LoRA(s) of rank {term_rank} can hold together "
                         f"({most}); svd_merge_lora.py would pad the file with zeros: give --rank {most} or less")
    svd = c.recipe.svd
    inputs, params = finalize.svd_merge_plan(terms, rank, svd.precision, svd.save_precision, c.settings.device)
    return c.add(stage_name("svd-merge", effect), "svd_merge", title, inputs, params, {"lora": output},
                 workdir=c.run_dir / effect)


def _merge_route(c: _Context, effect: str, terms: list[LoraTerm], rank: int) -> FileRef:
    """Memo steps 7-9: LoRAs merged into the base (the processed model), base -> processed extracted, resized to
    `rank`. With --absorb in memory the base is the plain one: merging is linear, so the difference is the same."""
    workdir = c.run_dir / effect
    processed = c.merge(stage_name("processed-model", effect), f"{effect}: processed model", c.training_base,
                        list(terms), "processed-model.safetensors", workdir=workdir)
    cb = c.recipe.combine
    params = finalize.ExtractParams(family=c.family, dim=cb.extract_dim, min_diff=cb.min_diff,
                                        precision=cb.precision, device=c.settings.device)
    extracted = c.add(stage_name("extract", effect), "extract_lora", f"{effect}: LoRA of base -> processed model",
                      {"original": c.training_base, "tuned": processed}, params,
                      {"lora": f"extracted-r{cb.extract_dim}.safetensors"}, workdir=workdir)
    return _resize(c, effect, extracted, cb.extract_dim, rank, cb.precision)


def _resize(c: _Context, effect: str, lora: FileRef, from_rank: int, rank: int, precision: str) -> FileRef:
    """Memo step 9: resize_lora.py to `rank` (0 keeps it), on the CPU: on CUDA it wrote bad files (sd-scripts#904)."""
    if rank > from_rank:
        raise InputError(f"--rank {rank} is above the rank the LoRA has before the resize ({from_rank}): resize_lora.py"
                         f" cannot add rank; give --rank {from_rank} or less, or --rank 0 to keep rank {from_rank}")
    save_precision = c.recipe.resize.save_precision
    if not rank or rank == from_rank:
        c.plan.notes.append(f"{effect}: the final LoRA keeps rank {from_rank} and the trained precision ({precision}); "
                            f"resize_lora.py (and its {save_precision}) runs only below rank {from_rank}")
        return lora
    params = finalize.ResizeParams(rank=rank, save_precision=save_precision)
    return c.add(stage_name("resize", effect), "resize_lora", f"{effect}: resize to rank {rank}", {"lora": lora},
                 params, {"lora": f"lora-r{rank}.safetensors"}, workdir=c.run_dir / effect)


def _finalize(c: _Context, effect: str, lora: FileRef, method: str, trainings: dict[str, Any]) -> None:
    inputs = {"lora": lora}
    for i, sp in enumerate(c.sources):
        inputs[f"original{i:03d}"], inputs[f"edited{i:03d}"] = sp.original, sp.edits[effect]
        if sp.copy_check is not None:
            inputs[f"copycheck{i:03d}"] = sp.copy_check
    edit = c.plan.stage(stage_name("edit", effect, c.sources[0].id)).spec
    scores = _leakage(c, effect, lora)
    if scores is not None:
        inputs["leakage"] = scores
    r = c.request
    params = finalize.FinalizeParams(
        method=method, effect=effect, effect_params=edit.effect_params, amount=edit.amount, sign=r.sign,
        recipe=trainings, absorbed=[[a.path.name, a.ratio] for a in r.absorb],
        sd_scripts_commit=c.settings.engine.commit if c.settings.engine else None, model=c.model.for_training(),
    )
    name = r.name if r.name and len(r.effects) == 1 else f"{r.name or c.run_dir.name}-{effect}"
    final = c.add(stage_name("final", effect), "finalize", f"{effect}: final LoRA", inputs, params,
                  {"lora": f"{name}.safetensors"}, workdir=c.run_dir)
    c.plan.finals[effect] = final.path


def _leakage(c: _Context, effect: str, lora: FileRef) -> FileRef | None:
    """Preview model: does the LoRA leak its training image? Measured before finalize, which records the score."""
    model = c.request.preview_model
    if model is None:
        return None
    params = leakage.leakage_params(c.recipe.leakage, c.family, c.sources[0].size, c.gen_precision,
                                    c.preview_model_options)
    inputs = {"lora": lora, "model": c.external(model)}
    for i, sp in enumerate(c.sources):
        inputs[f"original{i:03d}"] = sp.original
    return c.add(stage_name("leakage", effect), "leakage", f"{effect}: leakage on {model.name}", inputs, params,
                 leakage.planned_outputs(params, "leakage/"), workdir=c.run_dir / effect)


def _previews(c: _Context) -> None:
    """A strength sweep of every final LoRA on --preview-model, the sheet beside the LoRA."""
    model = c.request.preview_model
    if model is None:
        return
    font = Path(c.recipe.preview.font) if c.recipe.preview.font else None
    if font is not None and not font.is_file():
        raise InputError(f"preview.font not found: {font}")
    for effect, final in c.plan.finals.items():
        params = preview.preview_params(c.recipe.preview, c.family, c.gen_precision, c.preview_model_options)
        inputs = {"lora": c.plan.ref(stage_name("final", effect), "lora"), "model": c.external(model)}
        if font is not None:
            inputs["font"] = c.external(font)
        inputs["leakage"] = c.plan.ref(stage_name("leakage", effect), "scores")  # planned with every final LoRA
        c.add(stage_name("preview", effect), "preview", f"{effect}: strength sweep on {model.name}", inputs, params,
              preview.planned_outputs(params, final.stem), workdir=c.run_dir)
    c.plan.info.preview_model = str(model)


# --- the methods
def _copy_machines(c: _Context) -> dict[str, list[FileRef]]:
    """Memo steps 2-5 per image: copy LoRA, copy model (file or memory), its check, each effect's LoRA (returned)."""
    effect_loras: dict[str, list[FileRef]] = {e: [] for e in c.request.effects}
    ratio = c.recipe.merge.ratio
    for sp in c.sources:
        source = sp.source
        # steps 2-3, the copy machine: shared by every effect and run with the same inputs
        copy_lora = _train(c, sp, "copy-lora", "copy LoRA", c.recipe.copy, c.training_base, c.base_weights,
                           copy_stop=_copy_stop(c, sp), shared_as="copy-lora")
        if c.in_memory:
            # the copy model is the base + the copy LoRA, merged in memory by each training and render
            copy_model, effect_weights = c.training_base, [*c.base_weights, WeightedLora(copy_lora, ratio)]
            _copy_check(c, sp, copy_model, copy_lora=copy_lora)
        else:
            copy_model = c.merge(stage_name("copy-model", source=source.id), f"{source.prefix}copy model",
                                 c.training_base, [WeightedLora(copy_lora, ratio)], "copy-model.safetensors",
                                 shared_as="copy-model")
            effect_weights = []
            _copy_check(c, sp, copy_model)
        for effect in c.request.effects:
            effect_loras[effect].append(_train(c, sp, "effect-lora", f"{effect}: effect LoRA",
                                               c.recipe.effect_training(effect), copy_model, effect_weights, effect))
    return effect_loras


def _refuse_file_merge(c: _Context, combine: str | None) -> None:
    if combine == "merge" and c.family.no_file_merge:
        raise InputError(f"--combine merge writes a processed model: {c.family.no_file_merge}; use --combine svd")


def plan_copy_machine(c: _Context) -> None:
    """Memo steps 1-5 per image, 6-9 when there are several, 9 (resize) always."""
    r = c.recipe
    # several images: the memo's merge route (steps 7-9), or svd on a family whose models are not written to a file
    several = "svd" if c.family.no_file_merge else "merge"
    combine = c.request.combine or (several if len(c.sources) > 1 else None)
    _refuse_file_merge(c, combine)
    effect_loras = _copy_machines(c)
    for effect in c.request.effects:
        training = r.effect_training(effect)
        loras = effect_loras[effect]
        terms = [LoraTerm(ref, c.weight, sp.id or "effect") for ref, sp in zip(loras, c.sources)]
        if combine == "svd":  # svd_merge_lora.py makes the final rank itself
            rank = r.resize.rank or training.network_dim
            lora = _svd_merge(c, effect, f"{effect}: effect LoRAs combined (svd_merge_lora)", terms, rank,
                              f"combined-r{rank}.safetensors", training.network_dim)
        elif combine == "merge":
            lora = _merge_route(c, effect, terms, r.resize.rank)
        else:
            lora = _resize(c, effect, loras[0], training.network_dim, r.resize.rank, training.save_precision)
        trainings = {"name": r.name, "copy": dataclasses.asdict(r.copy), "effect": dataclasses.asdict(training),
                     "resize": dataclasses.asdict(r.resize), "combine": combine}
        _finalize(c, effect, lora, COPY_MACHINE, trainings)


def plan_difference(c: _Context) -> None:
    """Difference extraction: LoRAs A (original) and B (edit) on the base; B - A (memo: A - B, `--sign memo`)."""
    sign, r, effects = SIGNS[c.request.sign], c.recipe, c.request.effects
    terms_by_effect: dict[str, list[LoraTerm]] = {e: [] for e in effects}
    for sp in c.sources:
        label = f"{sp.id}:" if sp.id else ""
        # LoRA A depends only on base + image + caption + recipe: shared by every effect
        lora_a = _train(c, sp, "lora-a", "LoRA A of the original", r.diff, c.training_base, c.base_weights,
                        shared_as="copy-lora")
        _copy_check(c, sp, c.training_base, lora_a)  # A is the copy machine: checked on the base at 1.0
        for effect in effects:
            lora_b = _train(c, sp, "lora-b", f"{effect}: LoRA B of the edited image", r.diff, c.training_base,
                            c.base_weights, effect)
            w = sign * c.weight
            terms_by_effect[effect] += [LoraTerm(lora_a, -w, f"{label}A"), LoraTerm(lora_b, w, f"{label}B")]
    combine, rank = c.request.combine or "svd", r.svd.rank
    _refuse_file_merge(c, combine)
    for effect in effects:
        if combine == "svd":
            title = f"{effect}: difference B - A" if sign > 0 else f"{effect}: difference A - B, the memo's sign"
            lora = _svd_merge(c, effect, title, terms_by_effect[effect], rank, f"diff-r{rank}.safetensors",
                              r.diff.network_dim)
        else:
            lora = _merge_route(c, effect, terms_by_effect[effect], rank)
        trainings = {"name": r.name, "diff": dataclasses.asdict(r.diff), "svd": dataclasses.asdict(r.svd),
                     "combine": combine}
        _finalize(c, effect, lora, DIFFERENCE, trainings)


def plan(request: Request, settings: Settings, hashes: HashCache, folders: Folders | None = None) -> Plan:
    """The request's Plan (in `folders`, default `run_folders(request)`), its info holding the run's identity."""
    if request.combine not in (None, "merge", "svd"):
        raise InputError(f"--combine must be merge or svd, not {request.combine!r}")
    if request.sign not in SIGNS:
        raise InputError(f"--sign must be edit or memo, not {request.sign!r}")
    methods = {COPY_MACHINE: plan_copy_machine, DIFFERENCE: plan_difference}
    if request.method not in methods:
        raise ValueError(request.method)
    c = _Context(request, settings, hashes, folders or run_folders(request))
    _absorb(c)
    for source in request.sources:
        sp = _original(c, source)
        c.sources.append(sp)
        for effect in request.effects:
            _edit(c, sp, effect)
        _caption(c, sp)
    methods[request.method](c)
    _previews(c)
    c.describe(request.method)
    c.plan.info.identity = run_identity(request, hashes)
    return c.plan
