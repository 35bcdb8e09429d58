# Fake of sd-scripts' networks/lora_sd3.py for copymachine's fast tests (tests/fake_sdscripts/README.md).
# Only what `--base_weights` touches (code: networks/lora_sd3.py create_network_from_weights, LoRANetwork at
# the pinned commit): its class-level target lists (which, unlike networks/lora.py's, building from weights
# leaves as they are), one draw from torch's random generator per network built (LoRAModule initialises
# lora_down), and merge_to, which records the dtype it merges in.
import os

import torch

MERGES = []  # (file, multiplier, dtype) of every merge_to, read by the fake training


class LoRANetwork:
    SD3_TARGET_REPLACE_MODULE = ["SingleDiTBlock"]
    TEXT_ENCODER_TARGET_REPLACE_MODULE = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP", "T5Attention", "T5DenseGatedActDense"]

    def __init__(self, file, multiplier):
        torch._draw()
        self.file = file
        self.multiplier = multiplier

    def merge_to(self, text_encoders, unet, weights_sd, dtype=None, device=None):
        MERGES.append((self.file, self.multiplier, str(dtype)))


def create_network_from_weights(multiplier, file, ae, text_encoders, unet, weights_sd=None, for_inference=False, **kwargs):
    if weights_sd is None and not os.path.isfile(file):
        raise FileNotFoundError(f"No such file or directory: {file!r}")
    return LoRANetwork(file, multiplier), weights_sd or {}
