"""Stage (memo step 4): the edited image (a built-in effect, or the user's edit), checked against the original
before any training (copymachine.check); for a built-in effect or `--edit-in-place` the alignment is a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from copymachine.check import PairReport, check_pair, compare_sheet, strength, weak_message
from copymachine.effects import apply_effect, check_amount, resolve_params
from copymachine.errors import InputError
from copymachine.files import atomic_write_json
from copymachine.images import load_rgb, save_png
from copymachine.plan import OPTIONAL, FileRef, Plan, Stage, StageParams
from copymachine.stages import StageContext, StageKind

CUSTOM = "custom"  # the user's own edit
OUTPUTS = {"image": "edited.png", "compare": "compare.png", "check": "check.json"}


@dataclass(frozen=True)
class EditParams(StageParams):
    effect: str
    effect_params: dict[str, Any]  # the effect's own parameters, resolved (effects.resolve_params)
    amount: float
    # the user's edit keeps every pixel in place; only when given, so earlier runs' keys stay
    in_place: bool | None = field(default=None, metadata=OPTIONAL)


def edit_plan(
    effect: str, original: Any, edited: Any | None, overrides: dict[str, Any], amount: float, in_place: bool
) -> tuple[dict[str, Any], EditParams]:
    inputs = {"original": original}
    if effect == CUSTOM:
        if edited is None:
            raise InputError("effect custom needs an edited image")
        inputs["edited"] = edited
        return inputs, EditParams(effect=CUSTOM, effect_params={}, amount=1.0, in_place=True if in_place else None)
    params = resolve_params(effect, overrides)
    return inputs, EditParams(effect=effect, effect_params=params, amount=check_amount(amount))


def edit_and_check(
    original: Image.Image, effect: str, effect_params: dict, amount: float = 1.0, edited: Image.Image | None = None,
    in_place: bool = False,
) -> tuple[Image.Image, PairReport]:
    """The edited image and its check, as the stage makes them (the web UI's live preview too)."""
    if effect != CUSTOM:
        edited = apply_effect(effect, original, effect_params, amount=amount)
    assert edited is not None
    return edited, check_pair(original, edited, in_place=effect != CUSTOM or in_place)


def _source(effect: str) -> str:
    return "your edit" if effect == CUSTOM else f"the {effect} edit"


def verdict_lines(report: PairReport, effect: str, where: Path | str) -> tuple[list[str], list[str], str | None]:
    """Notes, warnings and the one-line refusal (or None) of an edit, for the stage and the web UI."""
    source = _source(effect)
    notes = [f"note: {source}: {note}" for note in report.notes]
    if report.verdict != "refuse":
        return notes, [f"{source}: {m}" for m in report.messages], None
    hint = ""
    if effect == CUSTOM and report.reads_as_moved:
        hint = ("; if you only drew on the picture without moving it (thick new lines pull the alignment "
                "fit), pass --edit-in-place to use it")
    return notes, [], f"{source} cannot be used ({where}): {'; '.join(report.messages)}{hint}"


def _user_file(ref: FileRef, stages: dict[str, Stage]) -> Path | None:
    if ref.producer is None:
        return ref.path
    producer = stages[ref.producer]
    return _user_file(producer.inputs["source"], stages) if producer.kind == "import_image" else None


def check_edits(plan: Plan, weak_ok: bool) -> None:
    """Before the first stage, a dry run's too: refuse a user's image's edit that is identical or too weak."""
    stages = {s.name: s for s in plan.stages}
    for stage in [s for s in plan.stages if s.kind == EditImage.kind]:
        paths = {name: _user_file(ref, stages) for name, ref in stage.inputs.items()}
        original_path, edited_path = paths["original"], paths.get("edited")
        if original_path is None:
            continue
        p = stage.spec
        original = load_rgb(original_path)
        edited = load_rgb(edited_path) if edited_path else apply_effect(p.effect, original, p.effect_params, p.amount)
        measured = strength(original, edited)
        if measured is None:
            continue  # another size: its stage says so
        source, where = _source(p.effect), edited_path or original_path
        if math.isinf(measured[0]):
            raise InputError(f"{source} of {where} is identical to the original: there is nothing for the effect "
                             "LoRA to learn")
        _refuse_weak(weak_message(*measured), weak_ok, source, where, p.effect)


def _refuse_weak(weak: str | None, weak_ok: bool, source: str, where: Path | str, effect: str) -> None:
    if weak and not weak_ok:
        raise InputError(f"{source} of {where}: {weak} (--amount, --set {effect}.…, or another edit); or "
                         "pass --weak-edit-ok to train on it anyway")


class EditImage(StageKind):
    kind = "edit_image"

    def execute(self, stage, ctx: StageContext) -> None:
        if ctx.dry_run:
            return
        p = stage.spec
        original = load_rgb(stage.input("original"))
        custom_edit = load_rgb(stage.input("edited")) if p.effect == CUSTOM else None
        edited, report = edit_and_check(original, p.effect, p.effect_params, p.amount, custom_edit, bool(p.in_place))
        where = stage.inputs["edited"].path if "edited" in stage.inputs else Path("edit")
        notes, warnings, refusal = verdict_lines(report, p.effect, where)
        if not refusal and report.psnr_db is not None and report.changed_fraction is not None:
            # a generated original's edit is first measured here (check_edits measured the user's)
            _refuse_weak(weak_message(report.psnr_db, report.changed_fraction), ctx.weak_edit_ok, _source(p.effect),
                         where, p.effect)
        for line in notes:
            ctx.reporter.info(line)
        for line in warnings:
            ctx.reporter.warn(line)
        if refusal:
            raise InputError(refusal)
        save_png(edited, ctx.scratch_output("image"))
        compare_sheet(original, edited, ctx.scratch_output("compare"))
        atomic_write_json(ctx.scratch_output("check"), report.as_dict())


KIND = EditImage()
