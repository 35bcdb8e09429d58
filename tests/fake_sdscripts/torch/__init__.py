"""Stand-in for torch in the fake sd-scripts tree: copymachine's pre-flight imports torch to ask
for its version and whether it sees a CUDA GPU; the fake scripts themselves never import it.
`COPYMACHINE_FAKE_CUDA=N` makes it report N GPUs, to test the GPU profile and parallel jobs:
compute capability `COPYMACHINE_FAKE_CUDA_CAPABILITY` (default 8.6, an RTX 30xx), free and total
VRAM `COPYMACHINE_FAKE_VRAM` in GiB ("free,total"; default "70,80"), named
`COPYMACHINE_FAKE_GPU_NAME` (default "Fake GPU"). Like recent torch, `is_bf16_supported()` says
true whatever the capability (emulated bf16 on pre-Ampere cards)."""

import os

__version__ = "0.0+fake"


class cuda:
    @staticmethod
    def is_available() -> bool:
        return cuda.device_count() > 0

    @staticmethod
    def device_count() -> int:
        return int(os.environ.get("COPYMACHINE_FAKE_CUDA") or 0)

    @staticmethod
    def get_device_name(index: int = 0) -> str:
        return os.environ.get("COPYMACHINE_FAKE_GPU_NAME") or "Fake GPU"

    @staticmethod
    def get_device_capability(index: int = 0) -> tuple[int, int]:
        major, minor = (os.environ.get("COPYMACHINE_FAKE_CUDA_CAPABILITY") or "8.6").split(".")
        return int(major), int(minor)

    @staticmethod
    def is_initialized() -> bool:
        return False

    @staticmethod
    def is_bf16_supported() -> bool:
        return True

    @staticmethod
    def mem_get_info(index: int = 0) -> tuple[int, int]:
        free, total = (os.environ.get("COPYMACHINE_FAKE_VRAM") or "70,80").split(",")
        return (int(float(free) * 2**30), int(float(total) * 2**30))


# The random generator's state, as far as the base_weights launcher sees it: a counter of draws
# (the fake networks/lora.py draws once per network it builds, as LoRAModule's init does).
float32 = "torch.float32"
_draws = 0


def _draw() -> None:
    global _draws
    _draws += 1


def get_rng_state() -> int:
    return _draws


def set_rng_state(state: int) -> None:
    global _draws
    _draws = state
