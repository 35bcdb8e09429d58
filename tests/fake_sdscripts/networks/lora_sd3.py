# Fake of sd-scripts' networks/lora_sd3.py for copymachine's fast tests (tests/fake_sdscripts/README.md):
# its class-level target lists (code: networks/lora_sd3.py LoRANetwork at the pinned commit); the rest is
# _fake/dit_lora.py's.
from _fake.dit_lora import MERGES, DitLoRANetwork, creator  # noqa: F401 (MERGES: read by the fake training)


class LoRANetwork(DitLoRANetwork):
    SD3_TARGET_REPLACE_MODULE = ["SingleDiTBlock"]
    TEXT_ENCODER_TARGET_REPLACE_MODULE = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP", "T5Attention", "T5DenseGatedActDense"]


create_network_from_weights = creator(LoRANetwork)
