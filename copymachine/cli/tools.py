"""`copymachine merge | svd-merge | extract | resize`: sd-scripts' LoRA tools with our checks, each a one-stage
plan run by `train`'s pipeline (its log and manifest in `<out folder>/.copymachine/`)."""

from __future__ import annotations

from pathlib import Path

import click

from copymachine import preflight
from copymachine.cli import cli
from copymachine.cli.common import engine_options, make_settings
from copymachine.errors import InputError, OutputError
from copymachine.files import HashCache
from copymachine.lorafile import summarize_lora
from copymachine.models import Family, ModelInfo, inspect_base_model, lora_family
from copymachine.pipeline import Pipeline
from copymachine.plan import LoraTerm, Planner, StageParams, WeightedLora
from copymachine.progress import Reporter
from copymachine.recipe import MEMO, PRECISIONS
from copymachine.recipe import ratio as recipe_ratio
from copymachine.stages import kind_versions
from copymachine.stages.finalize import ExtractParams, ResizeParams, ToolLabel, merge_plan, svd_merge_plan


def parse_weighted(item: str) -> tuple[Path, float]:
    """LORA.safetensors[:RATIO] (a Windows drive letter is not a ratio)."""
    head, sep, tail = item.rpartition(":")
    if sep and head:
        try:
            value = float(tail)
        except ValueError:
            pass
        else:
            return Path(head), recipe_ratio(value, item)
    return Path(item), 1.0


def check_loras(items: tuple[str, ...], family: Family | None = None) -> list[tuple[Path, float, int]]:
    """(path, ratio, rank) of each input, a kohya LoRA; all are of one base family (and `family`'s)."""
    out = []
    for item in items:
        path, ratio = parse_weighted(item)
        summary = summarize_lora(path)
        fam = lora_family(list(summary.modules), summary.metadata)
        if family is not None and fam is not None and fam.base_model_version != family.base_model_version:
            raise InputError(f"{path} is a {fam.label} LoRA, but the others are {family.label}")
        family = family or fam
        out.append((path, ratio, max(summary.ranks)))
    return out


def explain(terms: list[tuple[Path, float, int]]) -> str:
    text = " ".join(f"{'-' if ratio < 0 else '+'} {abs(ratio):g} x {path.name}" for path, ratio, _ in terms)
    return text.removeprefix("+ ")


def _run_tool(out: Path, name: str, kind: str, output: str, title: str, inputs: dict[str, Path], params: StageParams,
              settings, reporter, model: ModelInfo | None = None) -> None:
    out = out.resolve()
    if out.suffix.lower() != ".safetensors":
        raise InputError(f"--out must end in .safetensors: {out}")
    if out.exists() and out.is_dir():
        raise InputError(f"--out is a folder: {out}")
    preflight.check_writable({"output folder": out.parent})
    hashes = HashCache(out.parent / ".copymachine" / "hashes.json")
    force = click.get_current_context().meta.get(_FORCE, False)
    if out.exists() and not force and not preflight.made_here(out, out.parent, None, hashes):
        raise OutputError(f"{out} exists and was not made by copymachine {name}; use another --out, or --force to "
                          "replace it")
    planner = Planner(out.parent / ".copymachine", out.parent / ".copymachine", hashes, kind_versions(settings.engine))
    planner.plan.manifest_name = f"{out.stem}.manifest.json"
    planner.add(name, kind, title, inputs={k: planner.external(v.resolve()) for k, v in inputs.items()},
                params=params, outputs={output: out.name}, workdir=out.parent)
    if model is not None:
        preflight.check_space(planner.plan, model, reporter)
    Pipeline(planner.plan, settings, reporter, hashes).run()
    click.echo(str(out))


_FORCE = "copymachine.force"


def _out(f):
    """--out FILE, --force (kept in the context: the commands do not take it as a parameter), the engine's options."""
    f = click.option("--force", is_flag=True, expose_value=False,
                     callback=lambda ctx, param, value: ctx.meta.__setitem__(_FORCE, value),
                     help="Replace --out when it holds a file copymachine did not make.")(engine_options(f))
    return click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                        help="The file to write (.safetensors); written whole or not at all.")(f)


_LORAS = click.option("--lora", "loras", required=True, multiple=True, metavar="LORA[:RATIO]",
                      help="A LoRA and its ratio (default 1; negative subtracts). Repeatable.")


@cli.command()
@click.option("--base", required=True, type=click.Path(path_type=Path), help="The checkpoint to merge into.")
@_LORAS
@click.option("--precision", type=click.Choice(PRECISIONS), default=MEMO.merge.precision, show_default=True,
              help="dtype the merge is computed in.")
@click.option("--save-precision", type=click.Choice(PRECISIONS), default=MEMO.merge.save_precision, show_default=True,
              help="dtype of the saved model (float: ~4 GB for SD1.5).")
