"""Stage: the copy check. Does the copy model output the original image whatever the prompt (memo step 3)?

`score_copies` renders a few images (own prompt and seed each, one gen_img.py run at the training size) and
scores each against the original by luma SSIM at 256 px (LPIPS too with the `lpips` extra); the run stops
below the gate's `min_ssim` (default 0.8, not yet calibrated on real models) unless `--no-copy-check`. For
difference extraction LoRA A is checked loaded on the base model at 1 (a merge's weights, without a 4 GB file).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from copymachine import genimg
from copymachine.files import atomic_write_json
from copymachine.genimg import RenderParams, prompt_line, render
from copymachine.images import load_rgb, save_png
from copymachine.models import BaseOptions, Family
from copymachine.plan import OPTIONAL, WeightedLora
from copymachine.recipe import split_prompts
from copymachine.sheet import contact_sheet
from copymachine.similarity import SCORE_SIDE, Lpips, luma_ssim_score, reference_at, round4, score_size
from copymachine.stages import StageContext, StageKind

CAPTION_PLACEHOLDER = "{caption}"  # in a prompt: the caption the copy LoRA was trained with
ADVICE = "train the copy LoRA longer (--set copy.epochs=N) or check the captions"


@dataclass(frozen=True)
class CopyCheckParams(RenderParams):
    prompts: list[str]  # one image each ({caption}: the caption the copy LoRA was trained with)
    seeds: list[int]
    size: list[int]  # the training size: width, height
    # the copy LoRA's ratio on the base model, and the absorbed styles' loaded first (memory route, copy stop)
    lora_multiplier: float | None = field(default=None, metadata=OPTIONAL)
    base_weights_multipliers: list[float] | None = field(default=None, metadata=OPTIONAL)


def copy_check_plan(recipe, family: Family, size: tuple[int, int], precision: str, inputs: dict[str, Any],
                    copy_lora: WeightedLora | None = None, base_weights: Sequence[WeightedLora] = (),
                    model: BaseOptions | None = None) -> tuple[dict[str, Any], CopyCheckParams, dict[str, str]]:
    """From the recipe's [copy_check]; `copy_lora` is loaded at its ratio after the absorbed `base_weights`."""
    inputs = {**inputs, **({"copy_lora": copy_lora.lora} if copy_lora is not None else {}),
              **{genimg.base_weight_input_name(i): w.lora for i, w in enumerate(base_weights)}}
    prompts = split_prompts(recipe.prompts) or [CAPTION_PLACEHOLDER]
    params = CopyCheckParams(
        **genimg.render_family(family), prompts=[prompts[i % len(prompts)] for i in range(recipe.images)],
        seeds=[recipe.seed + i for i in range(recipe.images)], negative_prompt=recipe.negative_prompt,
        size=[int(size[0]), int(size[1])], steps=recipe.steps, sampler=recipe.sampler, scale=recipe.scale,
        precision=precision, lora_multiplier=copy_lora.ratio if copy_lora is not None else None,
        base_weights_multipliers=[w.ratio for w in base_weights] or None, model=model.or_none() if model else None,
    )  # fmt: skip
    return inputs, params, planned_outputs(recipe.images)


def planned_outputs(n: int) -> dict[str, str]:
    images = {f"image{i:02d}": f"copy-{i + 1}.png" for i in range(n)}
    return {"sheet": "copy-check.png", "scores": "copy-check.json", **images}


def checked_loras(stage, p: CopyCheckParams, lora: Path | None = None) -> tuple[list[Path], list[float]]:
    """The networks loaded unmerged, in order: absorbed styles, then LoRA A, the copy LoRA or `lora` (a step's)."""
    checked = [lora] if lora else [stage.input(name) for name in ("lora", "copy_lora") if name in stage.inputs]
    ratio = p.lora_multiplier if p.lora_multiplier is not None else 1.0
    return genimg.base_weight_inputs(stage) + checked, list(p.base_weights_multipliers or []) + [ratio] * len(checked)


def prompt_lines(p: CopyCheckParams, caption: str = "") -> list[genimg.PromptLine]:
    return [prompt_line(p, prompt.replace(CAPTION_PLACEHOLDER, caption), f"copy-{i + 1}.png", seed)
            for i, (prompt, seed) in enumerate(zip(p.prompts, p.seeds))]


@dataclass
class Copies:
    """What `score_copies` rendered and measured; per image: prompt, seed, luma SSIM, LPIPS (or None)."""
    reference: Image.Image
    images: list[Path]
    results: list[dict[str, Any]]
    lpips: Lpips

    @property
    def ssims(self) -> list[float]:
        return [r["ssim"] for r in self.results]

    @property
    def mean_ssim(self) -> float:
        return round(statistics.fmean(self.ssims), 4)


