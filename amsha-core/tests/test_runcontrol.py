"""Run control in one process: leases held by local runs, cancel through the store, the tail,
LOST, and stores built for plugin API 1.0 (no run control) still working."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _amsha_support import make_config

from amsha import ExecutionSession, RunStatus, hookimpl
from amsha.builtins.stores import FileStore, MemoryStore
from amsha.errors import LeaseLostError, RunCancelledError, RunLostError, StateError
from amsha.runcontrol import StoreRun, StoreTail
from amsha.state import RunOwner, RunRecord, supports_run_control


class LegacyStore:
    """A store built for plugin API 1.0: the ten StateStore methods, nothing of run control."""

    def __init__(self) -> None:
        self._inner = MemoryStore()

    def put_state(self, state_id: str, data: dict[str, Any], *, expected_version: int, run_id: Any = None, reason: str = "") -> int:
        return self._inner.put_state(state_id, data, expected_version=expected_version, run_id=run_id, reason=reason)

    def get_state(self, state_id: str, version: int | None = None) -> Any:
        return self._inner.get_state(state_id, version)

    def list_versions(self, state_id: str) -> Any:
        return self._inner.list_versions(state_id)

    def put_run(self, record: RunRecord) -> None:
        self._inner.put_run(record)

    def get_run(self, run_id: str) -> RunRecord:
        return self._inner.get_run(run_id)

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        return self._inner.list_runs(limit)

    def append_events(self, run_id: str, events: Any) -> None:
        self._inner.append_events(run_id, events)

    def read_events(self, run_id: str, from_seq: int = 0) -> Any:
        return self._inner.read_events(run_id, from_seq)

    def delete_run(self, run_id: str) -> None:
        self._inner.delete_run(run_id)

    def close(self) -> None:
        pass


class legacy_plugin:
    AMSHA_PLUGIN_API = "1.0"

    @staticmethod
    @hookimpl
    def amsha_register_state_stores(register: Any) -> None:
        register("legacy", lambda ctx: LegacyStore())


def slow(**extra: Any) -> dict[str, Any]:
    return make_config(provider_options={"token_delay_s": 0.02, "default": "a b c d e f g h i j k l m n o p"}, **extra)


def test_a_local_run_holds_a_lease_and_releases_nothing_it_should_keep() -> None:
    with ExecutionSession(slow()) as session:
        handle = session.run(inputs={"topic": "kelp"}, mode="background")
        for _ in handle.stream(kinds=("llm.token",)):
            break
        record = session.get_run(handle.run_id)
        assert record.owner is not None and record.owner["pid"] > 0 and record.lease_expires_at > time.time()
        handle.result(timeout=30)
        assert session.get_run(handle.run_id).status == RunStatus.SUCCEEDED


def test_cancel_by_id_through_the_store_reaches_the_run_within_cancel_poll_s(tmp_path: Path) -> None:
    """A second session on the same file store (as another process would) cancels the run; the
    owner reads the request within runs.cancel_poll_s."""
    cfg = slow(state={"name": "file", "options": {"path": str(tmp_path / "s")}}, runs={"cancel_poll_s": 0.05})
    with ExecutionSession(cfg) as owner_side, ExecutionSession(cfg) as other:
        handle = owner_side.run(inputs={"topic": "kelp"}, mode="background")
        for _ in handle.stream(kinds=("llm.token",)):
            break
        asked = time.monotonic()
        assert other.cancel_run(handle.run_id, "from elsewhere") == "requested"
        with pytest.raises(RunCancelledError, match="from elsewhere"):
            handle.result(timeout=10)
        assert time.monotonic() - asked < 1.0
        assert other.cancel_run(handle.run_id) == "ended"
        attached = other.attach(handle.run_id)
        assert attached.status() == RunStatus.CANCELLED and attached.cancel() is False


def test_an_attached_handle_streams_every_event_live(tmp_path: Path) -> None:
    cfg = slow(state={"name": "file", "options": {"path": str(tmp_path / "s")}})
    with ExecutionSession(cfg) as owner_side, ExecutionSession(cfg) as other:
        handle = owner_side.run(inputs={"topic": "kelp"}, mode="background")
        attached = other.attach(handle.run_id)
        got = list(attached.stream())
        assert [e.seq for e in got] == list(range(len(got))) and got[-1].kind == "run.finished"
        assert "".join(e.text for e in got) == "".join(attached.stream_text())
        assert attached.result(timeout=10).outputs == handle.result().outputs


def test_a_run_whose_lease_expired_is_lost_for_every_reader(tmp_path: Path) -> None:
    """The owner is gone (simulated: a claim with a short lease that nobody renews)."""
    store = FileStore(tmp_path / "s")
    owner = RunOwner("dead-owner-id", "elsewhere", 4242)
    store.claim_run(RunRecord("gone", status=RunStatus.RUNNING, tasks=["t"]), owner, 0.2)
    store.append_events("gone", [{"seq": 0, "kind": "run.started", "run_id": "gone", "ts": 1.0, "span_id": "gone"}], owner=owner.id)
    time.sleep(0.3)
    with ExecutionSession(make_config(state={"name": "file", "options": {"path": str(tmp_path / "s")}})) as session:
        assert session.get_run("gone").status == RunStatus.LOST
        assert [r.status for r in session.runs() if r.run_id == "gone"] == [RunStatus.LOST]
        handle = session.attach("gone")
        assert handle.status() == RunStatus.LOST and handle.done()
        assert [e.seq for e in handle.stream()] == [0]
        with pytest.raises(RunLostError) as info:
            handle.result()  # never hangs
        assert info.value.owner == owner.to_dict() and "elsewhere pid 4242" in str(info.value)
        assert session.cancel_run("gone") == "lost"


def test_a_stale_owner_is_fenced_and_stops_without_writing() -> None:
    """The lease is taken away mid-run (as when a paused machine comes back after expiry):
    the run stops, writes nothing more, and reports LOST."""
    with ExecutionSession(slow(runs={"lease_s": 0.6, "cancel_poll_s": 0.05})) as session:
        handle = session.run(inputs={"topic": "kelp"}, mode="background")
        for _ in handle.stream(kinds=("llm.token",)):
            break
        store = session.store
        with store._lock:  # expire it, as a reader past the expiry would see it
            store._control[handle.run_id].lease_expires_at = time.time() - 1
        with pytest.raises(RunLostError):
            handle.result(timeout=10)
        before = len(store.read_events(handle.run_id))
        time.sleep(0.3)
        assert len(store.read_events(handle.run_id)) == before
        assert store.get_run(handle.run_id).status == RunStatus.RUNNING, "the stale owner wrote no end"
        assert session.get_run(handle.run_id).status == RunStatus.LOST


def test_a_tail_waits_without_a_busy_loop() -> None:
    """An idle tail backs off: in half a second of a run streaming nothing it reads the store
    a handful of times, not hundreds."""
    store = MemoryStore()
    owner = RunOwner.here()
    store.claim_run(RunRecord("idle", status=RunStatus.RUNNING), owner, 30)
    reads = 0
    read = store.read_events

    def counting(run_id: str, from_seq: int = 0) -> Any:
        nonlocal reads
        reads += 1
        return read(run_id, from_seq)

    store.read_events = counting  # type: ignore[method-assign]
    timer = threading.Timer(0.5, store.append_events, ("idle", [{"seq": 0, "kind": "run.finished"}]), {"owner": owner.id})
    timer.start()
    got = [e["seq"] for e in StoreTail(store, "idle", poll_max_s=0.25)]
    assert got == [0] and reads < 15, reads


def test_a_store_built_for_plugin_api_1_0_keeps_working() -> None:
    cfg = make_config(state={"name": "legacy"})
    with ExecutionSession(cfg, plugins=[legacy_plugin]) as session:
        assert not supports_run_control(session.store)
        result = session.run(inputs={"topic": "kelp"}).result(timeout=30)
        assert result.status == RunStatus.SUCCEEDED
        record = session.get_run(result.run_id)
        assert record.status == RunStatus.SUCCEEDED and record.owner is None
        # A feature that needs run control says so, naming what is missing.
        with pytest.raises(StateError, match=r"plugin API 1\.1: claim_run, renew_lease"):
            StoreRun(session.store, result.run_id).cancel("x")
        # Local cancel needs no store round trip and still works.
        handle = ExecutionSession(slow(state={"name": "legacy"}), plugins=[legacy_plugin]).run(inputs={"topic": "k"})
        assert handle.cancel() is True
        with pytest.raises(RunCancelledError):
            handle.result(timeout=10)


def test_a_run_id_that_already_ended_is_not_run_again() -> None:
    with ExecutionSession(make_config()) as session:
        first = session.run(inputs={"topic": "kelp"}, run_id="fixed-id")
        first.result(timeout=30)
        with pytest.raises(LeaseLostError, match="already ended"):
            session.run(inputs={"topic": "kelp"}, run_id="fixed-id")
        assert session.get_run("fixed-id").status == RunStatus.SUCCEEDED


class FlakyStore(MemoryStore):
    """The memory store with its event writes failing the first few times (a database that
    was away for a moment)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def append_events(self, run_id: str, events: Any, *, owner: str | None = None) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StateError("the database is away for a moment")
        super().append_events(run_id, events, owner=owner)


class flaky_plugin:
    @staticmethod
    @hookimpl
    def amsha_register_state_stores(register: Any) -> None:
        register("flaky", lambda ctx: FlakyStore(3))


def test_events_whose_write_failed_are_written_later_in_order() -> None:
    with ExecutionSession(slow(state={"name": "flaky"}), plugins=[flaky_plugin]) as session:
        result = session.run(inputs={"topic": "kelp"}).result(timeout=30)
        events = session.store.read_events(result.run_id)
        assert session.store.inner.failures == 0
        assert [e["seq"] for e in events] == list(range(len(events))), "no gap, none twice"
        assert events[-1]["kind"] == "run.finished"
