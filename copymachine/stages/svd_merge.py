"""Stage: svd_merge_lora.py — the exact weighted sum of LoRAs (negative ratios subtract),
re-factorised by SVD to a rank. Difference extraction step 5 (`--ratios 1 -1 --new_rank 8
--precision float --save_precision fp16`) and the exact route for combining several LoRAs."""

from __future__ import annotations

from copymachine.lorafile import validate_lora
from copymachine.stages import StageContext, StageKind
from copymachine.stages.finalize import label_tool_output
from copymachine.stages.merge_model import _num, lora_inputs


class SvdMerge(StageKind):
    kind = "svd_merge"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.params
        out = ctx.scratch_output("lora")
        args = [
            "--models",
            *lora_inputs(stage),
            "--ratios",
            *[_num(r) for r in p["ratios"]],
            "--new_rank",
            str(p["rank"]),
            "--precision",
            p["precision"],
            "--save_precision",
            p["save_precision"],
            "--device",
            p["device"],
            "--save_to",
            str(out),
        ]
        ctx.run(ctx.engine.run_script("networks/svd_merge_lora.py", args), "svd_merge_lora.py", expected=[out])
        label_tool_output(stage, ctx, out)

    def validate(self, stage, name, path, ctx):
        return validate_lora(path, "merged LoRA", expected_rank=stage.params["rank"]).facts()

    def describe(self, stage) -> str:
        terms = " ".join(f"{r:+g}x{n}" for r, n in zip(stage.params["ratios"], stage.params["labels"]))
        return f"{stage.title}: svd_merge_lora.py {terms}, rank {stage.params['rank']}"


KIND = SvdMerge()
