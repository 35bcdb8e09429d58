"""The options of one `train` / `diff` run, defined once (RunOptions): the click options (cli/common), a jobs file's
keys (jobfile.py) and the web UI's checks derive from it. A field's option is `--` + its name with dashes (or its
`option`); one bad value gives one message in click's words, whichever face it came through (problem())."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from copymachine import effects as effect_registry
from copymachine.errors import CopymachineError, InputError
from copymachine.recipe import MEMO, apply_overrides, load_recipe_file, parse_set_options

BOTH = ("train", "diff")
ENGINE = ("sd_scripts", "python", "device", "tokenizer_cache_dir", "offline", "verbose")


def opt(default: Any = None, help: str = "", *, option: str | None = None, metavar: str | None = None,
        path: str | None = None, commands: tuple[str, ...] = BOTH, short: str | None = None, **limits: Any) -> Any:
    """A field that is an option of `commands` (train, diff)."""
    extra: dict[str, Any] = dict(option=option, metavar=metavar, path=path, commands=list(commands), short=short)
    return Field(default, description=help, json_schema_extra={k: v for k, v in extra.items() if v}, **limits)


class RunOptions(BaseModel):
    """One field per option of `train` / `diff`, in --help order, plus `set_tables` (a jobs file's `set` table)."""

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)

    effects: tuple[str, ...] = opt((), "outline, flat, contrast, posterize, jpeg, all, or custom (with --edited). "
        "Repeatable.", option="effect", metavar="EFFECT")
    base: Path = opt(..., "Base model: a single-file checkpoint (.safetensors) of SD1.x, SDXL, FLUX.1, SD3/3.5 or "
        "Anima.")
    images: tuple[Path, ...] = opt((), "An original image; repeat for several (memo step 6). Default: generate one "
        "with the base model.", option="image")
    images_dir: Path | None = opt(None, "A folder of original images (instead of --image).", option="images")
    edited: tuple[Path, ...] = opt((), "Your own edit of --image (effect custom), one per --image, checked for size "
        "and alignment first.")
    edited_dir: Path | None = opt(None, "A folder of your edits of --images, matched by file name.")
    edit_in_place: bool = opt(False, "Your edits keep every pixel in place (you only drew on the picture): an "
        "alignment fit pulled by thick new lines is then a note, not a refusal.")
    weak_edit_ok: bool = opt(False, "Train on an edit the check finds too weak to learn from (refused before the "
        "first stage otherwise).")
    out: Path | None = opt(None, "Run folder. Default: runs/<image name>.", path="dir")
    name: str | None = opt(None, "File name of the final LoRA. Default: <run folder name>-<effect>.")
    caption: str | None = opt(None, "Caption of both training images (the same text for both). Default: the recipe's.")
    prompt: str | None = opt(None, "Prompt for a generated original image (when no image is given).")
    recipe_file: str | None = opt(None, "A built-in recipe by name (memo, the default; fast: traintrain's "
        "Difference preset, ~1,000 steps) or a recipe TOML file over the memo's numbers (`copymachine recipe --list`).",
        option="recipe", metavar="NAME|FILE")
    sets: tuple[str, ...] = opt((), "Override one number (copy.network_dim=32, effect.epochs=4, resize.rank=4) or an "
        "effect parameter (outline.width=2). Repeatable.", option="set", metavar="SECTION.KEY=VALUE")
    amount: float = opt(1.0, f"Strength of a built-in edit: original + AMOUNT x (edit - original), "
        f"{effect_registry.AMOUNT_RANGE} (1 = the edit, negative = its opposite; beyond that the edit only saturates).")
    resolution: int | None = opt(None, "Training size: about N x N px, the picture's aspect kept, sides multiples of "
        "64 (2048x1536 at 512 trains at 576x448). Default: the model's native size (512 for SD1.x/2.x, 1024 for SDXL); "
        "a generated original trains at its own size. 64 for quick tests.", metavar="N", ge=64, le=4096)
    max_steps: int | None = opt(None, "Cap every training at this many steps (warmup scaled alike); for quick test "
        "runs.", ge=1)
    rank: int | None = opt(None, "Rank of the final LoRA (memo: 8). 0 keeps the trained rank (train only).", ge=0)
    combine: Literal["merge", "svd"] | None = opt(None, "How several images' LoRAs are combined: merge = the memo's "
        "steps 7-9 (merge into the model, extract, resize); svd = svd_merge_lora.py, exact and cheaper.")
    copy_model: Literal["memory", "file"] | None = opt(None, "memory (default): the effect LoRA trains on the base "
        "model with the copy LoRA merged in memory (sd-scripts' --base_weights), the same weights without a 4-13 GB "
        "file; file: merge_lora.py writes the copy model, as the memo does. Also where --absorb's styles go. Recipe "
        "key merge.copy_model.")
    clip_skip: int | None = opt(None, "CLIP layer counted from the last, for every training and render (SD1.x; 2 for "
        "NovelAI-derived anime models). Default: the recipe's model.clip_skip (1). Recorded in the LoRA as "
        "ss_clip_skip.", ge=1, le=12)
    v_pred: bool = opt(False, "The base model is a v-prediction model (sd-scripts' v_parameterization in every "
        "training and render); found by itself when the checkpoint has a v_pred key.")
    zero_terminal_snr: bool = opt(False, "The v-prediction base model has a zero-terminal-SNR schedule (sd-scripts' "
        "zero_terminal_snr); found by itself from a ztsnr key.")
    sd_args: tuple[str, ...] = opt((), "Add an sd-scripts training option the recipe does not name (noise_offset=0.05, "
        "network_args='[\"conv_dim=8\"]', xformers), to every training; checked against the training script's --help "
        "before any work. Repeatable; recipe table [sd_args].", option="sd-arg", metavar="KEY=VALUE")
    absorb: tuple[str, ...] = opt((), "Merge a style LoRA into the base model first; every training uses the result "
        "(the memo's tip). Repeatable.", metavar="STYLE.safetensors[:RATIO]")
    model_files: tuple[str, ...] = opt((), "One of the other files the base model's family needs: FLUX.1 clip_l, "
        "t5xxl, ae; SD3/3.5 clip_l, clip_g, t5xxl (unless the checkpoint holds them); Anima qwen3, vae. Repeatable.",
        option="model-file", metavar="NAME=FILE")
    cache_dir: Path | None = opt(None, "Where shared stages (copy LoRAs, LoRA A, copy models with --copy-model "
        "file) are kept. Default: $COPYMACHINE_CACHE, else <run folder>/../_cache.", path="dir")
    jobs: int | None = opt(None, "Trainings run side by side (several effects or images): one per GPU on a multi-GPU "
        "machine, else as many as the GPU's free memory holds (default); CPU runs stay sequential.", ge=1)
    samples: int | None = opt(None, "Every N steps of each training, render the recipe's [watch] sample prompt(s) with "
        "the LoRA so far (the effect LoRA: on the copy model at +1) into <run folder>/samples/<stage>/; the web UI's "
        "queue page shows each as it is made. Each costs one render (docs/reliability.md).", metavar="N", ge=1)
    tensorboard: bool = opt(False, "sd-scripts writes TensorBoard logs into <run folder>/tensorboard/; the run prints "
        "the `tensorboard --logdir` line.")
    low_vram: bool = opt(False, "For small GPUs: gradient checkpointing, 8-bit AdamW (needs bitsandbytes), latents "
        "cached on disk; SDXL also caches the text encoders' outputs and trains the U-Net only. Opt-in: the memo "
        "trains with plain AdamW and both.")
    dry_run: bool = opt(False, "Write the configs and print every command; run nothing.")
    no_wait: bool = opt(False, "Exit at once (code 6) instead of waiting when another run holds the run folder or a "
        "cache entry.")
    force: bool = opt(False, "Write into a run folder that holds another run (or files copymachine did not make), "
        "replacing what it writes there.")
    allow_pickle: bool = opt(False, "Accept a pickle checkpoint (.ckpt) as --base: copymachine does not open it "
        "(assumes SD1.x); sd-scripts loads it with torch. Only for files you trust.")
    # the checks and previews (what they mean for a run: run.shorthand_sets, run.make_request)
    no_copy_check: bool = opt(False, f"Do not check that the copy machine copies the original (default: "
        f"{MEMO.copy_check.images} images from it, stop when their mean SSIM is below {MEMO.copy_check.min_ssim:g}; "
        f"see [copy_check] in `copymachine recipe`).")
    preview_model: Path | None = opt(None, "At the end, render a strength sweep of each LoRA on this model (one it was "
        "not trained on): <name>-preview.png beside the LoRA (see [preview] in `copymachine recipe`); and measure "
        "leakage: how much the LoRA at strengths 1, 2, 3 pulls unrelated pictures towards its training image (SSIM "
        "gain over strength 0; [leakage]).", path="file")
    caption_with: Literal["fixed", "wd14"] | None = opt(None, "fixed: the --caption text (default). wd14: the WD14 "
        "tagger's tags of the original image, the same for the edit (the memo's way); --caption then goes before the "
        "tags.")
    tagger_dir: Path | None = opt(None, "WD14 tagger folder in SmilingWolf's layout: model.onnx and selected_tags.csv "
        "(offline; needs the [tagger] extra).", path="dir")
    general_threshold: float | None = opt(None, f"WD14: probability from which a general tag is written (default "
        f"{MEMO.caption.general_threshold:g}).", ge=0, le=1)
    character_threshold: float | None = opt(None, f"WD14: probability from which a character tag is written (default "
        f"{MEMO.caption.character_threshold:g}).", ge=0, le=1)
    # the engine (cli/common.engine_options: every command that runs sd-scripts)
    sd_scripts: Path | None = opt(None, "Your sd-scripts checkout. Default: $SD_SCRIPTS, else vendor/sd-scripts (the "
        "submodule).", path="dir")
    python: str | None = opt(None, "The Python that runs sd-scripts. Default: $SD_SCRIPTS_PYTHON, else "
        "<sd-scripts>/venv, else <kohya_ss>/venv beside <kohya_ss>/sd-scripts, else this one.")
    device: Literal["auto", "cuda", "cpu"] = opt("auto", "Where sd-scripts trains. auto: the GPU when its torch sees "
        "one (bf16 from compute capability 8.0, else fp16), else the CPU (fp32).")
    tokenizer_cache_dir: Path | None = opt(None, "Folder with the CLIP tokenizer(s), handed to every sd-scripts call "
        "that takes --tokenizer_cache_dir (offline machines).", path="dir")
    offline: bool = opt(False, "No hub access: sets HF_HUB_OFFLINE=1 for sd-scripts.")
    verbose: bool = opt(False, "Also print each sd-scripts command line.", short="-v")
    copy_stop_at: float | None = opt(None, "Opt-in: train the copy LoRA in segments of the save interval (recipe "
        "watch.save_every_n_steps), run the copy check after each, and stop at the first whose mean SSIM reaches SSIM "
        "(not before the 500 warmup steps). The memo's 3072 steps stay the default and the ceiling.",
        metavar="SSIM", commands=("train",), ge=0, le=1)
    sign: Literal["edit", "memo"] = opt("edit", "edit: positive strength = more of the edit (B - A). memo: the memo's "
        "ratios 1 -1 (A - B), where positive strength removes the edit.", commands=("diff",))
    set_tables: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _one_is_a_list(cls, data: Any) -> Any:
        """A repeatable option given once (a jobs file's `image = "a.png"`) is a list of one."""
        if isinstance(data, dict):
            return {k: [v] if k in MULTIPLE and isinstance(v, (str, Path)) else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _check_sets(self) -> RunOptions:
        """--set / `set` checked now (the recipe's keys and the effects' parameters), not when the run starts."""
        recipe_sets, effect_sets = split_set_options(self.sets, self.set_tables)
        if recipe_sets:
            recipe = load_recipe_file(self.recipe_file, MEMO) if self.recipe_file else MEMO
            apply_overrides(recipe, recipe_sets, "--set")
        for effect, values in effect_sets.items():
            effect_registry.resolve_params(effect, values)
        return self


def shape(info: FieldInfo) -> tuple[Any, bool]:
    """A field's value type (None taken out) and whether the option repeats."""
    kind = info.annotation
    if get_origin(kind) in (Union, types.UnionType):
        kind = next(a for a in get_args(kind) if a is not type(None))
    if get_origin(kind) is tuple:
        return get_args(kind)[0], True
    return kind, False


def option_name(name: str) -> str:
    extra = RunOptions.model_fields[name].json_schema_extra
    return str(extra.get("option") or name.replace("_", "-")) if isinstance(extra, dict) else name


def commands(name: str) -> list[str]:
    extra = RunOptions.model_fields[name].json_schema_extra
    return list(extra.get("commands", ())) if isinstance(extra, dict) else []  # type: ignore[arg-type]


def bounds(info: FieldInfo) -> tuple[Any, Any]:
    """A number field's (ge, le), each None when open."""
    low = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
    return low, next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)


