"""Stages of the original image: generated with the base model (memo step 1), or the user's file normalised
to an 8-bit RGB PNG (import_image)."""

from __future__ import annotations

from dataclasses import dataclass

from copymachine.files import atomic_write_text
from copymachine.genimg import PromptLine, RenderParams, file_names_supported, refuse_blank, render, render_family
from copymachine.images import load_rgb, save_png
from copymachine.models import BaseOptions
from copymachine.plan import StageParams
from copymachine.stages import StageContext, StageKind


@dataclass(frozen=True)
class GenerateParams(RenderParams):
    prompt: str
    seed: int
    width: int  # the size generated: the recipe's, or the family's own
    height: int


def generate_params(recipe, family, precision: str, model: BaseOptions | None = None) -> GenerateParams:
    width, height = recipe.size(family.default_size)
    return GenerateParams(
        **render_family(family), prompt=recipe.prompt, negative_prompt=recipe.negative_prompt, seed=recipe.seed,
        steps=recipe.steps, sampler=recipe.sampler, scale=recipe.scale, width=width, height=height,
        precision=precision, model=model.or_none() if model else None,
    )  # fmt: skip


class GenerateImage(StageKind):
    kind = "generate_image"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.spec
        line = PromptLine(p.prompt, ctx.scratch_output("image").name, p.width, p.height, p.seed, p.steps, p.scale,
                          p.negative_prompt or "")
        images = render(ctx, p, stage.input("base"), [line], stage.workdir / "config" / f"{stage.slug}-prompt.txt")
        if not ctx.dry_run:
            refuse_blank(images, f"stage '{stage.title}'", p.precision, p.model)
            named = file_names_supported(ctx.settings)
            atomic_write_text(ctx.scratch_output("prompt"), line.render(named) + "\n")


@dataclass(frozen=True)
class ImportParams(StageParams):
    """None: the image is the stage's input, normalised."""


class ImportImage(StageKind):
    kind = "import_image"

    def execute(self, stage, ctx: StageContext) -> None:
        if not ctx.dry_run:
            save_png(load_rgb(stage.input("source")), ctx.scratch_output("image"))


KINDS = (GenerateImage(), ImportImage())
