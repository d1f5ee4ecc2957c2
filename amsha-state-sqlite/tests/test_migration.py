"""Files written with older schemas open, are migrated forward in place, and read back
exactly: schema 1 (a whole JSON document per state version) and schema 2 (content-addressed
values and a row per changed key)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from amsha.errors import StateError
from amsha.state import RunRecord
from amsha_sqlite._migrate import _SCHEMA_V2, _write_v2
from amsha_sqlite.store import SCHEMA_VERSION, SqliteStore, _encode, _statements

# Schema 1, as the first layout created it.
SCHEMA_V1 = """
CREATE TABLE amsha_schema (version INTEGER NOT NULL);
INSERT INTO amsha_schema (version) VALUES (1);
CREATE TABLE states (
    state_id TEXT NOT NULL, version INTEGER NOT NULL, created_at REAL NOT NULL,
    run_id TEXT, reason TEXT, data TEXT NOT NULL, PRIMARY KEY (state_id, version)
);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (run_id, seq))
    WITHOUT ROWID;
"""

BIG = "b" * 50_000
HISTORY = [
    {"topic": "kelp", "research": BIG},
    {"topic": "kelp", "research": BIG, "write": "draft ✓"},
    {"topic": "kelp", "write": "final", "research": BIG},  # reordered, one key changed
    {"research": BIG},
]


@pytest.fixture
def v1_file(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1)
    for i, data in enumerate(HISTORY, start=1):
        conn.execute(
            "INSERT INTO states VALUES (?, ?, ?, ?, ?, ?)",
            ("st", i, 1000.0 + i, "run-old" if i < 3 else None, f"task {i}", json.dumps(data, ensure_ascii=False)),
        )
    conn.execute("INSERT INTO states VALUES ('other', 1, 5.0, NULL, '', '{\"x\": [1, 2]}')")
    record = RunRecord("run-old", status="SUCCEEDED", tasks=["research"], created_at=900.0, outputs={"write": "final"})
    conn.execute("INSERT INTO runs VALUES (?, ?, ?)", ("run-old", 900.0, json.dumps(record.to_dict())))
    conn.executemany(
        "INSERT INTO events VALUES (?, ?, ?)",
        [("run-old", i, json.dumps({"seq": i, "kind": "k", "data": {"i": i}})) for i in range(3)],
    )
    conn.commit()
    conn.close()
    return path


def test_schema_1_is_migrated_forward(v1_file: Path) -> None:
    store = SqliteStore(v1_file)
    assert store.schema_version() == SCHEMA_VERSION == 4
    for i, data in enumerate(HISTORY, start=1):
        snap = store.get_state("st", i)
        assert snap.data == data and list(snap.data) == list(data)
        assert (snap.created_at, snap.reason) == (1000.0 + i, f"task {i}")
    assert store.get_state("other").data == {"x": [1, 2]}
    assert [(v.version, v.run_id) for v in store.list_versions("st")] == [
        (1, "run-old"),
        (2, "run-old"),
        (3, None),
        (4, None),
    ]
    run = store.get_run("run-old")
    assert (run.status, run.outputs) == ("SUCCEEDED", {"write": "final"})
    assert [e["seq"] for e in store.read_events("run-old")] == [0, 1, 2]
    # The big value that four versions held is stored once now (a snapshot, then deltas).
    conn = sqlite3.connect(v1_file)
    assert conn.execute("SELECT count(*) FROM state_versions WHERE length(data) > 50000").fetchone()[0] == 1
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not tables & {"states", "blobs", "state_keys", "state_versions_2"}
    assert conn.execute("SELECT status FROM runs").fetchone()[0] == "SUCCEEDED"
    conn.close()
    # It is a normal store from now on, and opening it again migrates nothing.
    assert store.put_state("st", {"research": "new"}, expected_version=4) == 5
    store.delete_run("run-old")
    assert [v.version for v in store.list_versions("st")] == [3, 4, 5]
    assert store.get_state("st", 3).data == HISTORY[2]
    store.close()
    again = SqliteStore(v1_file)
    assert again.get_state("st").data == {"research": "new"}
    again.close()


def test_failed_migration_leaves_the_file_at_schema_1(v1_file: Path) -> None:
    conn = sqlite3.connect(v1_file)
    conn.execute("INSERT INTO states VALUES ('bad', 1, 1.0, NULL, '', 'not json')")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match=r"from schema 1 to 2 failed .*left at schema 1"):
        SqliteStore(v1_file)
    conn = sqlite3.connect(v1_file)
    assert conn.execute("SELECT version FROM amsha_schema").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM states").fetchone()[0] == len(HISTORY) + 2
    conn.close()


# ---- schema 2 -------------------------------------------------------------------------------

V2_HISTORY: list[tuple[dict[str, Any], str | None]] = [
    ({"topic": "kelp", "research": BIG, "n": 2**70}, "run-a"),
    ({"topic": "kelp", "research": BIG, "n": 2**70, "write": "draft ✓", "lone": "\ud800"}, "run-b"),
    ({"write": "final", "topic": "kelp", "research": BIG, "n": 2**70, "lone": "\ud800"}, None),  # reordered
    ({"research": BIG + "!", "write": "final"}, "run-a"),  # two keys dropped, one changed
    ({"research": BIG, "write": "final", "n": 1.5}, None),  # an earlier value again
]


def v2_file(path: Path) -> Path:
    """A schema-2 file, written the way releases with schema 2 wrote it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for statement in _statements(_SCHEMA_V2):
        conn.execute(statement)
    conn.execute("CREATE TABLE amsha_schema (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO amsha_schema (version) VALUES (2)")
    manifest: dict[str, tuple[bytes, int]] = {}
    for i, (data, run) in enumerate(V2_HISTORY, start=1):
        encoded = [(k, _encode(v)) for k, v in data.items()]
        manifest = _write_v2(conn, "st", i, manifest, encoded, 2000.0 + i, run, f"step {i}")
    _write_v2(conn, "other", 1, {}, [("x", _encode([1, 2]))], 7.0, None, "")
    record = RunRecord("run-a", status="FAILED", created_at=1900.0, error="boom")
    conn.execute(
        "INSERT INTO runs (run_id, created_at, status, body) VALUES (?, ?, ?, ?)",
        ("run-a", 1900.0, "FAILED", _encode(record.to_dict())),
    )
    conn.execute("INSERT INTO events (run_id, seq, body) VALUES ('run-a', 0, ?)", (_encode({"seq": 0, "kind": "k"}),))
    conn.execute("COMMIT")
    conn.close()
    return path