def score_copies(stage, ctx: StageContext, p: CopyCheckParams, checkpoint: Path, original: Path, outdir: Path,
                 prompt_file: Path, lora: Path | None = None, lpips: bool = False) -> Copies | None:
    """The copy check's measure, for its stage and the copy stop alike (None on a dry run)."""
    caption = ""
    if "caption" in stage.inputs:
        path = stage.input("caption")
        # a dry run plans before the captions exist: the prompt file shows the placeholder
        caption = path.read_text(encoding="utf-8").strip() if path.is_file() else CAPTION_PLACEHOLDER
    lines = prompt_lines(p, caption)
    loras, multipliers = checked_loras(stage, p, lora)
    images = render(ctx, p, checkpoint, lines, prompt_file, outdir, loras, multipliers)
    if ctx.dry_run:
        return None
    genimg.refuse_blank(images, f"stage '{stage.title}'", p.precision, p.model)
    reference = reference_at(load_rgb(original), (p.size[0], p.size[1]))
    scorer = Lpips.load() if lpips else Lpips(False, "not measured")
    results = [{"prompt": line.prompt, "seed": line.seed, "ssim": round(luma_ssim_score(reference, image), 4),
                "lpips": round4(scorer.distance(reference, image))}
               for line, image in zip(lines, map(load_rgb, images))]
    return Copies(reference, images, results, scorer)


class CopyCheck(StageKind):
    kind = "copy_check"
    needs_engine = True
    version = 2  # 2: luma SSIM at 256 px on the long side (1: RGB SSIM at the training size)

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.spec
        prompt_file = stage.workdir / "config" / f"{stage.slug}-prompts.txt"
        copies = score_copies(stage, ctx, p, stage.input("model"), stage.input("original"), ctx.scratch, prompt_file,
                              lpips=True)
        if copies is None:
            return
        results = [{"file": stage.outputs[f"image{i:02d}"].name, **r} for i, r in enumerate(copies.results)]
        loras, _ = checked_loras(stage, p)
        side = "x".join(str(v) for v in score_size((p.size[0], p.size[1]), SCORE_SIDE))
        scores = {
            "size": list(p.size), "steps": p.steps, "sampler": p.sampler, "ssim_of": f"luma at {side}",
            "model": stage.input("model").name, "lora": loras[-1].name if loras else None, "images": results,
            "mean_ssim": copies.mean_ssim, "min_ssim": min(copies.ssims),
            "lpips": "measured" if copies.lpips.available else copies.lpips.reason,
        }  # fmt: skip
        atomic_write_json(ctx.scratch_output("scores"), scores)
        columns = [[copies.reference] + [load_rgb(path) for path in copies.images]]
        labels = [["original", f"{p.size[0]}x{p.size[1]}"]]
        for r in results:
            score = f"SSIM {r['ssim']:.3f}" + (f"  LPIPS {r['lpips']:.3f}" if r["lpips"] is not None else "")
            labels.append([f"seed {r['seed']}: {r['prompt'] or '(empty prompt)'}", score])
        title = f"copy check: {scores['lora'] or scores['model']}  (mean SSIM {scores['mean_ssim']:.3f})"
        save_png(contact_sheet(columns, col_labels=labels, title=title)[0], ctx.scratch_output("sheet"))

    def validate(self, stage, name, path, ctx) -> dict[str, Any]:
        if name == "scores":
            data = json.loads(path.read_text(encoding="utf-8"))
            per_image = {"ssim": [r["ssim"] for r in data["images"]], "lpips": [r["lpips"] for r in data["images"]]}
            return {k: data[k] for k in ("mean_ssim", "min_ssim")} | per_image
        if name == "sheet" or name.startswith("image"):
            with Image.open(path) as im:
                im.verify()
        return {}

    def conclude(self, stage, stamp, reporter) -> dict[str, Any] | None:
        facts = stamp.get("outputs", {}).get("scores", {})
        if "mean_ssim" not in facts:
            return None
        threshold = float(stage.gate.get("min_ssim", 0.0))
        names = {"lora": "LoRA A on the base model", "copy_lora": "the copy LoRA on the base model"}
        what = next((text for name, text in names.items() if name in stage.inputs), "the copy model")
        scores = ", ".join(f"{s:.3f}" for s in facts["ssim"])
        lpips = [x for x in facts.get("lpips") or [] if x is not None]
        lpips_text = f"; LPIPS {', '.join(f'{x:.3f}' for x in lpips)}" if lpips else ""
        passed = facts["mean_ssim"] >= threshold
        sheet = stage.outputs["sheet"]
        reporter.info(
            f"      copy check ({what} vs the original): SSIM {scores} (mean {facts['mean_ssim']:.3f}, "
            f"need >= {threshold:g}){lpips_text} -> {'copies' if passed else 'does NOT copy'}; sheet: {sheet}"
        )
        verdict: dict[str, Any] = {"passed": passed, "mean_ssim": facts["mean_ssim"], "min_ssim_required": threshold}
        if not passed:
            verdict["message"] = (
                f"{what} does not copy yet: mean SSIM {facts['mean_ssim']:.3f} against the original "
                f"(need >= {threshold:g}); {ADVICE}. Look at {sheet}; "
                "--no-copy-check goes on anyway, --set copy_check.min_ssim=X changes the bar"
            )
        return verdict


KIND = CopyCheck()
