from click.testing import CliRunner

from copymachine import __version__
from copymachine.cli import cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_the_method():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "slider LoRA" in result.output


def test_help_starts_with_an_example_and_lists_the_stages_by_memo_step():
    top = CliRunner().invoke(cli, ["--help"]).output
    assert "Start here:\n    copymachine setup" in top and "--base sd15.safetensors --image picture.png --dry-run" in top
    assert "--resolution 64 --max-steps 3 --no-copy-check" in top
    # train's list names each stage as its title does, with the memo's step; the copy model's default is memory
    train = CliRunner().invoke(cli, ["train", "--help"]).output
    for step, title in [(1, "original image"), (4, "edited image"), (2, "captions"), (2, "copy LoRA"), (3, "copy model"),
                        (3, "copy check"), (5, "effect LoRA"), (9, "resize")]:
        assert f"memo step {step}  {title} " in train
    assert "in memory (--copy-model file: a file)" in train and "merged into the base model, cached" not in train
    diff = CliRunner().invoke(cli, ["diff", "--help"]).output
    assert "memo step 2  LoRA A of the original " in diff and "memo step 4  LoRA B of the edited image " in diff
    assert "memo step 5  difference B - A " in diff
