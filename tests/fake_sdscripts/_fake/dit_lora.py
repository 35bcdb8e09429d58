# What the fakes of sd-scripts' networks/lora_flux.py, lora_sd3.py and lora_anima.py share (the real lora_sd3 and
# lora_anima build on lora_flux's LoRAModule): only what `--base_weights` touches (code: their
# create_network_from_weights and LoRANetwork at the pinned commit): one draw from torch's random generator per
# network built (LoRAModule initialises lora_down), and merge_to, which records the dtype it merges in. Each
# module keeps its own class-level target lists (which, unlike networks/lora.py's, building from weights leaves as
# they are) on a subclass.
import os

import torch

MERGES = []  # (file, multiplier, dtype) of every merge_to, read by the fake training


class DitLoRANetwork:
    def __init__(self, file, multiplier):
        torch._draw()
        self.file = file
        self.multiplier = multiplier

    def merge_to(self, text_encoders, unet, weights_sd, dtype=None, device=None):
        MERGES.append((self.file, self.multiplier, str(dtype)))


def creator(network_class):
    """The module's create_network_from_weights, building `network_class`."""

    def create_network_from_weights(multiplier, file, ae, text_encoders, unet, weights_sd=None, for_inference=False,
                                    **kwargs):
        if weights_sd is None and not os.path.isfile(file):
            raise FileNotFoundError(f"No such file or directory: {file!r}")
        return network_class(file, multiplier), weights_sd or {}

    return create_network_from_weights
