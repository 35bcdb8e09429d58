"""Stage (memo step 9): resize the LoRA's rank with resize_lora.py (--new_rank 8 --save_precision fp16)."""

from __future__ import annotations

from dataclasses import dataclass, field

from copymachine.lorafile import validate_lora
from copymachine.plan import OPTIONAL, StageParams
from copymachine.stages import StageContext, StageKind
from copymachine.stages.finalize import ToolLabel, label_tool_output


@dataclass(frozen=True)
class ResizeParams(StageParams):
    rank: int
    save_precision: str
    device: str = "cpu"  # on CUDA resize_lora.py has written corrupt files (sd-scripts issue #904)
    label: ToolLabel | None = field(default=None, metadata=OPTIONAL)


class ResizeLora(StageKind):
    kind = "resize_lora"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.spec
        out = ctx.scratch_output("lora")
        args = [
            "--model", str(stage.input("lora")), "--save_to", str(out), "--new_rank", str(p.rank),
            "--save_precision", p.save_precision, "--device", p.device,
        ]
        ctx.run(ctx.engine.run_script("networks/resize_lora.py", args), "resize_lora.py", expected=[out])
        label_tool_output(stage, ctx, out)

    def validate(self, stage, name, path, ctx):
        return validate_lora(path, "resized LoRA", expected_rank=stage.spec.rank).facts()


KIND = ResizeLora()
