"""Stage: the leakage score. Does the LoRA drag its training image into unrelated pictures (the memo: "at
higher strength the training image came out")? The recipe's `[leakage]` prompts render at strength 0 and at
each strength; gain(strength) = mean over prompts of SSIM(image, original) - SSIM(same seed at 0, original)
(unrelated pictures differ by a few hundredths). It leaks from the first strength whose gain reaches the
threshold; with several training images the largest gain counts.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

from PIL import Image

from copymachine.files import atomic_write_json
from copymachine.genimg import PromptLine, RenderParams, format_multiplier, prompt_line, render, render_family, renderer
from copymachine.images import load_rgb
from copymachine.models import BaseOptions
from copymachine.recipe import parse_number_list, split_prompts
from copymachine.similarity import Lpips, reference_at, round4, ssim_score
from copymachine.stages import StageContext, StageKind, inputs_of

WHAT = "SSIM to the training image, gain over strength 0, on prompts unrelated to its caption"


@dataclass(frozen=True)
class LeakageParams(RenderParams):
    prompts: list[str]  # unrelated to the training caption, one seed each
    seeds: list[int]
    strengths: list[float]  # 0 first
    size: list[int]  # the training size: width, height
    threshold: float  # the gain at which the LoRA leaks


def leakage_params(recipe, family, size: tuple[int, int], precision: str,
                   model: BaseOptions | None = None) -> LeakageParams:
    """From the recipe's [leakage]: strength 0 first, then the leakage strengths."""
    prompts = split_prompts(recipe.prompts)
    strengths = [s for s in dict.fromkeys(float(v) for v in parse_number_list(recipe.strengths, float)) if s != 0]
    return LeakageParams(
        **render_family(family), prompts=prompts, seeds=[recipe.seed + i for i in range(len(prompts))],
        strengths=[0.0, *strengths], size=[int(size[0]), int(size[1])], steps=recipe.steps, sampler=recipe.sampler,
        scale=recipe.scale, negative_prompt=recipe.negative_prompt, threshold=recipe.threshold, precision=precision,
        model=model.or_none() if model else None,
    )  # fmt: skip


def image_output(prompt: int, col: int) -> str:
    return f"leak-p{prompt:02d}-c{col:02d}"


def image_file(p: LeakageParams, prompt: int, col: int) -> str:
    return f"leak-prompt{prompt + 1}-seed{p.seeds[prompt]}-m{format_multiplier(p.strengths[col])}.png"


def cells(p: LeakageParams) -> list[tuple[int, int]]:
    """(prompt, strength column) of every image, prompt by prompt."""
    return [(i, col) for i in range(len(p.prompts)) for col in range(len(p.strengths))]


def planned_outputs(p: LeakageParams, folder: str = "") -> dict[str, str]:
    images = {image_output(i, col): f"{folder}{image_file(p, i, col)}" for i, col in cells(p)}
    return {"scores": f"{folder}leakage.json", **images}


def prompt_lines(p: LeakageParams) -> list[PromptLine]:
    return [prompt_line(p, p.prompts[i], image_file(p, i, col), p.seeds[i], p.strengths[col]) for i, col in cells(p)]


def leaks_at(gains: dict[str, float], threshold: float) -> float | None:
    return next((float(s) for s in sorted(gains, key=float) if gains[s] >= threshold), None)


def summary(scores: dict[str, Any]) -> str:
    gains = ", ".join(f"{float(s):g}: {g:+.3f}" for s, g in scores["ssim_gain"].items())
    at = scores["leaks_at"]
    top = max(float(s) for s in scores["ssim_gain"])
    verdict = f"leaks from strength {at:g}" if at is not None else f"no leakage up to strength {top:g}"
    lpips = scores.get("lpips_gain")
    lpips_text = f"; LPIPS closer by {', '.join(f'{g:+.3f}' for g in lpips.values())}" if lpips else ""
    return f"leakage ({WHAT}): {gains}{lpips_text} (threshold {scores['threshold']:g}) -> {verdict}"


