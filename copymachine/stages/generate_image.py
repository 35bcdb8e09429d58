"""Stage (memo step 1): generate the original image with the base model through gen_img.py.

One prompt-file line carries the seed (`--d`) and the file name (`--f`): gen_img.py crashes
with `--seed` and a one-line `--from_file`, and guesses the model family from the file size
unless told, so the family's flag is always passed.
"""

from __future__ import annotations

from copymachine.files import atomic_write_text
from copymachine.stages import StageContext, StageKind


def _clean(text: str) -> str:
    # gen_img.py splits each prompt line on " --"; a prompt must not contain that sequence.
    return " ".join(text.replace(" --", " -").split())


def prompt_line(p: dict, file_name: str) -> str:
    line = _clean(p["prompt"])
    if p.get("negative_prompt"):
        line += f" --n {_clean(p['negative_prompt'])}"
    line += f" --w {p['width']} --h {p['height']} --d {p['seed']} --s {p['steps']} --l {p['scale']} --f {file_name}"
    return line


class GenerateImage(StageKind):
    kind = "generate_image"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.params
        out = ctx.scratch_output("image")
        prompts = stage.workdir / "config" / f"{stage.slug}-prompt.txt"
        atomic_write_text(prompts, prompt_line(p, out.name) + "\n")
        args = [
            "--ckpt",
            str(stage.input("base")),
            p["family_flag"],
            "--outdir",
            str(ctx.scratch),
            "--from_file",
            str(prompts),
            "--sampler",
            p["sampler"],
            "--images_per_prompt",
            "1",
            "--batch_size",
            "1",
        ]
        if p.get("precision") in ("fp16", "bf16"):
            args.append(f"--{p['precision']}")
        if ctx.settings.tokenizer_cache_dir:
            args += ["--tokenizer_cache_dir", str(ctx.settings.tokenizer_cache_dir)]
        ctx.run(ctx.engine.run_script("gen_img.py", args), "gen_img.py", expected=[out])
        if not ctx.dry_run:
            atomic_write_text(ctx.scratch_output("prompt"), prompt_line(p, out.name) + "\n")


KIND = GenerateImage()
