"""Pre-flight: everything that can be checked before the first stage runs, so a wrong file, a full disk or a foreign
output stops a run of hours at once, with one line, touching nothing. The CLI checks in order the inputs (model),
the output (paths), the disk, the RAM (memory), sd-scripts (engine), the GPU (gpu)."""

from __future__ import annotations

from copymachine.models import ModelInfo
from copymachine.preflight.disk import MB, by_disk, check_space, disk_full, estimate_space, human, one_image_run_needs
from copymachine.preflight.engine import check_family_scripts, check_tokenizers, engine_warning, tokenizer_problem
from copymachine.preflight.gpu import LOW_VRAM_TEXT, check_bitsandbytes, check_vram
from copymachine.preflight.memory import (
    FP16_MERGE,
    TRAINING_PEAK_RAM,
    check_memory,
    fp16_merge_fits,
    memory_bytes,
    merge_ram,
    ram_and_swap,
)
from copymachine.preflight.model import check_base_model, check_images, model_parameters
from copymachine.preflight.paths import (
    WINDOWS_PATH_LIMIT,
    check_output,
    check_path_lengths,
    check_writable,
    existing_ancestor,
    made_here,
    written_paths,
)
from copymachine.progress import Reporter

__all__ = ["FP16_MERGE", "LOW_VRAM_TEXT", "MB", "TRAINING_PEAK_RAM", "WINDOWS_PATH_LIMIT", "by_disk",
           "check_base_model", "check_bitsandbytes", "check_family_scripts", "check_images", "check_output",
           "check_path_lengths", "check_resources", "check_space", "check_tokenizers", "check_vram", "check_writable",
           "disk_full", "engine_warning", "estimate_space", "existing_ancestor", "fp16_merge_fits", "human",
           "made_here", "memory_bytes", "merge_ram", "model_parameters", "one_image_run_needs", "ram_and_swap",
           "tokenizer_problem", "written_paths"]


def check_resources(plan, model: ModelInfo, reporter: Reporter) -> None:
    """Before a run: the disk space (refused when short; the estimate goes to the plan's info) and a merge's RAM."""
    needs = estimate_space(plan, model, model_parameters(model))
    plan.info.disk_space = check_space(plan, model, reporter, needs)
    # what each stage still to run writes: a stage that meets a full disk says what it needs
    plan.info.stage_bytes = {n.stage: n.bytes for n in needs}
    check_memory(plan, model, reporter)
