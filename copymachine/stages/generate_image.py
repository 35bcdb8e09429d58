"""Stage (memo step 1): generate the original image with the base model through gen_img.py.

One prompt-file line carries the seed (`--d`) and the file name (`--f`): gen_img.py crashes
with `--seed` and a one-line `--from_file`, and guesses the model family from the file size
unless told, so the family's flag is always passed (see copymachine.genimg).
"""

from __future__ import annotations

from copymachine.files import atomic_write_text
from copymachine.genimg import PromptLine, collect_sequential, file_names_supported, gen_img_args
from copymachine.stages import StageContext, StageKind


def prompt_line(p: dict, file_name: str, named: bool = True) -> str:
    return PromptLine(
        prompt=p["prompt"],
        negative_prompt=p.get("negative_prompt") or "",
        file_name=file_name,
        width=p["width"],
        height=p["height"],
        seed=p["seed"],
        steps=p["steps"],
        scale=p["scale"],
    ).render(named)


class GenerateImage(StageKind):
    kind = "generate_image"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.params
        out = ctx.scratch_output("image")
        prompts = stage.workdir / "config" / f"{stage.slug}-prompt.txt"
        named = file_names_supported(ctx.settings)
        atomic_write_text(prompts, prompt_line(p, out.name, named) + "\n")
        args = gen_img_args(stage.input("base"), p["family_flag"], ctx.scratch, prompts, p["sampler"], p.get("precision"), ctx.settings.tokenizer_cache_dir, extra=ctx.settings.profile.gen_options, sequential=not named)
        collect = None if named else (lambda: collect_sequential(ctx.scratch, [out.name]))
        ctx.run(ctx.engine.run_script("gen_img.py", args), "gen_img.py", expected=[out], collect=collect)
        if not ctx.dry_run:
            atomic_write_text(ctx.scratch_output("prompt"), prompt_line(p, out.name, named) + "\n")


KIND = GenerateImage()
