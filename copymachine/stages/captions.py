"""Stage: one caption file per training image, the same text for the original and the edit.

The edit must not leak into the captions (a tag such as "flat color" on the edited image only
would bind the effect to that tag), so the edited image gets the original's caption verbatim.
"""

from __future__ import annotations

from copymachine.files import atomic_write_text
from copymachine.stages import StageContext, StageKind


class Captions(StageKind):
    kind = "captions"

    def execute(self, stage, ctx: StageContext) -> None:
        if ctx.dry_run:
            return
        text = " ".join(stage.params["text"].split())  # sd-scripts reads the first line only
        for name in ("original", "edited"):
            atomic_write_text(ctx.scratch_output(name), text + "\n")


KIND = Captions()
