"""`copymachine train` (the copy-machine method) and `copymachine diff` (difference extraction)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from copymachine import effects as effect_registry
from copymachine import preflight, profiles
from copymachine.cli import cli
from copymachine.cli.common import engine_options, make_settings
from copymachine.cli.see import see_options, see_recipe_sets, see_request
from copymachine.errors import InputError
from copymachine.files import HashCache
from copymachine.methods import (
    COPY_MACHINE,
    CUSTOM,
    DIFFERENCE,
    Request,
    images_in,
    make_sources,
    match_edits,
    plan,
    run_folders,
)
from copymachine.models import ModelInfo
from copymachine.pipeline import Pipeline
from copymachine.plan import Plan, stage_name
from copymachine.progress import Reporter
from copymachine.recipe import MEMO, Recipe, apply_overrides, load_recipe_file, parse_set_options
from copymachine.recipe import ratio as recipe_ratio
from copymachine.stages import Settings
from copymachine.stages.leakage import summary as leakage_summary


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
            raise InputError(f"unknown effect {effect!r}; choose from {', '.join(names)}, all, or custom (with --edited)")
    if not chosen:
        raise InputError(f"name an effect (--effect {', '.join(names)}, all) or give your own edit with --edited")
    if CUSTOM in chosen and not has_edits:
        raise InputError("--effect custom needs your edited image: --edited EDIT.png (or --edited-dir)")
    if has_edits and CUSTOM not in chosen:
        raise InputError("--edited / --edited-dir are your own edits: use them with --effect custom (or leave --effect out)")
    return chosen


def split_set_options(items: tuple[str, ...], tables: dict[str, dict] | None = None) -> tuple[dict, dict]:
    """--set takes recipe keys (copy.network_dim=32) and effect parameters (outline.width=2);
    `tables` holds more of them already parsed ({section: {key: value}}, a jobs file's `set`)."""
    recipe_sets: dict[str, dict] = {}
    effect_sets: dict[str, dict] = {}
    parsed = parse_set_options(items)
    for section, values in (tables or {}).items():
        parsed.setdefault(section, {}).update(values)
    for section, values in parsed.items():
        if section in effect_registry.names():
            effect_sets[section] = values
        else:
            recipe_sets[section] = values
    return recipe_sets, effect_sets


def parse_absorb(items: tuple[str, ...]) -> list[tuple[Path, float]]:
    """STYLE.safetensors[:RATIO]; a Windows drive letter is not a ratio."""
    out = []
    for item in items:
        path, ratio = item, 1.0
        head, sep, tail = item.rpartition(":")
        if sep and head:
            try:
                ratio = float(tail)
                path = head
            except ValueError:
                pass
            else:
                ratio = recipe_ratio(ratio, f"--absorb {item}")
        p = Path(path)
        if not p.is_file():
            raise InputError(f"--absorb: style LoRA not found: {p}")
        out.append((p, ratio))
    return out


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} is not a file: {path}")


