"""One run of `train` or `diff` from RunOptions: inputs checked, recipe, plan, pre-flight, pipeline. The one code
path under the CLI, the queue (jobfile.py), the web UI and the engines that run queued jobs elsewhere."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from copymachine import effects as effect_registry
from copymachine import preflight
from copymachine.engine_setup import make_settings
from copymachine.errors import InputError
from copymachine.families import parse_model_files, with_files
from copymachine.files import HashCache, require_file
from copymachine.methods import CUSTOM, Request, images_in, make_sources, match_edits, plan, run_folders
from copymachine.models import ModelInfo, choose_prediction, inspect_base_model
from copymachine.options import RunOptions, split_set_options
from copymachine.pipeline import Pipeline
from copymachine.plan import Plan, stage_name
from copymachine.preflight.gpu import cpu_estimate
from copymachine.progress import Reporter
from copymachine.recipe import MEMO, SD_ARGS, Recipe, apply_overrides, load_recipe_file, parse_sd_args
from copymachine.recipe import ratio as recipe_ratio
from copymachine.request import COPY_MACHINE, DIFFERENCE, StyleLora
from copymachine.stages import Settings
from copymachine.stages.edit_image import check_edits
from copymachine.stages.leakage import summary as leakage_summary

__all__ = ["COMMANDS", "RunOptions", "plan_only", "run_method"]

# a jobs file's `method` -> the method it runs
COMMANDS = {"train": COPY_MACHINE, "diff": DIFFERENCE}


def resolve_effects(effects: tuple[str, ...], has_edits: bool) -> list[str]:
    names = effect_registry.names()
    chosen: list[str] = []
    for effect in effects or ((CUSTOM,) if has_edits else ()):
        if effect == "all":
            chosen += [n for n in names if n not in chosen]
        elif effect == CUSTOM or effect in names:
            if effect not in chosen:
                chosen.append(effect)
        else:
            raise InputError(f"unknown effect {effect!r}; choose from {', '.join(names)}, all, "
                             "or custom (with --edited)")
    if not chosen:
        raise InputError(f"name an effect (--effect {', '.join(names)}, all) or give your own edit with --edited")
    if CUSTOM in chosen and not has_edits:
        raise InputError("--effect custom needs your edited image: --edited EDIT.png (or --edited-dir)")
    if has_edits and CUSTOM not in chosen:
        raise InputError("--edited / --edited-dir are your own edits: use them with --effect custom "
                         "(or leave --effect out)")
    return chosen


def parse_absorb(items: tuple[str, ...]) -> list[StyleLora]:
    """STYLE.safetensors[:RATIO]; a Windows drive letter is not a ratio."""
    out = []
    for item in items:
        head, sep, tail = item.rpartition(":")
        try:
            path, ratio = (head, recipe_ratio(float(tail), f"--absorb {item}")) if sep and head else (item, 1.0)
        except ValueError:  # no ratio after the last colon
            path, ratio = item, 1.0
        p = Path(path)
        if not p.is_file():
            raise InputError(f"--absorb: style LoRA not found: {p}")
        out.append(StyleLora(p, ratio))
    return out


# options that stand for a recipe key as they are
RECIPE_KEYS = {"prompt": "generate.prompt", "copy_model": "merge.copy_model", "clip_skip": "model.clip_skip",
               "general_threshold": "caption.general_threshold", "character_threshold": "caption.character_threshold"}


def shorthand_sets(method: str, o: RunOptions) -> dict[str, dict[str, Any]]:
    """The recipe keys options stand for: RECIPE_KEYS, --rank, --sd-arg, --caption, --caption-with, --tagger-dir."""
    sets: dict[str, dict[str, Any]] = {}
    for option, key in RECIPE_KEYS.items():
        if getattr(o, option) is not None:
            section, _, name = key.partition(".")
            sets.setdefault(section, {})[name] = getattr(o, option)
    caption_method = o.caption_with or ("wd14" if o.tagger_dir else None)
    if caption_method:
        sets.setdefault("caption", {})["method"] = caption_method
    if o.caption is not None:  # wd14: written before the tags
        sets.setdefault("caption", {})["prefix" if caption_method == "wd14" else "text"] = o.caption
    if o.sd_args:
        sets[SD_ARGS] = parse_sd_args(o.sd_args)
    if o.rank is not None:
        if method == DIFFERENCE and o.rank == 0:
            raise InputError("--rank 0 keeps a trained rank; difference extraction makes a new LoRA: "
                             "give its rank (memo: 8)")
        sets["svd" if method == DIFFERENCE else "resize"] = {"rank": o.rank}
    return sets


def check_inputs(o: RunOptions, reporter: Reporter):
    """The run's inputs (files, effects, base model, images) checked first: every run's and the web UI's first step."""
    if o.images and o.images_dir:
        raise InputError("give --image or --images, not both")
    if o.edited and o.edited_dir:
        raise InputError("give --edited or --edited-dir, not both")
    images = images_in(o.images_dir) if o.images_dir else list(o.images)
    for path in images:
        require_file(path, "image")
    edited = match_edits(images, o.edited_dir) if o.edited_dir else list(o.edited)
    for path in edited:
        require_file(path, "edited image")
    if edited and not images:
        raise InputError("--edited is an edit of your --image: give the original too")
    effects = resolve_effects(o.effects, bool(edited))
    model = preflight.check_base_model(o.base, reporter, allow_pickle=o.allow_pickle)
    preflight.check_images(images, edited, reporter)
    return images, edited, effects, model


