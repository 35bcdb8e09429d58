"""The recipe's schema: every key, its type, range and memo step. The numbers are data (copymachine/recipes/:
memo.toml, the default `MEMO`; fast.toml, traintrain's Difference preset), overridden by --recipe and --set.
Sections are pydantic dataclasses (dataclasses.replace/asdict work); a bad value is one line naming key and range."""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from copymachine.errors import InputError
from copymachine.files import read_toml


def _not_a_bool(value: Any) -> Any:
    """true is no number, though pydantic's lax mode reads it as 1 (the message names the key's kind)."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_for_number", "a number, not true or false")
    return value


def _text_list(kind: type, alias: Any, refuse_zero: bool = False) -> AfterValidator:
    """A text key holding a comma-separated list, each value of type `alias` (Strength, Seed)."""
    def check(text: str) -> str:
        values = _checked_list(text, kind, alias)
        if refuse_zero and 0 in values:
            raise ValueError("0 is the reference every strength is compared with; give strengths other than 0")
        return text

    return AfterValidator(check)


def _some_prompt(text: str) -> str:
    if not split_prompts(text):
        raise ValueError("give at least one prompt")
    return text


MAX_RANK = 1024  # a LoRA rank above this is larger than SD's own layers' widths (320-1280)
MAX_SEED = 2**32 - 1
MAX_SIDE = 8192
Whole = Annotated[int, BeforeValidator(_not_a_bool)]
Number = Annotated[float, BeforeValidator(_not_a_bool), Field(allow_inf_nan=False)]
Rank = Annotated[Whole, Field(ge=1, le=MAX_RANK)]
Seed = Annotated[Whole, Field(ge=0, le=MAX_SEED)]
SamplingSteps = Annotated[Whole, Field(ge=1, le=1000)]
CfgScale = Annotated[Number, Field(gt=0, le=50)]
Side = Annotated[Whole, Field(ge=0, le=MAX_SIDE, json_schema_extra={"why": "0: the model's own size"})]
Fraction = Annotated[Number, Field(ge=0, le=1)]
Precision = Literal["float", "fp16", "bf16"]
PRECISIONS = get_args(Precision)
# gen_img.py's --sampler choices at the pinned commit (a typo fails only when rendering, hours in)
Sampler = Literal["ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
                  "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a"]
# a LoRA strength (--am): beyond this a slider LoRA only burns the picture
Strength = Annotated[Number, Field(ge=-10, le=10)]
_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True, config=_CONFIG)
class TrainingRecipe:
    """One LoRA training: memo steps 2 (copy LoRA) and 5 (effect LoRA), the difference's LoRAs A and B."""

    network_module: str = Field(description="sd-scripts network module (step 2: networks.lora)")
    network_dim: Rank = Field(description="LoRA rank (steps 2, 5)")
    network_alpha: Number = Field(gt=0, le=4 * MAX_RANK, description="LoRA alpha (steps 2, 5)")
    optimizer: str = Field(description="sd-scripts optimizer_type (step 2: AdamW)")
    learning_rate: Number = Field(gt=0, le=1, description="learning rate (step 2)")
    repeats: Whole = Field(ge=1, le=100000, description="repeats of the one image per epoch (step 2)")
    epochs: Whole = Field(ge=1, le=10000, description="epochs (step 2: steps = epochs x repeats / batch size)")
    warmup_steps: Whole = Field(ge=0, description="learning-rate warmup steps (step 2)")
    lr_scheduler: str = Field(description="sd-scripts lr_scheduler ('constant' rejects warmup)")
    shuffle_caption: bool = Field(description="shuffle the caption's tags (step 2)")
    keep_tokens: Whole = Field(ge=0, le=75, description="tags kept first when shuffling (step 2; CLIP's 75 tokens)")
    batch_size: Whole = Field(ge=1, le=64, description="images per step (copymachine's choice; fast: the preset's)")
    seed: Seed = Field(description="training seed (copymachine's choice: fixed, so a re-run trains the same way)")
    save_precision: Precision = Field(description="dtype of the saved LoRA (float: merged at float, step 3)")
    min_snr_gamma: Number | None = Field(
        None, gt=0, le=100, description="sd-scripts min_snr_gamma (absent: off, as in the memo; fast: the preset's 5)")

    @property
    def steps(self) -> int:
        """Optimizer steps with one training image: sd-scripts runs ceil(repeats / batch size) a epoch."""
        return self.epochs * -(-self.repeats // self.batch_size)

    def as_key(self) -> dict[str, Any]:
        """What the stage key holds: every key, an absent optional one left out (so keys stay as they were)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @model_validator(mode="after")
    def _scheduler_takes_warmup(self) -> TrainingRecipe:
        if self.lr_scheduler == "constant" and self.warmup_steps:
            raise ValueError("sd-scripts' 'constant' scheduler rejects warmup; "
                             "use 'constant_with_warmup' or set warmup_steps = 0")
        return self

    def segment_options(self, total: int) -> dict[str, Any]:
        """TOML keys keeping the schedule across --copy-stop-at's segments: sd-scripts' cosine spans each run's own
        max_train_steps, torch's CosineAnnealingLR with T_max=`total` is the same curve and goes on where it was."""
        if self.lr_scheduler != "cosine" or self.warmup_steps:
            return {}
        return {"lr_scheduler_type": "CosineAnnealingLR", "lr_scheduler_args": [f"T_max={total}"]}


@dataclass(frozen=True, config=_CONFIG)
class MergeRecipe:
    """Step 3, the copy model: merge_lora.py --ratios 1 --precision float --save_precision float."""

    ratio: Number = Field(gt=0, le=2, description="the copy LoRA's ratio in the copy model (step 3: 1)")
    precision: Precision = Field(description="dtype of the merge (step 3: float; the file route only)")
    save_precision: Precision = Field(description="dtype of the copy model file (step 3: float)")
    copy_model: Literal["memory", "file"] = Field(
        description="memory: the copy LoRA as sd-scripts' --base_weights; file: merge_lora.py writes it (the memo)")


@dataclass(frozen=True, config=_CONFIG)
class ResizeRecipe:
    """Step 9: resize_lora.py --new_rank 8 --save_precision fp16."""

    rank: Whole = Field(ge=0, le=MAX_RANK, description="the final rank (step 9: 8)", json_schema_extra={
        "why": "0 keeps the trained rank"})
    save_precision: Precision = Field(description="dtype of the resized LoRA (step 9: fp16)")


@dataclass(frozen=True, config=_CONFIG)
class SvdMergeRecipe:
    """Difference step 5: svd_merge_lora.py --ratios 1 -1 --new_rank 8 --precision float --save_precision fp16."""

    rank: Rank = Field(description="the difference's rank (difference step 5: 8)")
    precision: Literal["float"] = Field(description="dtype of the SVD (difference step 5: float)",
                                        json_schema_extra={"why": "svd_merge_lora.py's SVD needs fp32"})
    save_precision: Precision = Field(description="dtype of the saved difference (difference step 5: fp16)")


@dataclass(frozen=True, config=_CONFIG)
class CombineRecipe:
    """Steps 6-9: several source images' effect LoRAs merged into the model (7), extracted (8), resized (9)."""

    normalize: bool = Field(description="each image's LoRA at 1/n (copymachine's choice: the memo gives no ratios)")
    extract_dim: Rank = Field(description="rank extract_lora_from_models.py extracts at (step 8)")
    min_diff: Fraction = Field(description="extract_lora_from_models.py's min_diff (its own default)")
    precision: Precision = Field(description="dtype the merge and the extraction load and save in")


@dataclass(frozen=True, config=_CONFIG)
class GenerateRecipe:
    """Step 1: the original image from the base model ("anything will do"); copymachine's choices."""

    prompt: str = Field(description="prompt of the generated original")
    negative_prompt: str = Field(description="its negative prompt")
    seed: Seed = Field(description="its seed")
    steps: SamplingSteps = Field(description="sampling steps")
    sampler: Sampler = Field(description="gen_img.py sampler")
    scale: CfgScale = Field(description="CFG scale")
    width: Side = Field(description="width (0: the model's own size, step 2: 512 for SD1.x)")
    height: Side = Field(description="height (0: the model's own size)")

    def size(self, native: int) -> tuple[int, int]:
        return self.width or native, self.height or native


@dataclass(frozen=True, config=_CONFIG)
class CaptionRecipe:
    """The caption of both training images (the memo tagged with WD14)."""

    text: str = Field(description="the fixed caption")
    method: Literal["fixed", "wd14"] = Field(description="fixed: text; wd14: the tagger's tags (the memo's way)")
    prefix: str = Field(description="written before the tags (a trigger word)")
    general_threshold: Fraction = Field(description="WD14 general-tag threshold")
    character_threshold: Fraction = Field(description="WD14 character-tag threshold")
    exclude_tags: str = Field(description="comma-separated tags never written")


@dataclass(frozen=True, config=_CONFIG)
class CopyCheckRecipe:
    """Step 3, "it outputs exactly the original image": renders' luma SSIM at 256 px to it; stops below `min_ssim`."""

    images: Whole = Field(ge=1, le=64, description="renders")
    min_ssim: Fraction = Field(description="the bar the renders' mean SSIM must reach")
    steps: SamplingSteps = Field(description="sampling steps")
    sampler: Sampler = Field(description="gen_img.py sampler (deterministic: euler)")
    scale: CfgScale = Field(description="CFG scale")
    seed: Seed = Field(description="first seed")
    prompts: str = Field(description='"|"-separated prompts')
    negative_prompt: str = Field(description="negative prompt")


@dataclass(frozen=True, config=_CONFIG)
class PreviewRecipe:
    """The strength sweep on a preview model (the memo judged each LoRA by eye on another model)."""

    strengths: Annotated[str, _text_list(float, Strength)] = Field(description="comma-separated LoRA strengths")
    prompts: str = Field(description='"|"-separated prompts')
    seeds: Annotated[str, _text_list(int, Seed)] = Field(description="comma-separated seeds")
    size: Side = Field(description="side (0: the model's own size)")
    steps: SamplingSteps = Field(description="sampling steps")
    sampler: Sampler = Field(description="gen_img.py sampler")
    scale: CfgScale = Field(description="CFG scale")
    negative_prompt: str = Field(description="negative prompt")
    font: str = Field(description='a .ttf/.otf for the labels ("": Pillow\'s own, ASCII only)')


@dataclass(frozen=True, config=_CONFIG)
class LeakageRecipe:
    """Does the final LoRA draw its training image into unrelated prompts (memo: "the training image came out")?"""

    strengths: Annotated[str, _text_list(float, Strength, refuse_zero=True)] = Field(
        description="comma-separated strengths, each compared with strength 0")
    prompts: Annotated[str, AfterValidator(_some_prompt)] = Field(
        description='"|"-separated prompts unrelated to the training caption')
    seed: Seed = Field(description="first seed")
    threshold: Annotated[Number, Field(gt=0, le=1)] = Field(description="SSIM gain from which the LoRA leaks")
    steps: SamplingSteps = Field(description="sampling steps")
    sampler: Sampler = Field(description="gen_img.py sampler")
    scale: CfgScale = Field(description="CFG scale")
    negative_prompt: str = Field(description="negative prompt")


@dataclass(frozen=True, config=_CONFIG)
class ModelRecipe:
    """The base model in every training and render; recorded in the final LoRA as ss_clip_skip."""

    clip_skip: Whole = Field(ge=1, le=12, json_schema_extra={"why": "CLIP ViT-L/14 has 12 layers"}, description=(
        "CLIP layer counted from the last (SD1.x; 2 for NovelAI-derived anime models, the memo's base)"))


@dataclass(frozen=True, config=_CONFIG)
class WatchRecipe:
    """What a training saves on the way; none of it changes the trained weights. copymachine's choices."""

    save_every_n_steps: Whole = Field(ge=0, description="steps between saved states (0: none; copy stop's segment)")
    sample_prompts: str = Field(description='--samples: "|"-separated prompts ("{caption}": the training caption)')
    sample_sampler: Sampler = Field(description="--samples: sampler")
    sample_steps: SamplingSteps = Field(description="--samples: sampling steps")
    sample_scale: CfgScale = Field(description="--samples: CFG scale")
    sample_seed: Seed = Field(description="--samples: first seed")


@dataclass(frozen=True, config=_CONFIG)
class Recipe:
    """The whole method's numbers: one section per step; `effect_overrides`: [effect.NAME] tables."""

    copy: TrainingRecipe = Field(description="memo step 2, the copy LoRA (steps = epochs x repeats / batch_size)")
    effect: TrainingRecipe = Field(description="memo step 5, the effect LoRA; [effect.flat]: one effect's own")
    effect_overrides: dict[str, TrainingRecipe] = Field(description="[effect.NAME] (the memo retrained flat, jpeg)")
    diff: TrainingRecipe = Field(description="difference extraction: the over-fitted LoRAs A and B (memo steps 2, 4)")
    merge: MergeRecipe = Field(description=(
        'memo step 3, the copy model: in memory (copy_model = "memory") or merge_lora.py into a file'))
    resize: ResizeRecipe = Field(description="memo step 9, resize_lora.py (rank 0 keeps the trained rank)")
    svd: SvdMergeRecipe = Field(description="svd_merge_lora.py: difference step 5, the exact combine route")
    combine: CombineRecipe = Field(description="memo steps 6-8: several images' LoRAs merged and extracted")
    generate: GenerateRecipe = Field(description="memo step 1, when no --image is given (copymachine's choices)")
    caption: CaptionRecipe = Field(description="the caption of both training images")
    copy_check: CopyCheckRecipe = Field(description=(
        "memo step 3, does the copy model copy? renders vs the original, stops below min_ssim"))
    preview: PreviewRecipe = Field(description="the strength sweep on a preview model (--preview-model)")
    leakage: LeakageRecipe = Field(description=(
        "with a preview model: does the LoRA draw its training image into unrelated prompts?"))
    model: ModelRecipe = Field(description="the base model in every training and render: clip_skip")
    # added to every training's TOML as they are, checked against the training script's --help before any work
    sd_args: dict[str, Any] = Field(description=(
        "sd-scripts training options the recipe does not name (noise_offset = 0.05; --sd-arg KEY=VALUE)"))
    watch: WatchRecipe = Field(description=(
        "during a training: its state saved every save_every_n_steps steps, to resume a killed run"))
    name: str = Field("", description="the recipe's name (recorded in the manifest and the final LoRA)")
    description: str = Field("", description="one line on the recipe (copymachine recipe --list)")

    def effect_training(self, effect: str) -> TrainingRecipe:
        return self.effect_overrides.get(effect, self.effect)

    def to_dict(self) -> dict[str, Any]:
        """Name, description, then sections as tables ([effect.NAME] as "effect.NAME"), sd_args last."""
        d = dataclasses.asdict(self)
        overrides, sd_args = d.pop("effect_overrides"), d.pop(SD_ARGS)
        d = {"name": d.pop("name"), "description": d.pop("description"), **d}
        d.update({f"effect.{k}": v for k, v in sorted(overrides.items())})
        d[SD_ARGS] = sd_args
        return {k: {n: x for n, x in v.items() if x is not None} if isinstance(v, dict) else v for k, v in d.items()}


SD_ARGS = "sd_args"
_META = ("name", "description", "base")  # a recipe file's top-level keys that are not sections
_RECIPE = TypeAdapter(Recipe)


def schema_fields(cls: type) -> dict[str, FieldInfo]:
    """A section's (or the Recipe's) keys as pydantic knows them: type, range, description."""
    return dict(cls.__pydantic_fields__)  # type: ignore[attr-defined]


# the sections of named keys, and the class behind each ([effect.NAME]: TrainingRecipe)
_SECTIONS: dict[str, type] = {
    name: f.annotation for name, f in schema_fields(Recipe).items()
    if isinstance(f.annotation, type) and dataclasses.is_dataclass(f.annotation)
}
BUILT_IN = importlib.resources.files("copymachine") / "recipes"


def built_in_names() -> list[str]:
    """The recipes shipped with copymachine (copymachine/recipes/NAME.toml), memo first."""
    names = sorted(p.name.removesuffix(".toml") for p in BUILT_IN.iterdir() if p.name.endswith(".toml"))
    return sorted(names, key=lambda n: n != "memo")


def _read_toml(path: Path | Any) -> dict[str, Any]:
    return read_toml(path, "recipe file", f" (built-in recipes: {', '.join(built_in_names())})")


def built_in(name: str) -> Recipe:
    """A built-in recipe: its file holds every key (nothing is taken from another recipe)."""
    if name not in built_in_names():
        raise InputError(f"no built-in recipe {name!r}; built-in recipes: {', '.join(built_in_names())}")
    path = BUILT_IN / f"{name}.toml"
    data = _read_toml(path)
    tables = _overrides_of(data)
    recipe = {k: v for k, v in tables.items() if not k.startswith("effect.")}
    recipe["effect_overrides"] = {k.split(".", 1)[1]: v for k, v in tables.items() if k.startswith("effect.")}
    return _validated({**recipe, "name": data.get("name", name), "description": data.get("description", "")}, str(path))


def _overrides_of(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe file's tables as override tables: [effect.NAME] apart from [effect]."""
    out: dict[str, Any] = {}
    for section, values in data.items():
        if section in _META:
            continue
        if section == "effect" and isinstance(values, dict):
            out["effect"] = {k: v for k, v in values.items() if not isinstance(v, dict)}
            out.update({f"effect.{k}": v for k, v in values.items() if isinstance(v, dict)})
        else:
            out[section] = values
    return out


def load_recipe_file(path: Path | str, base: Recipe | None = None) -> Recipe:
    """A built-in recipe, or a TOML file over `base` (MEMO or its `base = "NAME"`), named by `name` or its stem."""
    p = Path(path)  # a bare name is a built-in one (also as a jobs file's folder/NAME: that file absent)
    if str(path) in built_in_names() or (not p.exists() and not p.suffix and p.name in built_in_names()):
        return built_in(p.name)
    data = _read_toml(p)
    if "base" in data:
        base = built_in(str(data["base"]))
    base = base or MEMO
    name = str(data.get("name") or p.stem)
    description = str(data.get("description", base.description if name == base.name else ""))
    recipe = apply_overrides(base, _overrides_of(data), str(path))
    return dataclasses.replace(recipe, name=name, description=description)


def apply_overrides(recipe: Recipe, overrides: dict[str, Any], source: str) -> Recipe:
    """Return `recipe` with `{section: {key: value}}` applied; unknown keys name the valid ones."""
    data = dataclasses.asdict(recipe)
    effects = data["effect_overrides"]
    for section, values in overrides.items():
        if section == SD_ARGS:
            data[SD_ARGS] = {**data[SD_ARGS], **checked_sd_args(values, source)}
            continue
        cls = _section_class(section)
        if cls is None:
            valid = ", ".join(list(_SECTIONS) + ["effect.<name>", SD_ARGS])
            raise InputError(f"unknown recipe section [{section}]; valid sections: {valid}")
        if not isinstance(values, dict):
            raise InputError(f"{source}: [{section}] must be a table of keys")
        keys = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(keys))
        if unknown:
            valid = ", ".join(keys)
            raise InputError(f"{source}: unknown key {section}.{unknown[0]}; valid keys in [{section}]: {valid}")
        if section.startswith("effect."):
            name = section.split(".", 1)[1]
            effects[name] = {**effects.get(name, data["effect"]), **values}
        else:
            data[section] = {**data[section], **values}
    return _validated(data, source)


def _section_class(section: str) -> type | None:
    """The class behind a section of named keys ([effect.NAME]: TrainingRecipe), None if there is none."""
    name, _, effect = section.partition(".")
    return TrainingRecipe if name == "effect" and effect and "." not in effect else _SECTIONS.get(section)


def _validated(data: dict[str, Any], source: str) -> Recipe:
    try:
        return _RECIPE.validate_python(data)
    except ValidationError as e:
        raise InputError(_message(e.errors()[0], source)) from None


def _message(error: ErrorDetails, source: str) -> str:
    """One line on a bad value: the key, the value, what it must be."""
    loc = [str(part) for part in error["loc"]]
    if loc[:1] == ["effect_overrides"]:
        loc = [f"effect.{loc[1]}", *loc[2:]]
    where, value = ".".join(loc), error["input"]
    if error["type"] == "value_error":
        return f"{source}: recipe {where}: {error['msg'].removeprefix('Value error, ')}"
    cls = _section_class(loc[0])
    info = schema_fields(cls).get(loc[-1]) if cls is not None and len(loc) == 2 else None
    if info is None:
        return f"{source}: recipe {where}: {error['msg']}"
    problem = _problem(error, info)
    if error["type"] not in _OUT_OF_RANGE:  # not even of the key's type
        return f"{source}: recipe {where} {problem}, not {value!r}"
    return f"{source}: recipe {where}={_typed(value, info)!r} {problem}"


_RANGES = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_OUT_OF_RANGE = ("finite_number", "literal_error", *_RANGES)
_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def _base_type(info: FieldInfo) -> Any:
    """int, float, bool or str: the key's type, out of Optional[...] and Annotated[...]."""
    kind = next((a for a in (get_args(info.annotation) or (info.annotation,)) if a is not type(None)), str)
    return get_args(kind)[0] if get_origin(kind) is Annotated else kind


def _problem(error: ErrorDetails, info: FieldInfo) -> str:
    """What the value must be, in words: its range (and why), its choices, or its kind."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    why = f" ({extra['why']})" if "why" in extra else ""
    kind = error["type"]
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "literal_error":
        return f"must be one of {', '.join(map(str, get_args(info.annotation)))}{why}"
    if kind in _RANGES:
        return f"must be {range_text(info.metadata)}{why}"
    return f"must be {_KINDS.get(_base_type(info), 'a ' + str(_base_type(info)))}"


def _typed(value: Any, info: FieldInfo) -> Any:
    """The value as the key's type reads it (--set's "0" is 0.0 for a float key), to show it."""
    try:
        return _base_type(info)(value) if isinstance(value, str) else value
    except (TypeError, ValueError):
        return value


def range_text(metadata: list[Any]) -> str:
    """"from 1 to 1024", "above 0 and at most 1", "at least 0": the bounds of annotated_types."""
    ge = next((m.ge for m in metadata if isinstance(m, Ge)), None)
    gt = next((m.gt for m in metadata if isinstance(m, Gt)), None)
    low, high = (gt if ge is None else ge), next((m.le for m in metadata if isinstance(m, Le)), None)
    lo, hi, open_low = _number(low), _number(high), gt is not None
    if low is not None and high is not None:
        return f"above {lo} and at most {hi}" if open_low else f"from {lo} to {hi}"
    return (f"above {lo}" if open_low else f"at least {lo}") if low is not None else f"at most {hi}"


def _number(value: Any) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else f"{value}"


# --- sd-scripts options the recipe does not name ([sd_args], --sd-arg KEY=VALUE) ---------------
_SD_ARG_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def checked_sd_args(values: Any, source: str) -> dict[str, Any]:
    """An [sd_args] table: sd-scripts option names (checked against its --help later) and TOML values."""
    if not isinstance(values, dict):
        raise InputError(f"{source}: [{SD_ARGS}] must be a table of sd-scripts training options (noise_offset = 0.05)")
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).removeprefix("--")
        if not _SD_ARG_KEY.fullmatch(name):
            raise InputError(f"{source}: sd-scripts option {key!r} is not an option name "
                             "(letters, digits and _, as in noise_offset)")
        if isinstance(value, dict) or value is None:
            raise InputError(f"{source}: sd-scripts option {name} needs a value: "
                             "a string, a number, true/false or an array")
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{source}: sd-scripts option {name}={value!r} must be a finite number")
        out[name] = value
    return out


def parse_sd_args(items: tuple[str, ...] | list[str], source: str = "--sd-arg") -> dict[str, Any]:
    """`--sd-arg KEY=VALUE` items: VALUE as TOML (0.05, true, [...]), else a string; KEY alone is KEY=true."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not name:
            raise InputError(f"{source} expects KEY=VALUE (e.g. noise_offset=0.05), not {item!r}")
        value: Any = True
        if sep:
            try:
                value = tomllib.loads(f"v = {text.strip()}")["v"]
            except tomllib.TOMLDecodeError:
                value = text.strip()
        out[name] = value
    return checked_sd_args(out, source)


