"""`copymachine edit` (apply a built-in effect) and `copymachine check` (vet an edited image)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from copymachine.check import check_pair, compare_sheet, format_report
from copymachine.cli import cli
from copymachine.effects import AMOUNT_RANGE, EFFECTS, apply_effect, check_amount, resolve_params
from copymachine.effects.base import Effect, format_value
from copymachine.errors import InputError, OutputError
from copymachine.images import load_rgb, parse_color, save_png

FILE = click.Path(dir_okay=False, path_type=Path)

background_option = click.option("--background", default="white", show_default=True, metavar="COLOUR",
                                 help="Colour that transparent pixels are composited onto: a name or #rrggbb.")


def _same_file(a: Path, b: Path) -> bool:
    return os.path.samefile(a, b) if a.exists() and b.exists() else a.resolve() == b.resolve()


def _png_target(path: Path, what: str, hint: str, *inputs: Path) -> Path:
    if path.suffix.lower() != ".png":
        raise click.BadParameter(f"{path}: the {what} is always written as PNG; give it a .png name", param_hint=hint)
    for source in inputs:
        if _same_file(path, source):
            raise OutputError(f"{path}: refusing to overwrite the input image; choose another {what} name")
    return path


def _parse_settings(settings: tuple[str, ...]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE, e.g. --set width=2", param_hint="--set")
        overrides[key.strip()] = value
    return overrides


def format_effect(effect: Effect) -> str:
    """One effect for `edit --list`: its summary, then one line per parameter."""
    rows = [(f"{key}={format_value(p.default)}", p.range_text(), p.help) for key, p in effect.params.items()]
    w1, w2 = (max(len(r[i]) for r in rows) for i in (0, 1))
    return "\n".join([f"{effect.name}: {effect.summary}", *(f"    {a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in rows)])


def _changed(effect: Effect, params: dict) -> str:
    shown = (f"{k}={format_value(v)}" for k, v in params.items() if k == "mode" or v != effect.params[k].default)
    return ", ".join(shown)


def _summary(report) -> str:
    if not report.size_ok or report.corner_shift_px is None:
        return report.verdict
    return (f"{report.verdict} (corners move {report.corner_shift_px:.2f} px, PSNR {report.psnr_db:.1f} dB, "
            f"SSIM {report.ssim:.3f}, {report.changed_fraction:.1%} of pixels changed)")


@cli.command("edit")
@click.argument("effect", metavar="EFFECT", required=False)
@click.argument("input_path", metavar="IN", required=False, type=FILE)
@click.argument("output_path", metavar="OUT", required=False, type=FILE)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Set one of the effect's parameters (repeatable); see --list.")
@click.option("--amount", type=float, default=1.0, show_default=True, metavar="A",
              help=f"Strength: original + A x (edit - original), {AMOUNT_RANGE}; 0.5 half, 1 full, -1 the opposite.")
@click.option("--compare", "compare_path", type=FILE, metavar="SHEET.png",
              help="Also write a sheet: original | edit | difference heat map.")
@background_option
@click.option("--list", "list_effects", is_flag=True, help="List the effects, their parameters and defaults.")
def edit(effect, input_path, output_path, settings, amount, compare_path, background, list_effects):
    """Apply a built-in EFFECT to the image IN and write the result to OUT (a PNG).

    The edit changes only the effect, never the geometry: same size, no pixel moves. The result is
    checked against IN as `copymachine check` would (alignment and strength).

    \b
    Examples:
      copymachine edit --list
      copymachine edit outline original.png outline.png
      copymachine edit outline original.png thick.png --set width=2 --compare sheet.png
      copymachine edit posterize original.png poster.png --set mode=kmeans --set colors=16
      copymachine edit jpeg original.png jpeg.png --set quality=20 --amount 0.7

    \b
    Effects: outline, flat, contrast, posterize, jpeg (each with a `mode` that picks an
    alternative algorithm; see --list).
    """
    if list_effects:
        click.echo("\n\n".join(format_effect(e) for e in EFFECTS.values()))
        click.echo("\nSet parameters with --set KEY=VALUE; --amount blends any effect with the original.")
        return
    if not (effect and input_path and output_path):
        raise click.UsageError("give EFFECT IN OUT, e.g. copymachine edit outline original.png outline.png (or --list)")
    params = resolve_params(effect, _parse_settings(settings))
    amount = check_amount(amount)
    _png_target(output_path, "output", "OUT", input_path)
    if compare_path is not None:
        _png_target(compare_path, "compare sheet", "--compare", input_path)
        if _same_file(compare_path, output_path):
            raise click.BadParameter("the compare sheet and OUT must be different files", param_hint="--compare")
    original = load_rgb(input_path, parse_color(background))
    edited = apply_effect(effect, original, params, amount)
    save_png(edited, output_path)
    amount_text = "" if amount == 1.0 else f", amount {amount:g}"
    what = f"{effect} ({_changed(EFFECTS[effect], params)}){amount_text}"
    click.echo(f"wrote {output_path} ({original.width}x{original.height}): {what}")
    report = check_pair(original, edited, in_place=True)  # a built-in effect moves no pixel
    click.echo(f"check {_summary(report)}")
    for kind, lines in (("warning", report.messages), ("note", report.notes)):
        for line in lines:
            click.echo(f"{kind}: {line}", err=True)
    if compare_path is not None:
        compare_sheet(original, edited, compare_path, title=what)
        click.echo(f"wrote {compare_path} (original | edit | difference)")


@cli.command("check")
@click.argument("original_path", metavar="ORIGINAL", type=FILE)
@click.argument("edited_path", metavar="EDITED", type=FILE)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts and run manifests).")
@click.option("--compare", "compare_path", type=FILE, metavar="SHEET.png",
              help="Also write a sheet: original | edit | difference heat map (same size only).")
@click.option("--in-place", is_flag=True,
              help="EDITED keeps every pixel in place (you only drew on it): an alignment reading is a note, "
                   "not a refusal (thick new lines pull the fit; train/diff: --edit-in-place).")
@background_option
def check(original_path, edited_path, as_json, compare_path, in_place, background):
    """Check that EDITED is a usable edit of ORIGINAL before training on it.

    \b
    It must be the same picture at the same size, not moved by even a pixel, and changed enough:
      size       identical (an exact multiple gets a hint how to reduce it exactly)
      alignment  an affine ECC fit; warn when the corners move 1 px, refuse from 3 px
      strength   PSNR, SSIM, share of pixels changed; warn when the edit is too weak
                 (PSNR > 45 dB or < 0.5 % changed) or too different (SSIM < 0.5)
    Thick new lines pull the alignment fit (lines thickened by 3 px can read as 3 px of
    movement): with --in-place, for an edit that only drew on the picture, that reading is a
    note.

    Exits 0 when the edit is ok or only warned about, 3 when it is refused.

    \b
    Examples:
      copymachine check original.png my-edit.png
      copymachine check original.png my-edit.png --compare sheet.png
      copymachine check original.png my-edit.png --json
    """
    bg = parse_color(background)
    if compare_path is not None:
        _png_target(compare_path, "compare sheet", "--compare", original_path, edited_path)
    original, edited = (load_rgb(path, bg) for path in (original_path, edited_path))
    report = check_pair(original, edited, edited_name=str(edited_path), in_place=in_place)
    if as_json:
        data = {"original": str(original_path), "edited": str(edited_path), **report.as_dict()}
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(format_report(report, str(original_path), str(edited_path)))
    if compare_path is not None and report.size_ok:
        compare_sheet(original, edited, compare_path, title=f"{original_path.name} vs {edited_path.name}")
        if not as_json:
            click.echo(f"wrote {compare_path} (original | edit | difference)")
    if report.verdict == "refuse":
        moved = report.reads_as_moved and not in_place
        hint = "; if you only drew on it without moving it, --in-place" if moved else ""
        raise InputError(f"{edited_path}: refused as the edited image (reasons in the report above){hint}")
