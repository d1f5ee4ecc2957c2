"""The sqlite store passes the core's StateStore contract suite on a real file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from amsha.testing import StateStoreContract
from amsha_sqlite.store import SqliteStore


class TestSqliteContract(StateStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        store = SqliteStore(tmp_path / "contract.db")
        yield store
        store.close()
