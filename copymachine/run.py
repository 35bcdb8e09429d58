"""One run of `train` or `diff`: typed options in (RunOptions), then the inputs checked, the
recipe, the plan and its pre-flight, the pipeline. The one code path under every face: the CLI
commands (cli/methods.py), the queue (jobfile.py), through it the web UI, and the engines that
run the queue's jobs elsewhere.

Also here: the table of a job's keys (JOB_KEYS: each long option of `train` / `diff`, the
RunOptions field it sets and what kind of value it takes), which the jobs file and the UI read
instead of the click commands (tests/test_run_options.py checks that the two agree), and
`make_settings`, the engine set-up every command that runs sd-scripts shares.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copymachine import capabilities, preflight, profiles
from copymachine import effects as effect_registry
from copymachine import engine as engine_mod
from copymachine.errors import EnvironmentProblem, InputError
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
from copymachine.models import Family, ModelInfo, choose_prediction, inspect_base_model
from copymachine.pipeline import Pipeline
from copymachine.plan import Plan, stage_name
from copymachine.progress import Reporter
from copymachine.recipe import (
    MEMO,
    SD_ARGS,
    Recipe,
    apply_overrides,
    load_recipe_file,
    parse_sd_args,
    parse_set_options,
)
from copymachine.recipe import ratio as recipe_ratio
from copymachine.stages import Settings
from copymachine.stages.leakage import summary as leakage_summary

# a jobs file's `method` -> the method it runs
COMMANDS = {"train": COPY_MACHINE, "diff": DIFFERENCE}


@dataclass(frozen=True)
class RunOptions:
    """The options of one run: one field per option of `copymachine train` / `diff` (defaults:
    the CLI's), plus `sign` (diff's --sign) and `set_tables` (a jobs file's parsed `set` table,
    {section: {key: value}}, applied before --set)."""

    base: Path
    effects: tuple[str, ...] = ()
    images: tuple[Path, ...] = ()
    images_dir: Path | None = None
    edited: tuple[Path, ...] = ()
    edited_dir: Path | None = None
    edit_in_place: bool = False
    out: Path | None = None
    name: str | None = None
    caption: str | None = None
    prompt: str | None = None
    recipe_file: Path | None = None
    sets: tuple[str, ...] = ()
    amount: float = 1.0
    resolution: int | None = None
    max_steps: int | None = None
    rank: int | None = None
    combine: str | None = None
    copy_model: str | None = None
    clip_skip: int | None = None
    v_pred: bool = False
    zero_terminal_snr: bool = False
    sd_args: tuple[str, ...] = ()
    absorb: tuple[str, ...] = ()
    cache_dir: Path | None = None
    jobs: int | None = None
    samples: int | None = None  # --samples N: sample images every N training steps
    tensorboard: bool = False  # --tensorboard: sd-scripts' logging_dir under the run folder
    low_vram: bool = False
    dry_run: bool = False
    no_wait: bool = False
    force: bool = False
    allow_pickle: bool = False
    # the checks and previews
    no_copy_check: bool = False
    preview_model: Path | None = None
    caption_with: str | None = None
    tagger_dir: Path | None = None
    general_threshold: float | None = None
    character_threshold: float | None = None
    # the engine
    sd_scripts: Path | None = None
    python: str | None = None
    device: str = "auto"
    tokenizer_cache_dir: Path | None = None
    offline: bool = False
    verbose: bool = False
    # train only
    copy_stop_at: float | None = None  # --copy-stop-at SSIM
    # diff only
    sign: str = "edit"
    set_tables: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- a job's keys -------------------------------------------------------------------------------

KINDS = ("text", "path", "flag", "number", "choice")


@dataclass(frozen=True)
class Key:
    """One key of a job (a jobs file's table, the web UI's form): the long option without its
    dashes, the RunOptions field it sets and the kind of value it takes."""

    name: str
    field: str
    kind: str  # text | path | flag | number | choice
    multiple: bool = False
    required: bool = False
    number: type | None = None  # int | float, for kind number
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    commands: tuple[str, ...] = ("train", "diff")

    def cast(self, value: Any) -> Any:
        """The value as the option's click type would convert it (a tuple when multiple);
        ValueError with click's wording when it does not fit."""
        if self.multiple:
            items = value if isinstance(value, (list, tuple)) else [value]
            return tuple(self._one(v) for v in items)
        return self._one(value)

    def _one(self, value: Any) -> Any:
        if self.kind == "flag":
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, not {value!r}")
            return value
        if self.kind == "path":
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise ValueError(f"{value!r} is not a path")
            return Path(value)
        if self.kind == "text":
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(f"{value!r} is not text")
            return str(value)
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{value!r} is not one of {', '.join(repr(c) for c in self.choices)}.")
            return value
        return self._number(value)

    def _number(self, value: Any) -> int | float:
        what = "integer" if self.number is int else "float"
        try:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                value = self.number(value.strip())  # type: ignore[misc]
            elif self.number is int:
                if not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
                    raise ValueError
                value = int(value)
            elif isinstance(value, (int, float)):
                value = float(value)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"{value!r} is not a valid {what}.") from None
        low, high = self.min, self.max
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                bounds = f"{low}<=x<={high}"
            else:
                bounds = f"x>={low}" if low is not None else f"x<={high}"
            raise ValueError(f"{value} is not in the range {bounds}.")
        return value