# --- lists in a recipe's text keys, and LoRA strengths -------------------------------------------
_adapter = functools.cache(TypeAdapter)


def _problem_of(alias: Any, value: Any) -> str | None:
    """What is wrong with `value` as a value of the type `alias` (Strength, Seed), or None."""
    try:
        _adapter(alias).validate_python(value)
        return None
    except ValidationError as e:
        return _problem(e.errors()[0], FieldInfo.from_annotation(alias))


def _checked_list(text: str, kind: type, alias: Any) -> list:
    """The values of a comma-separated list, each of type `alias` (ValueError: the first bad one)."""
    values = parse_number_list(text, kind)
    for v in values:
        if problem := _problem_of(alias, v):
            raise ValueError(f"{v:g} {problem}")
    return values


def _listed(text: str, kind: type, alias: Any, where: str) -> list:
    try:
        return _checked_list(text, kind, alias)
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None


def strengths(text: str, where: str) -> list[float]:
    """A comma-separated list of LoRA strengths, each in range (Strength)."""
    return _listed(text, float, Strength, where)


def seeds(text: str, where: str) -> list[int]:
    return _listed(text, int, Seed, where)


def ratio(value: float, where: str) -> float:
    """A LoRA's ratio in a merge (--lora X:RATIO, --absorb X:RATIO): a strength, in range."""
    if problem := _problem_of(Strength, float(value)):
        raise InputError(f"{where}: ratio {value:g} {problem}")
    return float(value)


