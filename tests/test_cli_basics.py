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