def method_options(f):
    """The options `train` and `diff` share (their effect on a run is the same)."""
    options = [
        click.option("--effect", "effects", multiple=True, metavar="EFFECT", help="outline, flat, contrast, posterize, jpeg, all, or custom (with --edited). Repeatable."),
        click.option("--base", required=True, type=click.Path(path_type=Path), help="Base model: a single-file SD checkpoint (.safetensors)."),
        click.option("--image", "images", multiple=True, type=click.Path(path_type=Path), help="An original image; repeat for several (memo step 6). Default: generate one with the base model."),
        click.option("--images", "images_dir", type=click.Path(path_type=Path), help="A folder of original images (instead of --image)."),
        click.option("--edited", "edited", multiple=True, type=click.Path(path_type=Path), help="Your own edit of --image (effect custom), one per --image, checked for size and alignment first."),
        click.option("--edited-dir", type=click.Path(path_type=Path), help="A folder of your edits of --images, matched by file name."),
        click.option("--edit-in-place", is_flag=True, help="Your edits keep every pixel in place (you only drew on the picture): an alignment fit pulled by thick new lines is then a note, not a refusal."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder. Default: runs/<image name>."),
        click.option("--name", help="File name of the final LoRA. Default: <run folder name>-<effect>."),
        click.option("--caption", help="Caption of both training images (the same text for both). Default: the recipe's."),
        click.option("--prompt", help="Prompt for a generated original image (when no image is given)."),
        click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False, path_type=Path), help="Recipe TOML overriding the memo's numbers (see `copymachine recipe`)."),
        click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one number (copy.network_dim=32, effect.epochs=4, resize.rank=4) or an effect parameter (outline.width=2). Repeatable."),
        click.option("--amount", type=float, default=1.0, show_default=True, help=f"Strength of a built-in edit: original + AMOUNT x (edit - original), {effect_registry.AMOUNT_RANGE} (1 = the edit, negative = its opposite; beyond that the edit only saturates)."),
        click.option("--resolution", type=click.IntRange(64, 4096), help="Train at this size (longer side) instead of the image's own; for quick test runs."),
        click.option("--max-steps", type=click.IntRange(1), help="Cap every training at this many steps (warmup scaled alike); for quick test runs."),
        click.option("--rank", type=click.IntRange(0), help="Rank of the final LoRA (memo: 8). 0 keeps the trained rank (train only)."),
        click.option("--combine", type=click.Choice(["merge", "svd"]), help="How several images' LoRAs are combined: merge = the memo's steps 7-9 (merge into the model, extract, resize); svd = svd_merge_lora.py, exact and cheaper."),
        click.option(
            "--copy-model",
            type=click.Choice(["memory", "file"]),
            help="memory (default): the effect LoRA trains on the base model with the copy LoRA merged in memory (sd-scripts' --base_weights), the same weights without a 4-13 GB file; file: merge_lora.py writes the copy model, as the memo does. Also where --absorb's styles go. Recipe key merge.copy_model.",
        ),
        click.option("--absorb", multiple=True, metavar="STYLE.safetensors[:RATIO]", help="Merge a style LoRA into the base model first; every training uses the result (the memo's tip). Repeatable."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Where shared stages (copy LoRAs, copy models, LoRA A) are kept. Default: $COPYMACHINE_CACHE, else <run folder>/../_cache."),
        click.option("--jobs", type=click.IntRange(1), help="Trainings run side by side (several effects or images): one per GPU on a multi-GPU machine, else as many as the GPU's free memory holds (default); CPU runs stay sequential."),
        click.option("--samples", type=click.IntRange(1), metavar="N", help="Every N steps of each training, render the recipe's [watch] sample prompt(s) with the LoRA so far (the effect LoRA: on the copy model at +1) into <run folder>/samples/<stage>/; the web UI's queue page shows the latest. Each costs one render (README)."),
        click.option("--tensorboard", is_flag=True, help="sd-scripts writes TensorBoard logs into <run folder>/tensorboard/; the run prints the `tensorboard --logdir` line."),
        click.option("--low-vram", is_flag=True, help="For 8 GB cards: gradient checkpointing, 8-bit AdamW, latents cached on disk. Opt-in: the memo trains with plain AdamW."),
        click.option("--dry-run", is_flag=True, help="Write the configs and print every command; run nothing."),
        click.option("--no-wait", is_flag=True, help="Exit at once (code 6) instead of waiting when another run holds the run folder or a cache entry."),
        click.option("--force", is_flag=True, help="Write into a run folder that holds another run (or files copymachine did not make), replacing what it writes there."),
        click.option("--allow-pickle", is_flag=True, help="Accept a pickle checkpoint (.ckpt) as --base: copymachine does not open it (assumes SD1.x); sd-scripts loads it with torch. Only for files you trust."),
    ]
    # --help lists the method's options first, then the checks and previews, then the engine's
    f = engine_options(f)
    f = see_options(f)
    for option in reversed(options):
        f = option(f)
    return f


