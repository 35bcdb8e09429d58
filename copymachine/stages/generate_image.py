"""Stage (memo step 1): generate the original image with the base model through gen_img.py.

One prompt-file line carries the seed (`--d`) and the file name (`--f`): gen_img.py crashes
with `--seed` and a one-line `--from_file`, and guesses the model family from the file size
unless told, so the family's flag is always passed (see copymachine.genimg).
"""

from __future__ import annotations

from dataclasses import dataclass

from copymachine.files import atomic_write_text
from copymachine.genimg import PromptLine, RenderParams, file_names_supported, refuse_blank, render
from copymachine.models import BaseOptions
from copymachine.stages import StageContext, StageKind


@dataclass(frozen=True)
class GenerateParams(RenderParams):
    prompt: str
    seed: int
    width: int  # the size generated: the recipe's, or the family's own
    height: int


def generate_params(recipe, family, precision: str, model: BaseOptions | None = None) -> GenerateParams:
    """Stage parameters from the recipe's [generate]; a size of 0 is the family's own."""
    width, height = recipe.size(family.default_size)
    return GenerateParams(
        family_flag=family.gen_flag, prompt=recipe.prompt, negative_prompt=recipe.negative_prompt, seed=recipe.seed,
        steps=recipe.steps, sampler=recipe.sampler, scale=recipe.scale, width=width, height=height,
        precision=precision, model=model.or_none() if model else None,
    )  # fmt: skip


def prompt_line(p: GenerateParams, file_name: str) -> PromptLine:
    return PromptLine(prompt=p.prompt, negative_prompt=p.negative_prompt or "", file_name=file_name, width=p.width,
                      height=p.height, seed=p.seed, steps=p.steps, scale=p.scale)


class GenerateImage(StageKind):
    kind = "generate_image"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.spec
        line = prompt_line(p, ctx.scratch_output("image").name)
        images = render(ctx, p, stage.input("base"), [line], stage.workdir / "config" / f"{stage.slug}-prompt.txt")
        if not ctx.dry_run:
            refuse_blank(images, f"stage '{stage.title}'", p.precision, p.model)
            named = file_names_supported(ctx.settings)
            atomic_write_text(ctx.scratch_output("prompt"), line.render(named) + "\n")


KIND = GenerateImage()
