"""What a non-editable install ships: every package of copymachine, its templates and the UI's page."""

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_for_setuptools():
    # a folder of modules missing here is absent from a wheel: the launcher the memory route
    # runs in sd-scripts' Python (copymachine/sd_side) once was
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(d.relative_to(REPO).parts)
        for d in (REPO / "copymachine").rglob("*")
        if d.is_dir() and any(d.glob("*.py")) and "__pycache__" not in d.parts
    }
    assert found <= listed, f"not in [tool.setuptools] packages: {sorted(found - listed)}"
    assert "copymachine.templates" in listed and config["package-dir"]["copymachine.templates"] == "templates"
    assert "static/*" in config["package-data"]["copymachine.ui"]
