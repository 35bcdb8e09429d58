"""How much GPU memory a run's sd-scripts processes take (each with its own CUDA context, renders beside trainings
too): an estimate before any work, which sets the default --jobs and the pre-flight/doctor warnings.

Not measured on a GPU: the weights, LoRA, gradients and AdamW moments come from published parameter counts (LoRA per
dim summed over the modules networks/lora.py wraps: 0.59 M for SD1.5 gives the measured 151 MB dim-64 LoRA); the
activations, checkpointing share, CUDA context, render working set and allocator margin are estimates to calibrate
from a measured peak (`nvidia-smi --query-gpu=memory.used --format=csv -lms 200`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3
MILLION = 10**6

CUDA_CONTEXT = int(0.6 * GIB)  # per process: CUDA runtime, cuBLAS/cuDNN kernels (estimate)
ALLOCATOR_MARGIN = 1.10  # PyTorch's caching allocator and fragmentation (estimate)

# Parameters of the frozen model (millions): U-Net / transformer, text encoder(s), VAE. FLUX.1: 11.9 B transformer,
# CLIP-L + T5-XXL encoder (4.76 B); SD3.5 large 8.1 B, SD3.5 medium 2.5 B, SD3 medium 2 B MMDiT, + CLIP-G and T5;
# Anima 2 B DiT + Qwen3-0.6B (model cards). The DiT families train on cached text-encoder outputs (unet_only).
_FLUX, _SD3_TE, _T5 = 11_900, 123 + 695 + 4_760, 4_760
UNET_PARAMS = {"sd1": 860, "sd2": 865, "sdxl": 2567, "flux-dev": _FLUX, "flux-schnell": _FLUX, "chroma": 8_900,
               "sd3-medium": 2_000, "sd3-5-large": 8_100, "sd3-5-medium": 2_500, "anima": 2_000}
TEXT_ENCODER_PARAMS = {"sd1": 123, "sd2": 340, "sdxl": 123 + 695, "flux-dev": 123 + _T5, "flux-schnell": 123 + _T5,
                       "chroma": _T5, "sd3-medium": _SD3_TE, "sd3-5-large": _SD3_TE, "sd3-5-medium": _SD3_TE,
                       "anima": 600}
VAE_PARAMS = 84
# LoRA parameters per unit of network_dim (millions): U-Net modules, text-encoder modules. The DiTs': the sum of
# in + out features of the linear layers sd-scripts' lora_flux / lora_sd3 / lora_anima wrap (FLUX.1: 19 double
# blocks x 135 k + 38 single blocks x 55 k; SD3.5 large: 38 joint blocks x 108 k; Anima: 28 blocks x ~50 k).
LORA_PER_DIM_UNET = {"sd1": 0.424, "sd2": 0.432, "sdxl": 2.657, "flux-dev": 4.67, "flux-schnell": 4.67,
                     "chroma": 4.2, "sd3-medium": 2.6, "sd3-5-large": 4.1, "sd3-5-medium": 2.7, "anima": 1.4}
LORA_PER_DIM_TEXT = {"sd1": 0.166, "sd2": 0.424, "sdxl": 0.903}
# Activations of one training step per 512x512 of training area, batch 1, sdpa (estimate: SDXL's U-Net has no
# attention at the full latent size, so it holds less per pixel than SD1.5's; the DiTs: attention over every latent
# patch, scaled from docs/flux_train_network.md: FLUX.1 with fp8_base at 1024 px fits 24 GB at batch 2, 16 GB at 1)
ACTIVATIONS = {"sd1": 3.0 * GIB, "sd2": 3.2 * GIB, "sdxl": 2.5 * GIB, "flux-dev": 1.5 * GIB, "flux-schnell": 1.5 * GIB,
               "chroma": 1.3 * GIB, "sd3-medium": 1.0 * GIB, "sd3-5-large": 1.5 * GIB, "sd3-5-medium": 1.0 * GIB,
               "anima": 1.0 * GIB}
CHECKPOINTED_SHARE = 0.3  # what gradient checkpointing keeps of them (estimate)
# A render's working set per 512x512 of image area (estimate): U-Net at batch 2, VAE decode
RENDER_UNET = {"sd1": 0.5 * GIB, "sd2": 0.6 * GIB, "sdxl": 0.25 * GIB}
RENDER_DIT = 0.5 * GIB  # the DiT families (estimate)
RENDER_VAE_FP16 = 0.3 * GIB  # the VAE decoder per 512x512 in fp16; twice in fp32 (SDXL: --no_half_vae)
AREA = 512 * 512

FAMILIES_BY_FLAG = {"--v1": "sd1", "--v2": "sd2", "--sdxl": "sdxl", "": "sd1"}


@dataclass
class Need:
    """One process's estimated peak, with its parts (bytes), for the messages."""

    what: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        context = self.parts.get("CUDA context", 0)
        return context + int((sum(self.parts.values()) - context) * ALLOCATOR_MARGIN)


