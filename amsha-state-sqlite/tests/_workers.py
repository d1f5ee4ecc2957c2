"""Worker functions run in spawned processes by the multiprocess tests (importable by name)."""

from __future__ import annotations

import traceback
from typing import Any

from amsha.errors import VersionConflictError
from amsha.state import RunRecord, RunStatus
from amsha_sqlite.store import SqliteStore


def own_runs(path: str, worker: int, runs: int, barrier: Any, out: Any) -> None:
    """Write ``runs`` runs of its own: records, event batches and state versions."""
    try:
        store = SqliteStore(path)
        barrier.wait()
        for r in range(runs):
            run_id = f"w{worker}-r{r}"
            store.put_run(RunRecord(run_id, status=RunStatus.RUNNING, created_at=float(r)))
            for batch in range(5):
                store.append_events(run_id, [{"seq": batch * 4 + i, "kind": "k", "w": worker} for i in range(4)])
                store.put_state(run_id, {"batch": batch, "w": worker}, expected_version=batch, run_id=run_id)
            store.put_run(RunRecord(run_id, status=RunStatus.SUCCEEDED, created_at=float(r), outputs={"w": worker}))
        store.close()
        out.put(("ok", worker, 0))
    except BaseException:
        out.put(("error", worker, traceback.format_exc()))


def shared_counter(path: str, worker: int, increments: int, barrier: Any, out: Any) -> None:
    """Add one to a shared state ``increments`` times: load, write with the version held,
    and on a conflict load again and retry. Also writes one shared run's record and events."""
    try:
        store = SqliteStore(path)
        conflicts = 0
        barrier.wait()
        for i in range(increments):
            while True:
                snap = store.get_state("counter")
                try:
                    store.put_state("counter", {"n": snap.data["n"] + 1, "last": worker}, expected_version=snap.version)
                    break
                except VersionConflictError as exc:
                    assert exc.expected == snap.version and exc.actual > snap.version, exc
                    conflicts += 1
            store.append_events("shared-run", [{"seq": worker * 1000 + i, "kind": "k", "w": worker}])
            store.put_run(RunRecord("shared-run", status=RunStatus.RUNNING, outputs={"last": worker}))
        store.close()
        out.put(("ok", worker, conflicts))
    except BaseException:
        out.put(("error", worker, traceback.format_exc()))


def same_version(path: str, worker: int, barrier: Any, out: Any) -> None:
    """Load the latest version, wait until every worker holds it, then write."""
    try:
        store = SqliteStore(path)
        snap = store.get_state("race")
        barrier.wait()
        try:
            store.put_state("race", {"winner": worker}, expected_version=snap.version)
            out.put(("won", worker, snap.version))
        except VersionConflictError as exc:
            out.put(("conflict", worker, (exc.expected, exc.actual)))
        store.close()
    except BaseException:
        out.put(("error", worker, traceback.format_exc()))
