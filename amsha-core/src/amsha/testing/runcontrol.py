"""The run-control checks of :class:`~amsha.testing.StateStoreContract`: leases, their
expiry (LOST), fenced writes, cancel requests and the event tail (see
:class:`amsha.state.RunControlStore`). A store built for plugin API 1.0 (without the
run-control methods) has these checks skipped, with the reason."""

from __future__ import annotations

import threading
import time
from typing import Any, NoReturn

import pytest

from ..errors import LeaseLostError, RunNotFoundError
from ..runcontrol import StoreTail, tail
from ..state import CancelOutcome, RunOwner, RunRecord, RunStatus, supports_run_control

__all__ = ["RunControlContract"]

SHORT_LEASE_S = 0.3


def _fail(message: str) -> NoReturn:
    pytest.fail(f"contract: {message}", pytrace=False)


def _needs_run_control(store: Any) -> None:
    if not supports_run_control(store):
        pytest.skip(
            "the store does not declare run control (plugin API 1.1: claim_run, renew_lease, read_control, "
            "request_cancel)"
        )


def _expect_lease_lost(what: str, call: Any) -> None:
    try:
        call()
    except LeaseLostError:
        return
    except Exception as exc:
        _fail(f"{what} must raise LeaseLostError, got {type(exc).__name__}: {exc}")
    _fail(f"{what} must raise LeaseLostError")


def _expired(store: Any, run_id: str) -> tuple[RunOwner, RunRecord]:
    """A run claimed with a short lease that has since expired."""
    owner = RunOwner.here()
    store.claim_run(RunRecord(run_id, status=RunStatus.RUNNING), owner, SHORT_LEASE_S)
    time.sleep(SHORT_LEASE_S + 0.15)
    return owner, store.get_run(run_id)


