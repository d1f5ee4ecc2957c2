"""Many runs on one database: 250 background runs on 4 worker processes, and 250 on a Dask
``LocalCluster`` of 4 worker processes, all writing to one schema. None lost, none run
twice, every run's events gap-free; a worker killed with SIGKILL in the middle of a run
leaves that run LOST (its lease expires), and the other runs end as they should."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from amsha import ExecutionSession, ExecutionState
from amsha.errors import RunLostError
from amsha.state import RunStatus
from amsha_postgres.store import PostgresStore
from amsha_postgres.testing import PostgresServer

RUNS = 250
TEXT = "one two three four five six"


def config(schema: str, token_delay_s: float = 0.0, text: str = TEXT) -> dict[str, Any]:
    return {
        "provider": {
            "name": "scripted",
            "options": {"token_delay_s": token_delay_s, "responses": [{"match": "Write", "text": text}]},
        },
        "state": {
            "name": "postgres",
            "options": {"dsn_env": "AMSHA_TEST_PG_DSN", "schema": schema, "pool_max_size": 4},
        },
        "runs": {"lease_s": 3.0},
        "agents": {"writer": {"role": "Writer", "goal": "Write"}},
        "tasks": {"write": {"description": "Write six words.", "agent": "writer"}},
    }


@pytest.fixture
def dsn_env(pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMSHA_TEST_PG_DSN", pg_server.dsn())


def check_runs(store: PostgresStore, prefix: str, expected: int) -> set[int]:
    """Every run of ``prefix`` SUCCEEDED once, gap-free; returns the owners' pids."""
    records = [r for r in store.list_runs(limit=10 * expected) if r.run_id.startswith(prefix)]
    assert len(records) == expected, f"{len(records)} runs stored, {expected} started"
    assert len({r.run_id for r in records}) == expected
    assert {r.status for r in records} == {RunStatus.SUCCEEDED}
    pids = set()
    for record in records:
        events = store.read_events(record.run_id)
        kinds = [e["kind"] for e in events]
        assert [e["seq"] for e in events] == list(range(len(events))), record.run_id
        assert kinds.count("run.started") == 1 and kinds.count("run.finished") == 1, record.run_id  # ran once
        assert "".join(e["data"]["text"] for e in events if e["kind"] == "llm.token") == TEXT
        assert [v.version for v in store.list_versions(f"s-{record.run_id}")] == [1]
        assert record.owner is not None
        pids.add(record.owner["pid"])
    return pids


def start_victim(schema: str, executor: concurrent.futures.Executor) -> tuple[ExecutionSession, Any]:
    slow = ExecutionSession(config(schema, 0.1, " ".join(["slow"] * 200)), executor=executor)
    handle = slow.run(["write"], mode="background", run_id="victim", state=ExecutionState(state_id="s-victim"))
    return slow, handle


def kill_when_streaming(store: PostgresStore) -> float:
    deadline = time.monotonic() + 120
    while not any(e["kind"] == "llm.token" for e in store.read_events("victim")):
        assert time.monotonic() < deadline, "the victim run never started streaming"
        time.sleep(0.05)
    pid = store.get_run("victim").owner["pid"]
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def wait_lost(store: PostgresStore, handle: Any, killed: float) -> None:
    while store.get_run("victim").observed().status != RunStatus.LOST:
        assert time.monotonic() - killed < 3.0 + 5, "the killed run was not LOST within lease_s + 5 s"
        time.sleep(0.1)
    with pytest.raises(RunLostError):
        handle.result(timeout=30)
    assert handle.status() == RunStatus.LOST


def run_many(schema: str, executor: concurrent.futures.Executor, prefix: str) -> list[Any]:
    session = ExecutionSession(config(schema), executor=executor)
    handles = [
        session.run(
            ["write"], mode="background", run_id=f"{prefix}{i}", state=ExecutionState(state_id=f"s-{prefix}{i}")
        )
        for i in range(RUNS)
    ]
    return [session, handles]


def finish(session: ExecutionSession, handles: list[Any]) -> None:
    for handle in handles:
        assert handle.result(timeout=600).status == RunStatus.SUCCEEDED
    # The starting process streams worker runs from the store: a sample, in full.
    for handle in handles[:: RUNS // 5]:
        events = list(handle.stream())
        assert [e.seq for e in events] == list(range(len(events)))
        assert "".join(e.text for e in events if e.kind == "llm.token") == TEXT
    session.close()


def test_four_worker_processes_250_runs_and_a_killed_worker(
    dsn_env: None, schema: str, make_store: Callable[..., PostgresStore]
) -> None:
    store = make_store()
    spawn = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with (
        concurrent.futures.ProcessPoolExecutor(4, mp_context=spawn) as pool,
        concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as victim_pool,
    ):
        slow, victim = start_victim(schema, victim_pool)
        session, handles = run_many(schema, pool, "p-")
        killed = kill_when_streaming(store)
        finish(session, handles)
        wait_lost(store, victim, killed)
        slow.close()
    pids = check_runs(store, "p-", RUNS)
    assert 2 <= len(pids) <= 4, pids
    print(f"process pool: {RUNS} runs in {time.monotonic() - started:.1f} s")


def test_dask_local_cluster_of_four_250_runs_and_a_killed_worker(
    dsn_env: None, schema: str, make_store: Callable[..., PostgresStore]
) -> None:
    import distributed  # a test dependency (dask[distributed]): missing is a failure, not a skip

    store = make_store()
    started = time.monotonic()
    with (
        distributed.LocalCluster(n_workers=4, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        executor = client.get_executor()
        slow, victim = start_victim(schema, executor)
        session, handles = run_many(schema, executor, "d-")
        killed = kill_when_streaming(store)
        wait_lost(store, victim, killed)
        finish(session, handles)
        slow.close()
    pids = check_runs(store, "d-", RUNS)
    assert 2 <= len(pids) <= 5, pids  # the killed worker's replacement may take runs too
    print(f"dask: {RUNS} runs in {time.monotonic() - started:.1f} s")
