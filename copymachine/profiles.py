"""How a machine runs the recipe (CPU, GPU, opt-in low VRAM), never changing the memo's numbers.

GPU: bf16 from compute capability 8.0, sdpa, latents cached once (one image without augmentation gives the same latent
every step), no data-loader workers (one cached image needs none); resize_lora.py stays on the CPU (sd-scripts #904:
corrupt output on CUDA). `--low-vram` (8 GB cards; opt-in: the memo trains with plain AdamW and both parts): gradient
checkpointing, AdamW8bit, latents on disk; for SDXL the U-Net alone on cached text-encoder outputs (no
text-encoder part in the LoRAs; sd-scripts then refuses shuffle_caption).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LOW_VRAM_OPTIMIZER = "AdamW8bit"
# --low-vram, SDXL only: the text encoders' outputs cached once (then off the GPU) and the U-Net
# trained alone (sd-scripts requires network_train_unet_only with cache_text_encoder_outputs)
LOW_VRAM_SDXL_OPTIONS = {"cache_text_encoder_outputs": True, "network_train_unet_only": True}
# --low-vram on the DiT families: sd-scripts' own settings for small GPUs (docs/flux_train_network.md 6.1: 12 GB
# with 16 blocks swapped and 8-bit AdamW, fp8 base; docs/sd3_train_network.md; docs/anima_train_network.md 4.1:
# Anima takes no fp8_base, its 28-block model swaps up to 26)
LOW_VRAM_DIT_OPTIONS = {
    **{name: {"fp8_base": True, "blocks_to_swap": 16} for name in ("flux-dev", "flux-schnell", "chroma")},
    **{name: {"blocks_to_swap": 16} for name in ("sd3-medium", "sd3-5-large", "sd3-5-medium")},
    "anima": {"blocks_to_swap": 12},
}
# A GPU's full profile on FLUX.1: the 11.9 B transformer in fp8 (22 GB in bf16 leaves nothing of a 24 GB card)
DIT_OPTIONS = {name: {"fp8_base": True} for name in ("flux-dev", "flux-schnell", "chroma")}
BF16_FROM = (8, 0)  # compute capability with native bf16 (Ampere)


@dataclass(frozen=True)
class Profile:
    name: str  # "cpu" | "gpu" | "gpu-low-vram"
    device: str  # "cpu" | "cuda": where svd_merge/extract compute
    mixed_precision: str  # sd-scripts' --mixed_precision: no | fp16 | bf16
    training_options: dict[str, Any] = field(default_factory=dict)  # extra training TOML keys
    gen_options: tuple[str, ...] = ()  # extra gen_img.py options
    optimizer: str | None = None  # replaces the recipe's optimizer (low VRAM only)
    family_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # family name -> more training TOML keys
    why: str = field(default="", compare=False)  # why this precision (doctor, the run's info line)

    def training_options_for(self, family: str) -> dict[str, Any]:
        return {**self.training_options, **self.family_options.get(family, {})}

    @property
    def gen_precision(self) -> str:
        return self.mixed_precision if self.mixed_precision != "no" else "float"


CPU = Profile(name="cpu", device="cpu", mixed_precision="no", training_options={"max_data_loader_n_workers": 0})


def choose_precision(compute: list[tuple[int, int]], torch_bf16: bool) -> tuple[str, str]:
    """bf16 only where every GPU has it natively (compute capability >= 8.0), else fp16; and why (recent torch's
    `is_bf16_supported()` is true on pre-Ampere cards too, which then train in slow emulated bf16)."""
    if not compute:
        return "fp16", "the GPU's compute capability is unknown (bf16 needs 8.0 or later)"
    oldest = min(compute)
    text = f"compute capability {oldest[0]}.{oldest[1]}"
    if oldest < BF16_FROM:
        return "fp16", f"{text} < 8.0: no native bf16 (emulated, slow)"
    if not torch_bf16:
        return "fp16", f"{text}, but this torch has no bf16 on it"
    return "bf16", f"{text} >= 8.0: native bf16"


def precision_caveat(gpus: list[str], precision: str) -> str | None:
    """GTX 16xx cards (Turing without tensor cores) are reported to give NaN losses in fp16."""
    if precision == "fp16" and any("GTX 16" in name for name in gpus):
        return ("GTX 16xx cards are reported to give NaN losses in fp16 (kohya-ss/sd-scripts#293), and have no native "
                "bf16; if a training stops on NaN loss, train with --device cpu or on another GPU")
    return None


def gpu_profile(bf16: bool, low_vram: bool = False, why: str = "") -> Profile:
    options: dict[str, Any] = {"max_data_loader_n_workers": 0, "sdpa": True, "cache_latents": True}
    if low_vram:
        options.update({"gradient_checkpointing": True, "cache_latents_to_disk": True})
    return Profile(name="gpu-low-vram" if low_vram else "gpu", device="cuda", why=why,
                   mixed_precision="bf16" if bf16 else "fp16", training_options=options, gen_options=("--sdpa",),
                   optimizer=LOW_VRAM_OPTIMIZER if low_vram else None,
                   family_options={"sdxl": dict(LOW_VRAM_SDXL_OPTIONS), **LOW_VRAM_DIT_OPTIONS} if low_vram
                   else dict(DIT_OPTIONS))
