"""Stand-in for torch in the fake sd-scripts tree: copymachine's pre-flight imports torch to ask
for its version and whether it sees a CUDA GPU; the fake scripts themselves never import it.
`COPYMACHINE_FAKE_CUDA=1` makes it report one GPU (bf16-capable), to test the GPU profile."""

import os

__version__ = "0.0+fake"


class cuda:
    @staticmethod
    def is_available() -> bool:
        return os.environ.get("COPYMACHINE_FAKE_CUDA") == "1"

    @staticmethod
    def device_count() -> int:
        return 1 if cuda.is_available() else 0

    @staticmethod
    def get_device_name(index: int = 0) -> str:
        return "Fake GPU"

    @staticmethod
    def is_bf16_supported() -> bool:
        return True

    @staticmethod
    def mem_get_info(index: int = 0) -> tuple[int, int]:
        return (70 * 2**30, 80 * 2**30)
