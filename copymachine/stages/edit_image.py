"""Stage (memo step 4): the edited image — a built-in effect, or the user's own edit, checked.

A user's edit is checked against the original before any training: same size, aligned to
under a pixel, neither too weak nor a different picture (copymachine.check).
"""

from __future__ import annotations

from pathlib import Path

from copymachine.check import check_pair, compare_sheet
from copymachine.effects import apply_effect
from copymachine.errors import InputError
from copymachine.files import atomic_write_json
from copymachine.images import load_rgb, save_png
from copymachine.stages import StageContext, StageKind


class EditImage(StageKind):
    kind = "edit_image"

    def execute(self, stage, ctx: StageContext) -> None:
        if ctx.dry_run:
            return
        p = stage.params
        original = load_rgb(stage.input("original"))
        if p["effect"] == "custom":
            edited = load_rgb(stage.input("edited"))
        else:
            edited = apply_effect(p["effect"], original, p["effect_params"], amount=p["amount"])
        report = check_pair(original, edited)
        source = "your edit" if p["effect"] == "custom" else f"the {p['effect']} edit"
        for message in report.messages:
            if report.verdict == "refuse":
                continue
            ctx.reporter.warn(f"{source}: {message}")
        if report.verdict == "refuse":
            where = stage.inputs["edited"].path if "edited" in stage.inputs else Path("edit")
            raise InputError(f"{source} cannot be used ({where}): {'; '.join(report.messages)}")
        save_png(edited, ctx.scratch_output("image"))
        compare_sheet(original, edited, ctx.scratch_output("compare"))
        atomic_write_json(ctx.scratch_output("check"), report.as_dict())


KIND = EditImage()
