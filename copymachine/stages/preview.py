"""Stage: the strength-sweep preview of a LoRA on a model (the memo judged its LoRAs so, by eye). The sheet
(a row per prompt x seed, a column per strength, strength 0 framed) goes next to the LoRA as
`<name>-preview.png`, the single images in `<name>-preview/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

from copymachine.genimg import PromptLine, RenderParams, format_multiplier, prompt_line, render, render_family, renderer
from copymachine.images import load_rgb, save_png
from copymachine.models import BaseOptions
from copymachine.recipe import parse_number_list, split_prompts
from copymachine.sheet import contact_sheet
from copymachine.stages import StageContext, StageKind
from copymachine.stages.leakage import short_label


@dataclass(frozen=True)
class PreviewParams(RenderParams):
    strengths: list[float]  # one column each
    prompts: list[str]  # rows: prompt x seed
    seeds: list[int]
    size: list[int]  # width, height


def preview_params(recipe, family, precision: str, model: BaseOptions | None = None, **overrides) -> PreviewParams:
    """From the recipe's [preview] and the preview command's `overrides`; duplicates dropped."""
    strengths = overrides.get("strengths") or parse_number_list(recipe.strengths, float)
    prompts = overrides.get("prompts") or split_prompts(recipe.prompts) or [""]
    seeds = overrides.get("seeds") or parse_number_list(recipe.seeds, int)
    side = overrides.get("size") or recipe.size or family.default_size
    return PreviewParams(
        **render_family(family), strengths=list(dict.fromkeys(map(float, strengths))),
        prompts=list(dict.fromkeys(prompts)), seeds=list(dict.fromkeys(map(int, seeds))), size=[int(side), int(side)],
        steps=int(overrides.get("steps") or recipe.steps), sampler=recipe.sampler, scale=recipe.scale,
        negative_prompt=recipe.negative_prompt, precision=precision, model=model.or_none() if model else None,
    )  # fmt: skip


def cells(p: PreviewParams) -> list[tuple[int, int, int, float]]:
    """(row, column, seed, strength) of every cell, rows = prompt x seed, columns = strengths."""
    rows = [seed for _ in p.prompts for seed in p.seeds]
    return [(row, col, seed, strength) for row, seed in enumerate(rows) for col, strength in enumerate(p.strengths)]


def cell_file(p: PreviewParams, row: int, col: int) -> str:
    seed = p.seeds[row % len(p.seeds)]
    prompt = row // len(p.seeds) + 1
    return f"prompt{prompt}-seed{seed}-m{format_multiplier(p.strengths[col])}.png"


def planned_outputs(p: PreviewParams, stem: str) -> dict[str, str]:
    files = {f"cell-r{row:02d}-c{col:02d}": f"{stem}-preview/{cell_file(p, row, col)}" for row, col, _, _ in cells(p)}
    return {"sheet": f"{stem}-preview.png", **files}


def prompt_lines(p: PreviewParams) -> list[PromptLine]:
    return [prompt_line(p, p.prompts[row // len(p.seeds)], cell_file(p, row, col), seed, strength)
            for row, col, seed, strength in cells(p)]


class Preview(StageKind):
    kind = "preview"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.spec
        # the run's config folder: nothing but the sheet and the images lands beside the user's LoRA
        prompt_file = ctx.plan.run_dir / "config" / f"{stage.slug}-prompts.txt"
        paths = render(ctx, p, stage.input("model"), prompt_lines(p), prompt_file, loras=[stage.input("lora")])
        if ctx.dry_run:
            return
        rows = len(p.prompts) * len(p.seeds)
        grid: list[list[Image.Image | None]] = [[None] * len(p.strengths) for _ in range(rows)]
        for (row, col, _, _), path in zip(cells(p), paths):
            grid[row][col] = load_rgb(path)
        row_labels = [[p.prompts[r // len(p.seeds)], f"seed {p.seeds[r % len(p.seeds)]}"] for r in range(rows)]
        col_labels = [["0 (off)" if s == 0 else f"{s:+g}"] for s in p.strengths]
        framed = [c for c, s in enumerate(p.strengths) if s == 0]
        size = f"{p.size[0]}x{p.size[1]}"
        title = f"{stage.input('lora').name} on {stage.input('model').name}  ({size}, {p.steps} steps, {p.sampler})"
        font = stage.input("font") if "font" in stage.inputs else None
        if "leakage" in stage.inputs:  # the leakage score, under the title
            title += "\n" + short_label(json.loads(stage.input("leakage").read_text(encoding="utf-8")))
        sheet, _ = contact_sheet(grid, col_labels=col_labels, row_labels=row_labels, title=title, framed_cols=framed,
                                 font=font)
        save_png(sheet, ctx.scratch_output("sheet"))

    def validate(self, stage, name, path, ctx) -> dict[str, Any]:
        with Image.open(path) as im:
            size = im.size
        return {"pixels": list(size)} if name == "sheet" else {}

    def describe(self, stage) -> str:
        p = stage.spec
        n = len(p.prompts) * len(p.seeds)
        return f"{stage.title}: {renderer(p)}, {n} row(s) x {len(p.strengths)} strengths at {p.size[0]}x{p.size[1]}"


KIND = Preview()
