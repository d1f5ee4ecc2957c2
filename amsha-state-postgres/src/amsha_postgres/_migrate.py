"""The store's layout in its PostgreSQL schema, and the forward migrations between layouts.

``MIGRATIONS[n]`` takes a schema from layout ``n`` to ``n + 1``; layout 0 is an empty (or
missing) schema, so a new database runs every step from the first one, and a database of any
earlier layout runs the steps after its own. Each opening runs the steps it needs in one
transaction, under an advisory lock (several processes opening one new database at once
create it once), and PostgreSQL's DDL is transactional: a step that fails leaves the schema
exactly as it was. A schema whose layout is newer than :data:`SCHEMA_VERSION` is refused.

Layouts:

1. ``state_versions`` (one row per version: a snapshot or a delta, see
   :mod:`amsha_postgres._codec`; ``write_id`` names the write that stored the row),
   ``runs`` (the record's body as JSON, its status, and the run-control columns: owner,
   heartbeat, lease expiry, cancel request, on the server's clock), ``events``
   (``(run_id, seq)``, append-only), ``amsha_schema(version)``.
2. ``runs_by_created_id``: an index on ``runs (created_at DESC, run_id DESC)`` (run ids by
   code point, as Python orders them), the order of ``list_runs_page``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "layout_version", "migrate"]

SCHEMA_VERSION = 2
"""The layout this release writes."""

# Large values are compressed with lz4 where the server has it (much cheaper than pglz,
# PostgreSQL's default); other servers keep their default.
_V1 = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE {s}.amsha_schema (version integer NOT NULL);
CREATE TABLE {s}.state_versions (
    state_id text NOT NULL,
    version integer NOT NULL,
    created_at double precision NOT NULL,
    run_id text,
    reason text NOT NULL DEFAULT '',
    write_id bytea NOT NULL,
    base integer NOT NULL,
    depth integer NOT NULL,
    chain bigint NOT NULL,
    removed bytea,
    ord bytea,
    data bytea NOT NULL,
    PRIMARY KEY (state_id, version)
);
CREATE INDEX state_versions_by_run ON {s}.state_versions (run_id) WHERE run_id IS NOT NULL;
CREATE TABLE {s}.runs (
    run_id text PRIMARY KEY,
    ord bigint GENERATED ALWAYS AS IDENTITY,
    created_at double precision NOT NULL,
    status text NOT NULL,
    body bytea NOT NULL,
    owner_id text,
    owner_host text,
    owner_pid integer,
    heartbeat_at timestamptz,
    lease_expires_at timestamptz,
    cancel_reason text,
    cancel_at timestamptz,
    cancel_id bytea
);
CREATE INDEX runs_by_created ON {s}.runs (created_at DESC, ord DESC);
CREATE TABLE {s}.events (
    run_id text NOT NULL,
    seq bigint NOT NULL,
    write_id bytea NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""


def _statements(script: str, schema: str) -> list[str]:
    return [s.strip() for s in script.format(s=f'"{schema}"').split(";") if s.strip()]


def _to_1(conn: Any, schema: str) -> None:
    for statement in _statements(_V1, schema):
        conn.execute(statement)
    conn.execute(f'INSERT INTO "{schema}".amsha_schema (version) VALUES (0)')
    for table, column in (("state_versions", "data"), ("events", "body"), ("runs", "body")):
        try:
            with conn.transaction():  # a savepoint: a server without lz4 keeps its default
                conn.execute(f'ALTER TABLE "{schema}".{table} ALTER COLUMN {column} SET COMPRESSION lz4')
        except Exception:
            pass


def _to_2(conn: Any, schema: str) -> None:
    # Pages of runs (list_runs_page) walk this index: newest first, ties by run id.
    conn.execute(f'CREATE INDEX runs_by_created_id ON "{schema}".runs (created_at DESC, run_id COLLATE "C" DESC)')


MIGRATIONS: dict[int, Callable[[Any, str], None]] = {0: _to_1, 1: _to_2}
"""``MIGRATIONS[n](conn, schema)`` takes the layout from ``n`` to ``n + 1`` (in the caller's
transaction)."""


def layout_version(conn: Any, schema: str) -> int:
    """The layout of ``schema`` (0 when it has no store tables yet)."""
    # A query of the catalog, not to_regclass(): it reads with the statement's snapshot, so
    # it sees tables that another process committed while this one waited for the lock.
    row = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = 'amsha_schema'",
        (schema,),
    ).fetchone()
    if row is None:
        return 0
    row = conn.execute(f'SELECT max(version) FROM "{schema}".amsha_schema').fetchone()
    return int(row[0] or 0)


def migrate(conn: Any, schema: str, found: int, target: int) -> int:
    """Run the steps from layout ``found`` to ``target`` (in the caller's transaction)."""
    while found < target:
        MIGRATIONS[found](conn, schema)
        found += 1
        conn.execute(f'UPDATE "{schema}".amsha_schema SET version = %s', (found,))
    return found