def leakage_scores(the_plan, effect: str) -> dict | None:
    """The leakage stage's scores of `effect`'s final LoRA, when the run measured them."""
    try:
        path = the_plan.stage(stage_name("leakage", effect)).outputs["scores"]
    except KeyError:
        return None
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_inputs(o: dict, reporter: Reporter):
    """The run's inputs, checked before anything else (files exist, effects, the base model, the
    images): the first step of every run, and what the web UI checks when a job is added."""
    if o["images"] and o["images_dir"]:
        raise InputError("give --image or --images, not both")
    if o["edited"] and o["edited_dir"]:
        raise InputError("give --edited or --edited-dir, not both")
    images = images_in(o["images_dir"]) if o["images_dir"] else list(o["images"])
    for path in images:
        _check_file(path, "image")
    edited = match_edits(images, o["edited_dir"]) if o["edited_dir"] else list(o["edited"])
    for path in edited:
        _check_file(path, "edited image")
    if edited and not images:
        raise InputError("--edited is an edit of your --image: give the original too")
    effects = resolve_effects(o["effects"], bool(edited))
    model = preflight.check_base_model(o["base"], reporter, allow_pickle=o["allow_pickle"])
    preflight.check_images(images, edited, o["resolution"], reporter)
    return images, edited, effects, model


def _recipe(method: str, o: dict, effects: list[str]) -> tuple[Recipe, dict[str, dict]]:
    """The recipe (memo, --recipe, --set and the options that are recipe keys) and the effects'
    parameters (--set outline.width=2)."""
    recipe = load_recipe_file(o["recipe_file"], MEMO) if o["recipe_file"] else MEMO
    recipe_sets, effect_sets = split_set_options(o["sets"], o.get("set_tables"))
    shorthand: dict[str, dict] = see_recipe_sets(o)
    if o["caption"] is not None and "prefix" not in shorthand.get("caption", {}):
        shorthand.setdefault("caption", {})["text"] = o["caption"]
    if o["prompt"] is not None:
        shorthand["generate"] = {"prompt": o["prompt"]}
    if o["copy_model"] is not None:
        shorthand["merge"] = {"copy_model": o["copy_model"]}
    if o["rank"] is not None:
        if method == DIFFERENCE and o["rank"] == 0:
            raise InputError("--rank 0 keeps a trained rank; difference extraction makes a new LoRA: give its rank (memo: 8)")
        shorthand["svd" if method == DIFFERENCE else "resize"] = {"rank": o["rank"]}
    for section, values in shorthand.items():
        recipe_sets.setdefault(section, {}).update(values)
    if recipe_sets:
        recipe = apply_overrides(recipe, recipe_sets, "--set")
    for effect in effect_sets:
        if effect not in effects:
            raise InputError(f"--set {effect}.… sets a parameter of {effect}, which this run does not train")
    return recipe, effect_sets


def make_request(method: str, o: dict, sign: str, reporter: Reporter, gpu: int | None) -> tuple[Request, ModelInfo, Settings]:
    """The run asked for, from its options: inputs checked, the recipe, sd-scripts located (and
    pinned to `gpu`), the tokenizers the base model's family needs."""
    images, edited, effects, model = check_inputs(o, reporter)
    recipe, effect_sets = _recipe(method, o, effects)
    settings = make_settings(o["sd_scripts"], o["python"], o["device"], o["tokenizer_cache_dir"], o["offline"], reporter, require=not o["dry_run"], low_vram=o["low_vram"])
    if gpu is not None and settings.gpus:
        settings = dataclasses.replace(settings, pinned_gpu=gpu, gpus=1)
    preflight.check_tokenizers(settings, model.family, reporter)
    request = Request(
        method=method,
        base=o["base"],
        family=model.family,
        effects=effects,
        recipe=recipe,
        sources=make_sources(images, edited),
        out=o["out"],
        name=o["name"],
        cache_dir=o["cache_dir"],
        effect_params=effect_sets,
        amount=o["amount"],
        resolution=o["resolution"],
        max_steps=o["max_steps"],
        absorb=parse_absorb(o["absorb"]),
        combine=o["combine"],
        sign=sign,
        edit_in_place=o["edit_in_place"],
        samples=o["samples"] or 0,
        tensorboard=o["tensorboard"],
        copy_stop_at=o.get("copy_stop_at"),
        **see_request(o, model.family),
    )
    return request, model, settings


