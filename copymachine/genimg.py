"""Calling sd-scripts' gen_img.py: one `--from_file` line per image (seed, `--f` file name, `--am` multiplier).
Never passed: `--seed` (crashes with a one-line prompt file), `--network_merge` (disables `--am`). Always: the
family flag (else gen_img.py guesses SDXL from the file size). Before v0.9.0 no `--f`: `--sequential_file_name`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copymachine import minimal_render
from copymachine.errors import EngineError
from copymachine.files import atomic_write_text
from copymachine.images import blank_colour
from copymachine.plan import OPTIONAL, StageParams
from copymachine.stages import inputs_of

if TYPE_CHECKING:
    from copymachine.families import Family
    from copymachine.models import BaseOptions

BASE_WEIGHT_PREFIX = "weights"


@dataclass(frozen=True, kw_only=True)
class RenderParams(StageParams):
    family_flag: str
    negative_prompt: str
    steps: int
    sampler: str
    scale: float
    precision: str
    model: BaseOptions | None = field(default=None, metadata=OPTIONAL)
    # a family gen_img.py does not render (FLUX.1, SD3, Anima: copymachine.minimal_render); None: gen_img.py
    family: Family | None = field(default=None, metadata=OPTIONAL)


def render_family(family: Family) -> dict[str, Any]:
    return {"family_flag": family.gen_flag, "family": None if family.renders_with_gen_img else family}


def renderer(p: RenderParams) -> str:
    return p.family.renderer if p.family is not None else "gen_img.py"


def base_weight_input_name(i: int) -> str:
    """The LoRAs loaded before the stage's own (absorbed styles; --base_weights), in order."""
    return f"{BASE_WEIGHT_PREFIX}{i:03d}"


def base_weight_inputs(stage) -> list[Path]:
    return inputs_of(stage, BASE_WEIGHT_PREFIX)


def clean_prompt(text: str) -> str:
    """One line that gen_img.py reads back as it was written: it splits each line on " --"."""
    return " ".join(text.replace(" --", " -").split())


@dataclass(frozen=True)
class PromptLine:
    prompt: str
    file_name: str
    width: int
    height: int
    seed: int
    steps: int
    scale: float
    negative_prompt: str = ""
    multiplier: float | None = None  # --am: the LoRA's strength for this image

    def render(self, file_name: bool = True) -> str:
        line = clean_prompt(self.prompt)
        if self.negative_prompt:
            line += f" --n {clean_prompt(self.negative_prompt)}"
        line += f" --w {self.width} --h {self.height} --d {self.seed} --s {self.steps} --l {self.scale}"
        if self.multiplier is not None:
            line += f" --am {format_multiplier(self.multiplier)}"
        return line + (f" --f {self.file_name}" if file_name else "")


def format_multiplier(m: float) -> str:
    """gen_img.py reads --am with the pattern [\\d.\\-,]+: plain decimals, no exponent, no '+'."""
    text = f"{float(m):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def prompt_line(p: Any, prompt: str, file_name: str, seed: int, multiplier: float | None = None) -> PromptLine:
    width, height = p.size
    return PromptLine(prompt, file_name, width, height, seed, p.steps, p.scale, p.negative_prompt, multiplier)


def render_prompt_file(lines: list[PromptLine], file_names: bool = True) -> str:
    names = [line.file_name for line in lines]
    if len(set(names)) != len(names):
        raise ValueError("gen_img.py prompt lines need distinct file names")
    for name in names:
        if " " in name or "/" in name or "\\" in name or not name.endswith(".png"):
            raise ValueError(f"gen_img.py output name must be a plain .png name without spaces: {name!r}")
    return "".join(line.render(file_names) + "\n" for line in lines)


def collect_sequential(outdir: Path, names: list[str]) -> None:
    """Rename what --sequential_file_name wrote (`im_{step_first + i + 1:06d}.png`) to the planned names."""
    for index, name in enumerate(names):
        source = outdir / f"im_{index + 1:06d}.png"
        if source.is_file():
            source.replace(outdir / name)


