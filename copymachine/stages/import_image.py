"""Stage: the original image from the user's file, normalised to an 8-bit RGB PNG."""

from __future__ import annotations

from dataclasses import dataclass

from copymachine.images import load_rgb, save_png
from copymachine.plan import StageParams
from copymachine.stages import StageContext, StageKind


@dataclass(frozen=True)
class ImportParams(StageParams):
    """None: the image is the stage's input, normalised."""


class ImportImage(StageKind):
    kind = "import_image"

    def execute(self, stage, ctx: StageContext) -> None:
        if ctx.dry_run:
            return
        image = load_rgb(stage.input("source"))
        save_png(image, ctx.scratch_output("image"))


KIND = ImportImage()
