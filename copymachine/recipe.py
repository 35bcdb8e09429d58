"""The recipe: every number of the copy-machine memo, in one place, each named.

The memo is `shared/seed/copy-machine-lora.en.md` (original: `copy-machine-lora.ja.txt`).
Each default below cites the memo step it comes from; the few choices the memo does not make
are marked "copymachine's choice". A recipe is overridden, key by key, from a TOML file
(`--recipe FILE`, same sections and keys as `Recipe.to_dict()`) and from the command line
(`--set section.key=value` and the shorthand options of `copymachine train`).
"""

from __future__ import annotations

import dataclasses
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
    and seed (seed, seed+1, ...), at the training size, compared with the original by SSIM.
    The run stops when their mean SSIM is below `min_ssim` (copymachine's choices, all).

    `prompts` are separated by "|"; "{caption}" stands for the training caption. With fewer
    prompts than images they repeat, with the next seeds.
    """

    images: int = 4
    min_ssim: float = 0.8
    steps: int = 20  # fewer than a preview: only "is it the same picture" is asked
    sampler: str = "euler_a"
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

    def effect_training(self, effect: str) -> TrainingRecipe:
        return self.effect_overrides.get(effect, self.effect)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "effect_overrides":
                continue
            d[f.name] = dataclasses.asdict(getattr(self, f.name))
        for name, training in sorted(self.effect_overrides.items()):
            d[f"effect.{name}"] = dataclasses.asdict(training)
        return d


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
}


def _section_type(section: str) -> type:
    if section in _SECTIONS:
        return _SECTIONS[section]
    if section.startswith("effect.") and section.count(".") == 1 and section.split(".")[1]:
        return TrainingRecipe
    valid = ", ".join(list(_SECTIONS) + ["effect.<name>"])
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


def _field_types(cls: type) -> dict[str, type]:
    types = {"int": int, "float": float, "bool": bool, "str": str}
    return {f.name: types[f.type if isinstance(f.type, str) else f.type.__name__] for f in fields(cls)}


def apply_overrides(recipe: Recipe, overrides: dict[str, dict[str, Any]], source: str) -> Recipe:
    """Return `recipe` with `{section: {key: value}}` applied; unknown keys name the valid ones."""
    sections = {f.name: getattr(recipe, f.name) for f in fields(recipe) if f.name != "effect_overrides"}
    effect_overrides = dict(recipe.effect_overrides)
    for section, values in overrides.items():
        cls = _section_type(section)
        if not isinstance(values, dict):
            raise InputError(f"{source}: [{section}] must be a table of keys")
        types = _field_types(cls)
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise InputError(
                f"{source}: unknown key {section}.{unknown[0]}; valid keys in [{section}]: {', '.join(types)}"
            )
        changes = {k: _convert(section, k, v, types[k]) for k, v in values.items()}
        if section.startswith("effect."):
            name = section.split(".", 1)[1]
            effect_overrides[name] = replace(effect_overrides.get(name, sections["effect"]), **changes)
        else:
            sections[section] = replace(sections[section], **changes)
    result = Recipe(effect_overrides=effect_overrides, **sections)
    _validate(result, source)
    return result


def _validate(recipe: Recipe, source: str) -> None:
    trainings = {"copy": recipe.copy, "effect": recipe.effect, "diff": recipe.diff}
    trainings.update({f"effect.{k}": v for k, v in recipe.effect_overrides.items()})
    for name, t in trainings.items():
        for key in ("network_dim", "repeats", "epochs", "batch_size"):
            if getattr(t, key) < 1:
                raise InputError(f"{source}: recipe {name}.{key} must be at least 1")
        if t.warmup_steps < 0:
            raise InputError(f"{source}: recipe {name}.warmup_steps must not be negative")
        if t.lr_scheduler == "constant" and t.warmup_steps:
            raise InputError(
                f"{source}: recipe {name}: sd-scripts' 'constant' scheduler rejects warmup; "
                "use 'constant_with_warmup' or set warmup_steps = 0"
            )
        if t.save_precision not in PRECISIONS:
            raise InputError(f"{source}: recipe {name}.save_precision must be one of {', '.join(PRECISIONS)}")
    for key in ("precision", "save_precision"):
        if getattr(recipe.merge, key) not in PRECISIONS:
            raise InputError(f"{source}: recipe merge.{key} must be one of {', '.join(PRECISIONS)}")
    if recipe.merge.copy_model not in COPY_MODEL_ROUTES:
        raise InputError(f"{source}: recipe merge.copy_model must be {' or '.join(COPY_MODEL_ROUTES)}, not {recipe.merge.copy_model!r}")
    if recipe.resize.save_precision not in PRECISIONS:
        raise InputError(f"{source}: recipe resize.save_precision must be one of {', '.join(PRECISIONS)}")
    if recipe.resize.rank < 0:
        raise InputError(f"{source}: recipe resize.rank must be 0 (keep) or more")
    for key in ("precision", "save_precision"):
        if getattr(recipe.svd, key) not in PRECISIONS:
            raise InputError(f"{source}: recipe svd.{key} must be one of {', '.join(PRECISIONS)}")
    if recipe.svd.precision != "float":
        raise InputError(f"{source}: recipe svd.precision must be float (svd_merge_lora.py's SVD needs fp32)")
    if recipe.svd.rank < 1 or recipe.combine.extract_dim < 1:
        raise InputError(f"{source}: recipe svd.rank and combine.extract_dim must be at least 1")
    _validate_sampling(recipe, source)
    if recipe.caption.method not in ("fixed", "wd14"):
        raise InputError(f"{source}: recipe caption.method must be fixed or wd14")
    for key in ("general_threshold", "character_threshold"):
        if not 0.0 <= getattr(recipe.caption, key) <= 1.0:
            raise InputError(f"{source}: recipe caption.{key} must be between 0 and 1")


def _validate_sampling(recipe: Recipe, source: str) -> None:
    check, preview = recipe.copy_check, recipe.preview
    if check.images < 1 or check.steps < 1 or preview.steps < 1:
        raise InputError(f"{source}: recipe copy_check.images, copy_check.steps and preview.steps must be at least 1")
    if not 0.0 <= check.min_ssim <= 1.0:
        raise InputError(f"{source}: recipe copy_check.min_ssim must be between 0 and 1")
    if preview.size < 0:
        raise InputError(f"{source}: recipe preview.size must be 0 (the model's size) or more")
    for key, text in (("strengths", preview.strengths), ("seeds", preview.seeds)):
        try:
            parse_number_list(text, int if key == "seeds" else float)
        except ValueError as e:
            raise InputError(f"{source}: recipe preview.{key}: {e}") from None


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


PRECISIONS = ("float", "fp16", "bf16")


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
        out.setdefault(section, {})[key] = value
    return out


def render_recipe_toml(recipe: Recipe) -> dict[str, Any]:
    """The recipe as TOML-ready data (the format `--recipe` reads)."""
    d = recipe.to_dict()
    effect = d.pop("effect")
    for key in [k for k in d if k.startswith("effect.")]:
        effect[key.split(".", 1)[1]] = d.pop(key)
    d["effect"] = effect
    return d