def _bytes_per(precision: str) -> int:
    return 4 if precision in ("no", "float", "fp32") else 2


def training(family: str, size: tuple[int, int], dim: int, precision: str = "bf16", optimizer: str = "AdamW",
             gradient_checkpointing: bool = False, unet_only: bool = False, fp8_base: bool = False) -> Need:
    """A LoRA training's peak, once sd-scripts has cached the latents (and with `unet_only` the text-encoder
    outputs) and moved the VAE / text encoders off the GPU; `fp8_base`: 1 byte per frozen weight."""
    weight = 1 if fp8_base else _bytes_per(precision)
    frozen = UNET_PARAMS[family] + (0 if unet_only else TEXT_ENCODER_PARAMS[family])
    lora = dim * (LORA_PER_DIM_UNET[family] + (0 if unet_only else LORA_PER_DIM_TEXT[family]))
    moments = 2 if "8bit" in optimizer.lower() else 8  # two moments, 1 byte each or fp32
    area = size[0] * size[1] / AREA
    activations = ACTIVATIONS[family] * area * (CHECKPOINTED_SHARE if gradient_checkpointing else 1.0)
    return Need(f"training at {size[0]}x{size[1]}, dim {dim}", {
        "CUDA context": CUDA_CONTEXT, "model weights": int(frozen * MILLION * weight),
        "LoRA, gradients, optimizer": int(lora * MILLION * (4 + 4 + moments)), "activations": int(activations)})


def render(family: str, size: tuple[int, int], precision: str = "bf16") -> Need:
    """A gen_img.py render's peak: the whole model on the GPU, one image at a time."""
    weight = _bytes_per(precision)
    area = size[0] * size[1] / AREA
    vae_bytes = 4 if family == "sdxl" or weight == 4 else 2  # SDXL renders with --no_half_vae
    weights = (UNET_PARAMS[family] + TEXT_ENCODER_PARAMS[family]) * MILLION * weight + VAE_PARAMS * MILLION * vae_bytes
    return Need(f"render at {size[0]}x{size[1]}", {
        "CUDA context": CUDA_CONTEXT, "model weights": int(weights),
        "working set": int(RENDER_UNET.get(family, RENDER_DIT) * area + RENDER_VAE_FP16 * area * vae_bytes / 2)})


def stage_need(stage, low_vram: bool = False) -> Need | None:
    """The estimate for a stage that runs on the GPU (else None); `low_vram`: as --low-vram would train it."""
    spec = stage.spec
    if stage.kind == "train_lora":
        options = spec.training_options
        family = spec.family.name
        return training(family, tuple(spec.size), spec.training.network_dim, spec.mixed_precision,
                        "AdamW8bit" if low_vram else spec.training.optimizer,
                        gradient_checkpointing=low_vram or bool(options.get("gradient_checkpointing")),
                        unet_only=(low_vram and family == "sdxl") or bool(options.get("network_train_unet_only"))
                        or bool(spec.family.training_options.get("network_train_unet_only")),
                        fp8_base=bool(options.get("fp8_base")))
    if stage.kind in ("copy_check", "preview", "leakage", "generate_image"):
        family = spec.family.name if spec.family is not None else FAMILIES_BY_FLAG.get(spec.family_flag, "sd1")
        size = (spec.width, spec.height) if stage.kind == "generate_image" else tuple(spec.size)
        precision = "float" if spec.precision == "float" else "fp16"
        return render(family, size, precision)
    return None


def largest(plan, low_vram: bool = False) -> list[tuple[Any, Need]]:
    """The plan's GPU stages with their estimates, largest first."""
    needs = [(s, n) for s in plan.stages if (n := stage_need(s, low_vram)) is not None]
    return sorted(needs, key=lambda sn: -sn[1].total)


def side_by_side(plan, jobs: int, low_vram: bool = False) -> int:
    """The peak of `jobs` processes on one GPU at once: the `jobs` largest stages together."""
    return sum(n.total for _, n in largest(plan, low_vram)[: max(1, jobs)])


def fitting_jobs(plan, free: int, limit: int) -> int:
    """How many stages at once the free memory holds (at least 1, at most `limit`)."""
    jobs = 1
    while jobs < limit and side_by_side(plan, jobs + 1) <= free:
        jobs += 1
    return jobs


def default_jobs(plan, gpus: int, free: int | None, trainings: int) -> int:
    """One per GPU on several, as many as the free memory holds on one, 1 on the CPU; at most `trainings`."""
    if gpus <= 0 or trainings <= 1:
        return 1
    if gpus > 1:
        return min(gpus, trainings)
    return fitting_jobs(plan, free or 0, trainings)