def exact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def test_schema_2_is_migrated_forward(tmp_path: Path) -> None:
    path = v2_file(tmp_path / "v2.db")
    store = SqliteStore(path)
    assert store.schema_version() == SCHEMA_VERSION == 4
    for i, (data, run) in enumerate(V2_HISTORY, start=1):
        snap = store.get_state("st", i)
        assert exact(snap.data) == exact(data), i
        assert (snap.created_at, snap.run_id, snap.reason) == (2000.0 + i, run, f"step {i}")
    assert store.get_state("other").data == {"x": [1, 2]}
    assert store.get_run("run-a").error == "boom"
    assert store.read_events("run-a") == [{"seq": 0, "kind": "k"}]
    conn = sqlite3.connect(path)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not tables & {"blobs", "state_keys", "state_versions_2"}
    # Version 1 is a snapshot; the big value is not stored again by the versions that kept it.
    assert conn.execute("SELECT base FROM state_versions WHERE state_id = 'st' AND version = 1").fetchone() == (1,)
    assert conn.execute("SELECT count(*) FROM state_versions WHERE length(data) > 50000").fetchone()[0] <= 3
    conn.close()
    # A normal store from now on: writes go on, delete_run rewrites what built on run-a's rows.
    assert store.put_state("st", {"research": BIG}, expected_version=5) == 6
    store.delete_run("run-a")
    assert [v.version for v in store.list_versions("st")] == [2, 3, 5, 6]
    for i in (2, 3, 5):
        assert exact(store.get_state("st", i).data) == exact(V2_HISTORY[i - 1][0]), i
    store.close()


def test_failed_migration_leaves_the_file_at_schema_2(tmp_path: Path) -> None:
    path = v2_file(tmp_path / "v2.db")
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM blobs WHERE length(data) < 10")  # a value a version refers to is gone
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match=r"from schema 2 to 3 failed .*is missing.*left at schema 2"):
        SqliteStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM amsha_schema").fetchone()[0] == 2
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"blobs", "state_keys", "state_versions"} <= tables and "state_versions_2" not in tables
    assert conn.execute("SELECT count(*) FROM state_versions").fetchone()[0] == len(V2_HISTORY) + 1
    conn.close()


def test_schema_3_is_migrated_forward(tmp_path: Path) -> None:
    """A schema-3 file (no run control) opens as schema 4: its runs read back unchanged, have
    no lease (so are never reported LOST), and can be cancelled and claimed as usual."""
    from amsha.state import RunOwner, RunRecord

    path = tmp_path / "v3.db"
    store = SqliteStore(path)
    store.put_run(RunRecord("old-run", status="RUNNING", tasks=["a"], created_at=1000.0))
    store.put_run(RunRecord("queued", status="PENDING", created_at=1001.0))
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE run_control")
    conn.execute("UPDATE amsha_schema SET version = 3")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    assert store.schema_version() == 4
    old = store.get_run("old-run")
    assert (old.status, old.tasks, old.owner, old.lease_expires_at) == ("RUNNING", ["a"], None, None)
    assert old.observed().status == "RUNNING"
    assert store.request_cancel("queued", "stop") == "cancelled"
    assert store.get_run("queued").status == "CANCELLED"
    control = store.claim_run(RunRecord("new", status="RUNNING"), RunOwner.here(), 5.0)
    assert control.lease_expires_at is not None
    store.close()
