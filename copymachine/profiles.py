"""How a machine runs the recipe: the CPU profile, the GPU profile and the opt-in low-VRAM profile.

A profile never changes the memo's numbers (steps, dim, alpha, learning rate, optimizer); it
chooses how sd-scripts computes them. The GPU profile (chosen when the sd-scripts Python's torch
sees a CUDA GPU):

- bf16 mixed precision (fp16 where the GPU lacks bf16);
- `sdpa` attention (PyTorch's scaled-dot-product kernels; no xformers needed);
- latents cached once: one image without augmentation gives the same latent every step, so the
  VAE encodes it once instead of 3072-5120 times;
- no data-loader worker processes: one cached image needs no loader, and nothing is re-spawned at
  each of the 6-10 epochs (the same effect as persistent workers, at zero cost);
- svd_merge_lora.py and extract_lora_from_models.py compute on the GPU; resize_lora.py stays on
  the CPU (sd-scripts issue #904: corrupt output on CUDA; not re-checked on a GPU here).

The low-VRAM profile (`--low-vram`, for 8 GB cards) adds gradient checkpointing, 8-bit AdamW
(bitsandbytes) and latents cached on disk. It is opt-in because the memo trains with plain AdamW.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3

# Rough VRAM one effect training takes in the GPU profile, by family (for choosing --jobs).
# SD1.5 at 512 px, dim 128, bf16, cached latents: ~6 GiB; SDXL at 1024 px: ~18 GiB. Margins added.
TRAINING_VRAM = {"sd1": 8 * GIB, "sd2": 9 * GIB, "sdxl": 22 * GIB}
LOW_VRAM_TRAINING_VRAM = {"sd1": 4 * GIB, "sd2": 5 * GIB, "sdxl": 10 * GIB}

LOW_VRAM_OPTIMIZER = "AdamW8bit"


@dataclass(frozen=True)
class Profile:
    name: str  # "cpu" | "gpu" | "gpu-low-vram"
    device: str  # "cpu" | "cuda": where svd_merge/extract compute
    mixed_precision: str  # sd-scripts' --mixed_precision: no | fp16 | bf16
    training_options: dict[str, Any] = field(default_factory=dict)  # extra training TOML keys
    gen_options: tuple[str, ...] = ()  # extra gen_img.py options
    optimizer: str | None = None  # replaces the recipe's optimizer (low VRAM only)

    @property
    def gen_precision(self) -> str:
        return self.mixed_precision if self.mixed_precision != "no" else "float"


CPU = Profile(name="cpu", device="cpu", mixed_precision="no", training_options={"max_data_loader_n_workers": 0})


def gpu_profile(bf16: bool, low_vram: bool = False) -> Profile:
    options: dict[str, Any] = {"max_data_loader_n_workers": 0, "sdpa": True, "cache_latents": True}
    name = "gpu"
    optimizer = None
    if low_vram:
        options.update({"gradient_checkpointing": True, "cache_latents_to_disk": True})
        name = "gpu-low-vram"
        optimizer = LOW_VRAM_OPTIMIZER
    return Profile(
        name=name,
        device="cuda",
        mixed_precision="bf16" if bf16 else "fp16",
        training_options=options,
        gen_options=("--sdpa",),
        optimizer=optimizer,
    )


def default_jobs(family: str, low_vram: bool, gpus: int, vram_free: int | None, trainings: int) -> int:
    """Parallel trainings: one per GPU on a multi-GPU machine; on one GPU as many as its free
    memory holds; never more than there are trainings to run; 1 on the CPU."""
    if gpus <= 0 or trainings <= 1:
        return 1
    if gpus > 1:
        return min(gpus, trainings)
    need = (LOW_VRAM_TRAINING_VRAM if low_vram else TRAINING_VRAM).get(family, 8 * GIB)
    fit = int((vram_free or 0) // need)
    return max(1, min(fit, trainings))
