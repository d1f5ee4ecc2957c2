"""Several processes on one real file at once: no lost write, conflicts reported as
VersionConflictError, and never SQLite's 'database is locked' reaching the caller."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import _workers
import pytest
from amsha.errors import StateError
from amsha.state import RunStatus
from amsha_sqlite.store import SqliteStore

CTX = multiprocessing.get_context("spawn")


def run_workers(target: Any, n: int, *args: Any) -> list[tuple[str, int, Any]]:
    barrier = CTX.Barrier(n)
    out = CTX.Queue()
    procs = [CTX.Process(target=target, args=(args[0], w, *args[1:], barrier, out)) for w in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    errors = [r for r in results if r[0] == "error"]
    assert not errors, "\n".join(str(e[2]) for e in errors)
    return results


def test_processes_writing_different_runs_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "many.db")
    SqliteStore(path).close()
    workers, runs = 6, 15
    run_workers(_workers.own_runs, workers, path, runs)
    store = SqliteStore(path)
    records = store.list_runs(limit=1000)
    assert len(records) == workers * runs
    assert {r.status for r in records} == {RunStatus.SUCCEEDED}
    for w in range(workers):
        for r in range(runs):
            run_id = f"w{w}-r{r}"
            assert [e["seq"] for e in store.read_events(run_id)] == list(range(20))
            assert store.get_state(run_id).data == {"batch": 4, "w": w}
            assert [v.version for v in store.list_versions(run_id)] == [1, 2, 3, 4, 5]
    assert store._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


def test_processes_writing_one_state_report_conflicts_and_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    store = SqliteStore(path)
    store.put_state("counter", {"n": 0}, expected_version=0)
    workers, increments = 6, 25
    results = run_workers(_workers.shared_counter, workers, path, increments)
    final = store.get_state("counter")
    # Every increment landed exactly once: none lost, none applied twice.
    assert final.data["n"] == workers * increments
    assert final.version == workers * increments + 1
    assert len(store.list_versions("counter")) == workers * increments + 1
    assert sum(conflicts for _, _, conflicts in results) > 0  # they did collide, and were told
    events = store.read_events("shared-run")
    assert len(events) == workers * increments
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    store.close()


def test_one_winner_when_processes_write_the_same_version(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")
    store = SqliteStore(path)
    store.put_state("race", {"winner": None}, expected_version=0)
    results = run_workers(_workers.same_version, 5, path)
    won = [r for r in results if r[0] == "won"]
    lost = [r for r in results if r[0] == "conflict"]
    assert len(won) == 1 and len(lost) == 4
    assert all(detail == (1, 2) for _, _, detail in lost)
    assert store.get_state("race").data == {"winner": won[0][1]}
    assert store.get_state("race").version == 2
    store.close()


def test_a_writer_waits_for_a_long_transaction_and_a_timeout_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    SqliteStore(path).close()
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: blocker.execute("COMMIT"))
    release.start()
    patient = SqliteStore(path, timeout_s=10)
    started = time.monotonic()
    assert patient.put_state("s", {"a": 1}, expected_version=0) == 1
    assert time.monotonic() - started >= 0.4
    release.join()
    blocker.execute("BEGIN IMMEDIATE")
    hasty = SqliteStore(path, timeout_s=0.2)
    with pytest.raises(StateError) as info:
        hasty.put_state("s", {"a": 2}, expected_version=1)
    message = str(info.value)
    assert "stayed locked by another connection for more than 0.2 s" in message
    assert "database is locked" not in message
    assert not isinstance(info.value, sqlite3.Error)
    # Reads are not blocked by the writer (WAL).
    assert hasty.get_state("s").data == {"a": 1}
    blocker.execute("ROLLBACK")
    blocker.close()
    assert hasty.put_state("s", {"a": 2}, expected_version=1) == 2
