"""Rendering with sd-scripts' flux/sd3/anima_minimal_inference.py (`Family.renderer`). FLUX.1 and SD3 render
one prompt per run and name the image by the time of day, so each image is a run into its own folder; Anima
reads a prompt file with one LoRA multiplier per run and names images <time>_<seed>_.png, so each run holds
lines of one multiplier with distinct seeds. Images are then moved to the planned names.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from copymachine.errors import EngineError
from copymachine.families import Family
from copymachine.files import atomic_write_text
from copymachine.stages import reset_scratch

_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def line_multipliers(line: Any, multipliers: Sequence[float]) -> list[float]:
    """Each LoRA's multiplier for `line`: the stage's, the last one replaced by the line's own."""
    out = list(multipliers)
    if line.multiplier is not None and out:
        out[-1] = float(line.multiplier)
    return out


def single_args(family: Family, checkpoint: Path, line: Any, outdir: Path, precision: str | None,
                loras: Sequence[Path], multipliers: Sequence[float]) -> list[str]:
    """flux/sd3_minimal_inference.py options for one image."""
    args = ["--ckpt_path", str(checkpoint), *family.render_file_args(), *family.render_options,
            "--prompt", line.prompt, "--output_dir", str(outdir), "--seed", str(line.seed), "--steps", str(line.steps),
            "--width", str(line.width), "--height", str(line.height)]
    if family.renderer.startswith("flux"):
        args += ["--dtype", _DTYPES.get(precision or "", "float32")]
        if family.name == "chroma":  # true CFG with the negative prompt (docs/flux_train_network.md)
            args += ["--negative_prompt", line.negative_prompt, "--cfg_scale", repr(float(line.scale))]
        # FLUX.1 dev/schnell: guidance-distilled, rendered with the script's own --guidance, no negative prompt
    else:
        args += ["--negative_prompt", line.negative_prompt, "--cfg_scale", repr(float(line.scale))]
        args += [f"--{precision}"] if precision in _DTYPES else []
    pairs = [f"{lora};{m!r}" for lora, m in zip(loras, line_multipliers(line, multipliers))]
    return args + (["--lora_weights", *pairs] if pairs else [])


def batches(lines: Sequence[Any], multipliers: Sequence[float]) -> list[list[Any]]:
    """Anima's runs: lines grouped by their multipliers, each group's seeds distinct (its images are named by seed)."""
    groups: list[list[Any]] = []
    for line in lines:
        key = line_multipliers(line, multipliers)
        for group in groups:
            if line_multipliers(group[0], multipliers) == key and all(g.seed != line.seed for g in group):
                group.append(line)
                break
        else:
            groups.append([line])
    return groups


def anima_args(family: Family, checkpoint: Path, prompt_file: Path, outdir: Path, loras: Sequence[Path],
               multipliers: Sequence[float]) -> list[str]:
    args = ["--dit", str(checkpoint), *family.render_file_args(), *family.render_options,
            "--from_file", str(prompt_file), "--save_path", str(outdir)]
    if loras:  # always with the multipliers: its default (1.0, not a list) fails with several LoRAs
        args += ["--lora_weight", *map(str, loras), "--lora_multiplier", *[repr(float(m)) for m in multipliers]]
    return args


def _take(run_dir: Path, group: list[Any], outdir: Path, script: str) -> None:
    for line in group:
        # Anima: <time>_<seed>_.png (save_images appends "_" + an empty base name); FLUX.1/SD3: <time>.png, alone
        seed = re.compile(rf"_{line.seed}_?\.png$")
        found = sorted(p for p in run_dir.glob("*.png") if not script.startswith("anima") or seed.search(p.name))
        if len(found) != 1:
            raise EngineError(f"{script} wrote {len(found)} images where copymachine expected one for {line.file_name}")
        outdir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(found[0]), outdir / line.file_name)


def render(ctx: Any, p: Any, family: Family, checkpoint: Path, lines: list[Any], prompt_file: Path, outdir: Path,
           loras: Sequence[Path] = (), multipliers: list[float] | None = None) -> list[Path]:
    script = family.renderer
    weights = list(multipliers or [1.0] * len(loras))
    anima = script.startswith("anima")
    for index, group in enumerate(batches(lines, weights) if anima else [[x] for x in lines]):
        run_dir = ctx.scratch / "renders" / f"run{index:03d}"
        if not ctx.dry_run:
            reset_scratch(run_dir)
        if anima:
            batch_file = prompt_file.with_name(f"{prompt_file.stem}-{index:03d}{prompt_file.suffix}")
            atomic_write_text(batch_file, "".join(line.render(file_name=False) + "\n" for line in group))
            args = anima_args(family, checkpoint, batch_file, run_dir, loras, line_multipliers(group[0], weights))
        else:
            args = single_args(family, checkpoint, group[0], run_dir, p.precision, loras, weights)
        ctx.run(ctx.engine.run_script(script, args), script, expected=[outdir / line.file_name for line in group],
                collect=lambda run_dir=run_dir, group=group: _take(run_dir, group, outdir, script))
    if not ctx.dry_run:
        shutil.rmtree(ctx.scratch / "renders", ignore_errors=True)
    return [outdir / line.file_name for line in lines]