MULTIPLE = {name for name, info in RunOptions.model_fields.items() if shape(info)[1]}
PATHS = [name for name, info in RunOptions.model_fields.items() if shape(info)[0] is Path]


def job_keys(command: str) -> dict[str, str]:
    """The keys a job of `command` (train | diff) takes, in --help order: {option name: field}."""
    return {option_name(name): name for name in RunOptions.model_fields if command in commands(name)}


def schema() -> dict[str, Any]:
    """The JSON schema of a run's options: the web UI's form limits."""
    return RunOptions.model_json_schema()


def split_set_options(items: tuple[str, ...], tables: dict[str, dict] | None = None) -> tuple[dict, dict]:
    """--set items and parsed `tables` as recipe keys (copy.network_dim) and effect parameters (outline.width)."""
    parsed = parse_set_options(items)
    for section, values in (tables or {}).items():
        parsed.setdefault(section, {}).update(values)
    effects = effect_registry.names()
    return {s: v for s, v in parsed.items() if s not in effects}, {s: v for s, v in parsed.items() if s in effects}


def _range(low: Any, high: Any) -> str:
    if low is not None and high is not None:
        return f"{low}<=x<={high}"
    return f"x>={low}" if low is not None else f"x<={high}"


def problem(e: ValidationError) -> str:
    """A validation error as one line, `key: what is wrong`, in the words click uses on the command line."""
    error = e.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    value, kind = error.get("input"), error["type"]
    info = RunOptions.model_fields.get(name)
    if kind in ("greater_than_equal", "less_than_equal") and info is not None:
        text = f"{value} is not in the range {_range(*bounds(info))}."
    elif kind in ("int_parsing", "int_from_float", "int_type"):
        text = f"{value!r} is not a valid integer."
    elif kind in ("float_parsing", "float_type", "finite_number"):
        text = f"{value!r} is not a valid float."
    elif kind == "literal_error":
        choices = get_args(shape(info)[0]) if info is not None else ()
        text = f"{value!r} is not one of {', '.join(repr(c) for c in choices)}."
    elif kind.startswith("bool"):
        text = f"must be true or false, not {value!r}"
    else:
        text = error["msg"]
    return f"{option_name(name) if info is not None else name}: {text}"


def validate(values: dict[str, Any], where: str = "") -> RunOptions:
    """RunOptions from values by field, or the InputError of the first bad one (`where: key: problem`)."""
    prefix = f"{where}: " if where else ""
    try:
        return RunOptions(**values)
    except ValidationError as e:
        raise InputError(prefix + problem(e)) from None
    except CopymachineError as e:
        raise InputError(prefix + e.message, details=e.details) from None

