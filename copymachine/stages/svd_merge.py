"""Stage: svd_merge_lora.py — the exact weighted sum of LoRAs (negative ratios subtract),
re-factorised by SVD to a rank. Difference extraction step 5 (`--ratios 1 -1 --new_rank 8
--precision float --save_precision fp16`) and the exact route for combining several LoRAs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from copymachine.lorafile import validate_lora
from copymachine.plan import COSMETIC, OPTIONAL, LoraTerm, StageParams
from copymachine.stages import StageContext, StageKind
from copymachine.stages.finalize import ToolLabel, label_tool_output
from copymachine.stages.merge_model import _num, lora_input_name, lora_inputs


@dataclass(frozen=True)
class SvdMergeParams(StageParams):
    ratios: list[float]  # of the LoRA inputs lora000, lora001, ... in order; negative subtracts
    labels: list[str] = field(metadata=COSMETIC)  # each term's name, for the plan listing
    rank: int = 8
    precision: str = "float"
    save_precision: str = "fp16"
    device: str = "cpu"
    label: ToolLabel | None = field(default=None, metadata=OPTIONAL)


def svd_merge_plan(
    terms: Sequence[LoraTerm], rank: int, precision: str, save_precision: str, device: str, tool: str | None = None
) -> tuple[dict[str, Any], SvdMergeParams]:
    """The stage's inputs (each term's LoRA, in order) and parameters."""
    inputs = {lora_input_name(i): t.lora for i, t in enumerate(terms)}
    params = SvdMergeParams(ratios=[t.ratio for t in terms], labels=[t.label for t in terms], rank=rank,
                            precision=precision, save_precision=save_precision, device=device,
                            label=ToolLabel(tool) if tool else None)
    return inputs, params


class SvdMerge(StageKind):
    kind = "svd_merge"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.spec
        out = ctx.scratch_output("lora")
        args = [
            "--models", *lora_inputs(stage), "--ratios", *[_num(r) for r in p.ratios], "--new_rank", str(p.rank),
            "--precision", p.precision, "--save_precision", p.save_precision, "--device", p.device,
            "--save_to", str(out),
        ]
        ctx.run(ctx.engine.run_script("networks/svd_merge_lora.py", args), "svd_merge_lora.py", expected=[out])
        label_tool_output(stage, ctx, out)

    def validate(self, stage, name, path, ctx):
        return validate_lora(path, "merged LoRA", expected_rank=stage.spec.rank).facts()

    def describe(self, stage) -> str:
        terms = " ".join(f"{r:+g}x{n}" for r, n in zip(stage.spec.ratios, stage.spec.labels))
        return f"{stage.title}: svd_merge_lora.py {terms}, rank {stage.spec.rank}"


KIND = SvdMerge()
