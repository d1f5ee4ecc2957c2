"""Faults on a real server: a connection cut at COMMIT (the write may or may not have
committed), the server restarted in the middle of a run, connections terminated by the
server, a server down for longer than the retry budget, statement timeouts, serialization
failures, and a full disk."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from amsha import ExecutionSession, ExecutionState
from amsha.errors import StateError, VersionConflictError
from amsha.state import RunOwner, RunRecord, RunStatus
from amsha_postgres.store import PostgresStore
from amsha_postgres.testing import PostgresServer
from conftest import Proxy, proxy_dsn

# ---- a write whose commit may or may not have happened ------------------------------------------


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_connection_cut_at_commit_is_resolved_without_duplicates_or_losses(
    pg_server: PostgresServer, proxy: Proxy, make_store: Callable[..., PostgresStore], when: str
) -> None:
    """``after``: COMMIT reached the server and ran, its answer never came back: the retry
    finds its own write. ``before``: COMMIT never reached it: the retry writes."""
    store = make_store(proxy_dsn(pg_server, proxy))
    check = make_store()
    owner = RunOwner.here()
    store.claim_run(RunRecord("r", status=RunStatus.RUNNING), owner, 30)

    proxy.cut = when
    assert store.put_state("s", {"a": 1}, expected_version=0, run_id="r", owner=owner.id) == 1
    assert proxy.cuts == 1
    assert [v.version for v in check.list_versions("s")] == [1]
    assert store.put_state("s", {"a": 2}, expected_version=1) == 2  # the cache is right too

    proxy.cut = when
    store.append_events("r", [{"seq": 0, "kind": "k"}, {"seq": 1, "kind": "k"}], owner=owner.id)
    assert proxy.cuts == 2
    assert [e["seq"] for e in check.read_events("r")] == [0, 1]
    with pytest.raises(StateError, match="append-only"):
        store.append_events("r", [{"seq": 1, "kind": "other"}])  # a real overlap is still refused

    proxy.cut = when
    assert store.request_cancel("r", "stop") == "requested"
    assert proxy.cuts == 3 and check.read_control("r").cancel_reason == "stop"

    store.put_run(RunRecord("q", status=RunStatus.PENDING))
    proxy.cut = when
    assert store.request_cancel("q", "not needed") == "cancelled"
    assert proxy.cuts == 4 and check.get_run("q").status == RunStatus.CANCELLED


# ---- the server goes away -----------------------------------------------------------------------

WORDS = " ".join(f"w{i}" for i in range(60))


def config(schema: str, delay: float, budget: float) -> dict[str, Any]:
    return {
        "provider": {
            "name": "scripted",
            "options": {"token_delay_s": delay, "responses": [{"match": "Write", "text": WORDS}]},
        },
        "state": {
            "name": "postgres",
            "options": {"dsn_env": "AMSHA_TEST_PG_DSN", "schema": schema, "retry_budget_s": budget},
        },
        "agents": {"writer": {"role": "Writer", "goal": "Write words"}},
        "tasks": {
            "one": {"description": "Write part one.", "agent": "writer"},
            "two": {"description": "Write part two.", "agent": "writer", "context": ["one"]},
            "three": {"description": "Write part three.", "agent": "writer", "context": ["two"]},
        },
    }


@pytest.fixture
def dsn_env(pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMSHA_TEST_PG_DSN", pg_server.dsn())


@pytest.fixture
def restarts(pg_server: PostgresServer) -> Iterator[None]:
    yield
    if not pg_server.started:
        pg_server.start()


def wait_until(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_server_restarted_mid_run_the_run_succeeds_with_every_event_once(
    pg_server: PostgresServer, schema: str, dsn_env: None, restarts: None
) -> None:
    with ExecutionSession(config(schema, 0.01, 20.0)) as session:
        store = session.store
        handle = session.run(["one", "two", "three"], state=ExecutionState(state_id="st"), detach=True)
        wait_until(
            lambda: any(e["kind"] == "llm.token" and e.get("task") == "two" for e in store.read_events(handle.run_id))
        )
        pg_server.restart(down_s=1.0)
        result = handle.result(timeout=60)
        assert result.status == RunStatus.SUCCEEDED
        events = store.read_events(handle.run_id)
        assert [e["seq"] for e in events] == list(range(len(events)))  # none twice, none missing
        assert [e["kind"] for e in events].count("run.finished") == 1
        assert "".join(e["data"]["text"] for e in events if e["kind"] == "llm.token" and e["task"] == "three") == WORDS
        assert [v.version for v in store.list_versions("st")] == [1, 2, 3]
        assert store.get_run(handle.run_id).status == RunStatus.SUCCEEDED


def test_server_down_longer_than_the_budget_fails_the_run_with_a_typed_error(
    pg_server: PostgresServer, schema: str, dsn_env: None, restarts: None
) -> None:
    """The run's process sees FAILED with a StateError naming the write that gave up; the
    store, which could not be told, shows the run LOST once its lease expires: never
    RUNNING forever."""
    cfg = config(schema, 0.2, 1.0)
    cfg["provider"]["options"]["responses"] = [{"match": "Write", "text": "one two three four five"}]
    cfg["runs"] = {"lease_s": 2.0}
    with ExecutionSession(cfg) as session:
        store = session.store
        handle = session.run(["one", "two", "three"], state=ExecutionState(state_id="st"), detach=True)
        wait_until(lambda: any(e["kind"] == "llm.token" for e in store.read_events(handle.run_id)))
        pg_server.stop()
        try:
            with pytest.raises(Exception) as info:
                handle.result(timeout=60)
        finally:
            pg_server.start()
        cause = getattr(info.value, "cause", None) or info.value
        assert isinstance(cause, StateError), repr(info.value)
        assert "put_state('st')" in str(cause) and "cannot reach the server" in str(cause)
        assert pg_server.password not in str(cause)
        assert handle.status() == RunStatus.FAILED
        wait_until(lambda: store.get_run(handle.run_id).observed().status in (RunStatus.FAILED, RunStatus.LOST), 10)


def test_connections_terminated_by_the_server_are_replaced(
    pg_server: PostgresServer, make_store: Callable[..., PostgresStore]
) -> None:
    name = f"amsha-{uuid.uuid4().hex[:8]}"
    store = make_store(application_name=name, pool_min_size=3)
    writer = make_store()
    store.put_state("s", {"a": 1}, expected_version=0)
    assert store.wait_for_events("r", 0, 0.05) == []  # a listening connection too

    def terminate() -> int:
        with pg_server.admin() as conn:
            return len(
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,)
                ).fetchall()
            )

    assert terminate() >= 2
    assert store.get_state("s").data == {"a": 1}
    assert store.put_state("s", {"a": 2}, expected_version=1) == 2
    threading.Timer(0.3, terminate).start()
    threading.Timer(0.8, lambda: writer.append_events("r", [{"seq": 0, "kind": "k"}])).start()
    assert [e["seq"] for e in store.wait_for_events("r", 0, 10)] == [0]


def test_a_server_down_past_the_budget_is_a_typed_error_naming_the_operation(
    pg_server: PostgresServer, make_store: Callable[..., PostgresStore], restarts: None
) -> None:
    store = make_store(retry_budget_s=1.0, connect_timeout_s=2)
    store.put_state("s", {"a": 1}, expected_version=0)
    pg_server.stop()
    started = time.monotonic()
    for call, op in (
        (lambda: store.put_state("s", {"a": 2}, expected_version=1), "put_state('s')"),
        (lambda: store.append_events("r", [{"seq": 0, "kind": "k"}]), "append_events('r')"),
        (lambda: store.read_control("r"), "read_control('r')"),
    ):
        with pytest.raises(StateError) as info:
            call()
        assert op in str(info.value) and "cannot reach the server" in str(info.value)
        assert pg_server.password not in str(info.value)
    assert time.monotonic() - started < 3 * 4
    pg_server.start()
    assert store.put_state("s", {"a": 2}, expected_version=1) == 2


# ---- statement timeouts and serialization failures -----------------------------------------------


def test_a_statement_timeout_is_retried_within_the_budget_then_reported(
    pg_server: PostgresServer, schema: str, make_store: Callable[..., PostgresStore]
) -> None:
    store = make_store(statement_timeout_s=0.2, retry_budget_s=5)
    store.put_run(RunRecord("r"))
    blocker = pg_server.admin()
    blocker.execute("BEGIN")
    blocker.execute(f'LOCK TABLE "{schema}".runs IN ACCESS EXCLUSIVE MODE')
    threading.Timer(1.0, blocker.rollback).start()
    started = time.monotonic()
    store.put_run(RunRecord("r", status=RunStatus.RUNNING))
    assert time.monotonic() - started >= 0.9
    assert store.get_run("r").status == RunStatus.RUNNING
    # Held past the budget: a clear error, nothing written.
    hasty = make_store(statement_timeout_s=0.2, retry_budget_s=0.6)
    blocker.execute("BEGIN")
    blocker.execute(f'LOCK TABLE "{schema}".runs IN ACCESS EXCLUSIVE MODE')
    with pytest.raises(StateError) as info:
        hasty.put_run(RunRecord("r", status=RunStatus.FAILED))
    blocker.rollback()
    blocker.close()
    assert "put_run('r')" in str(info.value) and "statement_timeout_s (0.2 s)" in str(info.value)
    assert "attempts" in str(info.value)
    assert store.get_run("r").status == RunStatus.RUNNING


def test_serialization_failures_are_retried(pg_server: PostgresServer) -> None:
    """A database whose default isolation is SERIALIZABLE (as some managed setups have):
    concurrent writers get serialization failures, which the store retries."""
    name = f"ser_{uuid.uuid4().hex[:8]}"
    dsn = pg_server.create_database(name, "default_transaction_isolation = 'serializable'")
    log_before = pg_server.logfile.stat().st_size
    stores = [PostgresStore(dsn, schema="amsha", retry_budget_s=30) for _ in range(4)]
    try:
        stores[0].put_state("counter", {"n": 0}, expected_version=0)
        for s in stores:
            s.put_run(RunRecord("shared", status=RunStatus.RUNNING))
        errors: list[BaseException] = []
        conflicts = [0]

        def work(w: int) -> None:
            store = stores[w]
            try:
                for i in range(25):
                    while True:
                        snap = store.get_state("counter")
                        try:
                            store.put_state("counter", {"n": snap.data["n"] + 1}, expected_version=snap.version)
                            break
                        except VersionConflictError:
                            conflicts[0] += 1
                    store.append_events("shared", [{"seq": w * 100 + i, "kind": "k"}])
                    store.put_run(RunRecord("shared", status=RunStatus.RUNNING, outputs={"w": w}))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert stores[0].get_state("counter").data == {"n": 100}
        assert len(stores[0].read_events("shared")) == 100
        with pg_server.admin(name) as conn:
            assert conn.execute("SHOW default_transaction_isolation").fetchone()[0] == "serializable"
        log = pg_server.logfile.read_bytes()[log_before:].decode(errors="replace")
        assert "could not serialize access" in log  # the server did raise them
    finally:
        for s in stores:
            s.close()
        with pg_server.admin() as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# ---- a full disk -----------------------------------------------------------------------------------


@pytest.fixture
def tiny_tablespace(pg_server: PostgresServer) -> Iterator[str]:
    """A 6 MB tmpfs holding a tablespace: the default tablespace of a database of its own."""
    if os.geteuid() != 0:
        pytest.fail("the full-disk test mounts a small tmpfs, which needs root (as the server install does)")
    mount = Path(pg_server.folder) / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    name = f"full_{uuid.uuid4().hex[:8]}"
    try:
        os.chown(mount, pg_server._uid, pg_server._gid)
        with pg_server.admin() as conn:
            conn.execute(f"CREATE TABLESPACE {name} LOCATION '{mount}'")
        dsn = pg_server.create_database(name, f"default_tablespace = '{name}'")
        yield dsn
    finally:
        with pg_server.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f"DROP TABLESPACE IF EXISTS {name}")
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_a_typed_error_and_nothing_half_written(tiny_tablespace: str) -> None:
    store = PostgresStore(tiny_tablespace, schema="amsha", retry_budget_s=2)
    try:
        with store._get_pool().connection() as conn:
            assert (
                conn.execute(
                    "SELECT count(*) FROM pg_tables WHERE tablespace IS NOT NULL AND schemaname = 'amsha'"
                ).fetchone()[0]
                == 4
            )
        version = 0
        with pytest.raises(StateError) as info:
            for i in range(100):
                # Incompressible 1 MB values: about six fill the disk.
                data = {"blob": os.urandom(512 * 1024).hex()}
                version = store.put_state(f"s{i}", data, expected_version=0)
        message = str(info.value)
        assert "out of disk space" in message and "put_state('s" in message, message
        assert "No space left on device" in message
        assert version >= 1  # some writes fit before the disk filled
        # Every state that was written reads back whole; the failed one left nothing.
        failed = int(message.split("put_state('s")[1].split("'", maxsplit=1)[0])
        for i in range(failed):
            assert len(store.get_state(f"s{i}").data["blob"]) == 1024 * 1024
        assert store.list_versions(f"s{failed}") == []
    finally:
        store.close()