def check_run(request: Request, o: dict, model: ModelInfo, settings: Settings, reporter: Reporter) -> tuple[Plan, HashCache]:
    """Pre-flight of the planned run: the output folders (a dry run writes configs into the run
    and cache folders: the same output checks as a run), then, for a run, disk space and RAM."""
    folders = run_folders(request)
    preflight.check_writable({"cache folder": folders.cache})
    hashes = HashCache(folders.cache / "hashes.json")
    the_plan = plan(request, settings, hashes, folders)
    preflight.check_output(the_plan, the_plan.info["identity"], hashes, force=o["force"])
    preflight.check_writable({"run folder": the_plan.run_dir})
    for note in the_plan.notes:
        reporter.note(note)
    if not o["dry_run"]:
        preflight.check_resources(the_plan, model, reporter)
    reporter.info(
        f"copymachine {request.method}: {model.family.label} base {o['base'].name}; {len(request.sources)} image(s); "
        f"effects: {', '.join(request.effects)}; run folder {the_plan.run_dir}; profile {settings.profile.name}"
        + (f" ({settings.mixed_precision})" if settings.mixed_precision != "no" else "")
    )
    return the_plan, hashes


def side_by_side(o: dict, request: Request, model: ModelInfo, settings: Settings, reporter: Reporter) -> int:
    """How many trainings run at once: --jobs, else what the GPUs' free memory holds; one on the CPU."""
    trainings = len(request.effects) * len(request.sources)
    if settings.device == "cpu":
        if o["jobs"] and o["jobs"] > 1:
            reporter.warn("--jobs: CPU runs stay sequential (parallel trainings would only share the same cores)")
        return 1
    vram = settings.probe.vram_free if settings.probe else None
    jobs = o["jobs"] or profiles.default_jobs(model.family.name, o["low_vram"], settings.gpus, vram, trainings)
    if jobs > 1:
        reporter.info(f"{jobs} trainings side by side" + (f" on {settings.gpus} GPUs" if settings.gpus > 1 else " on one GPU"))
    return jobs


def run_jobs(the_plan: Plan, o: dict, settings: Settings, hashes: HashCache, reporter: Reporter, jobs: int, on_pipeline=None) -> list[Path]:
    """Run the plan's stages (or, with --dry-run, print them); returns the final LoRAs' paths."""
    reporter.event("plan", run_dir=str(the_plan.run_dir), stages=[s.title for s in the_plan.stages], finals={k: str(v) for k, v in the_plan.finals.items()})
    pipeline = Pipeline(the_plan, settings, reporter, hashes)
    if on_pipeline is not None:
        on_pipeline(pipeline)
    pipeline.run(dry_run=o["dry_run"], wait=not o["no_wait"], jobs=jobs)
    hashes.save()
    if o["dry_run"]:
        return []
    for effect, path in the_plan.finals.items():
        scores = leakage_scores(the_plan, effect)
        if scores is not None:
            reporter.info(f"{path.name}: {leakage_summary(scores)}")
    reporter.info(f"done: {len(the_plan.finals)} LoRA(s) in {the_plan.run_dir}; manifest: {the_plan.run_dir / 'manifest.json'}")
    return list(the_plan.finals.values())


