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
    # folders sd-scripts looks for in --tokenizer_cache_dir (library/strategy_sd.py, strategy_sdxl.py)
    tokenizers: tuple[str, ...] = ("openai_clip-vit-large-patch14",)

    # what names or describes the family, or where sd-scripts finds its tokenizers: not in keys
    COSMETIC = ("label", "supported", "default_size", "tokenizers")

    def as_key(self) -> dict[str, Any]:
        """What of the family changes a stage's results, for stage keys (not its label: a new
        wording must not invalidate every cache)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in self.COSMETIC}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


SD1 = Family(
    name="sd1",
    label="Stable Diffusion 1.x",
    train_script="train_network.py",
    merge_script="networks/merge_lora.py",
    gen_flag="--v1",
    base_model_version="sd_v1",
)

# Recognised so that the message can name them; not trained by this version of copymachine.
SD2 = Family(
    name="sd2",
    label="Stable Diffusion 2.x",
    train_script="train_network.py",
    merge_script="networks/merge_lora.py",
    gen_flag="--v2",
    base_model_version="sd_v2",
    v2=True,
    supported=False,
    merge_options=("--v2",),
    extract_options=("--v2",),
)
# SDXL: sdxl_train_network.py / sdxl_merge_lora.py / gen_img.py --sdxl / extract --sdxl; the
# LoRA tools (svd_merge_lora.py, resize_lora.py) work on its keys as they are. SDXL-specific
# training choice: no_half_vae (the SDXL VAE overflows in fp16 and gives NaN latents; sd-scripts
# issues #653, #881). The memo's numbers are unchanged; the resolution is the image's (1024).
SDXL = Family(
    name="sdxl",
    label="SDXL",
    train_script="sdxl_train_network.py",
    merge_script="networks/sdxl_merge_lora.py",
    gen_flag="--sdxl",
    base_model_version="sdxl_base_v1-0",
    training_options={"no_half_vae": True},
    extract_options=("--sdxl",),
    default_size=1024,
    tokenizers=("openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"),
)

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


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    family: Family
    size_bytes: int
    tensor_count: int


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
        raise InputError(
            f"base model is a folder: {path}; copymachine needs a single-file checkpoint (.safetensors)"
        )
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin") and path.exists():
        raise InputError(
            f"base model is a pickle file ({path.suffix}): {path}; loading a pickle can run code, "
            "so copymachine only reads .safetensors (convert it, or use a .safetensors download)"
        )
    st = read_safetensors(path, "base model")
    family, what = detect_family(st.keys())
    if family is None:
        raise InputError(f"base model is not a Stable Diffusion checkpoint copymachine knows: found {what}: {path}")
    if for_training and not family.supported:
        raise InputError(
            f"base model is {family.label}, which this version of copymachine does not train yet "
            f"(supported: {', '.join(f.label for f in FAMILIES.values() if f.supported)}): {path}"
        )
    return ModelInfo(path=path, family=family, size_bytes=path.stat().st_size, tensor_count=len(st.tensors))


# ss_base_model_version values sd-scripts writes, by family
_LORA_VERSIONS = {"sd_v1": "sd1", "sd_v1_v": "sd1", "sd_v2": "sd2", "sd_v2_v": "sd2", "sdxl_base_v1-0": "sdxl"}


def lora_family(keys: list[str], metadata: dict[str, str]) -> Family | None:
    """A LoRA's base family: from sd-scripts' metadata, else from its key prefixes."""
    version = metadata.get("ss_base_model_version")
    if version in _LORA_VERSIONS:
        return FAMILIES[_LORA_VERSIONS[version]]
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys):
        return SDXL
    if any(k.startswith("lora_unet_input_blocks_") for k in keys):
        return SDXL
    if any(k.startswith(("lora_te_", "lora_unet_down_blocks_")) for k in keys):
        return SD1 if metadata.get("ss_v2") != "True" else SD2
    return None
