"""Pre-flight of the RAM: a merge into the checkpoint that will likely not fit in RAM + swap is named at once."""

from __future__ import annotations

import psutil

from copymachine.models import ModelInfo
from copymachine.preflight.disk import GB, human
from copymachine.progress import Reporter
from copymachine.stamps import sized_stamp

# sd-scripts' peak memory merging a LoRA into a model at float (measured here: 13.4 GB for SD1.5; SDXL's float merge
# was killed by the out-of-memory killer on a 24 GB machine while saving, so 28 GB is an estimate, 3.3x SD1.5's
# parameters). At fp16 SDXL's merge peaked at 22.7 GiB (measured here, sdxl_merge_lora.py on the CPU).
MERGE_PEAK_RAM = {"sd1": int(13.4 * GB), "sd2": int(14 * GB), "sdxl": int(28 * GB)}
MERGE_PEAK_RAM_HALF = {"sdxl": int(22.7 * 2**30)}
# sd-scripts' peak RAM training an effect LoRA on the CPU with the copy LoRA merged in memory (--base_weights, the
# default route), measured here at 64 px (SD1.5: 6.8 GiB, the copy LoRA alike; on the merged copy model the effect
# LoRA peaked at 8.8 GiB): the largest need of a default run. With a GPU the model sits in VRAM and RAM peaks lower.
# Anima: 12.2 GiB measured the same way (anima_train_network.py, fp32 DiT on the CPU, random weights). FLUX.1 and
# SD3.5 are not measured (24 GB cannot hold them at float): their transformer plus T5-XXL at bf16, an estimate.
TRAINING_PEAK_RAM = {"sd1": int(6.8 * GB), "sd2": int(7.5 * GB), "sdxl": int(22.6 * GB), "anima": int(12.2 * 2**30),
                     "flux-dev": 34 * GB, "flux-schnell": 34 * GB, "chroma": 28 * GB, "sd3-medium": 16 * GB,
                     "sd3-5-large": 28 * GB, "sd3-5-medium": 16 * GB}
FP16_MERGE = "--set merge.precision=fp16 --set merge.save_precision=fp16"


def memory_bytes() -> dict[str, int]:
    """Total and available RAM and total swap."""
    vm = psutil.virtual_memory()
    return {"total": int(vm.total), "available": int(vm.available), "swap": int(psutil.swap_memory().total)}


def ram_and_swap(mem: dict[str, int]) -> int:
    """What a process can use before the kernel kills it."""
    return mem["total"] + mem["swap"]


def merge_ram(family: str, half: bool = False) -> int:
    """sd-scripts' peak RAM merging a LoRA into a `family` checkpoint, at float or half precision."""
    return MERGE_PEAK_RAM_HALF.get(family, MERGE_PEAK_RAM[family] // 2) if half else MERGE_PEAK_RAM[family]


def fp16_merge_fits(family: str, have: int) -> int | None:
    """The measured fp16 merge peak of `family` when it fits in `have` bytes (the way out of a float merge)."""
    half = MERGE_PEAK_RAM_HALF.get(family)
    return half if half and half <= have else None


def check_memory(plan, model: ModelInfo, reporter: Reporter) -> None:
    """Warn of a merge that will likely not fit in RAM + swap (the kernel would kill it minutes in)."""
    have = ram_and_swap(memory_bytes())
    for stage in plan.stages:
        if stage.kind != "merge_model" or sized_stamp(stage) is not None:
            continue
        family = stage.spec.family.name
        half = stage.spec.precision != "float"
        need = merge_ram(family, half)
        if need <= have:
            continue
        fp16 = None if half else fp16_merge_fits(family, have)
        hint = f"; merging at fp16 peaks at ~{human(fp16)}: {FP16_MERGE}" if fp16 else ""
        reporter.warn(f"'{stage.title}' merges into a {model.family.label} checkpoint at {stage.spec.precision} "
                      f"precision, which needs ~{human(need)} of RAM; this machine has {human(have)} (RAM + swap), so "
                      f"sd-scripts will likely be killed{hint}")
        return

