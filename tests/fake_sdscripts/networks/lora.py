# Fake of sd-scripts' networks/lora.py for copymachine's fast tests (tests/fake_sdscripts/README.md).
# Only what `--base_weights` touches, with the two side effects the real one has (code:
# networks/lora.py create_network_from_weights and LoRANetwork.__init__ at the pinned commit):
# building a network from weights extends the class-level UNET_TARGET_REPLACE_MODULE in place
# (`target_modules += ...CONV2D_3X3`), and each network draws from torch's random generator
# (LoRAModule initialises lora_down). merge_to records the dtype it merges in.
import os

import torch

MERGES = []  # (file, multiplier, dtype) of every merge_to, read by the fake training


class LoRANetwork:
    UNET_TARGET_REPLACE_MODULE = ["Transformer2DModel"]
    UNET_TARGET_REPLACE_MODULE_CONV2D_3X3 = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]
    TEXT_ENCODER_TARGET_REPLACE_MODULE = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]

    def __init__(self, file, multiplier, modules_dim=None):
        target_modules = LoRANetwork.UNET_TARGET_REPLACE_MODULE
        if modules_dim is not None:
            target_modules += LoRANetwork.UNET_TARGET_REPLACE_MODULE_CONV2D_3X3
        torch._draw()
        self.file = file
        self.multiplier = multiplier

    def merge_to(self, text_encoder, unet, weights_sd, dtype, device):
        MERGES.append((self.file, self.multiplier, str(dtype)))


def create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd=None, for_inference=False, **kwargs):
    if weights_sd is None and not os.path.isfile(file):
        raise FileNotFoundError(f"No such file or directory: {file!r}")
    return LoRANetwork(file, multiplier, modules_dim={}), weights_sd or {}