def parse_number_list(text: str, kind: type = float) -> list:
    """"-1,-0.5,0" -> [-1.0, -0.5, 0.0] (kind int for seeds); at least one value."""
    items = [item for item in str(text).replace(" ", "").split(",") if item]
    for item in items:
        try:
            kind(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a {'whole number' if kind is int else 'number'}") from None
    if not items:
        raise ValueError("give at least one value")
    return [kind(item) for item in items]


def split_prompts(text: str) -> list[str]:
    """Prompts separated by "|" (blank ones dropped)."""
    return [p.strip() for p in str(text).split("|") if p.strip()]


# --- reading and writing recipes -------------------------------------------------------------------
def parse_set_options(items: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
    """`--set section.key=value` items (section may be `effect.flat`) to override tables."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().rpartition(".")
        if not sep or not dot or not section or not key:
            raise InputError(f"--set expects section.key=value (e.g. copy.network_dim=32), not {item!r}")
        # sd-scripts takes the TOML's values as they are: 0.05 must be a number
        values = parse_sd_args([f"{key}={value}"], "--set") if section == SD_ARGS else {key: value}
        out.setdefault(section, {}).update(values)
    return out


def render_recipe_toml(recipe: Recipe) -> dict[str, Any]:
    """The recipe as TOML-ready data (the format `--recipe` reads): [effect.NAME] inside [effect], sd_args last."""
    d = recipe.to_dict()
    sd_args = d.pop(SD_ARGS)
    effect = d.pop("effect") | {k.split(".", 1)[1]: d.pop(k) for k in [k for k in d if k.startswith("effect.")]}
    return {**d, "effect": effect, SD_ARGS: sd_args}


MEMO = built_in("memo")
