"""A file written with the older schema 1 (a whole JSON document per state version) opens,
is migrated forward in place, and reads back exactly."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from amsha.errors import StateError
from amsha.state import RunRecord
from amsha_sqlite.store import SCHEMA_VERSION, SqliteStore

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
    assert store.schema_version() == SCHEMA_VERSION == 2
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
    # The big value that four versions held is stored once now.
    conn = sqlite3.connect(v1_file)
    assert conn.execute("SELECT count(*) FROM blobs WHERE length(data) > 50000").fetchone()[0] == 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'states'").fetchone() is None
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
