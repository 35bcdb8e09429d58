"""The troubleshooting page (docs/troubleshooting.md) has a test for every row: the development page
(docs/development.md, "Troubleshooting rows and their tests") names it, and each named test exists
(and so runs in the suite). Parametrised ids (`[...]`) must be among the test's parameters. And the
README stays the way in: at most 12,000 bytes, the two commands in its first 40 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return [[cell.strip() for cell in row.strip().strip("|").split(" | ")] for row in rows]


def troubleshooting_rows() -> list[list[str]]:
    """Each row of the message tables: input | what copymachine says | exit."""
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    return [r for r in _rows(text) if len(r) == 3 and r[0] != "input"]


def named_tests() -> dict[str, str]:
    """input -> the cell naming its test(s), from the development page's table."""
    text = (DOCS / "development.md").read_text(encoding="utf-8")
    section = text[text.index("## Troubleshooting rows and their tests") :]
    return {r[0]: r[1] for r in _rows(section) if len(r) == 2 and r[0] != "input"}


def test_every_row_names_an_existing_test():
    rows = troubleshooting_rows()
    tests_of = named_tests()
    assert len(rows) >= 40
    assert {r[0] for r in rows} == set(tests_of), "the troubleshooting page and the development page's table differ"
    for row in rows:
        tests = re.findall(r"`([^`]+)`", tests_of[row[0]])
        assert tests, f"row without a test: {row[0]}"
        current = "test_bad_inputs.py"
        for name in tests:
            if name.startswith(("…", "[")):
                continue  # a parameter of the test named before it
            if "::" in name or name.endswith(".py"):
                file, _, func = name.partition("::")
                current = Path(file).name
                path = ROOT / "tests" / file
                assert path.is_file(), f"{row[0]}: no test file {file}"
                if not func:
                    continue
            else:
                func, path = name, ROOT / "tests" / current
            func = func.split("[")[0]
            functions = {n.name for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.FunctionDef)}
            assert func in functions, f"{row[0]}: {func} is not a test in {path.name}"


def test_the_readme_is_the_way_in():
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= 12_000
    head = readme.decode("utf-8").splitlines()[:40]
    assert any(line.startswith("make setup && make ") for line in head)
    assert any(line.strip() == "make test" for line in head)