@_out
def merge(base, loras, precision, save_precision, out, sd_scripts, python, device, tokenizer_cache_dir, offline,
          verbose):
    """Merge LoRAs into a checkpoint (merge_lora.py; sdxl_merge_lora.py for SDXL).

    W += ratio x up @ down x alpha / rank for every LoRA: exact and linear in the ratio. Merging LoRA into LoRA is not
    offered: merge_lora.py then squares each ratio and loses the sign; use `copymachine svd-merge`.

    \b
    Example:
      copymachine merge --base sd15.safetensors --lora style.safetensors:0.8 --out sd15-style.safetensors
    """
    reporter = Reporter(verbose=verbose)
    model = inspect_base_model(base, for_training=False)
    terms = check_loras(loras, model.family)
    reporter.info(f"merge: {model.path.name} + ({explain(terms)})")
    settings = make_settings(sd_scripts, python, device, tokenizer_cache_dir, offline, reporter)
    inputs, params = merge_plan(model.family, base, [WeightedLora(p, r) for p, r, _ in terms], precision,
                                save_precision)
    _run_tool(out, "merge", "merge_model", "model", f"merge into {model.path.name}", inputs, params, settings, reporter,
              model=model)


@cli.command("svd-merge")
@_LORAS
@click.option("--rank", type=click.IntRange(1), default=MEMO.svd.rank, show_default=True, help="Rank of the result.")
@click.option("--save-precision", type=click.Choice(PRECISIONS), default=MEMO.svd.save_precision, show_default=True)
@_out
def svd_merge(loras, rank, save_precision, out, sd_scripts, python, device, tokenizer_cache_dir, offline, verbose):
    """Combine LoRAs exactly (svd_merge_lora.py): sum of ratio x delta-W, then SVD to a rank.

    Ratios may be negative: `--lora B.safetensors:1 --lora A.safetensors:-1` is B - A, the
    difference-extraction method, where positive strength gives more of what B has over A.

    \b
    Example:
      copymachine svd-merge --lora edited.safetensors:1 --lora original.safetensors:-1 --rank 8 --out slider.safetensors
    """
    reporter = Reporter(verbose=verbose)
    terms = check_loras(loras)
    reporter.info(f"svd-merge: result = {explain(terms)}, rank {rank} (computed at float)")
    settings = make_settings(sd_scripts, python, device, tokenizer_cache_dir, offline, reporter)
    inputs, params = svd_merge_plan([LoraTerm(p, r, p.name) for p, r, _ in terms], rank, "float", save_precision,
                                    settings.device, tool="svd-merge")
    _run_tool(out, "svd-merge", "svd_merge", "lora", "svd merge", inputs, params, settings, reporter)


@cli.command()
@click.option("--base", required=True, type=click.Path(path_type=Path), help="The original checkpoint.")
@click.option("--tuned", required=True, type=click.Path(path_type=Path),
              help="The changed checkpoint (the LoRA is tuned - base).")
@click.option("--dim", type=click.IntRange(1), default=MEMO.combine.extract_dim, show_default=True,
              help="Rank of the extracted LoRA.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=MEMO.combine.precision, show_default=True,
              help="dtype to load and save in.")
@_out
def extract(base, tuned, dim, precision, out, sd_scripts, python, device, tokenizer_cache_dir, offline, verbose):
    """Extract the LoRA of base -> tuned (extract_lora_from_models.py; memo step 8).

    \b
    Example:
      copymachine extract --base sd15.safetensors --tuned processed.safetensors --dim 64 --out effect.safetensors
    """
    reporter = Reporter(verbose=verbose)
    a = inspect_base_model(base, for_training=False)
    b = inspect_base_model(tuned, for_training=False)
    if a.family.name != b.family.name:
        raise InputError(f"--base is {a.family.label} but --tuned is {b.family.label}: both must be of one family")
    if not a.family.renders_with_gen_img:
        raise InputError(f"--base is {a.family.label}: sd-scripts' extract_lora_from_models.py reads SD1.x/2.x and "
                         "SDXL checkpoints only")
    settings = make_settings(sd_scripts, python, device, tokenizer_cache_dir, offline, reporter)
    params = ExtractParams(family=a.family, dim=dim, min_diff=MEMO.combine.min_diff, precision=precision,
                           device=settings.device, label=ToolLabel("extract"))
    _run_tool(out, "extract", "extract_lora", "lora", f"extract {b.path.name} - {a.path.name}",
              {"original": base, "tuned": tuned}, params, settings, reporter)


@cli.command()
@click.argument("lora", type=click.Path(path_type=Path))
@click.option("--rank", type=click.IntRange(1), default=MEMO.resize.rank, show_default=True,
              help="New rank; at most the LoRA's own.")
@click.option("--save-precision", type=click.Choice(PRECISIONS), default=MEMO.resize.save_precision, show_default=True)
@_out
def resize(lora, rank, save_precision, out, sd_scripts, python, device, tokenizer_cache_dir, offline, verbose):
    """Resize a LoRA's rank (resize_lora.py --new_rank; memo step 9). Runs on the CPU, where
    sd-scripts' resize is known good (on CUDA it has written corrupt files, issue #904).

    \b
    Example:
      copymachine resize effect.safetensors --rank 8 --out effect-r8.safetensors
    """
    reporter = Reporter(verbose=verbose)
    [(path, _, have)] = check_loras((str(lora),))
    if rank > have:
        raise InputError(f"--rank {rank} is above the LoRA's rank {have}: resizing only reduces rank")
    settings = make_settings(sd_scripts, python, device, tokenizer_cache_dir, offline, reporter)
    params = ResizeParams(rank=rank, save_precision=save_precision, device="cpu", label=ToolLabel("resize"))
    _run_tool(out, "resize", "resize_lora", "lora", f"resize {path.name} to rank {rank}", {"lora": path}, params,
              settings, reporter)
