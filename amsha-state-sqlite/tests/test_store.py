"""The sqlite store on real files: storage by change, exact round trips, retention, threads,
fork and spawn, and clear errors for files it cannot use."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from amsha import ExecutionSession, get_secret, load_plugins
from amsha.errors import (
    ConfigError,
    NonJSONValueError,
    SchemaVersionError,
    StateError,
    StateNotFoundError,
    VersionConflictError,
)
from amsha.state import RunRecord
from amsha_sqlite.store import MAX_DEPTH, SCHEMA_VERSION, SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


def layout(path: Path) -> dict[str, int]:
    """Rows, snapshot rows and stored bytes (values, removals, orders) of every state version."""
    conn = sqlite3.connect(path)
    try:
        rows, snapshots, stored = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE base = version), "
            "coalesce(sum(length(data) + coalesce(length(removed), 0) + coalesce(length(ord), 0)), 0) "
            "FROM state_versions"
        ).fetchone()
        return {"rows": rows, "snapshots": snapshots, "bytes": stored}
    finally:
        conn.close()


# ---- the file and its settings ---------------------------------------------------------------


def test_file_is_created_in_wal_mode_with_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "amsha.db"
    store = SqliteStore(path, synchronous="FULL")
    store.put_state("s", {"a": 1}, expected_version=0)
    assert path.is_file()
    assert store.journal_mode == "wal"
    assert store.schema_version() == SCHEMA_VERSION
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    store.close()


def test_selected_by_config_relative_to_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "amsha.yaml").write_text("state: {name: sqlite, options: {path: data/runs.db, timeout_s: 5}}\n")
    with ExecutionSession(tmp_path / "amsha.yaml") as session:
        assert isinstance(session.store.inner, SqliteStore)
        assert session.store.path == tmp_path / "data" / "runs.db"
        assert session.store.timeout_s == 5
    assert (tmp_path / "data" / "runs.db").is_file()
    info = next(p for p in load_plugins(refresh=True).plugins if p.name == "sqlite")
    assert ("state_store", "sqlite") in info.registers


def test_default_path_is_amsha_db_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "amsha.yaml").write_text("state: sqlite\n")
    with ExecutionSession(tmp_path / "amsha.yaml") as session:
        assert session.store.path == tmp_path / "amsha.db"


def test_unknown_option_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ExecutionSession({"state": {"name": "sqlite", "options": {"pth": "x.db"}}})
    assert "state.options.pth" in str(info.value)
    with pytest.raises(ConfigError) as info:
        ExecutionSession({"state": {"name": "sqlite", "options": {"synchronous": "OFF"}}})
    assert "state.options.synchronous" in str(info.value)


def test_memory_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="memory"):
        SqliteStore(":memory:")


# ---- storage grows with the change ----------------------------------------------------------


def test_a_version_stores_only_the_keys_that_changed(store: SqliteStore) -> None:
    big = {f"k{i}": f"{i}:" + "x" * 10_000 for i in range(100)}  # about 1 MB
    store.put_state("s", big, expected_version=0)
    first = layout(store.path)
    assert first["rows"] == first["snapshots"] == 1 and 1_000_000 < first["bytes"] < 1_010_000
    state = dict(big)
    for v in range(1, 51):
        state[f"k{v % 7}"] = f"changed {v}"
        store.put_state("s", state, expected_version=v)
    after = layout(store.path)
    # One small delta row per version, never the whole state again.
    assert after["rows"] == 51 and after["snapshots"] == 1
    assert after["bytes"] - first["bytes"] < 50 * 40
    assert store.get_state("s").data == state
    assert store.get_state("s", 1).data == big
    # A version that rewrites most of the state is stored whole, so reads stay short.
    store.put_state("s", {k: v + "!" for k, v in state.items()}, expected_version=51)
    assert layout(store.path)["snapshots"] == 2


def test_reads_build_on_a_bounded_chain(store: SqliteStore) -> None:
    state = {f"k{i}": f"{i}:" + "y" * 1_000 for i in range(20)}  # about 20 KB
    for v in range(250):
        state = {**state, f"k{v % 20}": f"{v}:" + "z" * 1_000}  # about 5% of the state changes
        store.put_state("s", state, expected_version=v)
    conn = sqlite3.connect(store.path)
    chains = conn.execute("SELECT version, base, depth, chain FROM state_versions ORDER BY version").fetchall()
    conn.close()
    # A snapshot once the deltas since the last one add up to the state's size (about every 20
    # versions here), and never more than MAX_DEPTH deltas after one.
    assert all(v - base == depth <= MAX_DEPTH for v, base, depth, _ in chains)
    assert all(chain <= 21_000 for *_, chain in chains)
    snapshots = [v for v, base, _, _ in chains if v == base]
    assert 10 <= len(snapshots) <= 16, snapshots
    assert store.get_state("s").data == state
    assert store.get_state("s", 137).data["k16"].startswith("136:")


def test_every_version_reads_back_exactly_with_key_order(store: SqliteStore) -> None:
    history = [
        {"a": 1, "b": [1, 2], "c": {"d": None}},
        {"a": 1, "b": [1, 2, 3], "c": {"d": None}},  # b changed
        {"b": [1, 2, 3], "c": {"d": None}},  # a removed
        {"b": [1, 2, 3], "c": {"d": None}, "a": "back"},  # a back, at the end
        {"z": 0, "b": [1, 2, 3], "c": {"d": None}, "a": "back"},  # new key first
        {"a": "back", "c": {"d": None}, "b": [1, 2, 3], "z": 0},  # reordered only
        {},  # emptied
        {"a": 1},
    ]
    for i, data in enumerate(history):
        assert store.put_state("s", data, expected_version=i) == i + 1
    for i, data in enumerate(history, start=1):
        got = store.get_state("s", i).data
        assert got == data and list(got) == list(data), i
    assert [v.version for v in store.list_versions("s")] == list(range(1, len(history) + 1))


def test_unchanged_state_adds_a_version_but_no_values(store: SqliteStore) -> None:
    store.put_state("s", {"a": "x" * 1000}, expected_version=0)
    store.put_state("s", {"a": "x" * 1000}, expected_version=1)
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT data, removed, ord FROM state_versions WHERE version = 2").fetchone() == (
        b"{}",
        None,
        None,
    )
    conn.close()
    assert store.get_state("s", 2).data == {"a": "x" * 1000}


def test_conflict_names_both_versions_and_writes_nothing(store: SqliteStore) -> None:
    store.put_state("s", {"a": 1}, expected_version=0)
    store.put_state("s", {"a": 2}, expected_version=1)
    with pytest.raises(VersionConflictError) as info:
        store.put_state("s", {"a": 99}, expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert "version 1" in str(info.value) and "version 2" in str(info.value)
    with pytest.raises(VersionConflictError):
        store.put_state("new", {"a": 1}, expected_version=3)
    assert store.get_state("s").data == {"a": 2}
    assert layout(store.path)["rows"] == 2
    with pytest.raises(StateNotFoundError, match="latest is 2"):
        store.get_state("s", 3)


def test_the_latest_version_held_in_memory_never_hides_another_writer(tmp_path: Path) -> None:
    a, b = SqliteStore(tmp_path / "s.db"), SqliteStore(tmp_path / "s.db")
    a.put_state("s", {"k": "from a", "big": "x" * 5000}, expected_version=0, run_id="run-a")
    assert a.get_state("s").data["k"] == "from a"
    assert b.put_state("s", {"k": "from b", "big": "x" * 5000}, expected_version=1, run_id="run-b") == 2
    assert a.get_state("s").data["k"] == "from b"  # a held version 1; the file says 2
    with pytest.raises(VersionConflictError):
        a.put_state("s", {"k": "stale"}, expected_version=1)
    # Version 2 deleted and written again by b, with other data: a sees the new row.
    assert a.get_state("s", 2).data["k"] == "from b"
    b.delete_run("run-b")
    assert b.put_state("s", {"k": "b again"}, expected_version=1, run_id="run-c") == 2
    assert a.get_state("s").data == {"k": "b again"}
    assert a.get_state("s", 2).data == {"k": "b again"}
    # a writes on top of a version it did not write (it reads it from the file to find the delta).
    assert a.put_state("s", {"k": "b again", "more": 1}, expected_version=2) == 3
    assert b.get_state("s", 3).data == {"k": "b again", "more": 1}
    a.close()
    b.close()


def test_callers_never_share_objects_with_the_store(store: SqliteStore) -> None:
    data = {"list": [1, {"x": "y"}], "text": "t"}
    store.put_state("s", data, expected_version=0)
    data["list"].append("changed after put")  # the caller's object, mutated after put
    first = store.get_state("s").data
    assert first == {"list": [1, {"x": "y"}], "text": "t"}
    first["list"][1]["x"] = "changed after get"  # a returned object, mutated
    assert store.get_state("s").data == {"list": [1, {"x": "y"}], "text": "t"}
    assert store.get_state("s").data is not store.get_state("s").data


# ---- round trips -----------------------------------------------------------------------------


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for i in range(levels):
        value = {"level": i, "next": [value]} if i % 2 else [value, i]
    return value


@pytest.mark.parametrize(
    "data",
    [
        {"text": "héllo ✓ 你好 🎉 \u0000 nul \u2028 sep", "keys ✓": {"ключ": "значение"}, "lone": "\ud800 surrogate"},
        {"deep": deep(160)},  # about 240 levels: MAX_JSON_DEPTH is 256
        {"floats": [0.1, -0.0, 1e308, 5e-324, 2**63, -(2**70)], "bools": [True, False, None]},
    ],
    ids=["unicode", "deep", "numbers"],
)
def test_json_round_trips_exactly(store: SqliteStore, data: dict[str, Any]) -> None:
    store.put_state("rt", data, expected_version=0)
    store.put_state("rt", {**data, "extra": 1}, expected_version=1)
    assert store.get_state("rt", 1).data == data
    got = store.get_state("rt", 2).data
    assert json.dumps(got, sort_keys=True) == json.dumps({**data, "extra": 1}, sort_keys=True)


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), {"nested": [1, float("-inf")]}, datetime.date(2026, 1, 1), {1: "int key"}],
    ids=["nan", "inf", "nested-inf", "date", "int-key"],
)
def test_non_json_values_are_refused_naming_the_key(store: SqliteStore, bad: Any) -> None:
    with pytest.raises(NonJSONValueError) as info:
        store.put_state("s", {"ok": None, "bad": bad}, expected_version=0)
    assert "'bad" in str(info.value)
    with pytest.raises(StateNotFoundError):
        store.get_state("s")


def test_ten_megabyte_state_round_trips(store: SqliteStore) -> None:
    data = {f"chunk{i}": [f"{i}-{j}-" + "ü" * 200 for j in range(500)] for i in range(50)}
    assert len(json.dumps(data, ensure_ascii=False).encode()) > 10_000_000
    store.put_state("big", data, expected_version=0)
    data["chunk3"] = ["changed"]
    store.put_state("big", data, expected_version=1)
    assert store.get_state("big").data == data
    assert store.get_state("big", 1).data["chunk3"][0].startswith("3-0-")
    # The second version added one small value, not another 10 MB.
    store.close()  # the last connection to close checkpoints the write-ahead log into the file
    assert not Path(f"{store.path}-wal").exists()
    assert 10_000_000 < store.path.stat().st_size < 12_000_000


def test_secrets_are_scrubbed_from_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "sk-canary-7f3a9c1e5b"
    monkeypatch.setenv("AMSHA_SQLITE_TEST_CANARY", canary)
    get_secret("AMSHA_SQLITE_TEST_CANARY")  # registers it for scrubbing
    store = SqliteStore(tmp_path / "s.db")
    store.put_state("s", {"note": f"key is {canary}"}, expected_version=0)
    store.put_run(RunRecord("r", inputs={"k": canary}))
    store.append_events("r", [{"seq": 0, "kind": "k", "data": {"text": canary}}])
    assert canary not in json.dumps(store.get_state("s").data)
    store.close()
    for path in tmp_path.iterdir():
        assert canary.encode() not in path.read_bytes(), path


# ---- runs, events and retention -------------------------------------------------------------


def test_events_are_append_only(store: SqliteStore) -> None:
    store.append_events("r", [{"seq": 0, "kind": "a"}, {"seq": 1, "kind": "b"}])
    with pytest.raises(StateError, match="append-only"):
        store.append_events("r", [{"seq": 2, "kind": "c"}, {"seq": 1, "kind": "overwrite"}])
    assert [e["kind"] for e in store.read_events("r")] == ["a", "b"]
    with pytest.raises(StateError, match="seq"):
        store.append_events("r", [{"kind": "no seq"}])


def test_list_runs_newest_first_with_limit(store: SqliteStore) -> None:
    for i in range(5):
        store.put_run(RunRecord(f"r{i}", created_at=1000.0 + i))
    assert [r.run_id for r in store.list_runs(3)] == ["r4", "r3", "r2"]


def test_delete_run_keeps_later_versions_exact_and_vacuum_shrinks(store: SqliteStore) -> None:
    payload = "p" * 200_000
    states = [
        ({"a": payload + "0", "b": 1}, "keep-1"),
        ({"a": payload + "1", "b": 2, "c": "new"}, "gone"),  # changes a, b; adds c
        ({"a": payload + "1", "b": 2, "c": "new", "d": 4}, "keep-2"),  # relies on the gone version's rows
        ({"b": 3}, "gone"),
        ({"b": 3, "e": payload + "5"}, "keep-3"),
    ]
    for i, (data, run) in enumerate(states):
        store.put_state("s", data, expected_version=i, run_id=run)
    store.put_run(RunRecord("gone"))
    store.append_events("gone", [{"seq": 0, "kind": "k"}])
    store.put_state("other", {"x": payload + "other"}, expected_version=0, run_id="gone")
    store.vacuum()
    size = store.size_bytes()
    store.delete_run("gone")
    assert [v.version for v in store.list_versions("s")] == [1, 3, 5]
    assert store.list_versions("other") == []
    for version in (1, 3, 5):
        assert store.get_state("s", version).data == states[version - 1][0], version
    with pytest.raises(StateNotFoundError):
        store.get_state("s", 2)
    assert store.read_events("gone") == []
    # The value only the deleted versions held is gone too; vacuum gives the space back.
    assert store.vacuum() > 150_000
    assert store.size_bytes() < size - 150_000
    # The next write goes on from the latest kept version.
    assert store.put_state("s", {"b": 6}, expected_version=5) == 6


# ---- threads, fork and spawn ----------------------------------------------------------------


def test_many_threads_share_one_store(store: SqliteStore) -> None:
    errors: list[BaseException] = []
    conflicts = [0]

    def work(n: int) -> None:
        try:
            for i in range(20):
                store.put_state(f"own-{n}", {"i": i}, expected_version=i)
                store.append_events(f"run-{n}", [{"seq": i, "kind": "k"}])
                while True:  # a shared counter with optimistic retries
                    snap = store.get_state("shared") if store.list_versions("shared") else None
                    version = snap.version if snap else 0
                    value = snap.data["n"] if snap else 0
                    try:
                        store.put_state("shared", {"n": value + 1}, expected_version=version)
                        break
                    except VersionConflictError:
                        conflicts[0] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.get_state("shared").data == {"n": 160}
    assert len(store.list_versions("shared")) == 160
    for n in range(8):
        assert store.get_state(f"own-{n}").data == {"i": 19}
        assert [e["seq"] for e in store.read_events(f"run-{n}")] == list(range(20))
    # Connections of finished threads are closed when a new thread opens one.
    done = threading.Thread(target=lambda: store.read_events("x"))
    done.start()
    done.join()
    assert len(store._conns) <= 2


def _child_writes(store: SqliteStore, state_id: str) -> None:
    version = store.get_state(state_id).version
    store.put_state(state_id, {"from": "child", "pid": os.getpid()}, expected_version=version)
    store.append_events("child-run", [{"seq": 0, "kind": "child"}])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_store_used_after_fork_and_in_spawned_children(store: SqliteStore, method: str) -> None:
    store.put_state("s", {"from": "parent"}, expected_version=0)
    assert store.get_state("s").data == {"from": "parent"}  # the parent's connection is open
    ctx = multiprocessing.get_context(method)
    proc = ctx.Process(target=_child_writes, args=(store, "s"))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    snap = store.get_state("s")
    assert snap.version == 2 and snap.data["from"] == "child" and snap.data["pid"] != os.getpid()
    assert store.put_state("s", {"from": "parent again"}, expected_version=2) == 3
    assert store.read_events("child-run") == [{"seq": 0, "kind": "child"}]
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get_state("s").data == {"from": "parent again"}
    clone.close()


# ---- files it cannot use --------------------------------------------------------------------


def test_non_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(StateError) as info:
        SqliteStore(path)
    assert str(path) in str(info.value) and "not an SQLite database" in str(info.value)
    assert not isinstance(info.value, sqlite3.Error)
    assert path.read_text().startswith("these are my notes")  # left as it was
    with pytest.raises(StateError, match="is a folder"):
        SqliteStore(tmp_path)


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    store = SqliteStore(path)
    for i in range(50):
        store.put_state(f"s{i}", {"v": "x" * 5000}, expected_version=0)
    store.close()
    raw = bytearray(path.read_bytes())
    raw[4096 : len(raw)] = b"\xde\xad\xbe\xef" * ((len(raw) - 4096) // 4)  # every page after the first
    path.write_bytes(bytes(raw))
    with pytest.raises(StateError) as info:
        reopened = SqliteStore(path)
        reopened.get_state("s3")
    assert "is not an SQLite database or is damaged" in str(info.value), str(info.value)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE amsha_schema SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}"):
        SqliteStore(path)


READ_ONLY_PROBE = """
import ctypes, os, sys
if os.geteuid() == 0:
    # Root ignores file permissions: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this
    # process's effective capabilities, so the folder's mode applies to it as to anyone.
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()
    assert libc.capget(ctypes.byref(header), data) == 0
    data[0].effective &= ~((1 << 1) | (1 << 2))
    assert libc.capset(ctypes.byref(header), data) == 0
    try:
        open(os.path.join(os.path.dirname(sys.argv[1]), "probe"), "w")
    except PermissionError:
        pass
    else:
        sys.exit("the folder is still writable")
from amsha.errors import StateError
from amsha_sqlite.store import SqliteStore
try:
    SqliteStore(sys.argv[1]).get_state("s")
except StateError as exc:
    print("StateError:", exc)
except Exception as exc:
    print("OTHER:", type(exc).__name__, exc)
else:
    print("OPENED")
"""


@pytest.fixture
def read_only_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are private to the owner, and the probe may
    # run as another user.
    folder = Path(tempfile.mkdtemp(prefix="amsha-ro-"))
    try:
        yield folder
    finally:
        os.chmod(folder, 0o755)
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


def test_read_only_folder_is_a_clear_error(read_only_dir: Path) -> None:
    existing = read_only_dir / "existing.db"
    store = SqliteStore(existing)
    store.put_state("s", {"a": 1}, expected_version=0)
    store.close()
    os.chmod(existing, 0o444)
    os.chmod(read_only_dir, 0o555)
    for target in (read_only_dir / "new.db", existing):
        proc = subprocess.run(
            [sys.executable, "-c", READ_ONLY_PROBE, str(target)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout.strip()
        assert out.startswith("StateError: sqlite store"), out
        assert str(target) in out and ("writable" in out or "read-only" in out), out
        assert "Traceback" not in proc.stderr
