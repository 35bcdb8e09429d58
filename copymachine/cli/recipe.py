"""`copymachine recipe`: list the built-in recipes, or print one as a TOML file to start your own from."""

from __future__ import annotations

from pathlib import Path

import click
import tomli_w

from copymachine.cli import cli
from copymachine.recipe import (
    BUILT_IN,
    MEMO,
    Recipe,
    built_in,
    built_in_names,
    load_recipe_file,
    render_recipe_toml,
    schema_fields,
)

# One line per section of the recipe, from the schema's descriptions, in the order they are printed
SECTION_NOTES: dict[str, str] = {name: field.description or "" for name, field in schema_fields(Recipe).items()
                                 if name not in ("name", "description", "effect_overrides")}


def steps_line(r: Recipe) -> str:
    """The training steps the recipe plans for one effect, copy LoRA included."""
    own = sorted({f"{name}: {t.steps:,}" for name, t in r.effect_overrides.items() if t.steps != r.effect.steps})
    others = f" ({', '.join(own)})" if own else ""
    return (f"copy LoRA {r.copy.steps:,} + effect LoRA {r.effect.steps:,}{others} = {r.copy.steps + r.effect.steps:,} "
            f"steps for one effect; the difference method: {2 * r.diff.steps:,}")


def header(r: Recipe) -> str:
    source = f"copymachine/recipes/{r.name}.toml" if r.name in built_in_names() else "your file"
    return (
        f"# copymachine recipe {r.name!r}: {r.description}\n"
        f"# {steps_line(r)}\n"
        f"# Each number's source: {source}. Use with: copymachine train --recipe THIS.toml ...\n"
        "# Keep only the keys you change: the others come from the recipe `base` names (default: memo).\n"
        + "".join(f"# {f'[{name}]':<15} {note}\n" for name, note in SECTION_NOTES.items())
    )


@cli.command()
@click.argument("name", required=False)
@click.option("--list", "list_all", is_flag=True, help="List the built-in recipes, one line each.")
@click.option("--from", "from_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Show this recipe file merged over its base (the same as giving it as NAME).")
def recipe(name: str | None, list_all: bool, from_file: Path | None) -> None:
    """Print a recipe as TOML: the memo's (the default), a built-in one by NAME, or a recipe file.

    \b
    Examples:
      copymachine recipe --list
      copymachine recipe fast > my-recipe.toml   # edit, then: copymachine train --recipe my-recipe.toml ...
    """
    if list_all:
        for n in built_in_names():
            r = built_in(n)
            click.echo(f"{n + (' (default)' if r.name == MEMO.name else ''):<15} {r.description}")
        click.echo(f"\nEach one's numbers and sources: copymachine recipe NAME (files in {BUILT_IN})")
        return
    chosen = from_file or name
    r = load_recipe_file(chosen) if chosen else MEMO
    data = render_recipe_toml(r)
    if r.name in built_in_names():
        data = {"base": r.name, **data}
    click.echo(header(r) + "\n" + tomli_w.dumps(data), nl=False)