class RunControlContract:
    """Run control, as :class:`amsha.state.RunControlStore` documents it."""

    def test_claim_records_the_owner_and_its_lease(self, store: Any) -> None:
        _needs_run_control(store)
        owner = RunOwner.here()
        before = time.time()
        control = store.claim_run(RunRecord("rc-claim", status=RunStatus.PENDING, tasks=["a"]), owner, 10.0)
        record = store.get_run("rc-claim")
        if record.status != RunStatus.PENDING or record.tasks != ["a"]:
            _fail("claim_run() must write the record it is given")
        if (record.owner or {}).get("id") != owner.id or (control.owner or {}).get("id") != owner.id:
            _fail("claim_run() must record the owner (get_run().owner and the returned control)")
        expires = record.lease_expires_at
        if expires is None or not before + 9.0 <= expires <= time.time() + 11.0:
            _fail(f"the lease must expire lease_s from now (10 s), got lease_expires_at={expires!r}")
        if record.heartbeat_at is None or abs(record.heartbeat_at - before) > 5:
            _fail("claim_run() must set heartbeat_at to now")
        if record.observed().status != RunStatus.PENDING:
            _fail("a run with a live lease must not be reported LOST")
        # The same owner claims again (PENDING, then RUNNING); put_run keeps the control fields.
        store.claim_run(RunRecord("rc-claim", status=RunStatus.RUNNING), owner, 10.0)
        store.put_run(RunRecord("rc-claim", status=RunStatus.RUNNING, outputs={"a": "x"}), owner=owner.id)
        again = store.get_run("rc-claim")
        if (again.owner or {}).get("id") != owner.id or again.lease_expires_at is None:
            _fail("put_run() must keep the stored owner and lease (only run-control methods write them)")
        if store.read_control("rc-claim").status != RunStatus.RUNNING:
            _fail("read_control() must report the stored status")

    def test_another_owner_cannot_claim_a_live_run(self, store: Any) -> None:
        _needs_run_control(store)
        store.claim_run(RunRecord("rc-taken", status=RunStatus.RUNNING), RunOwner.here(), 10.0)
        intruder = RunOwner.here()
        _expect_lease_lost(
            "claim_run() by a second owner while the first holds a live lease",
            lambda: store.claim_run(RunRecord("rc-taken", status=RunStatus.RUNNING), intruder, 10.0),
        )
        _expect_lease_lost(
            "put_run(owner=...) by a process that does not hold the lease",
            lambda: store.put_run(RunRecord("rc-taken", status=RunStatus.SUCCEEDED), owner=intruder.id),
        )
        if store.get_run("rc-taken").status != RunStatus.RUNNING:
            _fail("a refused fenced write must write nothing")

    def test_concurrent_claims_have_one_winner(self, store: Any) -> None:
        _needs_run_control(store)
        store.put_run(RunRecord("rc-race", status=RunStatus.PENDING))
        wins: list[str] = []
        losses: list[str] = []
        start = threading.Barrier(4)

        def claim() -> None:
            owner = RunOwner.here()
            start.wait()
            try:
                store.claim_run(RunRecord("rc-race", status=RunStatus.RUNNING), owner, 10.0)
                wins.append(owner.id)
            except LeaseLostError:
                losses.append(owner.id)

        threads = [threading.Thread(target=claim) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        if len(wins) != 1 or len(losses) != 3:
            _fail(f"four owners claiming one queued run at once: exactly one must win, got {len(wins)} winners")
        if (store.get_run("rc-race").owner or {}).get("id") != wins[0]:
            _fail("the record must name the owner that won the claim")

    def test_renewal_extends_the_lease(self, store: Any) -> None:
        _needs_run_control(store)
        owner = RunOwner.here()
        store.claim_run(RunRecord("rc-renew", status=RunStatus.RUNNING), owner, SHORT_LEASE_S)
        for _ in range(3):
            time.sleep(SHORT_LEASE_S / 2)
            control = store.renew_lease("rc-renew", owner.id, SHORT_LEASE_S)
            if control.lease_expires_at is None or control.lease_expires_at < time.time():
                _fail("renew_lease() must return the extended lease")
        if store.get_run("rc-renew").observed().status != RunStatus.RUNNING:
            _fail("a run whose lease is renewed in time must not be reported LOST")
        _expect_lease_lost(
            "renew_lease() by an owner that never held the lease",
            lambda: store.renew_lease("rc-renew", RunOwner.here().id, 10.0),
        )
        with pytest.raises(RunNotFoundError):
            try:
                store.renew_lease("rc-never", owner.id, 10.0)
            except LeaseLostError:
                _fail("renew_lease() of a run that does not exist must raise RunNotFoundError")

    def test_an_expired_lease_makes_the_run_lost_for_good(self, store: Any) -> None:
        _needs_run_control(store)
        store.put_state("rc-lost-state", {"k": 1}, expected_version=0, run_id="rc-lost")
        owner, record = _expired(store, "rc-lost")
        if record.observed().status != RunStatus.LOST:
            _fail("a RUNNING run whose lease expired must be reported LOST by RunRecord.observed()")
        if (record.owner or {}).get("id") != owner.id or record.heartbeat_at is None:
            _fail("a LOST run's record must keep its owner and last heartbeat")
        # The owner comes back (a paused machine): it finds the lease gone and writes nothing.
        _expect_lease_lost("renew_lease() after the lease expired", lambda: store.renew_lease("rc-lost", owner.id, 10))
        _expect_lease_lost(
            "claim_run() of a LOST run", lambda: store.claim_run(RunRecord("rc-lost"), RunOwner.here(), 10.0)
        )
        _expect_lease_lost(
            "put_run(owner=...) by an owner whose lease expired",
            lambda: store.put_run(RunRecord("rc-lost", status=RunStatus.SUCCEEDED), owner=owner.id),
        )
        _expect_lease_lost(
            "append_events(owner=...) by an owner whose lease expired",
            lambda: store.append_events("rc-lost", [{"seq": 0, "kind": "run.started"}], owner=owner.id),
        )
        _expect_lease_lost(
            "put_state(owner=...) by an owner whose lease expired",
            lambda: store.put_state(
                "rc-lost-state", {"k": 2}, expected_version=1, run_id="rc-lost", reason="late", owner=owner.id
            ),
        )
        if store.get_run("rc-lost").status != RunStatus.RUNNING or store.read_events("rc-lost"):
            _fail("writes refused to a stale owner must leave the record and the events as they were")
        if store.get_state("rc-lost-state").version != 1:
            _fail("a state write refused to a stale owner must not add a version")
        if store.request_cancel("rc-lost", "too late") != CancelOutcome.LOST:
            _fail("request_cancel() of a LOST run must return 'lost' and change nothing")

    def test_fenced_writes_of_the_owner_go_through(self, store: Any) -> None:
        _needs_run_control(store)
        owner = RunOwner.here()
        store.claim_run(RunRecord("rc-fenced", status=RunStatus.RUNNING), owner, 10.0)
        store.append_events("rc-fenced", [{"seq": 0, "kind": "run.started"}], owner=owner.id)
        version = store.put_state("rc-fenced-state", {"a": 1}, expected_version=0, run_id="rc-fenced", owner=owner.id)
        store.put_run(RunRecord("rc-fenced", status=RunStatus.SUCCEEDED), owner=owner.id)
        if [e["seq"] for e in store.read_events("rc-fenced")] != [0] or version != 1:
            _fail("fenced writes by the lease holder must be written")
        if store.get_run("rc-fenced").observed().status != RunStatus.SUCCEEDED:
            _fail("a run that ended is never reported LOST")
        _expect_lease_lost("renew_lease() of a run that ended", lambda: store.renew_lease("rc-fenced", owner.id, 10.0))

    def test_cancel_requests(self, store: Any) -> None:
        _needs_run_control(store)
        # Queued, no owner: cancelled at once, and never started afterwards.
        store.put_run(RunRecord("rc-queued", status=RunStatus.PENDING))
        if store.request_cancel("rc-queued", "not needed") != CancelOutcome.CANCELLED:
            _fail("request_cancel() of a PENDING run with no owner must return 'cancelled'")
        queued = store.get_run("rc-queued")
        if queued.status != RunStatus.CANCELLED or (queued.error or {}).get("message") != "not needed":
            _fail("a queued run cancelled before it started must be recorded CANCELLED with the reason")
        _expect_lease_lost(
            "claim_run() of a run cancelled while queued",
            lambda: store.claim_run(RunRecord("rc-queued", status=RunStatus.RUNNING), RunOwner.here(), 10.0),
        )
        # Owned: a request the owner reads with read_control() and renew_lease().
        owner = RunOwner.here()
        store.claim_run(RunRecord("rc-owned", status=RunStatus.RUNNING), owner, 10.0)
        if store.read_control("rc-owned").cancel_reason is not None:
            _fail("a run nobody asked to stop must have no cancel request")
        if store.request_cancel("rc-owned", "first") != CancelOutcome.REQUESTED:
            _fail("request_cancel() of an owned, active run must return 'requested'")
        store.request_cancel("rc-owned", "second")
        if store.read_control("rc-owned").cancel_reason != "first":
            _fail("read_control() must return the first cancel request's reason")
        if store.renew_lease("rc-owned", owner.id, 10.0).cancel_reason != "first":
            _fail("renew_lease() must return the pending cancel request")
        if (store.get_run("rc-owned").cancel_request or {}).get("reason") != "first":
            _fail("get_run() must return the cancel request")
        if store.get_run("rc-owned").status != RunStatus.RUNNING:
            _fail("a cancel request must not change the status: the owner records CANCELLED when it has stopped")
        store.put_run(RunRecord("rc-owned", status=RunStatus.CANCELLED), owner=owner.id)
        if store.request_cancel("rc-owned", "again") != CancelOutcome.ENDED:
            _fail("request_cancel() of a run that ended must return 'ended' (a no-op)")
        with pytest.raises(RunNotFoundError):
            store.request_cancel("rc-nobody", "x")
        with pytest.raises(RunNotFoundError):
            store.read_control("rc-nobody")

    def test_a_tail_sees_every_event_once_in_order(self, store: Any) -> None:
        _needs_run_control(store)
        owner = RunOwner.here()
        store.claim_run(RunRecord("rc-tail", status=RunStatus.RUNNING), owner, 10.0)
        total = 300

        def write() -> None:
            seq = 0
            while seq < total:
                size = 1 + seq % 7
                batch = [
                    {"seq": s, "kind": "run.finished" if s == total - 1 else "llm.token", "data": {"text": str(s)}}
                    for s in range(seq, min(seq + size, total))
                ]
                store.append_events("rc-tail", batch, owner=owner.id)
                seq += len(batch)
                time.sleep(0.002)

        writer = threading.Thread(target=write)
        writer.start()
        got = [e["seq"] for e in tail(store, "rc-tail", 0, poll_max_s=0.05)]
        writer.join(30)
        if got != list(range(total)):
            missing = sorted(set(range(total)) - set(got))[:5]
            _fail(f"a tail must yield every event once, in order, ending at the terminal one; missing {missing}")
        later = [e["seq"] for e in tail(store, "rc-tail", 250, poll_max_s=0.05)]
        if later != list(range(250, total)):
            _fail("a tail from from_seq must start there")

    def test_a_tail_ends_when_the_run_is_lost(self, store: Any) -> None:
        _needs_run_control(store)
        owner = RunOwner.here()
        store.claim_run(RunRecord("rc-tail-lost", status=RunStatus.RUNNING), owner, SHORT_LEASE_S)
        store.append_events("rc-tail-lost", [{"seq": 0, "kind": "run.started"}], owner=owner.id)
        start = time.monotonic()
        got = [e["seq"] for e in StoreTail(store, "rc-tail-lost", 0, poll_max_s=0.05)]
        if got != [0]:
            _fail(f"a tail of a LOST run must yield what it committed, got {got}")
        if time.monotonic() - start > SHORT_LEASE_S + 3:
            _fail("a tail of a run whose owner died must end soon after the lease expires")

    def test_wait_for_events_if_offered(self, store: Any) -> None:
        _needs_run_control(store)
        wait = getattr(store, "wait_for_events", None)
        if wait is None:
            pytest.skip("the store does not offer wait_for_events (readers poll it)")
        owner = RunOwner.here()
        store.claim_run(RunRecord("rc-wait", status=RunStatus.RUNNING), owner, 10.0)
        start = time.monotonic()
        if wait("rc-wait", 0, 0.2) != []:
            _fail("wait_for_events() with nothing committed must return [] when the timeout passes")
        if time.monotonic() - start < 0.15:
            _fail("wait_for_events() must wait for its timeout when nothing comes")
        timer = threading.Timer(0.1, store.append_events, ("rc-wait", [{"seq": 0, "kind": "k"}]), {"owner": owner.id})
        timer.start()
        start = time.monotonic()
        got = wait("rc-wait", 0, 5.0)
        timer.join()
        if [e["seq"] for e in got] != [0] or time.monotonic() - start > 2.5:
            _fail("wait_for_events() must return the events as soon as they are committed")
