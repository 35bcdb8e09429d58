"""Stage (memo step 8): the LoRA of base -> processed model, by extract_lora_from_models.py
(an SVD of the weight difference)."""

from __future__ import annotations

from dataclasses import dataclass, field

from copymachine.lorafile import validate_lora
from copymachine.models import Family
from copymachine.plan import OPTIONAL, StageParams
from copymachine.stages import StageContext, StageKind
from copymachine.stages.finalize import ToolLabel, label_tool_output


@dataclass(frozen=True)
class ExtractParams(StageParams):
    family: Family
    dim: int
    min_diff: float
    precision: str  # to load and to save in
    device: str
    label: ToolLabel | None = field(default=None, metadata=OPTIONAL)


class ExtractLora(StageKind):
    kind = "extract_lora"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.spec
        out = ctx.scratch_output("lora")
        args = [
            "--model_org", str(stage.input("original")), "--model_tuned", str(stage.input("tuned")),
            "--save_to", str(out), "--dim", str(p.dim), "--min_diff", repr(float(p.min_diff)),
            "--load_precision", p.precision, "--save_precision", p.precision, "--device", p.device,
            *p.family.extract_options,
        ]
        script = "networks/extract_lora_from_models.py"
        ctx.run(ctx.engine.run_script(script, args), "extract_lora_from_models.py", expected=[out])
        label_tool_output(stage, ctx, out)

    def validate(self, stage, name, path, ctx):
        return validate_lora(path, "extracted LoRA", expected_rank=stage.spec.dim).facts()


KIND = ExtractLora()
