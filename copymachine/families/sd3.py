"""Stable Diffusion 3 and 3.5: sd3_train_network.py with networks.lora_sd3, sd3_minimal_inference.py; training
options from docs/sd3_train_network.md. The text encoders are separate files unless the checkpoint holds them
("incl. clips" files); sd-scripts has no SD3 merge script: the copy model stays in memory (--base_weights)."""

from __future__ import annotations

from copymachine.families.base import Family, ModelFile

PREFIX = "model.diffusion_model."
CLIP_L = ModelFile("clip_l", "the CLIP-L text encoder (clip_l.safetensors)", "clip_l", "clip_l",
                   embedded_prefix="text_encoders.clip_l.")
CLIP_G = ModelFile("clip_g", "the CLIP-G text encoder (clip_g.safetensors)", "clip_g", "clip_g",
                   embedded_prefix="text_encoders.clip_g.")
T5XXL = ModelFile("t5xxl", "the T5-XXL text encoder (t5xxl_fp16.safetensors)", "t5xxl", "t5xxl",
                  embedded_prefix="text_encoders.t5xxl.")
_TOKENIZERS = ("openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k", "google_t5-v1_1-xxl")


def _family(name: str, label: str) -> Family:
    return Family(name=name, label=label, train_script="sd3_train_network.py", merge_script="", gen_flag="",
                  base_model_version=name.removeprefix("sd3-"), default_size=1024, tokenizers=_TOKENIZERS,
                  training_options={"weighting_scheme": "uniform", "cache_text_encoder_outputs": True,
                                    "network_train_unet_only": True, "sdpa": True},
                  network_module="networks.lora_sd3", renderer="sd3_minimal_inference.py",
                  needs=(CLIP_L, CLIP_G, T5XXL),
                  no_file_merge=f"sd-scripts has no merge script for {label}: the copy model stays in memory")


# names by sd3_utils.analyze_state_dict_state's model_type (what sd-scripts writes to ss_base_model_version)
SD3_MEDIUM = _family("sd3-medium", "Stable Diffusion 3 medium")
SD35_LARGE = _family("sd3-5-large", "Stable Diffusion 3.5 large")
SD35_MEDIUM = _family("sd3-5-medium", "Stable Diffusion 3.5 medium")
FAMILIES = (SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM)
LORA_VERSIONS = {"medium": SD3_MEDIUM, "5-large": SD35_LARGE, "5-medium": SD35_MEDIUM}


def detect(keys: set[str]) -> tuple[Family | None, str] | None:
    """As sd3_utils.analyze_state_dict_state: RMS q/k norms (3.5), self-attention in the x blocks (3.5 medium)."""
    if not any(k.startswith(f"{PREFIX}joint_blocks.0.") for k in keys):
        return None
    if f"{PREFIX}joint_blocks.0.context_block.attn.ln_k.weight" not in keys:
        return SD3_MEDIUM, SD3_MEDIUM.label
    family = SD35_MEDIUM if any(".x_block.attn2.ln_k.weight" in k for k in keys) else SD35_LARGE
    return family, family.label


def lora_family(keys: list[str], metadata: dict[str, str]) -> Family | None:
    if any(k.startswith("lora_unet_joint_blocks_") for k in keys):
        return LORA_VERSIONS.get(metadata.get("ss_base_model_version", ""), SD35_LARGE)
    return None