def file_names_supported(settings) -> bool:
    """Whether this engine's gen_img.py takes `--f` (unknown: assume it does, as the pinned one)."""
    caps = getattr(settings, "capabilities", None)
    return caps is None or caps.file_names


def refuse_blank(paths: list[Path], where: str, precision: str | None, model: BaseOptions | None) -> None:
    """End the stage on a black or one-colour render (never train on or score it), naming the likely cause."""
    for path in paths:
        colour = blank_colour(path)
        if colour is None:
            continue
        what = "black" if max(colour) <= 2 else f"one colour {colour}"
        if precision in ("fp16", "bf16") and not (model and model.no_half_vae):
            cause = (f"the VAE decoding in {precision} (it overflows to NaN, which comes out black); "
                     "try --device cpu (float32), or a checkpoint with a VAE fixed for half precision")
        elif precision in ("fp16", "bf16"):
            cause = (f"the checkpoint's VAE (it already decodes in float32, --no_half_vae; the U-Net ran in "
                     f"{precision}); try --device cpu (float32) or another checkpoint")
        else:
            cause = ("the checkpoint's VAE or weights (a broken or missing VAE decodes to one colour); "
                     "check the model in another UI")
        raise EngineError(f"{where}: gen_img.py rendered a blank image ({what}): {path.name}; likely cause: "
                          f"{cause}. Nothing was trained on or scored with it")


def gen_img_args(checkpoint: Path, family_flag: str, outdir: Path, prompt_file: Path, sampler: str,
                 precision: str | None = None, tokenizer_cache_dir: Path | None = None, loras: list[Path] | None = None,
                 extra: tuple[str, ...] = (), multipliers: list[float] | None = None, sequential: bool = False,
                 model: BaseOptions | None = None) -> list[str]:
    """gen_img.py's arguments (LoRAs loaded unmerged at their multipliers unless a line's --am says otherwise)."""
    args = ["--ckpt", str(checkpoint), family_flag, "--outdir", str(outdir), "--from_file", str(prompt_file),
            "--sampler", sampler, "--images_per_prompt", "1", "--batch_size", "1"]
    if precision in ("fp16", "bf16"):
        args.append(f"--{precision}")
    if tokenizer_cache_dir:
        args += ["--tokenizer_cache_dir", str(tokenizer_cache_dir)]
    if loras:
        args += ["--network_module", *["networks.lora"] * len(loras), "--network_weights", *map(str, loras)]
        args += ["--network_mul", *[repr(float(m)) for m in (multipliers or [1.0] * len(loras))]]
    if sequential:
        args.append("--sequential_file_name")
    if model is not None:
        args += model.gen_img_args()
    return args + list(extra)


def render(ctx: Any, p: Any, checkpoint: Path, lines: list[PromptLine], prompt_file: Path, outdir: Path | None = None,
           loras: Sequence[Path] = (), multipliers: list[float] | None = None) -> list[Path]:
    """One render of `lines` into `outdir` (default: the scratch folder) with `p`'s options; the images' paths."""
    outdir = outdir or ctx.scratch
    if getattr(p, "family", None) is not None:
        return minimal_render.render(ctx, p, p.family, checkpoint, lines, prompt_file, outdir, loras, multipliers)
    named = file_names_supported(ctx.settings)
    atomic_write_text(prompt_file, render_prompt_file(lines, file_names=named))
    args = gen_img_args(
        checkpoint, p.family_flag, outdir, prompt_file, p.sampler, p.precision, ctx.settings.tokenizer_cache_dir,
        list(loras), extra=ctx.settings.profile.gen_options, multipliers=multipliers, sequential=not named,
        model=p.model,
    )  # fmt: skip
    images = [outdir / line.file_name for line in lines]
    collect = None if named else (lambda: collect_sequential(outdir, [line.file_name for line in lines]))
    ctx.run(ctx.engine.run_script("gen_img.py", args), "gen_img.py", expected=images, collect=collect)
    return images
