"""Stable Diffusion 1.x, 2.x and SDXL: train_network.py / sdxl_train_network.py, gen_img.py, merge_lora.py.
SDXL trains with no_half_vae: its VAE overflows in fp16 and gives NaN latents (sd-scripts issues #653, #881)."""

from __future__ import annotations

from copymachine.families.base import Family

SD1 = Family(name="sd1", label="Stable Diffusion 1.x", train_script="train_network.py",
             merge_script="networks/merge_lora.py", gen_flag="--v1", base_model_version="sd_v1", has_clip_skip=True)
# Recognised so that the message can name it; not trained by this version of copymachine.
SD2 = Family(name="sd2", label="Stable Diffusion 2.x", train_script="train_network.py",
             merge_script="networks/merge_lora.py", gen_flag="--v2", base_model_version="sd_v2", v2=True,
             supported=False, merge_options=("--v2",), extract_options=("--v2",), has_clip_skip=True)
SDXL = Family(name="sdxl", label="SDXL", train_script="sdxl_train_network.py",
              merge_script="networks/sdxl_merge_lora.py", gen_flag="--sdxl", base_model_version="sdxl_base_v1-0",
              training_options={"no_half_vae": True}, extract_options=("--sdxl",), default_size=1024,
              render_no_half_vae=True,
              tokenizers=("openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"))
FAMILIES = (SD1, SD2, SDXL)
LORA_VERSIONS = {"sd_v1": SD1, "sd_v1_v": SD1, "sd_v2": SD2, "sd_v2_v": SD2, "sdxl_base_v1-0": SDXL}

# Marker keys of single-file checkpoints (original "LDM" layout that sd-scripts loads).
_SD_UNET = "model.diffusion_model.input_blocks.0.0.weight"
_MARKERS = [
    ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", SDXL),
    ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", SDXL),
    ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", SD2),
    ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", SD1),
    ("cond_stage_model.transformer.embeddings.token_embedding.weight", SD1),
]


def detect(keys: set[str]) -> tuple[Family | None, str] | None:
    """(family, description) of an SD checkpoint (family None: a text encoder without its U-Net); else None."""
    for marker, family in _MARKERS:
        if marker in keys:
            if family is not SDXL and _SD_UNET not in keys:
                return None, f"{family.label} text encoder without a U-Net"
            return family, family.label
    return None


def lora_family(keys: list[str], metadata: dict[str, str]) -> Family | None:
    """An SD LoRA's family from its key prefixes (sd-scripts' names)."""
    if any(k.startswith(("lora_te1_", "lora_te2_", "lora_unet_input_blocks_")) for k in keys):
        return SDXL
    if any(k.startswith(("lora_te_", "lora_unet_down_blocks_")) for k in keys):
        return SD1 if metadata.get("ss_v2") != "True" else SD2
    return None