def short_label(scores: dict[str, Any]) -> str:
    """For the preview sheet."""
    gains = "  ".join(f"{float(s):g}: {g:+.2f}" for s, g in scores["ssim_gain"].items())
    at = scores["leaks_at"]
    verdict = f"LEAKS from {at:g}" if at is not None else "none"
    return f"leakage (SSIM gain towards the training image, unrelated prompts) {gains} -> {verdict}"


class Leakage(StageKind):
    kind = "leakage"
    needs_engine = True

    def execute(self, stage, ctx: StageContext) -> None:
        p = stage.spec
        prompt_file = ctx.plan.run_dir / "config" / f"{stage.slug}-prompts.txt"
        paths = render(ctx, p, stage.input("model"), prompt_lines(p), prompt_file, loras=[stage.input("lora")])
        if ctx.dry_run:
            return
        originals = inputs_of(stage, "original")
        references = [reference_at(load_rgb(path), (p.size[0], p.size[1])) for path in originals]
        lpips = Lpips.load()
        images = [{
            "file": stage.outputs[image_output(i, col)].name, "prompt": p.prompts[i], "seed": p.seeds[i],
            "strength": p.strengths[col], "ssim": [round(ssim_score(ref, image), 4) for ref in references],
            "lpips": [round4(lpips.distance(ref, image)) for ref in references],
        } for (i, col), image in zip(cells(p), map(load_rgb, paths))]  # fmt: skip

        def gain(key: str, col: int, sign: int) -> float:
            """The largest, over the originals, of the mean change of `key` over the prompts from strength 0."""
            n = len(p.strengths)
            return round(max(statistics.fmean(sign * (images[i * n + col][key][k] - images[i * n][key][k])
                                              for i in range(len(p.prompts))) for k in range(len(references))), 4)

        strengths = {col: f"{strength:g}" for col, strength in enumerate(p.strengths) if col}
        ssim_gain = {s: gain("ssim", col, 1) for col, s in strengths.items()}
        lpips_gain = {s: gain("lpips", col, -1) for col, s in strengths.items()} if lpips.available else None
        scores = {
            "what": WHAT, "model": stage.input("model").name, "lora": stage.input("lora").name,
            "originals": [path.name for path in originals], "size": list(p.size), "steps": p.steps,
            "sampler": p.sampler, "prompts": p.prompts, "seeds": p.seeds, "threshold": p.threshold,
            "ssim_gain": ssim_gain, "lpips_gain": lpips_gain or None,
            "lpips": "measured" if lpips.available else lpips.reason,
            "leaks_at": leaks_at(ssim_gain, p.threshold), "images": images,
        }  # fmt: skip
        atomic_write_json(ctx.scratch_output("scores"), scores)

    def validate(self, stage, name, path, ctx) -> dict[str, Any]:
        if name == "scores":
            data = json.loads(path.read_text(encoding="utf-8"))
            return {"ssim_gain": data["ssim_gain"], "leaks_at": data["leaks_at"]}
        with Image.open(path) as im:
            im.verify()
        return {}

    def conclude(self, stage, stamp, reporter) -> dict[str, Any] | None:
        path = stage.outputs["scores"]
        if not path.is_file():
            return None
        scores = json.loads(path.read_text(encoding="utf-8"))
        reporter.info(f"      {summary(scores)}")
        # a measurement, not a gate: the run goes on either way
        return {"passed": True, **{k: scores[k] for k in ("leaks_at", "ssim_gain", "threshold")}}

    def describe(self, stage) -> str:
        p = stage.spec
        n = len(p.prompts) * len(p.strengths)
        strengths = ", ".join(f"{s:g}" for s in p.strengths)
        return (f"{stage.title}: {renderer(p)}, {n} images ({len(p.prompts)} unrelated prompt(s) x strengths "
                f"{strengths}) at {p.size[0]}x{p.size[1]}")


def stored(scores: dict[str, Any]) -> str:
    """What the final LoRA's metadata keeps (`copymachine.leakage`): the measurement, not the images."""
    keep = ("what", "model", "size", "steps", "sampler", "prompts", "seeds", "threshold", "ssim_gain", "lpips_gain",
            "leaks_at")
    return json.dumps({k: scores.get(k) for k in keep}, ensure_ascii=False)


KIND = Leakage()
