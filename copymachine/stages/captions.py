"""Stage: one caption per training image, the original's for the edit too (a tag such as "flat color" on the
edit only would bind the effect to it): fixed text, or the WD14 tags of the original (the tagger's files are
inputs, so another tagger model re-tags).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copymachine.errors import InputError
from copymachine.files import atomic_write_text
from copymachine.images import load_rgb
from copymachine.plan import OPTIONAL, StageParams
from copymachine.stages import StageContext, StageKind
from copymachine.tagger import Tagger, tagger_files

OUTPUTS = {"original": "original.txt", "edited": "edited.txt"}


@dataclass(frozen=True)
class CaptionParams(StageParams):
    method: str  # "fixed" | "wd14"
    text: str | None = field(default=None, metadata=OPTIONAL)  # fixed
    prefix: str | None = field(default=None, metadata=OPTIONAL)  # wd14: tags put first
    general_threshold: float | None = field(default=None, metadata=OPTIONAL)
    character_threshold: float | None = field(default=None, metadata=OPTIONAL)
    exclude: list[str] | None = field(default=None, metadata=OPTIONAL)


def caption_plan(recipe, original, tagger_dir: Path | None, planner) -> tuple[dict[str, Any], CaptionParams]:
    if recipe.method != "wd14":
        return {}, CaptionParams(method="fixed", text=recipe.text)
    if tagger_dir is None:
        raise InputError("--caption-with wd14 needs --tagger-dir DIR (a folder with model.onnx and selected_tags.csv)")
    model, tags = tagger_files(tagger_dir)
    inputs = {"image": original, "tagger_model": planner.external(model.resolve()),
              "tagger_tags": planner.external(tags.resolve())}
    return inputs, CaptionParams(method="wd14", prefix=recipe.prefix, general_threshold=recipe.general_threshold,
                                 character_threshold=recipe.character_threshold,
                                 exclude=[t.strip() for t in recipe.exclude_tags.split(",") if t.strip()])


class Captions(StageKind):
    kind = "captions"

    def execute(self, stage, ctx: StageContext) -> None:
        if ctx.dry_run:
            return
        text = self._tags(stage, ctx) if stage.spec.method == "wd14" else stage.spec.text
        text = " ".join(text.split())  # sd-scripts reads the first line only
        for name in ("original", "edited"):
            atomic_write_text(ctx.scratch_output(name), text + "\n")

    def _tags(self, stage, ctx: StageContext) -> str:
        p = stage.spec
        tagger = Tagger(stage.input("tagger_model").parent)
        image = load_rgb(stage.input("image"))
        tags = tagger(image, p.general_threshold, p.character_threshold, tuple(p.exclude or ()))
        prefix = [t.strip() for t in (p.prefix or "").split(",") if t.strip()]
        caption = ", ".join(prefix + [t for t in tags if t not in prefix])
        shown = caption or "(none above the thresholds)"
        ctx.reporter.info(f"      WD14 tags of the original ({len(tags)}): {shown}")
        return caption


KIND = Captions()
