"""Layouts and migrations on a real server: a new database gets every step from layout 0,
several processes opening one new schema create it once, an earlier layout is migrated
forward in one transaction (a failed step leaves it as it was), a newer one is refused."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

import pytest
from amsha.errors import SchemaVersionError, StateError
from amsha_postgres import _migrate
from amsha_postgres import store as store_module
from amsha_postgres.store import SCHEMA_VERSION, PostgresStore
from amsha_postgres.testing import PostgresServer

CTX = multiprocessing.get_context("spawn")


def tables(server: PostgresServer, schema: str) -> dict[str, list[str]]:
    with server.admin() as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s "
            "ORDER BY table_name, ordinal_position",
            (schema,),
        ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return out


def test_a_new_database_runs_every_step_from_layout_0(pg_server: PostgresServer) -> None:
    dsn = pg_server.create_database("fresh_db")
    store = PostgresStore(dsn, schema="amsha")
    try:
        assert store.schema_version() == SCHEMA_VERSION == 2
        with store._get_pool().connection() as conn:
            names = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'amsha'")}
            assert names == {"amsha_schema", "state_versions", "runs", "events"}
            assert conn.execute("SELECT version FROM amsha.amsha_schema").fetchall() == [(2,)]
        assert store.put_state("s", {"a": 1}, expected_version=0) == 1
    finally:
        store.close()
        with pg_server.admin() as conn:
            conn.execute("DROP DATABASE fresh_db WITH (FORCE)")


def test_an_existing_empty_schema_gets_the_tables(pg_server: PostgresServer, schema: str) -> None:
    with pg_server.admin() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    store = PostgresStore(pg_server.dsn(), schema=schema)
    assert store.schema_version() == 2 and set(tables(pg_server, schema)) == {
        "amsha_schema",
        "state_versions",
        "runs",
        "events",
    }
    store.close()


def _open(dsn: str, schema: str, barrier: Any, out: Any) -> None:
    try:
        barrier.wait()
        store = PostgresStore(dsn, schema=schema)
        out.put(("ok", store.schema_version()))
        store.close()
    except BaseException as exc:
        out.put(("error", repr(exc)))


def test_processes_opening_one_new_schema_create_it_once(pg_server: PostgresServer, schema: str) -> None:
    n = 4
    barrier, out = CTX.Barrier(n), CTX.Queue()
    procs = [CTX.Process(target=_open, args=(pg_server.dsn(), schema, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert results == [("ok", 2)] * n
    with pg_server.admin() as conn:
        assert conn.execute(f'SELECT count(*) FROM "{schema}".amsha_schema').fetchone()[0] == 1


def test_a_newer_layout_is_refused_and_left_alone(pg_server: PostgresServer, schema: str) -> None:
    PostgresStore(pg_server.dsn(), schema=schema).close()
    with pg_server.admin() as conn:
        conn.execute(f'UPDATE "{schema}".amsha_schema SET version = 7')
    with pytest.raises(SchemaVersionError) as info:
        PostgresStore(pg_server.dsn(), schema=schema)
    message = str(info.value)
    assert "layout version 7" in message and "newer amsha-state-postgres" in message and "upgrade" in message
    assert pg_server.password not in message
    with pg_server.admin() as conn:
        assert conn.execute(f'SELECT version FROM "{schema}".amsha_schema').fetchone()[0] == 7


def _to_3(conn: Any, schema: str) -> None:
    conn.execute(f'ALTER TABLE "{schema}".runs ADD COLUMN labels text')
    conn.execute(f"UPDATE \"{schema}\".runs SET labels = 'migrated'")


def _to_3_broken(conn: Any, schema: str) -> None:
    conn.execute(f'ALTER TABLE "{schema}".runs ADD COLUMN labels text')
    conn.execute(f'SELECT no_such_column FROM "{schema}".runs')


@pytest.fixture
def layout_3(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[Any, str], None]], None]:
    """A release whose layout is 3: a step from layout 2 registered, the target raised."""

    def install(step: Callable[[Any, str], None]) -> None:
        monkeypatch.setitem(_migrate.MIGRATIONS, 2, step)
        monkeypatch.setattr(store_module, "SCHEMA_VERSION", 3)

    return install


def test_layout_1_is_migrated_to_2_keeping_its_data(pg_server: PostgresServer, schema: str) -> None:
    from amsha.state import RunRecord

    with pg_server.admin() as conn, conn.transaction():
        _migrate.migrate(conn, schema, 0, 1)  # what release 0.1.0's first layout wrote
        conn.execute(
            f'INSERT INTO "{schema}".runs (run_id, created_at, status, body) VALUES '
            '(\'old\', 1.0, \'SUCCEEDED\', \'{"run_id": "old", "status": "SUCCEEDED"}\')'
        )
    with pg_server.admin() as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,))}
    assert "runs_by_created_id" not in indexes
    store = PostgresStore(pg_server.dsn(), schema=schema)
    assert store.schema_version() == 2
    with pg_server.admin() as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,))}
    assert "runs_by_created_id" in indexes
    assert store.get_run("old").status == "SUCCEEDED"
    store.put_run(RunRecord("new", created_at=2.0))
    assert [r.run_id for r in store.list_runs_page(10).runs] == ["new", "old"]
    store.close()


def test_an_earlier_layout_is_migrated_forward_keeping_its_data(
    pg_server: PostgresServer, schema: str, layout_3: Callable[[Callable[[Any, str], None]], None]
) -> None:
    from amsha.state import RunRecord

    old = PostgresStore(pg_server.dsn(), schema=schema)  # layout 2
    old.put_state("s", {"a": 1}, expected_version=0)
    old.put_run(RunRecord("r"))
    old.close()
    layout_3(_to_3)
    new = PostgresStore(pg_server.dsn(), schema=schema)
    assert new.schema_version() == 3
    assert "labels" in tables(pg_server, schema)["runs"]
    with pg_server.admin() as conn:
        assert conn.execute(f'SELECT labels FROM "{schema}".runs').fetchall() == [("migrated",)]
    assert new.get_state("s").data == {"a": 1} and new.get_run("r").run_id == "r"
    new.close()


def test_a_failed_step_leaves_the_schema_as_it_was(
    pg_server: PostgresServer, schema: str, layout_3: Callable[[Callable[[Any, str], None]], None]
) -> None:
    PostgresStore(pg_server.dsn(), schema=schema).close()
    layout_3(_to_3_broken)
    with pytest.raises(StateError) as info:
        PostgresStore(pg_server.dsn(), schema=schema)
    assert "migrating schema" in str(info.value) and "left as it was" in str(info.value)
    assert "labels" not in tables(pg_server, schema)["runs"]  # the step's first statement rolled back
    with pg_server.admin() as conn:
        assert conn.execute(f'SELECT version FROM "{schema}".amsha_schema').fetchone()[0] == 2
