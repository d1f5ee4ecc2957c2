"""Forward migrations of the ``sqlite`` store's file, one schema version at a time.

Each step runs inside the write transaction that opens the file, so a step that fails leaves
the file exactly as it was. The layouts:

1. ``states``: a whole JSON document per state version; ``runs`` without ``status``.
2. ``blobs(hash, data)``: each distinct value once, by the SHA-256 of its JSON;
   ``state_keys(state_id, key, version, hash, ord)``: a row per key that changed in a
   version (``hash`` NULL: removed); ``state_versions``: a small row per version.
3. ``state_versions``: one row per version, a snapshot or a delta (see
   :mod:`amsha_sqlite.store`).
4. ``run_control``: leases and cancel requests (run control, plugin API 1.1).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from collections.abc import Callable, Sequence

from amsha_sqlite.store import _INSERT_SQL, _RUN_CONTROL, _SCHEMA_V3, _decode, _encode, _plan, _size, _statements, _Tip

__all__ = ["MIGRATIONS"]

_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS blobs (
    hash BLOB PRIMARY KEY,
    data BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_versions (
    state_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    run_id TEXT,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (state_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_keys (
    state_id TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    hash BLOB,
    ord INTEGER NOT NULL,
    PRIMARY KEY (state_id, key, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"""

_Manifest = dict[str, tuple[bytes, int]]
"""Schema 2: key -> (hash of its JSON value, position) for the live keys of one version."""


def _write_v2(
    conn: sqlite3.Connection,
    state_id: str,
    version: int,
    manifest: _Manifest,
    encoded: Sequence[tuple[str, bytes]],
    created_at: float,
    run_id: str | None,
    reason: str,
) -> _Manifest:
    """Insert a version in schema 2 given the manifest of the version before it."""
    top = max((o for _, o in manifest.values()), default=-1)
    ords: list[int] = []
    for key, _ in encoded:
        old = manifest.get(key)
        if old is None:
            top += 1
            ords.append(top)
        else:
            ords.append(old[1])
    if any(a >= b for a, b in itertools.pairwise(ords)):
        ords = list(range(len(encoded)))
    new_manifest: _Manifest = {}
    blobs: list[tuple[bytes, bytes]] = []
    rows: list[tuple[str, str, int, bytes | None, int]] = []
    for (key, blob), ord_ in zip(encoded, ords, strict=True):
        digest = hashlib.sha256(blob).digest()
        new_manifest[key] = (digest, ord_)
        if manifest.get(key) != (digest, ord_):
            if manifest.get(key, (None,))[0] != digest:
                blobs.append((digest, blob))
            rows.append((state_id, key, version, digest, ord_))
    for key in manifest.keys() - new_manifest.keys():
        rows.append((state_id, key, version, None, 0))
    if blobs:
        conn.executemany("INSERT OR IGNORE INTO blobs (hash, data) VALUES (?, ?)", blobs)
    if rows:
        conn.executemany("INSERT INTO state_keys (state_id, key, version, hash, ord) VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute(
        "INSERT INTO state_versions (state_id, version, created_at, run_id, reason) VALUES (?, ?, ?, ?, ?)",
        (state_id, version, created_at, run_id, reason or ""),
    )
    return new_manifest


def migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Schema 1 kept each state version as one JSON document (``states.data``) and runs
    without a ``status`` column; rewrite versions as changed keys and add the column."""
    for statement in _statements(_SCHEMA_V2):
        conn.execute(statement)
    cols = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    if "status" not in cols:
        conn.execute("ALTER TABLE runs ADD COLUMN status TEXT NOT NULL DEFAULT 'PENDING'")
        for run_id, body in conn.execute("SELECT run_id, body FROM runs").fetchall():
            status = _decode(body).get("status", "PENDING")
            conn.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))
    rows = conn.execute(
        "SELECT state_id, version, created_at, run_id, reason, data FROM states ORDER BY state_id, version"
    ).fetchall()
    manifests: dict[str, _Manifest] = {}
    for state_id, version, created_at, run_id, reason, data in rows:
        encoded = [(k, _encode(v)) for k, v in json.loads(data).items()]
        manifests[state_id] = _write_v2(
            conn, state_id, version, manifests.get(state_id, {}), encoded, created_at, run_id, reason or ""
        )
    conn.execute("DROP TABLE states")


def migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """Schema 2 kept a row per changed key and content-addressed values; rewrite every
    version as a snapshot or delta row (the values are already encoded as schema 3 wants)."""
    conn.execute("ALTER TABLE state_versions RENAME TO state_versions_2")
    for statement in _statements(_SCHEMA_V3):
        conn.execute(statement)
    state_ids = [s for (s,) in conn.execute("SELECT DISTINCT state_id FROM state_versions_2 ORDER BY state_id")]
    for state_id in state_ids:
        changes = conn.execute(
            "SELECT version, key, hash, ord FROM state_keys WHERE state_id = ? ORDER BY version", (state_id,)
        ).fetchall()
        live: dict[str, tuple[bytes, int, bytes]] = {}  # key -> (hash, position, value)
        at = 0
        prev: _Tip | None = None
        for version, created_at, run_id, reason in conn.execute(
            "SELECT version, created_at, run_id, reason FROM state_versions_2 WHERE state_id = ? ORDER BY version",
            (state_id,),
        ).fetchall():
            while at < len(changes) and changes[at][0] <= version:
                _, key, digest, ord_ = changes[at]
                at += 1
                if digest is None:
                    live.pop(key, None)
                elif key in live and live[key][0] == digest:
                    live[key] = (digest, ord_, live[key][2])
                else:
                    found = conn.execute("SELECT data FROM blobs WHERE hash = ?", (digest,)).fetchone()
                    if found is None:
                        raise ValueError(f"state {state_id!r} version {version}: the value of {key!r} is missing")
                    live[key] = (digest, ord_, bytes(found[0]))
            values = {key: item[2] for key, item in sorted(live.items(), key=lambda kv: kv[1][1])}
            size = _size(values)
            planned = _plan(version, prev, values, size)
            conn.execute(_INSERT_SQL, (state_id, version, created_at, run_id, reason or "", *planned))
            prev = _Tip(version, created_at, planned.base, planned.depth, planned.chain, values, size)
    conn.execute("DROP TABLE state_versions_2")
    conn.execute("DROP TABLE state_keys")
    conn.execute("DROP TABLE blobs")


def migrate_3_to_4(conn: sqlite3.Connection) -> None:
    """Add the ``run_control`` table; runs of schema 3 have no lease (they are never LOST)."""
    for statement in _statements(_RUN_CONTROL):
        conn.execute(statement)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: migrate_1_to_2,
    2: migrate_2_to_3,
    3: migrate_3_to_4,
}
"""from-version -> the step to the next version (run in the write transaction that opens the file)."""