def _recipe(method: str, o: RunOptions, effects: list[str]) -> tuple[Recipe, dict[str, dict]]:
    """The recipe (memo, --recipe, --set, the shorthand options) and the effects' parameters (--set outline.width=2)."""
    recipe = load_recipe_file(o.recipe_file, MEMO) if o.recipe_file else MEMO
    recipe_sets, effect_sets = split_set_options(o.sets, o.set_tables)
    for section, values in shorthand_sets(method, o).items():
        recipe_sets.setdefault(section, {}).update(values)
    if recipe_sets:
        recipe = apply_overrides(recipe, recipe_sets, "--set")
    for effect in effect_sets:
        if effect not in effects:
            raise InputError(f"--set {effect}.… sets a parameter of {effect}, which this run does not train")
    return recipe, effect_sets


def make_request(method: str, o: RunOptions, reporter: Reporter, gpu: int | None,
                 require: bool = True) -> tuple[Request, ModelInfo, Settings]:
    """Request, base model, Settings (pinned to `gpu`); `require`: sd-scripts must answer (not for a queue's plan)."""
    images, edited, effects, model = check_inputs(o, reporter)
    recipe, effect_sets = _recipe(method, o, effects)
    settings = make_settings(o.sd_scripts, o.python, o.device, o.tokenizer_cache_dir, o.offline, reporter,
                             require=require, low_vram=o.low_vram)
    if gpu is not None and settings.gpus:
        settings = dataclasses.replace(settings, pinned_gpu=gpu, gpus=1)
    family = with_files(model.family, parse_model_files(o.model_files), model.embedded)
    preflight.check_tokenizers(settings, family, reporter)
    preflight.check_family_scripts(settings, family)
    sources, absorb = make_sources(images, edited), parse_absorb(o.absorb)
    prediction, preview_prediction = choose_prediction(model, o.v_pred, o.zero_terminal_snr), None
    if o.preview_model is not None:  # checked: the preview model's family
        preview = inspect_base_model(o.preview_model, for_training=False)
        if preview.family.name != family.name:
            raise InputError(f"--preview-model is {preview.family.label}, but the LoRA is trained on "
                             f"{family.label}: preview it on a {family.label} model")
        # its own v_pred / ztsnr keys (the --v-pred flags stand for a file without them)
        preview_prediction = choose_prediction(preview, o.v_pred, o.zero_terminal_snr)
    # the options a Request takes as they are; the rest converted
    same = ("out", "name", "cache_dir", "amount", "resolution", "max_steps", "combine", "sign", "edit_in_place",
            "tensorboard", "copy_stop_at", "preview_model", "tagger_dir")
    request = Request(
        method=method, base=o.base, family=family, effects=effects, recipe=recipe,
        sources=sources, effect_params=effect_sets, absorb=absorb, prediction=prediction, samples=o.samples or 0,
        copy_check=not o.no_copy_check, preview_prediction=preview_prediction, **{key: getattr(o, key) for key in same},
    )
    return request, model, settings


