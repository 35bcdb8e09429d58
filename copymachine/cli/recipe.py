"""`copymachine recipe`: print the memo's recipe as a TOML file to start your own from."""

from __future__ import annotations

from pathlib import Path

import click
import tomli_w

from copymachine.cli import cli
from copymachine.recipe import MEMO, load_recipe_file, render_recipe_toml

HEADER = """\
# copymachine recipe: the numbers of the copy-machine LoRA memo (shared/seed/copy-machine-lora.en.md).
# Use with: copymachine train --recipe THIS.toml ...   Keep only the keys you change.
# [copy]          memo step 2, the copy LoRA (steps = repeats x epochs = 3072)
# [effect]        memo step 5, the effect LoRA (4096 steps); [effect.flat] / [effect.jpeg]: the memo's retrain
# [diff]          difference extraction: the over-fitted LoRAs A and B (4096 steps)
# [merge]         memo step 3, merge_lora.py into the base model
# [resize]        memo step 9, resize_lora.py (rank 0 keeps the trained rank)
# [svd]           svd_merge_lora.py: difference extraction step 5, and the exact combine route
# [combine]       memo steps 6-8: several images' LoRAs merged into the model and extracted
# [generate]      memo step 1, when no --image is given (copymachine's choices: the memo gives none)
# [caption]       the caption of both training images
"""


@cli.command()
@click.option("--from", "from_file", type=click.Path(dir_okay=False, path_type=Path), help="Show this recipe file merged over the memo's numbers.")
def recipe(from_file):
    """Print the recipe (the memo's numbers) as TOML.

    \b
    Example:
      copymachine recipe > my-recipe.toml    # edit, then: copymachine train --recipe my-recipe.toml ...
    """
    r = load_recipe_file(from_file) if from_file else MEMO
    click.echo(HEADER + "\n" + tomli_w.dumps(render_recipe_toml(r)), nl=False)
