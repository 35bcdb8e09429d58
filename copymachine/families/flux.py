"""FLUX.1 (dev, schnell) and Chroma: flux_train_network.py with networks.lora_flux, flux_minimal_inference.py.

Training options from sd-scripts' docs/flux_train_network.md first example (Chroma refuses embedded guidance: 0.0,
sigmoid sampling); the LoRA trains the transformer alone. The copy model stays in memory: a merged FLUX.1 is 23 GB.
"""

from __future__ import annotations

import dataclasses

from copymachine.families.base import Family, ModelFile

CLIP_L = ModelFile("clip_l", "the CLIP-L text encoder (clip_l.safetensors)", "clip_l", "clip_l")
T5XXL = ModelFile("t5xxl", "the T5-XXL text encoder (t5xxl_fp16.safetensors)", "t5xxl", "t5xxl")
AE = ModelFile("ae", "the autoencoder (ae.safetensors)", "ae", "ae")
_TOKENIZERS = ("openai_clip-vit-large-patch14", "google_t5-v1_1-xxl")
_TRAINING = {"guidance_scale": 1.0, "timestep_sampling": "flux_shift", "model_prediction_type": "raw",
             "cache_text_encoder_outputs": True, "network_train_unet_only": True, "sdpa": True}
_FILE_MERGE = "copymachine keeps the copy model in memory on {} (a merged model is 23 GB)"

FLUX_DEV = Family(name="flux-dev", label="FLUX.1 dev", train_script="flux_train_network.py",
                  merge_script="networks/flux_merge_lora.py", gen_flag="", base_model_version="flux1",
                  training_options=_TRAINING, default_size=1024, tokenizers=_TOKENIZERS,
                  network_module="networks.lora_flux", renderer="flux_minimal_inference.py",
                  needs=(CLIP_L, T5XXL, AE), no_file_merge=_FILE_MERGE.format("FLUX.1"))
# schnell: the same trainer (sd-scripts finds schnell by the missing guidance layer and sets it up itself)
FLUX_SCHNELL = dataclasses.replace(FLUX_DEV, name="flux-schnell", label="FLUX.1 schnell")
CHROMA = dataclasses.replace(
    FLUX_DEV, name="chroma", label="Chroma (FLUX.1-based)", base_model_version="chroma",
    training_options={**_TRAINING, "model_type": "chroma", "guidance_scale": 0.0, "timestep_sampling": "sigmoid",
                      "apply_t5_attn_mask": True},
    render_options=("--model_type", "chroma", "--apply_t5_attn_mask", "--guidance", "0"), needs=(T5XXL, AE),
    no_file_merge=_FILE_MERGE.format("Chroma"))
FAMILIES = (FLUX_DEV, FLUX_SCHNELL, CHROMA)
LORA_VERSIONS = {"flux1": FLUX_DEV, "chroma": CHROMA}

_PREFIXES = ("", "model.diffusion_model.")


def detect(keys: set[str]) -> tuple[Family | None, str] | None:
    """A FLUX.1 transformer in BFL's layout (bare or ComfyUI's prefix), as flux_utils.analyze_checkpoint_state reads."""
    for prefix in _PREFIXES:
        if f"{prefix}double_blocks.0.img_attn.qkv.weight" not in keys:
            continue
        if any(k.startswith(f"{prefix}distilled_guidance_layer.") for k in keys):
            return CHROMA, CHROMA.label
        if f"{prefix}guidance_in.in_layer.bias" in keys:
            return FLUX_DEV, FLUX_DEV.label
        return FLUX_SCHNELL, FLUX_SCHNELL.label
    if any(k.startswith("transformer_blocks.0.") for k in keys) and any(k.startswith("single_transformer_blocks.")
                                                                          for k in keys):
        return None, "a FLUX.1 transformer in the diffusers layout (sd-scripts trains the single-file BFL layout)"
    return None


def lora_family(keys: list[str], metadata: dict[str, str]) -> Family | None:
    if any(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys):
        return CHROMA if metadata.get("ss_model_type") == "chroma" else FLUX_DEV
    return None
