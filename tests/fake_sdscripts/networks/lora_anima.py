# Fake of sd-scripts' networks/lora_anima.py for copymachine's fast tests (tests/fake_sdscripts/README.md):
# its class-level target lists (code: networks/lora_anima.py LoRANetwork at the pinned commit); the rest is
# _fake/dit_lora.py's.
from _fake.dit_lora import MERGES, DitLoRANetwork, creator  # noqa: F401 (MERGES: read by the fake training)


class LoRANetwork(DitLoRANetwork):
    ANIMA_TARGET_REPLACE_MODULE = ["Block", "PatchEmbed", "TimestepEmbedding", "FinalLayer"]
    ANIMA_ADAPTER_TARGET_REPLACE_MODULE = ["LLMAdapterTransformerBlock"]
    TEXT_ENCODER_TARGET_REPLACE_MODULE = ["Qwen3Attention", "Qwen3MLP", "Qwen3SdpaAttention", "Qwen3FlashAttention2"]


create_network_from_weights = creator(LoRANetwork)
