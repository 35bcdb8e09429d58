"""Base models: which family a checkpoint is (from its keys) and what that means for sd-scripts.

The family is one field of the plan, not a fork of the code: each family names its scripts and
the options they need, and every stage asks the family.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copymachine.errors import InputError
from copymachine.lorafile import read_safetensors


@dataclass(frozen=True)
class Family:
    name: str  # short id, recorded in the manifest
    label: str  # shown to the user
    train_script: str  # relative to the sd-scripts root
    merge_script: str
    gen_flag: str  # gen_img.py's model-version flag (it otherwise guesses by file size)
    base_model_version: str  # what sd-scripts writes to ss_base_model_version
    v2: bool = False
    supported: bool = True
    # extra keys for the training TOML (e.g. SDXL's no_half_vae)
    training_options: dict[str, Any] = field(default_factory=dict)
    merge_options: tuple[str, ...] = ()  # extra merge script options
    extract_options: tuple[str, ...] = ()  # extra extract_lora_from_models.py options
    default_size: int = 512
    # gen_img.py --no_half_vae for every render (SDXL: its VAE gives NaN/black images in fp16)
    render_no_half_vae: bool = False
    # folders sd-scripts looks for in --tokenizer_cache_dir (library/strategy_sd.py, strategy_sdxl.py)
    tokenizers: tuple[str, ...] = ("openai_clip-vit-large-patch14",)

    # what names or describes the family, or where sd-scripts finds its tokenizers: not in keys
    # (render_no_half_vae reaches renders through BaseOptions, which is in their keys)
    COSMETIC = ("label", "supported", "default_size", "tokenizers", "render_no_half_vae")

    def as_key(self) -> dict[str, Any]:
        """What of the family changes a stage's results, for stage keys (not its label: a new
        wording must not invalidate every cache)."""
        fields = [f.name for f in dataclasses.fields(self) if f.name not in self.COSMETIC]
        values = {name: getattr(self, name) for name in fields}
        return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}


SD1 = Family(name="sd1", label="Stable Diffusion 1.x", train_script="train_network.py",
             merge_script="networks/merge_lora.py", gen_flag="--v1", base_model_version="sd_v1")

# Recognised so that the message can name them; not trained by this version of copymachine.
SD2 = Family(name="sd2", label="Stable Diffusion 2.x", train_script="train_network.py",
             merge_script="networks/merge_lora.py", gen_flag="--v2", base_model_version="sd_v2", v2=True,
             supported=False, merge_options=("--v2",), extract_options=("--v2",))
# SDXL: sdxl_train_network.py / sdxl_merge_lora.py / gen_img.py --sdxl / extract --sdxl; the
# LoRA tools (svd_merge_lora.py, resize_lora.py) work on its keys as they are. SDXL-specific
# training choice: no_half_vae (the SDXL VAE overflows in fp16 and gives NaN latents; sd-scripts
# issues #653, #881). The memo's numbers are unchanged; the resolution is the image's (1024).
SDXL = Family(name="sdxl", label="SDXL", train_script="sdxl_train_network.py",
              merge_script="networks/sdxl_merge_lora.py", gen_flag="--sdxl", base_model_version="sdxl_base_v1-0",
              training_options={"no_half_vae": True}, extract_options=("--sdxl",), default_size=1024,
              render_no_half_vae=True,
              tokenizers=("openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"))

FAMILIES = {f.name: f for f in (SD1, SD2, SDXL)}

# Marker keys of single-file checkpoints (original "LDM" layout that sd-scripts loads).
_SD_UNET = "model.diffusion_model.input_blocks.0.0.weight"
_MARKERS: list[tuple[str, str]] = [
    ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", "sdxl"),
    ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", "sdxl"),
    ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "sd2"),
    ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "sd1"),
    ("cond_stage_model.transformer.embeddings.token_embedding.weight", "sd1"),
]
_OTHER_ARCHITECTURES = [
    ("model.diffusion_model.joint_blocks.0.", "SD3"),
    ("double_blocks.0.", "FLUX"),
    ("model.diffusion_model.double_blocks.0.", "FLUX"),
    ("transformer_blocks.0.", "a diffusers transformer (FLUX/SD3/other)"),
    ("lora_unet_", "a LoRA, not a base model"),
    ("lora_te", "a LoRA, not a base model"),
]


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Marker tensors of v-prediction checkpoints (NoobAI-XL V-Pred and its merges; ComfyUI reads the
# same keys): `v_pred` = trained to predict v, `ztsnr` = with a zero-terminal-SNR noise schedule.
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    family: Family
    size_bytes: int
    tensor_count: int
    # marker tensors of the checkpoint that decide how it predicts (V_PRED_KEY, ZTSNR_KEY)
    markers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Prediction:
    """What the base model predicts: epsilon (noise; SD1.x and most SDXL) or v (v-prediction,
    sd-scripts' `v_parameterization`), and whether its noise schedule has zero terminal SNR
    (`zero_terminal_snr`). A v-pred model trained or rendered as epsilon gives noise."""

    v_parameterization: bool = False
    zero_terminal_snr: bool = False
    why: str = "no v_pred key in the checkpoint"

    @property
    def label(self) -> str:
        if not self.v_parameterization:
            return "epsilon-prediction"
        return "v-prediction" + (" with zero terminal SNR" if self.zero_terminal_snr else "")

    def text(self) -> str:
        return f"{self.label} ({self.why})"


def choose_prediction(model: ModelInfo, v_pred: bool = False, zero_terminal_snr: bool = False) -> Prediction:
    """The prediction type of `model`: from its `v_pred` / `ztsnr` keys, or the user's
    --v-pred / --zero-terminal-snr for a file without them. Zero terminal SNR only exists
    with v-prediction (sd-scripts warns that training is then 'unexpected')."""
    has_v, has_z = V_PRED_KEY in model.markers, ZTSNR_KEY in model.markers
    v = has_v or v_pred
    z = has_z or zero_terminal_snr
    if z and not v:
        where = f"{model.path.name} has a {ZTSNR_KEY} key but no {V_PRED_KEY} key" if has_z else "--zero-terminal-snr"
        raise InputError(f"{where}: zero terminal SNR needs a v-prediction model; add --v-pred if {model.path.name} is "
                         "one")
    if not v:
        if model.tensor_count == 0:
            return Prediction(why="a pickle checkpoint copymachine does not open: assumed epsilon-prediction (--v-pred "
                                  "for a v-prediction model)")
        return Prediction()
    reasons = [f"the checkpoint has a {V_PRED_KEY} key" if has_v else "--v-pred"]
    if z:
        reasons.append(f"a {ZTSNR_KEY} key" if has_z else "--zero-terminal-snr")
    return Prediction(v_parameterization=True, zero_terminal_snr=z, why=", ".join(reasons))


MAX_CLIP_SKIP = 12  # CLIP ViT-L/14, SD1.x's text encoder, has 12 layers


def lora_clip_skip(metadata: dict[str, str], family: Family) -> int:
    """The clip skip a LoRA was trained with (sd-scripts' ss_clip_skip; "None": 1); SDXL: 1."""
    text = metadata.get("ss_clip_skip", "")
    if family.name == "sdxl" or not text.isdigit():
        return 1
    return min(max(int(text), 1), MAX_CLIP_SKIP)


@dataclass(frozen=True)
class BaseOptions:
    """What the base model needs of every training and every render beyond its family: clip skip
    (SD1.x; NovelAI-derived anime models are made for 2), the prediction type, and for SDXL
    renders a float32 VAE (the SDXL VAE overflows in fp16: black/NaN images). Stages hold it
    only when it differs from the default (`or_none`), so other runs' keys stay as they were."""

    clip_skip: int = 1
    v_parameterization: bool = False
    zero_terminal_snr: bool = False
    no_half_vae: bool = False  # gen_img.py only: sd-scripts' SDXL training has it from the family

    def or_none(self) -> BaseOptions | None:
        return None if self == BaseOptions() else self

    def for_training(self) -> BaseOptions | None:
        return dataclasses.replace(self, no_half_vae=False).or_none()

    def training_keys(self) -> dict[str, Any]:
        """Keys of the training TOML (option names of train_network.py / sdxl_train_network.py)."""
        keys: dict[str, Any] = {"clip_skip": self.clip_skip} if self.clip_skip > 1 else {}
        return keys | {k: True for k in ("v_parameterization", "zero_terminal_snr") if getattr(self, k)}

    def gen_img_args(self) -> list[str]:
        """gen_img.py's options (it defaults clip skip to 1 for SD1.x and to 2, SDXL's own, for SDXL)."""
        args = ["--clip_skip", str(self.clip_skip)] if self.clip_skip > 1 else []
        return args + [f"--{k}" for k in ("v_parameterization", "zero_terminal_snr", "no_half_vae") if getattr(self, k)]


def base_options(family: Family, clip_skip: int, prediction: Prediction) -> BaseOptions:
    """The options of every training and render of a run on a `family` base model. SDXL has no
    clip skip to choose: it always reads the penultimate layer (gen_img.py's default 2 for it),
    and sd-scripts' SDXL training ignores clip_skip, so a training and its renders would differ."""
    if clip_skip != 1 and family.name == "sdxl":
        raise InputError(f"clip skip {clip_skip}: {family.label} has no clip skip to choose (it always uses the text "
                         "encoders' penultimate layer, and sd-scripts' SDXL training ignores clip_skip); leave "
                         "model.clip_skip at 1")
    return BaseOptions(clip_skip=clip_skip, v_parameterization=prediction.v_parameterization,
                       zero_terminal_snr=prediction.zero_terminal_snr, no_half_vae=family.render_no_half_vae)


def detect_family(keys: list[str] | set[str]) -> tuple[Family | None, str]:
    """Return (family, description) from checkpoint keys; family None when not recognised."""
    keyset = set(keys)
    for marker, name in _MARKERS:
        if marker in keyset:
            if name != "sdxl" and _SD_UNET not in keyset:
                return None, f"{FAMILIES[name].label} text encoder without a U-Net"
            return FAMILIES[name], FAMILIES[name].label
    for prefix, what in _OTHER_ARCHITECTURES:
        if any(k.startswith(prefix) for k in keyset):
            return None, what
    sample = ", ".join(sorted(keyset)[:3]) or "no tensors"
    return None, f"an unknown architecture (first keys: {sample})"


def inspect_base_model(path: Path, for_training: bool = True) -> ModelInfo:
    """Check that `path` is a single-file checkpoint of a known family (one copymachine trains,
    unless `for_training` is False: the merge/extract tools take any family sd-scripts does)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"base model is a folder: {path}; copymachine needs a single-file checkpoint (.safetensors)")
    if path.suffix.lower() in PICKLE_SUFFIXES and path.exists():
        raise InputError(f"base model is a pickle file ({path.suffix}): {path}; loading a pickle can run code, "
                         "so copymachine only reads .safetensors (convert it, or use a .safetensors download)")
    st = read_safetensors(path, "base model")
    family, what = detect_family(st.keys())
    if family is None:
        raise InputError(f"base model is not a Stable Diffusion checkpoint copymachine knows: found {what}: {path}")
    if for_training and not family.supported:
        raise InputError(f"base model is {family.label}, which this version of copymachine does not train yet "
                         f"(supported: {', '.join(f.label for f in FAMILIES.values() if f.supported)}): {path}")
    markers = frozenset(k for k in (V_PRED_KEY, ZTSNR_KEY) if k in st.tensors)
    return ModelInfo(path=path, family=family, size_bytes=path.stat().st_size, tensor_count=len(st.tensors),
                     markers=markers)


# ss_base_model_version values sd-scripts writes, by family
_LORA_VERSIONS = {"sd_v1": "sd1", "sd_v1_v": "sd1", "sd_v2": "sd2", "sd_v2_v": "sd2", "sdxl_base_v1-0": "sdxl"}


def lora_family(keys: list[str], metadata: dict[str, str]) -> Family | None:
    """A LoRA's base family: from sd-scripts' metadata, else from its key prefixes."""
    version = metadata.get("ss_base_model_version")
    if version in _LORA_VERSIONS:
        return FAMILIES[_LORA_VERSIONS[version]]
    if any(k.startswith(("lora_te1_", "lora_te2_", "lora_unet_input_blocks_")) for k in keys):
        return SDXL
    if any(k.startswith(("lora_te_", "lora_unet_down_blocks_")) for k in keys):
        return SD1 if metadata.get("ss_v2") != "True" else SD2
    return None
