"""Fixtures of the store tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.store.migrate import upgrade


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of each kind the store runs on: a SQLite file, then PostgreSQL (a module's own
    ``url`` fixture takes precedence)."""
    if request.param == "sqlite":
        database = f"sqlite:///{tmp_path / 'store.sqlite'}"
        upgrade(database)
        yield database
    else:
        yield request.getfixturevalue("migrated_postgres_url")
