"""Stage: merge LoRAs into a checkpoint with merge_lora.py (sdxl_merge_lora.py for SDXL).

Memo step 3, the copy model: --sd_model BASE --models COPY --ratios 1 --precision float
--save_precision float. Also step 7 (the processed model: every image's effect LoRA merged
into the base) and the style-absorb tip. Merging into a checkpoint is exact and linear in the
ratio, negative ratios included; copymachine never uses it to merge LoRA into LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copymachine.errors import EngineError
from copymachine.lorafile import read_safetensors
from copymachine.models import Family, detect_family
from copymachine.plan import StageParams, WeightedLora
from copymachine.stages import StageContext, StageKind


@dataclass(frozen=True)
class MergeParams(StageParams):
    family: Family
    ratios: list[float]  # of the LoRA inputs lora000, lora001, ... in order
    precision: str
    save_precision: str


def merge_plan(
    family: Family, base: Any, loras: Sequence[WeightedLora], precision: str, save_precision: str
) -> tuple[dict[str, Any], MergeParams]:
    """The stage's inputs (the model `base`, then each LoRA) and parameters."""
    inputs = {"base": base, **{lora_input_name(i): w.lora for i, w in enumerate(loras)}}
    ratios = [w.ratio for w in loras]
    return inputs, MergeParams(family=family, ratios=ratios, precision=precision, save_precision=save_precision)


class MergeModel(StageKind):
    kind = "merge_model"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.spec
        out = ctx.scratch_output("model")
        args = [
            "--sd_model", str(stage.input("base")), "--models", *lora_inputs(stage),
            "--ratios", *[_num(r) for r in p.ratios], "--precision", p.precision, "--save_precision", p.save_precision,
            "--save_to", str(out), *p.family.merge_options,
        ]
        ctx.run(ctx.engine.run_script(p.family.merge_script, args), Path(p.family.merge_script).name, expected=[out])

    def validate(self, stage, name, path, ctx):
        st = read_safetensors(path, "merged model")
        family, what = detect_family(st.keys())
        if family is None or family.name != stage.spec.family.name:
            label = stage.spec.family.label
            raise EngineError(f"the merged model at {path} is not a {label} checkpoint (found {what})")
        return {"tensors": len(st.tensors)}


def _num(x: float) -> str:
    return repr(float(x))


def lora_input_name(i: int) -> str:
    return f"lora{i:03d}"


def lora_inputs(stage) -> list[str]:
    """The stage's LoRA inputs in order (named lora000, lora001, ... by the planner)."""
    return [str(stage.input(name)) for name in sorted(stage.inputs) if name.startswith("lora")]


KIND = MergeModel()
