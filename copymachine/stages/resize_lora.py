"""Stage (memo step 9): resize the LoRA's rank with resize_lora.py (--new_rank 8 --save_precision fp16)."""

from __future__ import annotations

from copymachine.lorafile import validate_lora
from copymachine.stages import StageContext, StageKind
from copymachine.stages.finalize import label_tool_output


class ResizeLora(StageKind):
    kind = "resize_lora"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.params
        out = ctx.scratch_output("lora")
        args = [
            "--model",
            str(stage.input("lora")),
            "--save_to",
            str(out),
            "--new_rank",
            str(p["rank"]),
            "--save_precision",
            p["save_precision"],
            "--device",
            p["device"],
        ]
        ctx.run(ctx.engine.run_script("networks/resize_lora.py", args), "resize_lora.py", expected=[out])
        label_tool_output(stage, ctx, out)

    def validate(self, stage, name, path, ctx):
        return validate_lora(path, "resized LoRA", expected_rank=stage.params["rank"]).facts()


KIND = ResizeLora()
