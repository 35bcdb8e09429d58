"""Stage (memo step 4): the edited image — a built-in effect, or the user's own edit, checked.

A user's edit is checked against the original before any training: same size, aligned to
under a pixel, neither too weak nor a different picture (copymachine.check). A built-in effect
keeps every pixel in place by construction (tests/test_effects.py), and so does a user's edit
declared with `--edit-in-place`: for those the alignment reading is a note, never a refusal.
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
        custom = p["effect"] == "custom"
        report = check_pair(original, edited, in_place=not custom or p.get("in_place", False))
        source = "your edit" if custom else f"the {p['effect']} edit"
        for note in report.notes:
            ctx.reporter.info(f"note: {source}: {note}")
        for message in report.messages:
            if report.verdict == "refuse":
                continue
            ctx.reporter.warn(f"{source}: {message}")
        if report.verdict == "refuse":
            where = stage.inputs["edited"].path if "edited" in stage.inputs else Path("edit")
            hint = ""
            if custom and report.reads_as_moved:
                hint = ("; if you only drew on the picture without moving it (thick new lines pull the alignment "
                        "fit), pass --edit-in-place to use it")
            raise InputError(f"{source} cannot be used ({where}): {'; '.join(report.messages)}{hint}")
        save_png(edited, ctx.scratch_output("image"))
        compare_sheet(original, edited, ctx.scratch_output("compare"))
        atomic_write_json(ctx.scratch_output("check"), report.as_dict())


KIND = EditImage()