def _keys(*keys: Key) -> dict[str, Key]:
    return {k.name: k for k in keys}


# the long options of `train` / `diff` in their --help order (cli/methods.py, cli/see.py,
# cli/common.py); tests/test_run_options.py checks this table against the click options
JOB_KEYS: dict[str, Key] = _keys(
    Key("effect", "effects", "text", multiple=True),
    Key("base", "base", "path", required=True),
    Key("image", "images", "path", multiple=True),
    Key("images", "images_dir", "path"),
    Key("edited", "edited", "path", multiple=True),
    Key("edited-dir", "edited_dir", "path"),
    Key("edit-in-place", "edit_in_place", "flag"),
    Key("out", "out", "path"),
    Key("name", "name", "text"),
    Key("caption", "caption", "text"),
    Key("prompt", "prompt", "text"),
    Key("recipe", "recipe_file", "path"),
    Key("set", "sets", "text", multiple=True),
    Key("amount", "amount", "number", number=float),
    Key("resolution", "resolution", "number", number=int, min=64, max=4096),
    Key("max-steps", "max_steps", "number", number=int, min=1),
    Key("rank", "rank", "number", number=int, min=0),
    Key("combine", "combine", "choice", choices=("merge", "svd")),
    Key("copy-model", "copy_model", "choice", choices=("memory", "file")),
    Key("clip-skip", "clip_skip", "number", number=int, min=1, max=12),
    Key("v-pred", "v_pred", "flag"),
    Key("zero-terminal-snr", "zero_terminal_snr", "flag"),
    Key("sd-arg", "sd_args", "text", multiple=True),
    Key("absorb", "absorb", "text", multiple=True),
    Key("cache-dir", "cache_dir", "path"),
    Key("jobs", "jobs", "number", number=int, min=1),
    Key("samples", "samples", "number", number=int, min=1),
    Key("tensorboard", "tensorboard", "flag"),
    Key("low-vram", "low_vram", "flag"),
    Key("dry-run", "dry_run", "flag"),
    Key("no-wait", "no_wait", "flag"),
    Key("force", "force", "flag"),
    Key("allow-pickle", "allow_pickle", "flag"),
    Key("no-copy-check", "no_copy_check", "flag"),
    Key("preview-model", "preview_model", "path"),
    Key("caption-with", "caption_with", "choice", choices=("fixed", "wd14")),
    Key("tagger-dir", "tagger_dir", "path"),
    Key("general-threshold", "general_threshold", "number", number=float, min=0, max=1),
    Key("character-threshold", "character_threshold", "number", number=float, min=0, max=1),
    Key("sd-scripts", "sd_scripts", "path"),
    Key("python", "python", "text"),
    Key("device", "device", "choice", choices=("auto", "cuda", "cpu")),
    Key("tokenizer-cache-dir", "tokenizer_cache_dir", "path"),
    Key("offline", "offline", "flag"),
    Key("verbose", "verbose", "flag"),
    Key("copy-stop-at", "copy_stop_at", "number", number=float, min=0, max=1, commands=("train",)),
    Key("sign", "sign", "choice", choices=("edit", "memo"), commands=("diff",)),
)


def job_keys(command: str) -> dict[str, Key]:
    """The keys a job of `command` (train | diff) takes, in --help order."""
    return {name: key for name, key in JOB_KEYS.items() if command in key.commands}