def run_method(method: str, o: dict, sign: str = "edit", reporter: Reporter | None = None, on_pipeline=None, gpu: int | None = None) -> list[Path]:
    """One run of `train` or `diff` from its options (`o`: the click options by name, plus
    `set_tables`, parsed --set tables): request, pre-flight, jobs. The one code path of every
    face: the CLI commands, the queue (copymachine/jobfile.py) and through it the web UI.
    Returns the final LoRAs' paths.

    `on_pipeline(pipeline)` is called with the Pipeline before it runs (the queue stops it on
    Ctrl-C); `gpu` pins every sd-scripts call of the run to that CUDA device."""
    reporter = reporter or Reporter(verbose=o["verbose"])
    request, model, settings = make_request(method, o, sign, reporter, gpu)
    the_plan, hashes = check_run(request, o, model, settings, reporter)
    jobs = side_by_side(o, request, model, settings, reporter)
    return run_jobs(the_plan, o, settings, hashes, reporter, jobs, on_pipeline)


def echo_finals(finals: list[Path]) -> None:
    """stdout carries only results: one final LoRA per line."""
    for path in finals:
        click.echo(str(path))


@cli.command()
@method_options
@click.option("--copy-stop-at", type=click.FloatRange(0, 1), metavar="SSIM", help="Opt-in: train the copy LoRA in segments of the save interval (recipe watch.save_every_n_steps), run the copy check after each, and stop at the first whose mean SSIM reaches SSIM (not before the 500 warmup steps). The memo's 3072 steps stay the default and the ceiling.")
def train(copy_stop_at, **options):
    """Train a slider LoRA with the copy-machine method (memo steps 1-5, 9).

    \b
    1. original image   --image, or generated from the base model
    2. edit             a built-in effect, or your --edited image (checked first)
    3. captions         one fixed caption, the same for both images
    4. copy LoRA        over-fit on the original (dim 64, 3072 steps), cached
    5. copy model       the copy LoRA merged into the base model, cached
    6. copy check       does the copy model copy? (SSIM >= 0.8; --no-copy-check)
    7. effect LoRA      trained on the copy model with the edited image
    8. resize           to rank 8 -> <run folder>/<name>.safetensors

    With several images (--image a.png --image b.png, or --images DIR) each gets its own copy
    machine and effect LoRA, combined by the memo's steps 7-9 (or --combine svd).
    Re-running the same command skips every finished stage; a killed run resumes.

    \b
    Examples:
      copymachine train --effect outline --base sd15.safetensors --image girl.png
      copymachine train --edited girl-inked.png --image girl.png --base sd15.safetensors
      copymachine train --effect all --base sd15.safetensors --image girl.png --image cat.png
      copymachine train --effect flat --base sd15.safetensors --dry-run
    """
    echo_finals(run_method(COPY_MACHINE, {**options, "copy_stop_at": copy_stop_at}))


@cli.command()
@method_options
@click.option("--sign", type=click.Choice(["edit", "memo"]), default="edit", show_default=True, help="edit: positive strength = more of the edit (B - A). memo: the memo's ratios 1 -1 (A - B), where positive strength removes the edit.")
def diff(sign, **options):
    """Train a slider LoRA with the difference-extraction method (差分抽出法).

    \b
    1. LoRA A   over-fitted copy of the original (4096 steps) on the base model, cached
    2. LoRA B   over-fitted copy of the edited image, same recipe
    3. B - A    svd_merge_lora.py --new_rank 8 --precision float --save_precision fp16

    Positive strength = more of the edit (B - A). The memo's --ratios 1 -1 gave A - B,
    where positive strength removed the edit: --sign memo reproduces that.

    \b
    Example:
      copymachine diff --effect outline --base sd15.safetensors --image girl.png
    """
    echo_finals(run_method(DIFFERENCE, options, sign=sign))
