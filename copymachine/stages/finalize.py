"""Stage: the final LoRA at `<out>/<name>.safetensors`, carrying copymachine's own metadata
next to sd-scripts' ss_* keys (readable in A1111/ComfyUI metadata viewers)."""

from __future__ import annotations

import json

from copymachine import __version__
from copymachine.lorafile import copy_with_metadata, validate_lora
from copymachine.stages import StageContext, StageKind


SIGN_TEXT = {
    "edit": "positive strength = more of the edit",
    "memo": "positive strength = less of the edit (the memo's orientation)",
}


class Finalize(StageKind):
    kind = "finalize"

    def execute(self, stage, ctx: StageContext) -> None:
        if ctx.dry_run:
            return
        p = stage.params
        metadata = {
            "copymachine.version": __version__,
            "copymachine.method": p["method"],
            "copymachine.effect": p["effect"],
            "copymachine.effect_params": json.dumps(p.get("effect_params", {}), sort_keys=True),
            "copymachine.amount": str(p.get("amount", 1.0)),
            "copymachine.recipe": json.dumps(p.get("recipe", {}), sort_keys=True),
            "copymachine.sign": SIGN_TEXT[p.get("sign", "edit")],
            "copymachine.absorbed": json.dumps(p.get("absorbed", [])),
            "copymachine.sd_scripts_commit": p.get("sd_scripts_commit") or "unknown",
        }
        for kind in ("original", "edited"):
            names = sorted(n for n in stage.inputs if n.startswith(kind))
            metadata[f"copymachine.{kind}_sha256"] = ",".join(ctx.hashes.sha256(stage.input(n)) for n in names)
        copy_with_metadata(stage.input("lora"), ctx.scratch_output("lora"), metadata)

    def validate(self, stage, name, path, ctx):
        s = validate_lora(path, "final LoRA")
        return {"ranks": s.ranks, "modules": len(s.modules)}


KIND = Finalize()
