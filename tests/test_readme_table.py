"""The README's troubleshooting table names a test for every row: each named test exists (and so
runs in the suite). Parametrised ids (`[...]`) must be among the test's parameters."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def table_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Troubleshooting") : text.index("## Safety")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line.count("|") >= 5]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[1:] if not row.startswith("|---")]


def test_every_row_names_an_existing_test():
    rows = [r for r in table_rows() if r[0] != "input"]
    assert len(rows) >= 40
    for row in rows:
        tests = re.findall(r"`([^`]+)`", row[-1])
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
