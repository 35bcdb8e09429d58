"""What a non-editable install ships: every package of copymachine, its templates, its recipes and
the UI's page. Checked against pyproject.toml here (building a wheel needs setuptools from the
package index); by hand: `pip wheel --no-deps . -w /tmp/whl` prints no setuptools warning."""

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def package_folders() -> dict[str, Path]:
    """Every folder that ships: copymachine's, the data-only ones too, and the top-level templates."""
    found = {
        ".".join(d.relative_to(REPO).parts): d
        for d in [REPO / "copymachine", *(REPO / "copymachine").rglob("*")]
        if d.is_dir() and "__pycache__" not in d.parts and any(f.is_file() for f in d.iterdir())
    }
    return {**found, "copymachine.templates": REPO / CONFIG["package-dir"]["copymachine.templates"]}


def test_every_package_is_listed_for_setuptools():
    # a folder missing here is absent from a wheel (copymachine/sd_side once was, copymachine/preflight
    # too), and a data-only folder missing here makes setuptools warn ("Package would be ignored")
    listed = set(CONFIG["packages"])
    found = package_folders()
    assert set(found) == listed, f"not listed: {sorted(set(found) - listed)}; no such folder: {sorted(listed - set(found))}"
    assert CONFIG["package-dir"] == {"copymachine.templates": "templates"}


def test_every_data_file_is_package_data():
    # templates/*.j2, recipes/*.toml, ui/static/*: each file that is not Python matches its package's globs
    for package, folder in package_folders().items():
        globs = CONFIG.get("package-data", {}).get(package, [])
        data = [f.name for f in folder.iterdir() if f.is_file() and f.suffix not in (".py", ".pyc")]
        assert all(any(fnmatch(name, g) for g in globs) for name in data), f"{package}: {data} vs package-data {globs}"
    assert {"*.j2"} <= set(CONFIG["package-data"]["copymachine.templates"])
    assert any((REPO / "copymachine" / "recipes").glob("*.toml")) and any((REPO / "copymachine" / "ui" / "static").iterdir())