def defaults() -> dict[str, Any]:
    """RunOptions' defaults by field (the CLI's defaults); `base` has none."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(RunOptions):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


# --- the engine ---------------------------------------------------------------------------------


def make_settings(
    sd_scripts: Path | None,
    python: str | None,
    device: str,
    tokenizer_cache_dir: Path | None,
    offline: bool,
    reporter: Reporter,
    require: bool = True,
    low_vram: bool = False,
) -> Settings:
    """Locate sd-scripts, ask its Python what it has, and choose the device profile
    (copymachine/profiles.py): the GPU profile when its torch sees a CUDA GPU, else the CPU."""
    engine = engine_mod.locate(sd_scripts, python)
    warning = preflight.engine_warning(engine)
    if warning:
        reporter.warn(f"sd-scripts at {warning}")
    if tokenizer_cache_dir is not None and not Path(tokenizer_cache_dir).is_dir():
        raise EnvironmentProblem(f"--tokenizer-cache-dir is not a folder: {tokenizer_cache_dir}")
    try:
        probe = engine.probe()
    except EnvironmentProblem:
        if require:
            raise
        probe = None
    caps = None
    if probe is not None and require:
        engine.require(probe)
        # what this sd-scripts can do (each script's --help, once per checkout): refused here,
        # before any stage, when copymachine cannot drive it
        caps = capabilities.learn(engine, on_progress=lambda done, total: reporter.counting("capabilities", capabilities.progress_text(done, total), done, total))
        capabilities.require(engine, caps)
    cuda = bool(probe and probe.cuda)
    if device == "cuda" and not cuda:
        raise EnvironmentProblem(f"--device cuda, but the torch of {engine.python} sees no CUDA GPU")
    use_cuda = cuda and device != "cpu"
    if low_vram and not use_cuda:
        reporter.warn("--low-vram has no effect on the CPU: training there uses no GPU memory")
    if use_cuda:
        precision, why = profiles.choose_precision(probe.compute, probe.bf16)  # type: ignore[union-attr]
        profile = profiles.gpu_profile(precision == "bf16", low_vram, why=why)
        caveat = profiles.precision_caveat(probe.gpus, precision)  # type: ignore[union-attr]
        if caveat:
            reporter.warn(caveat)
    else:
        profile = profiles.CPU
    reporter.info(f"sd-scripts {engine.root}; its Python {engine.python} ({engine.python_reason})" + (f"; trains in {profile.mixed_precision} ({profile.why})" if use_cuda else ""))
    return Settings(
        engine=engine,
        probe=probe,
        profile=profile,
        tokenizer_cache_dir=Path(tokenizer_cache_dir).resolve() if tokenizer_cache_dir else None,
        offline=offline or os.environ.get("HF_HUB_OFFLINE") == "1",
        gpus=len(probe.gpus) if use_cuda else 0,  # type: ignore[union-attr]
        capabilities=caps,
    )


# --- the run ------------------------------------------------------------------------------------


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


def see_recipe_sets(o: RunOptions) -> dict[str, dict[str, Any]]:
    """Recipe overrides the see options (--caption-with, --tagger-dir, thresholds) stand for."""
    caption: dict[str, Any] = {}
    method = o.caption_with or ("wd14" if o.tagger_dir else None)
    if method:
        caption["method"] = method
    if method == "wd14" and o.caption is not None:
        caption["prefix"] = o.caption
    for key in ("general_threshold", "character_threshold"):
        if getattr(o, key) is not None:
            caption[key] = getattr(o, key)
    return {"caption": caption} if caption else {}


def see_request(o: RunOptions, family: Family) -> dict[str, Any]:
    """Request fields from the see options (checked: the preview model's family)."""
    prediction = None
    if o.preview_model is not None:
        model = inspect_base_model(o.preview_model, for_training=False)
        if model.family.name != family.name:
            raise InputError(f"--preview-model is {model.family.label}, but the LoRA is trained on {family.label}: preview it on a {family.label} model")
        # its own v_pred / ztsnr keys (the --v-pred flags stand for a file without them)
        prediction = choose_prediction(model, o.v_pred, o.zero_terminal_snr)
    return {"copy_check": not o.no_copy_check, "preview_model": o.preview_model, "tagger_dir": o.tagger_dir, "preview_prediction": prediction}


def leakage_scores(the_plan, effect: str) -> dict | None:
    """The leakage stage's scores of `effect`'s final LoRA, when the run measured them."""
    try:
        path = the_plan.stage(stage_name("leakage", effect)).outputs["scores"]
    except KeyError:
        return None
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_inputs(o: RunOptions, reporter: Reporter):
    """The run's inputs, checked before anything else (files exist, effects, the base model, the
    images): the first step of every run, and what the web UI checks when a job is added."""
    if o.images and o.images_dir:
        raise InputError("give --image or --images, not both")
    if o.edited and o.edited_dir:
        raise InputError("give --edited or --edited-dir, not both")
    images = images_in(o.images_dir) if o.images_dir else list(o.images)
    for path in images:
        _check_file(path, "image")
    edited = match_edits(images, o.edited_dir) if o.edited_dir else list(o.edited)
    for path in edited:
        _check_file(path, "edited image")
    if edited and not images:
        raise InputError("--edited is an edit of your --image: give the original too")
    effects = resolve_effects(o.effects, bool(edited))
    model = preflight.check_base_model(o.base, reporter, allow_pickle=o.allow_pickle)
    preflight.check_images(images, edited, reporter)
    return images, edited, effects, model


def _recipe(method: str, o: RunOptions, effects: list[str]) -> tuple[Recipe, dict[str, dict]]:
    """The recipe (memo, --recipe, --set and the options that are recipe keys) and the effects'
    parameters (--set outline.width=2)."""
    recipe = load_recipe_file(o.recipe_file, MEMO) if o.recipe_file else MEMO
    recipe_sets, effect_sets = split_set_options(o.sets, o.set_tables)
    shorthand: dict[str, dict] = see_recipe_sets(o)
    if o.caption is not None and "prefix" not in shorthand.get("caption", {}):
        shorthand.setdefault("caption", {})["text"] = o.caption
    if o.prompt is not None:
        shorthand["generate"] = {"prompt": o.prompt}
    if o.copy_model is not None:
        shorthand["merge"] = {"copy_model": o.copy_model}
    if o.clip_skip is not None:
        shorthand["model"] = {"clip_skip": o.clip_skip}
    if o.sd_args:
        shorthand[SD_ARGS] = parse_sd_args(o.sd_args)
    if o.rank is not None:
        if method == DIFFERENCE and o.rank == 0:
            raise InputError("--rank 0 keeps a trained rank; difference extraction makes a new LoRA: give its rank (memo: 8)")
        shorthand["svd" if method == DIFFERENCE else "resize"] = {"rank": o.rank}
    for section, values in shorthand.items():
        recipe_sets.setdefault(section, {}).update(values)
    if recipe_sets:
        recipe = apply_overrides(recipe, recipe_sets, "--set")
    for effect in effect_sets:
        if effect not in effects:
            raise InputError(f"--set {effect}.… sets a parameter of {effect}, which this run does not train")
    return recipe, effect_sets


def make_request(method: str, o: RunOptions, reporter: Reporter, gpu: int | None) -> tuple[Request, ModelInfo, Settings]:
    """The run asked for, from its options: inputs checked, the recipe, sd-scripts located (and
    pinned to `gpu`), the tokenizers the base model's family needs."""
    images, edited, effects, model = check_inputs(o, reporter)
    recipe, effect_sets = _recipe(method, o, effects)
    settings = make_settings(o.sd_scripts, o.python, o.device, o.tokenizer_cache_dir, o.offline, reporter, require=not o.dry_run, low_vram=o.low_vram)
    if gpu is not None and settings.gpus:
        settings = dataclasses.replace(settings, pinned_gpu=gpu, gpus=1)
    preflight.check_tokenizers(settings, model.family, reporter)
    request = Request(
        method=method,
        base=o.base,
        family=model.family,
        effects=effects,
        recipe=recipe,
        sources=make_sources(images, edited),
        out=o.out,
        name=o.name,
        cache_dir=o.cache_dir,
        effect_params=effect_sets,
        amount=o.amount,
        resolution=o.resolution,
        max_steps=o.max_steps,
        absorb=parse_absorb(o.absorb),
        combine=o.combine,
        sign=o.sign,
        edit_in_place=o.edit_in_place,
        prediction=choose_prediction(model, o.v_pred, o.zero_terminal_snr),
        samples=o.samples or 0,
        tensorboard=o.tensorboard,
        copy_stop_at=o.copy_stop_at,
        **see_request(o, model.family),
    )
    return request, model, settings


def check_run(request: Request, o: RunOptions, model: ModelInfo, settings: Settings, reporter: Reporter) -> tuple[Plan, HashCache]:
    """Pre-flight of the planned run: the output folders (a dry run writes configs into the run
    and cache folders: the same output checks as a run), then, for a run, disk space and RAM."""
    folders = run_folders(request)
    preflight.check_writable({"cache folder": folders.cache})
    hashes = HashCache.for_host(folders.cache)
    the_plan = plan(request, settings, hashes, folders)
    preflight.check_path_lengths(the_plan)
    preflight.check_output(the_plan, the_plan.info.identity or {}, hashes, force=o.force)
    preflight.check_writable({"run folder": the_plan.run_dir})
    for note in the_plan.notes:
        reporter.note(note)
    if not o.dry_run:
        preflight.check_resources(the_plan, model, reporter)
    reporter.info(
        f"copymachine {request.method}: {model.family.label} base {o.base.name}, {request.prediction.text()}"
        + (f", clip skip {request.recipe.model.clip_skip}" if request.recipe.model.clip_skip != 1 else "")
        + f"; {len(request.sources)} image(s); "
        f"effects: {', '.join(request.effects)}; run folder {the_plan.run_dir}; profile {settings.profile.name}"
        + (f" ({settings.mixed_precision})" if settings.mixed_precision != "no" else "")
    )
    return the_plan, hashes


def side_by_side(o: RunOptions, request: Request, the_plan: Plan, settings: Settings, reporter: Reporter) -> int:
    """How many trainings run at once: --jobs, else what the GPUs' free memory holds; one on the CPU."""
    trainings = len(request.effects) * len(request.sources)
    if settings.device == "cpu":
        if o.jobs and o.jobs > 1:
            reporter.warn("--jobs: CPU runs stay sequential (parallel trainings would only share the same cores)")
        return 1
    if not o.dry_run:
        preflight.check_bitsandbytes(the_plan, settings)
    jobs = preflight.check_vram(the_plan, settings, o.jobs, trainings, reporter)
    if jobs > 1:
        reporter.info(f"{jobs} trainings side by side" + (f" on {settings.gpus} GPUs" if settings.gpus > 1 else " on one GPU"))
    return jobs


def run_jobs(the_plan: Plan, o: RunOptions, settings: Settings, hashes: HashCache, reporter: Reporter, jobs: int, on_pipeline=None) -> list[Path]:
    """Run the plan's stages (or, with --dry-run, print them); returns the final LoRAs' paths."""
    reporter.event("plan", run_dir=str(the_plan.run_dir), stages=[s.title for s in the_plan.stages], finals={k: str(v) for k, v in the_plan.finals.items()})
    pipeline = Pipeline(the_plan, settings, reporter, hashes)
    if on_pipeline is not None:
        on_pipeline(pipeline)
    pipeline.run(dry_run=o.dry_run, wait=not o.no_wait, jobs=jobs)
    hashes.save()
    if o.dry_run:
        return []
    for effect, path in the_plan.finals.items():
        scores = leakage_scores(the_plan, effect)
        if scores is not None:
            reporter.info(f"{path.name}: {leakage_summary(scores)}")
    reporter.info(f"done: {len(the_plan.finals)} LoRA(s) in {the_plan.run_dir}; manifest: {the_plan.run_dir / 'manifest.json'}")
    return list(the_plan.finals.values())


def run_method(method: str, o: RunOptions, reporter: Reporter | None = None, on_pipeline=None, gpu: int | None = None) -> list[Path]:
    """One run of `train` (COPY_MACHINE) or `diff` (DIFFERENCE): request, pre-flight, jobs.
    The one code path of every face: the CLI commands, the queue (copymachine/jobfile.py) and
    through it the web UI. Returns the final LoRAs' paths.

    `on_pipeline(pipeline)` is called with the Pipeline before it runs (the queue stops it on
    Ctrl-C); `gpu` pins every sd-scripts call of the run to that CUDA device."""
    reporter = reporter or Reporter(verbose=o.verbose)
    request, model, settings = make_request(method, o, reporter, gpu)
    the_plan, hashes = check_run(request, o, model, settings, reporter)
    jobs = side_by_side(o, request, the_plan, settings, reporter)
    return run_jobs(the_plan, o, settings, hashes, reporter, jobs, on_pipeline)


def plan_only(method: str, o: RunOptions, reporter: Reporter) -> tuple[Plan, HashCache]:
    """The run's plan and nothing else (nothing written, nothing run; sd-scripts need not answer,
    as for a dry run): what a queue reads to order its jobs before it hands them to an engine.
    Keys made here are this host's (its engine, its device's precision): compare them with
    each other, not with the keys a job computes where it runs."""
    o = dataclasses.replace(o, dry_run=True)
    request, _model, settings = make_request(method, o, reporter, None)
    folders = run_folders(request)
    hashes = HashCache.for_host(folders.cache)
    return plan(request, settings, hashes, folders), hashes
