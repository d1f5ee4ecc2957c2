"""Run control across processes and machines: the owner's lease, cancel requests, and the
event tail.

The store is the control plane of a run that executes somewhere else (a process pool, a Dask
or Ray worker, a detached ``amsha run``, another machine): everything a handle needs from it
goes through the store (:class:`~amsha.state.RunControlStore`). Amsha adds no broker, server
or thread of its own: the owner's side is one task on the run's own event loop
(:class:`OwnerLease`), and a reader polls the store with an adaptive interval (or waits on a
store that can push, through its ``wait_for_events``) only while someone reads
(:class:`StoreTail`).

* :class:`OwnerLease`: held by the process executing a run. It claims the run, renews the
  lease every ``lease_s / 3`` and reads cancel requests every ``cancel_poll_s``, from the
  run's loop. When the lease is gone (the run was declared LOST while this process was
  paused) the run stops without writing.
* :class:`StoreTail`: a run's events as they are committed, in order, none twice, none
  missing; ends after the terminal event, or when the record says the run ended (LOST runs
  have no terminal event). One implementation drives the sync and the async iterator.
* :class:`StoreRun`: what a handle needs of a run it does not execute (attached by id, or a
  run this process handed to a worker): status with LOST applied, the result, the live
  stream, cancel, metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import LeaseLostError, RunLostError, RunTimeoutError, StateError

if TYPE_CHECKING:
    from .handle import RunResult
from .events import TERMINAL_KINDS, Event
from .metrics import AmshaMetrics, MetricsCollector
from .state import (
    CancelOutcome,
    ExecutionState,
    RunControl,
    RunOwner,
    RunRecord,
    RunStatus,
    StateStore,
    supports_run_control,
)

__all__ = [
    "CONTROL_FIELDS",
    "ENDED",
    "OwnerLease",
    "StoreRun",
    "StoreTail",
    "atail",
    "cancel_outcome",
    "cancelled_before_start",
    "check_claim",
    "check_fence",
    "lost_error",
    "record_body",
    "require_run_control",
    "tail",
    "with_control",
]

log = logging.getLogger("amsha")

POLL_MIN_S = 0.002
"""The first pause after events arrived: a flowing stream is read within a few ms."""
RECORD_CHECK_S = 0.5
"""How often an idle tail reads the run's record (to see a run that ended without a terminal
event: LOST, or cancelled before it started)."""


def require_run_control(store: StateStore, what: str) -> None:
    """Raise :class:`StateError` unless ``store`` implements run control (plugin API 1.1)."""
    if not supports_run_control(store):
        raise StateError(
            f"{what} needs a state store with run control (plugin API 1.1: claim_run, renew_lease, "
            f"read_control, request_cancel); {type(store).__name__} was built for plugin API 1.0. "
            f"Use the file, sqlite or postgres store, or upgrade the store plugin"
        )


def _blocking(store: object) -> bool:
    """Whether the store's calls may block (I/O): those go to a worker thread from a loop."""
    return not getattr(store, "in_process", False)


