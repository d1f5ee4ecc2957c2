"""The run-control protocol (``amsha.state.RunControlStore``) on a real server: leases on the
server's clock, expiry seen as LOST, fenced writes, cancel requests, and ``wait_for_events``
woken by LISTEN/NOTIFY from another process (or polling when notifications are lost)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import pytest
from amsha.errors import LeaseLostError, RunNotFoundError, VersionConflictError
from amsha.state import CancelOutcome, RunOwner, RunRecord, RunStatus, supports_run_control
from amsha_postgres.store import PostgresStore
from amsha_postgres.testing import PostgresServer
from conftest import Proxy, proxy_dsn

CTX = multiprocessing.get_context("spawn")


def test_it_is_a_run_control_store(store: PostgresStore) -> None:
    assert supports_run_control(store)
    assert callable(store.wait_for_events)


def test_claim_gives_a_lease_on_the_servers_clock_converted_to_ours(store: PostgresStore) -> None:
    owner = RunOwner.here()
    before = time.time()
    control = store.claim_run(RunRecord("r", status=RunStatus.PENDING), owner, 5.0)
    after = time.time()
    assert control.owner == owner.to_dict() and control.status == RunStatus.PENDING
    assert before - 0.5 <= control.heartbeat_at <= after + 0.5
    assert before + 4.5 <= control.lease_expires_at <= after + 5.5
    record = store.get_run("r")
    assert record.owner == owner.to_dict() and abs(record.lease_expires_at - control.lease_expires_at) < 0.1
    # The same owner claims again (PENDING, then RUNNING); the record is replaced, the lease kept.
    again = store.claim_run(RunRecord("r", status=RunStatus.RUNNING, tasks=["a"]), owner, 5.0)
    assert again.status == RunStatus.RUNNING and store.get_run("r").tasks == ["a"]
    # put_run keeps the stored control fields and ignores the record's.
    stale = RunRecord("r", status=RunStatus.RUNNING, owner={"id": "x", "host": "h", "pid": 1}, lease_expires_at=1.0)
    store.put_run(stale)
    assert store.get_run("r").owner == owner.to_dict()
    assert store.read_control("r").lease_expires_at > time.time()


def test_a_lease_held_by_another_owner_or_expired_cannot_be_claimed(store: PostgresStore) -> None:
    first, second = RunOwner.here(), RunOwner.here()
    store.claim_run(RunRecord("r", status=RunStatus.RUNNING), first, 0.5)
    with pytest.raises(LeaseLostError, match="held by owner"):
        store.claim_run(RunRecord("r", status=RunStatus.RUNNING), second, 5)
    time.sleep(0.7)
    # Expired: the run is LOST for every reader, and never claimed again (not even by its owner).
    assert store.get_run("r").observed().status == RunStatus.LOST
    assert store.list_runs()[0].lost()
    for who in (first, second):
        with pytest.raises(LeaseLostError, match="LOST"):
            store.claim_run(RunRecord("r", status=RunStatus.RUNNING), who, 5)
    with pytest.raises(LeaseLostError, match="expired"):
        store.renew_lease("r", first.id, 5)
    assert store.get_run("r").owner == first.to_dict()  # nothing was written


def test_an_ended_run_cannot_be_claimed_and_renew_names_why(store: PostgresStore) -> None:
    owner = RunOwner.here()
    store.put_run(RunRecord("done", status=RunStatus.SUCCEEDED))
    with pytest.raises(LeaseLostError, match="ended"):
        store.claim_run(RunRecord("done", status=RunStatus.RUNNING), owner, 5)
    with pytest.raises(RunNotFoundError):
        store.renew_lease("nope", owner.id, 5)
    with pytest.raises(RunNotFoundError):
        store.read_control("nope")
    store.claim_run(RunRecord("r", status=RunStatus.RUNNING), owner, 0.6)
    renewed = store.renew_lease("r", owner.id, 10)
    assert renewed.lease_expires_at > time.time() + 9
    with pytest.raises(LeaseLostError, match="not"):
        store.renew_lease("r", "someone-else", 10)
    time.sleep(0.7)
    assert not store.get_run("r").lost()  # renewed before it expired


def test_fenced_writes_need_the_lease(store: PostgresStore) -> None:
    owner, thief = RunOwner.here(), RunOwner.here()
    store.claim_run(RunRecord("r", status=RunStatus.RUNNING), owner, 0.8)
    store.append_events("r", [{"seq": 0, "kind": "k"}], owner=owner.id)
    assert store.put_state("s", {"a": 1}, expected_version=0, run_id="r", owner=owner.id) == 1
    store.put_run(RunRecord("r", status=RunStatus.RUNNING, outputs={"a": 1}), owner=owner.id)
    for write in (
        lambda: store.append_events("r", [{"seq": 1, "kind": "k"}], owner=thief.id),
        lambda: store.put_state("s", {"a": 2}, expected_version=1, run_id="r", owner=thief.id),
        lambda: store.put_run(RunRecord("r", status=RunStatus.FAILED), owner=thief.id),
        lambda: store.put_state("s", {"a": 2}, expected_version=1, run_id="other", owner=owner.id),
    ):
        with pytest.raises(LeaseLostError):
            write()
    time.sleep(1.0)  # the owner's lease runs out
    with pytest.raises(LeaseLostError, match="expired"):
        store.append_events("r", [{"seq": 1, "kind": "k"}], owner=owner.id)
    with pytest.raises(LeaseLostError):
        store.put_state("s", {"a": 3}, expected_version=1, run_id="r", owner=owner.id)
    with pytest.raises(LeaseLostError):
        store.put_run(RunRecord("r", status=RunStatus.SUCCEEDED), owner=owner.id)
    # Nothing of the refused writes is there.
    assert [e["seq"] for e in store.read_events("r")] == [0]
    assert store.get_state("s").data == {"a": 1}
    assert store.get_run("r").outputs == {"a": 1} and store.get_run("r").observed().status == RunStatus.LOST
    # A fenced write still checks the version too.
    store.claim_run(RunRecord("r2", status=RunStatus.RUNNING), owner, 5)
    with pytest.raises(VersionConflictError):
        store.put_state("s", {"a": 9}, expected_version=0, run_id="r2", owner=owner.id)


def test_cancel_outcomes(store: PostgresStore) -> None:
    owner = RunOwner.here()
    with pytest.raises(RunNotFoundError):
        store.request_cancel("nope", "x")
    # Queued, no owner: cancelled at once, and never starts.
    store.put_run(RunRecord("queued", status=RunStatus.PENDING))
    assert store.request_cancel("queued", "not needed") == CancelOutcome.CANCELLED
    record = store.get_run("queued")
    assert record.status == RunStatus.CANCELLED and record.finished_at is not None
    assert record.error == {"type": "RunCancelledError", "message": "not needed"}
    with pytest.raises(LeaseLostError):
        store.claim_run(RunRecord("queued", status=RunStatus.RUNNING), owner, 5)
    assert store.request_cancel("queued", "again") == CancelOutcome.ENDED
    # Owned and active: requested; the owner sees it on renewal and in read_control; the first reason stays.
    store.claim_run(RunRecord("live", status=RunStatus.RUNNING), owner, 5)
    assert store.read_control("live").cancel_request is None
    before = time.time()
    assert store.request_cancel("live", "user asked") == CancelOutcome.REQUESTED
    assert store.request_cancel("live", "second") == CancelOutcome.REQUESTED
    control = store.renew_lease("live", owner.id, 5)
    assert control.cancel_reason == "user asked" and control.status == RunStatus.RUNNING
    assert before - 0.5 <= control.cancel_request["at"] <= time.time() + 0.5
    assert store.get_run("live").cancel_request["reason"] == "user asked"
    # A claim keeps a request made before it.
    store.put_run(RunRecord("early", status=RunStatus.PENDING))
    store.claim_run(RunRecord("early", status=RunStatus.PENDING), owner, 5)
    store.request_cancel("early", "early bird")
    assert store.claim_run(RunRecord("early", status=RunStatus.RUNNING), owner, 5).cancel_reason == "early bird"
    # Ended and lost runs: nothing changes.
    store.put_run(RunRecord("live", status=RunStatus.SUCCEEDED), owner=owner.id)
    assert store.request_cancel("live", "late") == CancelOutcome.ENDED
    store.claim_run(RunRecord("gone", status=RunStatus.RUNNING), owner, 0.3)
    time.sleep(0.5)
    assert store.request_cancel("gone", "too late") == CancelOutcome.LOST
    assert store.read_control("gone").cancel_request is None


def _append_later(dsn: str, schema: str, run_id: str, delay: float, count: int) -> None:
    store = PostgresStore(dsn, schema=schema)
    time.sleep(delay)
    for i in range(count):
        store.append_events(run_id, [{"seq": i, "kind": "k", "t": time.time()}])
        time.sleep(0.05)
    store.close()


def test_wait_for_events_wakes_on_a_commit_in_another_process_without_polling(
    pg_server: PostgresServer, schema: str, store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert store.wait_for_events("r", 0, 0.2) == []
    reads = 0
    real = store.read_events

    def counting(*args: Any) -> list[dict[str, Any]]:
        nonlocal reads
        reads += 1
        return real(*args)

    monkeypatch.setattr(store, "read_events", counting)
    writer = CTX.Process(target=_append_later, args=(pg_server.dsn(), schema, "r", 1.5, 5))
    writer.start()
    seen: list[int] = []
    lags: list[float] = []
    started = time.monotonic()
    while len(seen) < 5 and time.monotonic() - started < 30:
        for event in store.wait_for_events("r", len(seen), 10.0):
            seen.append(event["seq"])
            lags.append(time.time() - event["t"])
    writer.join(30)
    assert writer.exitcode == 0
    assert seen == [0, 1, 2, 3, 4]
    # About 1.5 s of waiting before the first event, with no read in between: one read per
    # wake-up (5 or fewer batches), plus the one before each wait.
    assert reads <= 12, reads
    assert sorted(lags)[len(lags) // 2] < 0.1, lags


def test_wait_for_events_times_out_and_polls_when_notifications_are_off(
    make_store: Callable[..., PostgresStore],
) -> None:
    store = make_store(notifications="off", poll_interval_s=0.05)
    started = time.monotonic()
    assert store.wait_for_events("r", 0, 0.3) == []
    assert 0.25 <= time.monotonic() - started < 1.0
    store.append_events("r", [{"seq": 0, "kind": "k"}, {"seq": 1, "kind": "k"}])
    assert [e["seq"] for e in store.wait_for_events("r", 1, 1.0)] == [1]


def test_auto_falls_back_to_polling_when_a_pooler_drops_notifications(
    pg_server: PostgresServer, proxy: Proxy, make_store: Callable[..., PostgresStore], caplog: pytest.LogCaptureFixture
) -> None:
    proxy.drop_notifications = True
    store = make_store(proxy_dsn(pg_server, proxy), notifications="auto", poll_interval_s=0.05)
    writer = make_store()
    assert store.wait_for_events("r", 0, 0.1) == []
    assert store._notify_ok is False and proxy.dropped >= 1
    assert store._listeners == []  # the listener that got nothing is closed
    assert "polls" in caplog.text and pg_server.password not in caplog.text
    timer_started = time.monotonic()
    import threading

    threading.Timer(0.3, lambda: writer.append_events("r", [{"seq": 0, "kind": "k"}])).start()
    assert [e["seq"] for e in store.wait_for_events("r", 0, 5.0)] == [0]
    assert time.monotonic() - timer_started < 1.0


def test_listening_connections_of_ended_threads_are_closed(
    pg_server: PostgresServer, make_store: Callable[..., PostgresStore]
) -> None:
    import threading
    import uuid

    name = f"amsha-{uuid.uuid4().hex[:8]}"
    store = make_store(application_name=name, pool_min_size=1, pool_max_size=1)
    for _ in range(5):
        thread = threading.Thread(target=store.wait_for_events, args=("r", 0, 0.01))
        thread.start()
        thread.join()
    assert store.wait_for_events("r", 0, 0.01) == []
    assert len(store._listeners) == 1
    time.sleep(0.2)
    with pg_server.admin() as conn:
        count = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()[0]
    assert count == 2  # the pool's one connection and this thread's listener


def test_append_events_batch_writes_several_runs_in_one_transaction(store: PostgresStore) -> None:
    owner, stale = RunOwner.here(), RunOwner.here()
    for run_id in ("a", "b"):
        store.claim_run(RunRecord(run_id, status=RunStatus.RUNNING), owner, 30)
    store.claim_run(RunRecord("c", status=RunStatus.RUNNING), stale, 0.2)
    time.sleep(0.3)
    refused = store.append_events_batch(
        [
            ("a", [{"seq": 0, "kind": "k"}, {"seq": 1, "kind": "k"}], owner.id),
            ("b", [{"seq": 0, "kind": "k"}], owner.id),
            ("c", [{"seq": 0, "kind": "k"}], stale.id),
            ("free", [{"seq": 0, "kind": "k"}], None),
        ]
    )
    assert set(refused) == {"c"} and isinstance(refused["c"], LeaseLostError)
    assert [e["seq"] for e in store.read_events("a")] == [0, 1]
    assert [e["seq"] for e in store.read_events("b")] == [0]
    assert store.read_events("c") == [] and len(store.read_events("free")) == 1
    assert [e["seq"] for e in store.wait_for_events("b", 0, 1.0)] == [0]
    from amsha.errors import StateError

    with pytest.raises(StateError, match="append-only"):
        store.append_events_batch(
            [("a", [{"seq": 2, "kind": "k"}], owner.id), ("b", [{"seq": 0, "kind": "x"}], owner.id)]
        )
    assert [e["seq"] for e in store.read_events("a")] == [0, 1]  # nothing of the refused batch


def test_append_events_batch_cut_at_commit_is_written_once(
    pg_server: PostgresServer, proxy: Proxy, make_store: Callable[..., PostgresStore]
) -> None:
    store, check = make_store(proxy_dsn(pg_server, proxy)), make_store()
    for when in ("after", "before"):
        proxy.cut = when
        assert (
            store.append_events_batch(
                [(f"x-{when}", [{"seq": 0, "kind": "k"}], None), (f"y-{when}", [{"seq": 0, "kind": "k"}], None)]
            )
            == {}
        )
        assert len(check.read_events(f"x-{when}")) == 1 and len(check.read_events(f"y-{when}")) == 1
    assert proxy.cuts == 2
