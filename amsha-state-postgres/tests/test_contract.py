"""The postgres store passes the core's StateStore contract suite on a real server."""

from __future__ import annotations

import pytest
from amsha.testing import StateStoreContract
from amsha_postgres.store import PostgresStore


class TestPostgresContract(StateStoreContract):
    @pytest.fixture
    def store(self, make_store) -> PostgresStore:  # type: ignore[no-untyped-def]
        return make_store()
