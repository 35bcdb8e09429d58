"""The recipe: every number of the copy-machine memo, in one place, each named.

The memo (コピー機LoRA学習法, its English and Japanese texts) is not part of this repository.
Each default below cites the memo step it comes from; the few choices the memo does not make
are marked "copymachine's choice". A recipe is overridden, key by key, from a TOML file
(`--recipe FILE`, same sections and keys as `Recipe.to_dict()`) and from the command line
(`--set section.key=value` and the shorthand options of `copymachine train`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from copymachine.errors import InputError


@dataclass(frozen=True)
class TrainingRecipe:
    """One LoRA training (memo step 2 for the copy LoRA, step 5 for the effect LoRA)."""

    network_module: str = "networks.lora"  # step 2: network module networks.lora
    network_dim: int = 64  # step 2: dim 64
    network_alpha: float = 32.0  # step 2: alpha 32
    optimizer: str = "AdamW"  # step 2: optimizer AdamW
    learning_rate: float = 1e-4  # step 2: learning rate 0.0001
    repeats: int = 512  # step 2: repeats 512
    epochs: int = 6  # step 2: epochs 6 (512 x 6 = 3072 steps with one image)
    warmup_steps: int = 500  # step 2: warmup steps 500
    # The memo's warmup needs a scheduler that accepts it: sd-scripts' `constant` rejects warmup.
    lr_scheduler: str = "constant_with_warmup"
    shuffle_caption: bool = True  # step 2: shuffle captions True
    keep_tokens: int = 0  # step 2: keep tokens 0
    batch_size: int = 1  # copymachine's choice: one image, batch 1 (the memo's step count implies it)
    seed: int = 1  # copymachine's choice: a fixed seed, so a re-run trains the same way
    save_precision: str = "float"  # copymachine's choice: the LoRA is merged at float (step 3)

    @property
    def steps(self) -> int:
        """Optimizer steps with one training image: repeats x epochs / batch size."""
        return self.repeats * self.epochs // self.batch_size


COPY_MODEL_ROUTES = ("memory", "file")


@dataclass(frozen=True)
class MergeRecipe:
    """Step 3: merge_lora.py --ratios 1 --precision float --save_precision float.

    `copy_model` is copymachine's choice of route: "file" writes the copy model with
    merge_lora.py, as the memo does; "memory" (the default) trains the effect LoRA on the base
    model with the copy LoRA as sd-scripts' `--base_weights` at `ratio`, merged in float32 in
    memory: the same weights without the 4-13 GB file (precision and save_precision apply to
    the file route only)."""

    ratio: float = 1.0
    precision: str = "float"
    save_precision: str = "float"
    copy_model: str = "memory"


@dataclass(frozen=True)
class ResizeRecipe:
    """Step 9: resize_lora.py --new_rank 8 --save_precision fp16 (rank 0 keeps the trained rank)."""

    rank: int = 8
    save_precision: str = "fp16"


@dataclass(frozen=True)
class SvdMergeRecipe:
    """Difference extraction, step 5: svd_merge_lora.py --ratios 1 -1 --new_rank 8
    --precision float --save_precision fp16 (also the exact route for combining LoRAs)."""

    rank: int = 8
    precision: str = "float"
    save_precision: str = "fp16"


@dataclass(frozen=True)
class CombineRecipe:
    """Memo steps 6-9: several source images, each with its own effect LoRA, combined.

    The memo merges the effect LoRAs into the base model (step 7) and extracts the LoRA of
    base -> merged model (step 8), then resizes (step 9); it gives no ratios. copymachine
    weights each image's LoRA 1/n (normalize = true), so n images give one image's strength.
    """

    normalize: bool = True
    extract_dim: int = 64  # step 8 extracts at the trained dim; step 9 resizes to resize.rank
    min_diff: float = 0.01  # extract_lora_from_models.py's own default, named here
    precision: str = "float"


@dataclass(frozen=True)
class GenerateRecipe:
    """Step 1: generate the original image with the base model ("anything will do").

    The memo gives no prompt or sampler settings: these are copymachine's choices.
    """

    prompt: str = "1girl, solo, upper body, looking at viewer, simple background"
    negative_prompt: str = "lowres, bad anatomy, worst quality, low quality"
    seed: int = 1
    steps: int = 28
    sampler: str = "euler_a"
    scale: float = 7.0
    # 0: the base model's own size, 512 for SD1.x (memo step 2: "resolution equal to the
    # original image (512)"), 1024 for SDXL
    width: int = 0
    height: int = 0

    def size(self, native: int) -> tuple[int, int]:
        return self.width or native, self.height or native


@dataclass(frozen=True)
class CaptionRecipe:
    """Captions: the same text for the original and the edited image.

    The memo tagged with WD14; the effect must not leak into the captions, so by default
    one fixed caption is used for both images (copymachine's choice).
    """

    text: str = "1girl"
    # "fixed": `text` for both images. "wd14": the WD14 tagger's tags of the original image (the
    # memo's way), reused verbatim for the edited one, after `prefix` (a trigger word, say).
    method: str = "fixed"
    prefix: str = ""
    general_threshold: float = 0.35  # SmilingWolf's defaults for the v3 taggers
    character_threshold: float = 0.85
    exclude_tags: str = ""  # comma-separated tags never written (e.g. "monochrome, lineart")


@dataclass(frozen=True)
class CopyCheckRecipe:
    """The copy check, after the copy model (memo step 3: "it outputs exactly the original
    image, whatever the prompt"): `images` images from the copy model, each with its own prompt
    and seed (seed, seed+1, ...), at the training size, compared with the original by luma SSIM
    at 256 px on the long side. The run stops when their mean SSIM is below `min_ssim`
    (copymachine's choices, all; 0.8 is not yet calibrated on real models). The sampler is a
    deterministic one (euler, not the ancestral euler_a): a copy machine should copy without
    fresh noise at every step.

    `prompts` are separated by "|"; "{caption}" stands for the training caption. With fewer
    prompts than images they repeat, with the next seeds.
    """

    images: int = 4
    min_ssim: float = 0.8
    steps: int = 20  # fewer than a preview: only "is it the same picture" is asked
    sampler: str = "euler"
    scale: float = 7.0
    seed: int = 1
    prompts: str = "{caption} | 1boy, outdoors, city street | landscape, mountains, no humans | still life, flowers in a vase"
    negative_prompt: str = ""


@dataclass(frozen=True)
class PreviewRecipe:
    """The strength-sweep preview (the memo judged each LoRA by eye at several strengths on a
    model it was not trained on): copymachine's choices. Lists are comma-separated (prompts:
    "|"-separated); size 0 = the model family's own size (512 for SD1)."""

    strengths: str = "-1,-0.5,0,0.5,1"
    prompts: str = GenerateRecipe.prompt
    seeds: str = "1,2"
    size: int = 0
    steps: int = 28
    sampler: str = "euler_a"
    scale: float = 7.0
    negative_prompt: str = GenerateRecipe.negative_prompt
    font: str = ""  # a .ttf/.otf for the labels ("": Pillow's built-in font, ASCII only)



@dataclass(frozen=True)
class LeakageRecipe:
    """The leakage score (the memo, on the difference method: "at higher strength the training
    image came out"): with a preview model, the final LoRA renders each of `prompts` (unrelated to
    the training caption; "|"-separated, seeds seed, seed+1, ...) at strength 0 and at each of
    `strengths`, at the training size; each image's SSIM to the original training image minus
    that of the same seed at strength 0 is how much the LoRA pulls an unrelated picture towards
    its training image. The LoRA leaks from the first strength whose mean gain reaches
    `threshold`. All copymachine's choices."""

    strengths: str = "1,2,3"
    prompts: str = "landscape, mountains, lake, no humans | still life, a bowl of fruit on a wooden table | a red sports car on a city street, night"
    seed: int = 1
    threshold: float = 0.1  # SSIM gain; unrelated pictures differ by a few hundredths
    steps: int = 20
    sampler: str = "euler_a"
    scale: float = 7.0
    negative_prompt: str = ""


@dataclass(frozen=True)
class ModelRecipe:
    """What the base model is used with, in every training and every render (copy check,
    generated original, preview, leakage). `clip_skip`: the CLIP layer counted from the last
    (1: the last, SD1.x's own); NovelAI-derived SD1.5 anime models (the memo's base,
    nai_full.ckpt, and its descendants) are trained and used with 2. SD1.x only: SDXL always
    reads its penultimate layer. Recorded in the final LoRA as ss_clip_skip."""

    clip_skip: int = 1


@dataclass(frozen=True)
class WatchRecipe:
    """What a training saves on the way (copymachine's choices; none of it changes the trained
    weights, so none enters a stage key). Every `save_every_n_steps` steps sd-scripts saves its
    whole state (network, optimizer, scheduler, RNG), the last one only, so that a killed
    training resumes there (0: no state saved, a killed training starts again at step 0)."""

    save_every_n_steps: int = 256  # 12 saves in the copy LoRA's 3072 steps, 16 in an effect's 4096
    # `--samples N`: every N steps sd-scripts renders these prompts ("|"-separated; "{caption}" is
    # the training caption) at the training size, seeds sample_seed, sample_seed+1, ...; for the
    # effect LoRA on the copy model with the LoRA at +1, so the edit is seen growing
    sample_prompts: str = "{caption}"
    sample_sampler: str = "euler_a"
    sample_steps: int = 20
    sample_scale: float = 7.0
    sample_seed: int = 1


# --- the range of every number -------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """The values a recipe key accepts: a range (`low_open`: the low end itself is refused), or
    `choices` for a text key. Checked where a value enters the recipe (a file, --set, a shorthand
    option), before any work."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    why: str = ""

    def problem(self, value: Any) -> str | None:
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and value > self.high
        return f"must be {self.text()}" if too_low or too_high else None

    def text(self) -> str:
        lo, hi = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            return f"{'above' if self.low_open else 'from'} {lo} {'and at most' if self.low_open else 'to'} {hi}"
        if self.low is not None:
            return f"{'above' if self.low_open else 'at least'} {lo}"
        return f"at most {hi}"


def _number(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else f"{value}"

# gen_img.py's --sampler choices at the pinned commit (a typo fails only when rendering, hours in)
SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++", "dpmsingle",
            "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")
MAX_RANK = 1024  # a LoRA rank above this is larger than SD's own layers' widths (320-1280)
MAX_SEED = 2**32 - 1
MAX_SIDE = 8192
PRECISIONS = ("float", "fp16", "bf16")
_RANK = Limit(1, MAX_RANK)
_SEED = Limit(0, MAX_SEED)
_SAMPLING_STEPS = Limit(1, 1000)
_CFG_SCALE = Limit(0, 50, low_open=True)
_PRECISION = Limit(choices=PRECISIONS)
_SAMPLER = Limit(choices=SAMPLERS)
# a LoRA strength (--am): beyond this a slider LoRA only burns the picture
STRENGTH = Limit(-10, 10)

LIMITS: dict[type, dict[str, Limit]] = {
    TrainingRecipe: {
        "network_dim": _RANK,
        "network_alpha": Limit(0, 4 * MAX_RANK, low_open=True),
        "learning_rate": Limit(0, 1, low_open=True),
        "repeats": Limit(1, 100000),
        "epochs": Limit(1, 10000),
        "warmup_steps": Limit(0),
        "keep_tokens": Limit(0, 75),  # CLIP's 75 tokens
        "batch_size": Limit(1, 64),
        "seed": _SEED,
        "save_precision": _PRECISION,
    },
    MergeRecipe: {"ratio": Limit(0, 2, low_open=True), "precision": _PRECISION, "save_precision": _PRECISION, "copy_model": Limit(choices=COPY_MODEL_ROUTES)},
    ResizeRecipe: {"rank": Limit(0, MAX_RANK, why="0 keeps the trained rank"), "save_precision": _PRECISION},
    SvdMergeRecipe: {"rank": _RANK, "precision": Limit(choices=("float",), why="svd_merge_lora.py's SVD needs fp32"), "save_precision": _PRECISION},
    CombineRecipe: {"extract_dim": _RANK, "min_diff": Limit(0, 1), "precision": _PRECISION},
    GenerateRecipe: {"seed": _SEED, "steps": _SAMPLING_STEPS, "sampler": _SAMPLER, "scale": _CFG_SCALE,
                     "width": Limit(0, MAX_SIDE, why="0: the model's own size"), "height": Limit(0, MAX_SIDE, why="0: the model's own size")},
    CaptionRecipe: {"method": Limit(choices=("fixed", "wd14")), "general_threshold": Limit(0, 1), "character_threshold": Limit(0, 1)},
    CopyCheckRecipe: {"images": Limit(1, 64), "min_ssim": Limit(0, 1), "steps": _SAMPLING_STEPS, "sampler": _SAMPLER, "scale": _CFG_SCALE, "seed": _SEED},
    LeakageRecipe: {"seed": _SEED, "threshold": Limit(0, 1, low_open=True), "steps": _SAMPLING_STEPS, "sampler": _SAMPLER, "scale": _CFG_SCALE},
    ModelRecipe: {"clip_skip": Limit(1, 12, why="CLIP ViT-L/14 has 12 layers")},
    PreviewRecipe: {"size": Limit(0, MAX_SIDE, why="0: the model's own size"), "steps": _SAMPLING_STEPS, "sampler": _SAMPLER, "scale": _CFG_SCALE},
    WatchRecipe: {"save_every_n_steps": Limit(0, 100000, why="0: no saved state"), "sample_sampler": _SAMPLER, "sample_steps": _SAMPLING_STEPS,
                  "sample_scale": _CFG_SCALE, "sample_seed": _SEED},
}


# Step 5 and the memo's results: dim 64 / alpha 32, 4096 steps; flat and jpeg were weak and were
# retrained with dim 128 / alpha 64 / 5120 steps.
EFFECT_TRAINING = TrainingRecipe(epochs=8)  # 512 x 8 = 4096 steps
RETRAINED_EFFECT_TRAINING = TrainingRecipe(network_dim=128, network_alpha=64.0, epochs=10)  # 5120 steps
RETRAINED_EFFECTS = ("flat", "jpeg")
# The difference-extraction method's over-fitted LoRAs A and B: "4096 steps" (512 x 8).
DIFF_TRAINING = TrainingRecipe(epochs=8)


def _default_effect_overrides() -> dict[str, TrainingRecipe]:
    return {name: RETRAINED_EFFECT_TRAINING for name in RETRAINED_EFFECTS}


@dataclass(frozen=True)
class Recipe:
    """The whole method's numbers. `effect_overrides` holds per-effect training recipes."""

    copy: TrainingRecipe = field(default_factory=TrainingRecipe)
    effect: TrainingRecipe = EFFECT_TRAINING
    effect_overrides: dict[str, TrainingRecipe] = field(default_factory=_default_effect_overrides)
    diff: TrainingRecipe = DIFF_TRAINING
    merge: MergeRecipe = field(default_factory=MergeRecipe)
    resize: ResizeRecipe = field(default_factory=ResizeRecipe)
    svd: SvdMergeRecipe = field(default_factory=SvdMergeRecipe)
    combine: CombineRecipe = field(default_factory=CombineRecipe)
    generate: GenerateRecipe = field(default_factory=GenerateRecipe)
    caption: CaptionRecipe = field(default_factory=CaptionRecipe)
    copy_check: CopyCheckRecipe = field(default_factory=CopyCheckRecipe)
    preview: PreviewRecipe = field(default_factory=PreviewRecipe)
    leakage: LeakageRecipe = field(default_factory=LeakageRecipe)
    model: ModelRecipe = field(default_factory=ModelRecipe)
    # sd-scripts training options the recipe does not name (noise_offset, network_args, ...):
    # added to every training's TOML as they are, checked against the training script's --help
    # before any work ([sd_args] in a recipe file, --sd-arg KEY=VALUE)
    sd_args: dict[str, Any] = field(default_factory=dict)
    watch: WatchRecipe = field(default_factory=WatchRecipe)

    def effect_training(self, effect: str) -> TrainingRecipe:
        return self.effect_overrides.get(effect, self.effect)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in fields(self):
            if f.name in _FREE_SECTIONS:
                continue
            d[f.name] = dataclasses.asdict(getattr(self, f.name))
        for name, training in sorted(self.effect_overrides.items()):
            d[f"effect.{name}"] = dataclasses.asdict(training)
        d["sd_args"] = dict(self.sd_args)
        return d


# Recipe fields that are not a table of named keys
_FREE_SECTIONS = ("effect_overrides", "sd_args")


MEMO = Recipe()

# Sections a recipe file or --set may name, and the dataclass behind each.
_SECTIONS: dict[str, type] = {
    "copy": TrainingRecipe,
    "effect": TrainingRecipe,
    "diff": TrainingRecipe,
    "merge": MergeRecipe,
    "resize": ResizeRecipe,
    "svd": SvdMergeRecipe,
    "combine": CombineRecipe,
    "generate": GenerateRecipe,
    "caption": CaptionRecipe,
    "copy_check": CopyCheckRecipe,
    "preview": PreviewRecipe,
    "leakage": LeakageRecipe,
    "model": ModelRecipe,
    "watch": WatchRecipe,
}
SD_ARGS = "sd_args"


def _section_type(section: str) -> type:
    if section in _SECTIONS:
        return _SECTIONS[section]
    if section.startswith("effect.") and section.count(".") == 1 and section.split(".")[1]:
        return TrainingRecipe
    valid = ", ".join(list(_SECTIONS) + ["effect.<name>", SD_ARGS])
    raise InputError(f"unknown recipe section [{section}]; valid sections: {valid}")


def _convert(section: str, key: str, value: Any, target: type) -> Any:
    """Convert a value (a TOML value, or a string from --set) to the field's type."""
    where = f"{section}.{key}"
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise InputError(f"recipe {where} must be true or false, not {value!r}")
    if target is int:
        if isinstance(value, bool):
            raise InputError(f"recipe {where} must be a whole number, not {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise InputError(f"recipe {where} must be a whole number, not {value!r}") from None
    if target is float:
        if isinstance(value, bool):
            raise InputError(f"recipe {where} must be a number, not {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(f"recipe {where} must be a number, not {value!r}") from None
    if not isinstance(value, str):
        raise InputError(f"recipe {where} must be a string, not {value!r}")
    return value


def _checked(source: str, section: str, cls: type, key: str, value: Any) -> Any:
    """`value` if it is in the key's range (LIMITS), else one clear line naming the range."""
    limit = LIMITS.get(cls, {}).get(key)
    problem = limit.problem(value) if limit else None
    if problem:
        why = f" ({limit.why})" if limit.why else ""
        raise InputError(f"{source}: recipe {section}.{key}={value!r} {problem}{why}")
    return value


def _field_types(cls: type) -> dict[str, type]:
    types = {"int": int, "float": float, "bool": bool, "str": str}
    return {f.name: types[f.type if isinstance(f.type, str) else f.type.__name__] for f in fields(cls)}


def apply_overrides(recipe: Recipe, overrides: dict[str, dict[str, Any]], source: str) -> Recipe:
    """Return `recipe` with `{section: {key: value}}` applied; unknown keys name the valid ones."""
    sections = {f.name: getattr(recipe, f.name) for f in fields(recipe) if f.name not in _FREE_SECTIONS}
    effect_overrides = dict(recipe.effect_overrides)
    sd_args = dict(recipe.sd_args)
    for section, values in overrides.items():
        if section == SD_ARGS:
            sd_args.update(checked_sd_args(values, source))
            continue
        cls = _section_type(section)
        if not isinstance(values, dict):
            raise InputError(f"{source}: [{section}] must be a table of keys")
        types = _field_types(cls)
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise InputError(
                f"{source}: unknown key {section}.{unknown[0]}; valid keys in [{section}]: {', '.join(types)}"
            )
        changes = {k: _checked(source, section, cls, k, _convert(section, k, v, types[k])) for k, v in values.items()}
        if section.startswith("effect."):
            name = section.split(".", 1)[1]
            effect_overrides[name] = replace(effect_overrides.get(name, sections["effect"]), **changes)
        else:
            sections[section] = replace(sections[section], **changes)
    result = Recipe(effect_overrides=effect_overrides, sd_args=sd_args, **sections)
    _validate(result, source)
    return result


def _validate(recipe: Recipe, source: str) -> None:
    """Every key in its range (LIMITS), and what ranges alone cannot say."""
    sections: dict[str, Any] = {f.name: getattr(recipe, f.name) for f in fields(recipe) if f.name not in _FREE_SECTIONS}
    sections.update({f"effect.{k}": v for k, v in recipe.effect_overrides.items()})
    for section, values in sections.items():
        for f in fields(values):
            _checked(source, section, type(values), f.name, getattr(values, f.name))
        if isinstance(values, TrainingRecipe) and values.lr_scheduler == "constant" and values.warmup_steps:
            raise InputError(
                f"{source}: recipe {section}: sd-scripts' 'constant' scheduler rejects warmup; "
                "use 'constant_with_warmup' or set warmup_steps = 0"
            )
    strengths(recipe.preview.strengths, f"{source}: recipe preview.strengths")
    leak = strengths(recipe.leakage.strengths, f"{source}: recipe leakage.strengths")
    if any(v == 0 for v in leak):
        raise InputError(f"{source}: recipe leakage.strengths: 0 is the reference every strength is compared with; give strengths other than 0")
    if not split_prompts(recipe.leakage.prompts):
        raise InputError(f"{source}: recipe leakage.prompts: give at least one prompt")
    seeds(recipe.preview.seeds, f"{source}: recipe preview.seeds")


# --- sd-scripts options the recipe does not name ([sd_args], --sd-arg KEY=VALUE) ---------------

_SD_ARG_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def checked_sd_args(values: Any, source: str) -> dict[str, Any]:
    """An [sd_args] table: option names of sd-scripts' training script (checked against its
    --help later, with the engine) and TOML values (a string, number, boolean or array)."""
    if not isinstance(values, dict):
        raise InputError(f"{source}: [{SD_ARGS}] must be a table of sd-scripts training options (noise_offset = 0.05)")
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).removeprefix("--")
        if not _SD_ARG_KEY.fullmatch(name):
            raise InputError(f"{source}: sd-scripts option {key!r} is not an option name (letters, digits and _, as in noise_offset)")
        if isinstance(value, dict) or value is None:
            raise InputError(f"{source}: sd-scripts option {name} needs a value: a string, a number, true/false or an array")
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{source}: sd-scripts option {name}={value!r} must be a finite number")
        out[name] = value
    return out


def parse_sd_args(items: tuple[str, ...] | list[str], source: str = "--sd-arg") -> dict[str, Any]:
    """`--sd-arg KEY=VALUE` items: VALUE is read as a TOML value (0.05, true, ["conv_dim=8"]),
    else as a string; `--sd-arg KEY` alone is KEY=true (a flag such as xformers)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not name:
            raise InputError(f"{source} expects KEY=VALUE (e.g. noise_offset=0.05), not {item!r}")
        if not sep:
            value: Any = True
        else:
            try:
                value = tomllib.loads(f"v = {text.strip()}")["v"]
            except tomllib.TOMLDecodeError:
                value = text.strip()
        out[name] = value
    return checked_sd_args(out, f"{source}")


def _checked_list(text: str, kind: type, limit: Limit, where: str) -> list:
    try:
        values = parse_number_list(text, kind)
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None
    for v in values:
        if limit.problem(v):
            raise InputError(f"{where}: {v:g} {limit.problem(v)}")
    return values


def strengths(text: str, where: str) -> list[float]:
    """A comma-separated list of LoRA strengths, each in range (STRENGTH)."""
    return _checked_list(text, float, STRENGTH, where)


def ratio(value: float, where: str) -> float:
    """A LoRA's ratio in a merge (--lora X:RATIO, --absorb X:RATIO): a strength, in range (STRENGTH)."""
    problem = STRENGTH.problem(float(value))
    if problem:
        raise InputError(f"{where}: ratio {value:g} {problem}")
    return float(value)


def seeds(text: str, where: str) -> list[int]:
    """A comma-separated list of seeds, each in range."""
    return _checked_list(text, int, _SEED, where)


def parse_number_list(text: str, kind: type = float) -> list:
    """"-1,-0.5,0" -> [-1.0, -0.5, 0.0] (kind int for seeds); at least one value."""
    values = []
    for item in str(text).replace(" ", "").split(","):
        if not item:
            continue
        try:
            values.append(kind(item))
        except ValueError:
            raise ValueError(f"{item!r} is not a {'whole number' if kind is int else 'number'}") from None
    if not values:
        raise ValueError("give at least one value")
    return values


def split_prompts(text: str) -> list[str]:
    """Prompts separated by "|" (blank ones dropped)."""
    return [p.strip() for p in str(text).split("|") if p.strip()]



def load_recipe_file(path: Path, base: Recipe = MEMO) -> Recipe:
    """Read a recipe TOML file (sections and keys as in `Recipe.to_dict()`)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"recipe file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read recipe file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"recipe file {path} is not valid TOML: {e}") from None
    overrides: dict[str, dict[str, Any]] = {}
    for section, values in data.items():
        if section == "effect" and isinstance(values, dict):
            plain = {k: v for k, v in values.items() if not isinstance(v, dict)}
            overrides["effect"] = plain
            for name, sub in values.items():
                if isinstance(sub, dict):
                    overrides[f"effect.{name}"] = sub
        else:
            overrides[section] = values
    return apply_overrides(base, overrides, str(path))


def parse_set_options(items: tuple[str, ...] | list[str]) -> dict[str, dict[str, str]]:
    """`--set section.key=value` items (section may be `effect.flat`) to override tables."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().rpartition(".")
        if not sep or not dot or not section or not key:
            raise InputError(f"--set expects section.key=value (e.g. copy.network_dim=32), not {item!r}")
        if section == SD_ARGS:  # sd-scripts takes the TOML's values as they are: 0.05 must be a number
            out.setdefault(section, {}).update(parse_sd_args([f"{key}={value}"], "--set"))
            continue
        out.setdefault(section, {})[key] = value
    return out


def render_recipe_toml(recipe: Recipe) -> dict[str, Any]:
    """The recipe as TOML-ready data (the format `--recipe` reads)."""
    d = recipe.to_dict()
    effect = d.pop("effect")
    for key in [k for k in d if k.startswith("effect.")]:
        effect[key.split(".", 1)[1]] = d.pop(key)
    d["effect"] = effect
    d[SD_ARGS] = d.pop(SD_ARGS)  # last: a free table, after the memo's sections
    return d
