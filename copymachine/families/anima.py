"""Anima (a 2B DiT, Qwen3-0.6B, the Qwen-Image VAE): anima_train_network.py with networks.lora_anima,
anima_minimal_inference.py; training options from docs/anima_train_network.md. Its tokenizers come with sd-scripts;
no merge script: the copy model stays in memory (--base_weights)."""

from __future__ import annotations

from copymachine.families.base import Family, ModelFile

QWEN3 = ModelFile("qwen3", "the Qwen3-0.6B text encoder (qwen_3_06b_base.safetensors)", "qwen3", "text_encoder")
VAE = ModelFile("vae", "the Qwen-Image VAE (qwen_image_vae.safetensors)", "vae", "vae")

ANIMA = Family(name="anima", label="Anima", train_script="anima_train_network.py", merge_script="", gen_flag="",
               base_model_version="anima", default_size=1024, tokenizers=(),
               training_options={"timestep_sampling": "sigmoid", "discrete_flow_shift": 1.0,
                                 "cache_text_encoder_outputs": True, "network_train_unet_only": True},
               network_module="networks.lora_anima", renderer="anima_minimal_inference.py", needs=(QWEN3, VAE),
               no_file_merge="sd-scripts has no merge script for Anima: the copy model stays in memory",
               # anima_train_network.py loads the DiT onto the GPU (not with block swap), and --base_weights merges
               # on the CPU unless lowram (train_network.py): the LoRA's and the DiT's tensors then sit on two devices
               base_weights_options={"lowram": True})
FAMILIES = (ANIMA,)
LORA_VERSIONS = {"anima": ANIMA}


def detect(keys: set[str]) -> tuple[Family | None, str] | None:
    """Anima's DiT: its LLM adapter beside the transformer blocks (the `net.` prefix of the released file)."""
    for prefix in ("net.", ""):
        if f"{prefix}llm_adapter.out_proj.weight" in keys and f"{prefix}blocks.0.self_attn.q_proj.weight" in keys:
            return ANIMA, ANIMA.label
    return None


def lora_family(keys: list[str], metadata: dict[str, str]) -> Family | None:
    """lora_anima's keys: lora_unet_ + the DiT's module names (blocks.N., llm_adapter.)."""
    return ANIMA if any(k.startswith(("lora_unet_blocks_", "lora_unet_llm_adapter_")) for k in keys) else None