def check_run(request: Request, o: RunOptions, model: ModelInfo, settings: Settings,
              reporter: Reporter) -> tuple[Plan, HashCache]:
    """Pre-flight of the planned run (a dry run's too): folders, disk, RAM, the edits; the CPU's time estimate."""
    folders = run_folders(request)
    preflight.check_writable({"cache folder": folders.cache})
    hashes = HashCache.for_host(folders.cache)
    the_plan = plan(request, settings, hashes, folders)
    preflight.check_path_lengths(the_plan)
    preflight.check_output(the_plan, the_plan.info.identity or {}, hashes, force=o.force)
    preflight.check_writable({"run folder": the_plan.run_dir})
    for note in the_plan.notes:
        reporter.note(note)
    preflight.check_resources(the_plan, model, reporter)
    reporter.info(
        f"copymachine {request.method}: {model.family.label} base {o.base.name}, {request.prediction.text()}"
        + (f", clip skip {request.recipe.model.clip_skip}" if request.recipe.model.clip_skip != 1 else "")
        + f"; {len(request.sources)} image(s); "
        f"effects: {', '.join(request.effects)}; run folder {the_plan.run_dir}; profile {settings.profile.name}"
        + (f" ({settings.mixed_precision})" if settings.mixed_precision != "no" else "")
    )
    if settings.device == "cpu":
        reporter.warn(cpu_estimate(the_plan, cuda=bool(settings.probe and settings.probe.cuda)))
    check_edits(the_plan, o.weak_edit_ok)
    return the_plan, hashes


def side_by_side(o: RunOptions, request: Request, the_plan: Plan, settings: Settings, reporter: Reporter) -> int:
    """How many trainings run at once: --jobs, else what the GPUs' free memory holds; one on the CPU."""
    trainings = len(request.effects) * len(request.sources)
    if settings.device == "cpu":
        if o.jobs and o.jobs > 1:
            reporter.warn("--jobs: CPU runs stay sequential (parallel trainings would only share the same cores)")
        return 1
    preflight.check_bitsandbytes(the_plan, settings)
    jobs = preflight.check_vram(the_plan, settings, o.jobs, trainings, reporter)
    if jobs > 1:
        where = f" on {settings.gpus} GPUs" if settings.gpus > 1 else " on one GPU"
        reporter.info(f"{jobs} trainings side by side{where}")
    return jobs


def run_jobs(the_plan: Plan, o: RunOptions, settings: Settings, hashes: HashCache, reporter: Reporter, jobs: int,
             on_pipeline=None) -> list[Path]:
    """Run the plan's stages (or, with --dry-run, print them); returns the final LoRAs' paths."""
    reporter.plan(the_plan)
    pipeline = Pipeline(the_plan, settings, reporter, hashes, weak_edit_ok=o.weak_edit_ok)
    if on_pipeline is not None:
        on_pipeline(pipeline)
    pipeline.run(dry_run=o.dry_run, wait=not o.no_wait, jobs=jobs)
    hashes.save()
    if o.dry_run:
        if not the_plan.manifest_path.exists():  # so that the same command, dry or not, takes the folder
            pipeline.manifest.data["dry_run"] = True
            pipeline.manifest.save()
        return []
    for effect, path in the_plan.finals.items():  # the leakage scores, when the run measured them
        scores = next((s.outputs["scores"] for s in the_plan.stages if s.name == stage_name("leakage", effect)), None)
        if scores is not None and scores.is_file():
            reporter.info(f"{path.name}: {leakage_summary(json.loads(scores.read_text(encoding='utf-8')))}")
    manifest = the_plan.run_dir / "manifest.json"
    reporter.info(f"done: {len(the_plan.finals)} LoRA(s) in {the_plan.run_dir}; manifest: {manifest}")
    return list(the_plan.finals.values())


def run_method(method: str, o: RunOptions, reporter: Reporter | None = None, on_pipeline=None,
               gpu: int | None = None) -> list[Path]:
    """One run of `train` or `diff` -> the final LoRAs; `on_pipeline` gets the Pipeline (the queue's Ctrl-C)."""
    reporter = reporter or Reporter(verbose=o.verbose)
    request, model, settings = make_request(method, o, reporter, gpu)
    the_plan, hashes = check_run(request, o, model, settings, reporter)
    jobs = side_by_side(o, request, the_plan, settings, reporter)
    return run_jobs(the_plan, o, settings, hashes, reporter, jobs, on_pipeline)


def plan_only(method: str, o: RunOptions, reporter: Reporter) -> tuple[Plan, HashCache]:
    """The plan alone (nothing written or run; sd-scripts need not answer): how a queue orders jobs for an engine.
    Its keys are this host's (engine, precision): compare them with each other, not with a job's where it runs."""
    o = o.model_copy(update={"dry_run": True})
    request, _model, settings = make_request(method, o, reporter, None, require=False)
    folders = run_folders(request)
    hashes = HashCache.for_host(folders.cache)
    return plan(request, settings, hashes, folders), hashes