async def _call(store: object, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    if _blocking(store):
        return await asyncio.to_thread(fn, *args, **kw)
    return fn(*args, **kw)


# ---- the rules, for store authors ---------------------------------------------------------

CONTROL_FIELDS = ("owner", "heartbeat_at", "lease_expires_at", "cancel_request")
"""The run-record fields that only the run-control methods write."""
ENDED = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
"""The terminal statuses a store holds (LOST is never stored: readers derive it)."""


def check_claim(run_id: str, status: str | None, control: RunControl | None, owner_id: str, now: float) -> None:
    """Raise :class:`LeaseLostError` unless ``owner_id`` may claim the run (see
    :meth:`RunControlStore.claim_run`): ``status`` is the stored status (None if there is no
    record yet), ``control`` its stored control fields. Call it inside the claim's transaction."""
    if status in ENDED:
        raise LeaseLostError(run_id, f"the run already ended ({status}); it is not started again")
    if control is None or control.lease_expires_at is None:
        return
    holder = (control.owner or {}).get("id")
    if now > control.lease_expires_at:
        raise LeaseLostError(run_id, "the run is LOST (its lease expired); it is never claimed again")
    if holder != owner_id:
        raise LeaseLostError(run_id, f"the run is owned by another live process ({_who(control)})")


def check_fence(run_id: str, control: RunControl | None, owner_id: str, now: float) -> None:
    """Raise :class:`LeaseLostError` unless ``owner_id`` holds an unexpired lease on the run.
    Call it inside the fenced write's transaction."""
    if control is None or control.lease_expires_at is None or (control.owner or {}).get("id") != owner_id:
        holder = f"; it is held by {_who(control)}" if control is not None and control.owner else ""
        raise LeaseLostError(run_id, f"this process (owner {owner_id[:8]}) does not hold the run's lease{holder}")
    if now > control.lease_expires_at:
        raise LeaseLostError(
            run_id,
            f"the lease of owner {owner_id[:8]} expired {now - control.lease_expires_at:.1f}s ago: the run is LOST",
        )


def cancel_outcome(status: str, control: RunControl | None, now: float) -> str:
    """What :meth:`RunControlStore.request_cancel` does to a run with this stored status and
    control: a :class:`CancelOutcome` value (``cancelled`` means: record it CANCELLED now)."""
    if status in ENDED:
        return CancelOutcome.ENDED
    if control is not None and control.lease_expires_at is not None:
        return CancelOutcome.LOST if now > control.lease_expires_at else CancelOutcome.REQUESTED
    return CancelOutcome.CANCELLED if status == RunStatus.PENDING else CancelOutcome.REQUESTED


def cancelled_before_start(record: RunRecord, reason: str, now: float) -> RunRecord:
    """``record`` as a store writes it when a queued run is cancelled before any worker
    claimed it."""
    record.status = RunStatus.CANCELLED
    record.error = {"type": "RunCancelledError", "message": reason}
    record.finished_at = now
    return record


def record_body(data: dict[str, Any]) -> dict[str, Any]:
    """A record's ``to_dict()`` without the run-control fields, which a store keeps apart
    (``put_run`` never writes them)."""
    return {k: (None if k in CONTROL_FIELDS else v) for k, v in data.items()}


def with_control(record: RunRecord, control: RunControl | None) -> RunRecord:
    """``record`` with the stored control fields set (``get_run``/``list_runs``)."""
    if control is not None:
        record.owner = dict(control.owner) if control.owner else None
        record.heartbeat_at = control.heartbeat_at
        record.lease_expires_at = control.lease_expires_at
        record.cancel_request = dict(control.cancel_request) if control.cancel_request else None
    return record


def _who(control: RunControl | None) -> str:
    owner = (control.owner if control is not None else None) or {}
    return f"{owner.get('host')} pid {owner.get('pid')} (owner {str(owner.get('id', ''))[:8]})"


# ---- the owner's side ---------------------------------------------------------------------


class OwnerLease:
    """The lease of the process executing one run (see the module docs).

    ``claim`` writes the record and takes the lease; ``watch`` (a coroutine on the run's loop)
    renews it and reads cancel requests until ``stop``; ``owner_id`` fences every write.
    """

    def __init__(self, store: StateStore, run_id: str, *, lease_s: float, cancel_poll_s: float) -> None:
        require_run_control(store, "a lease")
        self.store: Any = store
        self.run_id = run_id
        self.owner = RunOwner.here()
        self.lease_s = lease_s
        self.cancel_poll_s = min(cancel_poll_s, lease_s / 3)
        self.renewed_at = 0.0
        self.lost: LeaseLostError | None = None
        self._stopped = False
        self._wake: asyncio.Future[None] | None = None

    @property
    def owner_id(self) -> str:
        return self.owner.id

    def claim(self, record: RunRecord) -> RunControl:
        """Write ``record`` and take the lease (raises :class:`LeaseLostError` if the run
        ended, is owned by another live process, or was LOST)."""
        record.owner = self.owner.to_dict()
        control: RunControl = self.store.claim_run(record, self.owner, self.lease_s)
        self.renewed_at = time.monotonic()
        record.heartbeat_at, record.lease_expires_at = control.heartbeat_at, control.lease_expires_at
        return control

    async def watch(self, on_cancel: Callable[[str], object], on_lost: Callable[[LeaseLostError], object]) -> None:
        """Renew the lease every ``lease_s / 3`` and read cancel requests every
        ``cancel_poll_s`` until :meth:`stop`. Calls ``on_cancel(reason)`` once when a request
        is seen, ``on_lost(error)`` when the lease is gone, then returns."""
        cancelled = False
        renew_every = self.lease_s / 3
        loop = asyncio.get_running_loop()
        warned = False
        while not self._stopped:
            slept = time.monotonic()
            # A bare future and one timer per poll (cheaper than wait_for); stop() wakes it.
            self._wake = wake = loop.create_future()
            timer = loop.call_later(self.cancel_poll_s, _wake_up, wake)
            await wake
            timer.cancel()
            if self._stopped:
                return
            held = time.monotonic() - slept - self.cancel_poll_s
            if held > self.lease_s / 3 and not warned:
                warned = True  # the loop is the lease's clock: say so before it costs the run
                log.warning(
                    "amsha: run %s: its event loop was held for %.1fs (by blocking code on the loop, or a "
                    "starved machine); the lease (runs.lease_s %gs) is lost if it is held for longer",
                    self.run_id,
                    held,
                    self.lease_s,
                )
            try:
                if time.monotonic() - self.renewed_at >= renew_every:
                    control = await _call(self.store, self.store.renew_lease, self.run_id, self.owner.id, self.lease_s)
                    self.renewed_at = time.monotonic()
                elif getattr(self.store, "cheap_control_reads", False):
                    # A read the store promises is quick (a local index lookup): no thread hop.
                    control = self.store.read_control(self.run_id)
                else:
                    control = await _call(self.store, self.store.read_control, self.run_id)
            except LeaseLostError as exc:
                self.lost = exc
                on_lost(exc)
                return
            except Exception as exc:  # a flaky store must not kill the run; the lease says when it is lost
                log.warning("amsha: run %s: reading run control failed: %s", self.run_id, exc)
                continue
            reason = control.cancel_reason
            if reason is not None and not cancelled:
                cancelled = True
                on_cancel(reason)

    def stop(self) -> None:
        """End :meth:`watch` at once (call it from the run's loop); a store call it has in
        flight completes first, so awaiting the watch task means the lease is no longer used."""
        self._stopped = True
        if self._wake is not None:
            _wake_up(self._wake)


def _wake_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# ---- writing a run's events --------------------------------------------------------------

TOKEN_FLUSH = 64
"""A run's pending tokens are written at the latest when this many have gathered."""
MAX_WRITE_FAILURES = 20
"""A run's events whose write failed are kept and tried again with later flushes, at most this
many times (the store's own retries come first)..."""
MAX_HELD_EVENTS = 100_000
"""...and while no more than this many of them wait."""


class EventWriter:
    """Writes the events of the runs on one event loop to one store, batched.

    Events gather for at most ``flush_s`` (``runs.event_flush_s``) and at most
    :data:`TOKEN_FLUSH` per run, so a reader tailing the store sees them within that time; a
    run writes what it has pending before its final record (:meth:`flush`). All the runs on
    the loop share the write: one transaction (``append_events_batch``, when the store has
    it) every ``flush_s`` however many runs stream at once, instead of one per run and event.
    A run's events are written in order, and each run's writes stay fenced by its owner id.
    """

    def __init__(self, store: StateStore, loop: asyncio.AbstractEventLoop | None, flush_s: float) -> None:
        self.store: Any = store
        self.loop = loop
        self.flush_s = flush_s
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._armed = False

    def add(
        self, run_id: str, event: dict[str, Any], *, owner: str | None, on_lost: Callable[[LeaseLostError], object]
    ) -> None:
        """Queue ``event`` of ``run_id`` (``owner``: the lease holder, for fencing)."""
        urgent = not self.flush_s or self.loop is None or event.get("kind") in TERMINAL_KINDS
        with self._lock:
            pending = self._pending.get(run_id)
            if pending is None:
                pending = self._pending[run_id] = _Pending(owner, [], on_lost)
            pending.events.append(event)
            full = len(pending.events) >= TOKEN_FLUSH
            arm = not (urgent or full or self._armed)
            if arm:
                self._armed = True
        if urgent or full:
            self.flush()
        elif arm:
            assert self.loop is not None
            try:
                self.loop.call_soon_threadsafe(self.loop.call_later, self.flush_s, self._timed)
            except RuntimeError:  # the loop has closed: write now
                self.flush()

    def _timed(self) -> None:
        self._armed = False
        self.flush()

    def drop(self, run_id: str) -> None:
        """Forget what ``run_id`` has pending (its lease is lost: nothing more is written)."""
        with self._lock:
            self._pending.pop(run_id, None)

    def flush(self) -> None:
        """Write everything pending, in one transaction when the store can."""
        with self._write_lock:  # one flush at a time: each run's events stay in order
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return
            refused, failed = self._write(batch)
            for run_id, exc in refused.items():
                batch[run_id].on_lost(exc)
            if failed:
                self._requeue({run_id: batch[run_id] for run_id in failed})

    def _write(self, batch: dict[str, _Pending]) -> tuple[dict[str, LeaseLostError], list[str]]:
        """Write ``batch``; returns the runs whose writes were refused (lease lost) and those
        whose write failed otherwise (kept, to be written with the next flush)."""
        many = getattr(self.store, "append_events_batch", None)
        if many is not None and len(batch) > 1:
            try:
                return dict(many([(run_id, p.events, p.owner) for run_id, p in batch.items()])), []
            except Exception as exc:  # all or nothing: write run by run, so one run's fault stays its own
                log.debug("amsha: a batched event write failed (%s); writing run by run", exc)
        refused: dict[str, LeaseLostError] = {}
        failed: list[str] = []
        for run_id, pending in batch.items():
            try:
                if pending.owner is not None:
                    self.store.append_events(run_id, pending.events, owner=pending.owner)
                else:
                    self.store.append_events(run_id, pending.events)
            except LeaseLostError as exc:
                refused[run_id] = exc
            except Exception as exc:
                pending.failures += 1
                if pending.failures <= MAX_WRITE_FAILURES and len(pending.events) <= MAX_HELD_EVENTS:
                    log.warning(
                        "amsha: run %s: could not persist %d events (%s); they are kept and written with "
                        "the next flush",
                        run_id,
                        len(pending.events),
                        exc,
                    )
                    failed.append(run_id)
                else:
                    log.error(
                        "amsha: run %s: %d events could not be persisted after %d attempts (%s); the run's "
                        "log in the store has a gap from seq %s",
                        run_id,
                        len(pending.events),
                        pending.failures,
                        exc,
                        pending.events[0].get("seq"),
                    )
        return refused, failed

    def _requeue(self, kept: dict[str, _Pending]) -> None:
        """Put events whose write failed back in front of what came since, in order."""
        with self._lock:
            for run_id, old in kept.items():
                newer = self._pending.pop(run_id, None)
                if newer is not None:
                    old.events.extend(newer.events)
                self._pending[run_id] = old


@dataclass(slots=True)
class _Pending:
    owner: str | None
    events: list[dict[str, Any]]
    on_lost: Callable[[LeaseLostError], object]
    failures: int = 0


# ---- the reader's side --------------------------------------------------------------------


@dataclass(slots=True)
class _Step:
    events: list[dict[str, Any]]
    done: bool


class StoreTail:
    """The events of one run as they are committed to ``store``, from ``from_seq`` on.

    Ends after the terminal event, or when the record shows the run ended without one (LOST,
    or cancelled before it started), after reading everything committed. With a store that
    has ``wait_for_events`` it waits on the store; otherwise it polls, every
    :data:`POLL_MIN_S` while events flow, backing off to ``poll_max_s`` when idle.
    """

    def __init__(
        self,
        store: StateStore,
        run_id: str,
        from_seq: int = 0,
        *,
        poll_max_s: float = 0.25,
        before_check: Callable[[], object] | None = None,
    ) -> None:
        self.before_check = before_check
        """Called before each look at the record (a worker's future that failed is settled)."""
        self.store: Any = store
        self.run_id = run_id
        self.seq = from_seq
        self.poll_max_s = max(poll_max_s, POLL_MIN_S)
        self.interval = POLL_MIN_S
        self.waits = callable(getattr(store, "wait_for_events", None))
        self._checked = time.monotonic()
        self._ended_by_record = False

    def _take(self, batch: list[dict[str, Any]]) -> _Step:
        out = []
        for raw in batch:
            if raw["seq"] < self.seq:
                continue  # a store may hand back what was already seen; never yield it twice
            if raw["seq"] > self.seq:
                # A gap: events are committed in order, so this is a reader racing a batch that
                # is still being written; read again from the gap.
                break
            out.append(raw)
            self.seq += 1
            if raw.get("kind") in TERMINAL_KINDS:
                return _Step(out, True)
        return _Step(out, False)

    def _fetch(self) -> list[dict[str, Any]]:
        if self.waits and self.interval:
            # The store returns as soon as events come; the timeout only bounds the pause
            # between record checks.
            return list(self.store.wait_for_events(self.run_id, self.seq, self.poll_max_s))
        return list(self.store.read_events(self.run_id, self.seq))

    def _ended(self) -> bool:
        """Whether the record says the run is over; then one last read follows."""
        if self.before_check is not None:
            self.before_check()
        record = self.store.get_run(self.run_id).observed()
        return record.status in RunStatus.TERMINAL

    def _after_fetch(self, step: _Step) -> bool:
        """Adjust the interval; True when the record must be checked now."""
        if step.events:
            self.interval = POLL_MIN_S
            self._checked = time.monotonic()
            return False
        self.interval = min(self.interval * 2, self.poll_max_s)
        return time.monotonic() - self._checked >= RECORD_CHECK_S

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            step = self._take(self._fetch())
            yield from step.events
            if step.done or self._ended_by_record:
                return
            if self._after_fetch(step):
                self._checked = time.monotonic()
                if self._ended():
                    self._ended_by_record = True  # one more read, for what was committed before
                    self.interval = 0
                    continue
            if not step.events and not self.waits:
                time.sleep(self.interval)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            step = self._take(await asyncio.to_thread(self._fetch) if _blocking(self.store) else self._fetch())
            for raw in step.events:
                yield raw
            if step.done or self._ended_by_record:
                return
            if self._after_fetch(step):
                self._checked = time.monotonic()
                if await _call(self.store, self._ended):
                    self._ended_by_record = True
                    self.interval = 0
                    continue
            if not step.events and not self.waits:
                await asyncio.sleep(self.interval)


def tail(store: StateStore, run_id: str, from_seq: int = 0, *, poll_max_s: float = 0.25) -> Iterator[dict[str, Any]]:
    """A run's events as they are committed (see :class:`StoreTail`), as dicts."""
    return iter(StoreTail(store, run_id, from_seq, poll_max_s=poll_max_s))


def atail(
    store: StateStore, run_id: str, from_seq: int = 0, *, poll_max_s: float = 0.25
) -> AsyncIterator[dict[str, Any]]:
    """Async twin of :func:`tail`."""
    return StoreTail(store, run_id, from_seq, poll_max_s=poll_max_s).__aiter__()


def lost_error(record: RunRecord) -> dict[str, Any]:
    """The error of a LOST run: who owned it and when it was last heard of."""
    message = str(RunLostError(record.run_id, record.owner, record.heartbeat_at))
    return {"type": "RunLostError", "message": message, "owner": record.owner, "heartbeat_at": record.heartbeat_at}


# ---- a run read through the store ---------------------------------------------------------


class StoreRun:
    """A run this process does not execute, seen through the store: attached by id, or handed
    to a worker (then ``future`` is the executor's future and ``state`` the client's state
    object, updated from the store when the run ends)."""

    def __init__(
        self,
        store: StateStore,
        run_id: str,
        *,
        poll_max_s: float = 0.25,
        future: concurrent.futures.Future[Any] | None = None,
        state: ExecutionState | None = None,
    ) -> None:
        self.store: Any = store
        self.run_id = run_id
        self.poll_max_s = poll_max_s
        self.future = future
        self.local_state = state
        self._final: RunRecord | None = None
        self._saw_end = False

    # ---- status and result ------------------------------------------------------------------

    def record(self) -> RunRecord:
        """The run's record as a reader reports it (LOST applied); cached once it ended."""
        if self._final is not None:
            return self._final
        record: RunRecord = self.store.get_run(self.run_id).observed()
        if record.status in RunStatus.TERMINAL:
            self._final = record
        return record

    def status(self) -> str:
        record = self.record()
        if self._saw_end and record.status in RunStatus.ACTIVE:
            # The owner commits the terminal event, then the final record: a reader that saw
            # the first waits the moment it takes for the second.
            try:
                record = self._poll(time.monotonic() + 5.0)
            except RunTimeoutError:
                pass
        return record.status

    def _poll(self, deadline: float | None) -> RunRecord:
        interval = 0.01
        while True:
            record = self.record()
            if record.status in RunStatus.TERMINAL:
                return record
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise RunTimeoutError(f"run {self.run_id} did not finish in time; it is still {record.status}")
            pause = min(interval, self.poll_max_s * 2, (deadline - now) if deadline is not None else 1e9)
            future = self.future
            if future is not None and not future.done():
                # The executor says when the worker is done; the record says the rest (LOST).
                concurrent.futures.wait([future], timeout=max(pause, 0.001))
                if future.done():
                    self._settle_future()
            else:
                time.sleep(max(pause, 0.001))
            interval = min(interval * 2, 1.0)

    def _settle_future(self) -> None:
        """The worker's future ended: if it never claimed the run (it failed before starting,
        or the executor dropped it), record the failure so the run does not stay PENDING."""
        assert self.future is not None
        if self.future.cancelled():
            return  # the executor dropped it: if it was never claimed, request_cancel settles it
        exc = self.future.exception()
        outcome = None if exc is not None else self.future.result()
        if exc is None and (not isinstance(outcome, dict) or outcome.get("claimed", True)):
            return
        record = self.store.get_run(self.run_id)
        if record.status != RunStatus.PENDING or record.owner:
            return  # claimed: the owner (or its lease) says how it ends
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else str((outcome or {}).get("reason"))
        record.status = RunStatus.FAILED
        record.error = {"type": "ExecutionError", "message": f"the executor did not run it: {detail}"}
        record.finished_at = time.time()
        try:
            self.store.put_run(record)
        except Exception as err:
            log.warning("amsha: run %s: could not record the executor's failure: %s", self.run_id, err)

    def wait(self, timeout: float | None) -> RunRecord:
        """Block until the run ended (or ``timeout``); returns its final record."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._poll(deadline)
        except RunTimeoutError:
            raise RunTimeoutError(
                f"run {self.run_id} did not finish within {timeout}s; it is still {self.status()}"
            ) from None

    async def await_(self, timeout: float | None) -> RunRecord:
        """Async twin of :meth:`wait`."""
        return await asyncio.to_thread(self.wait, timeout)

    def result(self, record: RunRecord) -> RunResult:
        """The :class:`~amsha.RunResult` of an ended run (raising as a local run would)."""
        from .handle import RunResult, raise_for

        state = None
        if record.state_id and record.state_version:
            state = ExecutionState.from_store(self.store, record.state_id, record.state_version)
            if self.local_state is not None and self.local_state.version < state.version:
                # The client's own state object: make it what the worker left.
                local = self.local_state
                for key in local.keys():  # noqa: SIM118 (a list: deleting while iterating)
                    if key not in state:
                        del local[key]
                local.update(state.to_dict())
                local.version, local.dirty = state.version, False
                state = local
        error = record.error
        if record.status == RunStatus.LOST:
            error = lost_error(record)
        result = RunResult(record.run_id, record.status, dict(record.outputs), state, self.metrics(), error)
        raise_for(result)
        return result

    def metrics(self) -> AmshaMetrics:
        collector = MetricsCollector(self.run_id)
        for raw in self.store.read_events(self.run_id):
            collector(Event.from_dict(raw))
        return collector.metrics

    # ---- events ------------------------------------------------------------------------------

    def _settle_if_done(self) -> None:
        if self.future is not None and self.future.done():
            self._settle_future()

    def events(self, from_seq: int) -> Iterator[Event]:
        tail = StoreTail(
            self.store, self.run_id, from_seq, poll_max_s=self.poll_max_s, before_check=self._settle_if_done
        )
        for raw in tail:
            self._saw_end = self._saw_end or raw.get("kind") in TERMINAL_KINDS
            yield Event.from_dict(raw)

    async def aevents(self, from_seq: int) -> AsyncIterator[Event]:
        tail = StoreTail(
            self.store, self.run_id, from_seq, poll_max_s=self.poll_max_s, before_check=self._settle_if_done
        )
        async for raw in tail:
            self._saw_end = self._saw_end or raw.get("kind") in TERMINAL_KINDS
            yield Event.from_dict(raw)

    # ---- cancel ------------------------------------------------------------------------------

    def cancel(self, reason: str) -> str:
        """Record a cancel request in the store; returns a :class:`CancelOutcome` value. The
        executor's future is left alone: executors differ in what cancelling a running task
        means (Dask's returns True and lets the task go on); the store decides for every one
        of them, and a queued run that a worker picks up later finds itself CANCELLED."""
        require_run_control(self.store, f"cancelling run {self.run_id} from another process")
        outcome: str = self.store.request_cancel(self.run_id, reason)
        if outcome in (CancelOutcome.CANCELLED, CancelOutcome.ENDED, CancelOutcome.LOST):
            self._final = None  # read the record again
        return outcome
