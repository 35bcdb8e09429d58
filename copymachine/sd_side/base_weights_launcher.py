"""Run an sd-scripts training script so that `--base_weights` gives what merge_lora.py gives.

Run by sd-scripts' Python in place of the training script: `... base_weights_launcher.py [NETWORK_MODULE]
train_network.py --config_file X` (NETWORK_MODULE: networks.lora by default; lora_flux, lora_sd3 and
lora_anima have the same API). It merges the copy LoRA in memory, without the 4-13 GB copy-model file. As
sd-scripts is (v0.8.7 to 48d368fa), three things make the LoRA differ from one trained on the merged file;
wrapping `create_network_from_weights` for the merge's networks (for_inference=True) undoes each:

1. `LoRANetwork.__init__` extends the class-level `UNET_TARGET_REPLACE_MODULE` in place: the trained
   network would target 36 more U-Net modules (SD1.5). The class-level target lists are put back.
2. Building that network draws from torch's RNG: the generator's state (CPU, CUDA) is put back.
3. `merge_to` casts to the training's weight dtype (bf16), merge_lora.py keeps float32: merged in float32.

Measured at the pinned commit (CPU, fp32): the effect LoRA is bit-identical to the file route's.
"""

from __future__ import annotations

import os
import runpy
import sys

MARKER = "copymachine base_weights launcher:"


def _target_lists(cls) -> dict[str, list]:
    found = vars(cls).items()
    return {name: list(value) for name, value in found if "TARGET_REPLACE_MODULE" in name and isinstance(value, list)}


def install(module: str = "networks.lora") -> None:
    import importlib

    import torch

    lora = importlib.import_module(module)
    if not hasattr(lora, "create_network_from_weights") or not hasattr(lora, "LoRANetwork"):
        lacks = f"{module} has no create_network_from_weights/LoRANetwork"
        raise SystemExit(f"{MARKER} this sd-scripts' {lacks}; use --copy-model file")
    original = lora.create_network_from_weights
    network_class = lora.LoRANetwork

    def create_network_from_weights(*args, **kwargs):
        if not kwargs.get("for_inference"):
            return original(*args, **kwargs)
        lists = _target_lists(network_class)
        cpu_state = torch.get_rng_state()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        cuda_state = torch.cuda.get_rng_state_all() if cuda else None
        try:
            network, weights_sd = original(*args, **kwargs)
        finally:
            for name, value in lists.items():
                getattr(network_class, name)[:] = value
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
        merge_to = network.merge_to

        def merge_in_float(text_encoder, unet, weights_sd, dtype=None, device=None):
            return merge_to(text_encoder, unet, weights_sd, torch.float32, device)

        network.merge_to = merge_in_float
        file = args[1] if len(args) > 1 else kwargs.get("file")
        print(f"{MARKER} merging {file} in float32; target modules and RNG state kept", flush=True)
        return network, weights_sd

    setattr(lora, "create_network_from_weights", create_network_from_weights)  # noqa: B010 (a module import)


def main() -> None:
    args = sys.argv[1:]
    module = args.pop(0) if args and not args[0].endswith(".py") else "networks.lora"
    if not args:
        raise SystemExit(f"usage: {os.path.basename(__file__)} [NETWORK_MODULE] TRAINING_SCRIPT [options]")
    script = os.path.abspath(args[0])
    root = os.path.dirname(script)
    sys.argv = [script, *args[1:]]
    sys.path[0] = root  # as when the script itself is run: `library`, `networks` from its root
    install(module)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
