"""What storage/ may import, read from the source (TYPE_CHECKING imports included):
records.py nothing of the package, the rest of storage/ nothing above it; and the
dashboard runs no SQL of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "src" / "apipod_proxy"
STORAGE = PACKAGE / "storage"
#: What storage/ sits below: none of it may be imported there.
ABOVE_STORAGE = ("policy", "endpoints", "pipeline", "upstream", "translate", "addon",
                 "lifecycle", "flowstate", "connections", "cli", "serve")  # fmt: skip


def package_imports(path: Path) -> set[str]:
    """The package modules `path` imports, as dotted names below apipod_proxy."""
    here = path.relative_to(PACKAGE).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - node.level + 1])
            elif (node.module or "").startswith("apipod_proxy"):
                base = []
            else:
                continue
            module = (node.module or "").removeprefix("apipod_proxy").lstrip(".")
            parts = base + (module.split(".") if module else [])
            if module:
                found.add(".".join(parts))
            else:  # `from .. import keys, clock`
                found |= {".".join([*parts, alias.name]) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {
                alias.name.removeprefix("apipod_proxy.")
                for alias in node.names
                if alias.name.startswith("apipod_proxy.")
            }
    return found


def test_records_imports_nothing_of_the_package() -> None:
    assert package_imports(STORAGE / "records.py") == set()


@pytest.mark.parametrize("path", sorted(STORAGE.glob("*.py")), ids=lambda p: p.name)
def test_storage_imports_nothing_above_it(path: Path) -> None:
    above = {name for name in package_imports(path) if name.split(".")[0] in ABOVE_STORAGE}
    assert above == set()


def test_the_dashboard_runs_no_sql_of_its_own() -> None:
    source = (PACKAGE / "endpoints" / "dashboard.py").read_text()
    assert ".connection(" not in source
    assert "sqlite3" not in package_imports(PACKAGE / "endpoints" / "dashboard.py")
    assert "import sqlite3" not in source
