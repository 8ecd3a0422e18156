"""What the docs tell people to create in the checkout stays out of git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Files docs/operations.md and the README have an operator or newcomer create.
CREATED = [
    ".env",
    "data/proxy.db",
    "data/proxy.db-wal",
    "backup.db",
    "backups/apipod-2026-12-01.db",
    "routes.toml",
    "apipod.log",
]


@pytest.mark.parametrize("path", CREATED)
def test_what_the_docs_create_is_ignored(path: str) -> None:
    found = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
    assert found.returncode == 0, f"{path} is not in .gitignore"


def test_the_tracked_fixtures_and_examples_are_not_ignored() -> None:
    for path in ("tests/fixtures/schema_v2.db", "routes.example.toml", ".env.example"):
        found = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        assert found.returncode == 1, f"{path} is ignored"
