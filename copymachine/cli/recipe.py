"""`copymachine recipe`: print the memo's recipe as a TOML file to start your own from."""

from __future__ import annotations

from pathlib import Path

import click
import tomli_w

from copymachine.cli import cli
from copymachine.recipe import MEMO, load_recipe_file, render_recipe_toml

# One line per section of the recipe, in the order `copymachine recipe` prints them
# (tests/test_recipe.py checks that every section has its line).
SECTION_NOTES: dict[str, str] = {
    "copy": "memo step 2, the copy LoRA (steps = repeats x epochs = 3072)",
    "diff": "difference extraction: the over-fitted LoRAs A and B (4096 steps)",
    "merge": "memo step 3, the copy model: in memory (copy_model = \"memory\") or merge_lora.py into a file",
    "resize": "memo step 9, resize_lora.py (rank 0 keeps the trained rank)",
    "svd": "svd_merge_lora.py: difference extraction step 5, and the exact combine route",
    "combine": "memo steps 6-8: several images' LoRAs merged into the model and extracted",
    "generate": "memo step 1, when no --image is given (copymachine's choices: the memo gives none)",
    "caption": "the caption of both training images",
    "copy_check": "memo step 3, does the copy model copy? renders vs the original, stops below min_ssim",
    "preview": "the strength sweep on a preview model (--preview-model, copymachine preview)",
    "leakage": "with a preview model: does the LoRA draw its training image into unrelated prompts?",
    "model": "the base model in every training and render: clip_skip (2 for NovelAI-derived SD1.5 anime models)",
    "watch": "during a training: its state saved every save_every_n_steps steps, to resume a killed run",
    "effect": "memo step 5, the effect LoRA (4096 steps); [effect.flat] / [effect.jpeg]: the memo's retrain",
    "sd_args": "sd-scripts training options the recipe does not name (noise_offset = 0.05; --sd-arg KEY=VALUE)",
}

HEADER = (
    "# copymachine recipe: the numbers of the copy-machine LoRA memo.\n"
    "# Use with: copymachine train --recipe THIS.toml ...   Keep only the keys you change.\n"
    + "".join(f"# {f'[{name}]':<15} {note}\n" for name, note in SECTION_NOTES.items())
)


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
