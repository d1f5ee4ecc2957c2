"""Delivery of events to observers, off the run's path.

Each observer of a session gets an :class:`ObserverChannel`: a queue and one daemon thread
that hands it events in sequence order. Emitting an event only appends to the queue, so a
slow observer (a tracing exporter on a slow network, a 1-second-per-event hook) never holds
back token streaming or the run, and an observer that raises is reported once per run and
skipped for the rest of that run; it never fails the run.

The thread gathers events for up to ``delivery_interval_s`` (default 20 ms) before handing
them over, so it wakes once per interval rather than once per run: waking a thread costs a
run on a fast provider about a fifth of its time, while 20 ms of delay is invisible to a
console, a trace or a dashboard. ``0`` hands each event over as soon as the thread is free.

``ExecutionSession.flush_observers()`` waits until every observer has seen every event so
far (the CLI calls it before printing a summary); ``ExecutionSession.close()`` drains the
queues, waiting at most each observer's ``drain_timeout_s``, then closes the observers. At
interpreter exit, what is still queued is handed over too (within ``drain_timeout_s``).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from typing import Any

from .events import Event, Observer

__all__ = ["DELIVERY_INTERVAL_S", "ObserverChannel", "ObserverError"]

log = logging.getLogger("amsha")

DELIVERY_INTERVAL_S = 0.02
"""How long an observer's thread gathers events before handing them over, by default."""
BATCH_MAX = 4096
"""Queued events that make the thread hand over at once, without waiting out the interval."""

# Channels with a live thread: at interpreter exit, each hands over what is still queued.
_live: weakref.WeakSet[ObserverChannel] = weakref.WeakSet()
_exit_hook = False
_exit_lock = threading.Lock()


def _drain_at_exit() -> None:
    for channel in list(_live):
        channel.flush(channel.drain_timeout_s)


def _after_fork_in_child() -> None:
    """A forked child (a pre-forking server's worker, say) has none of the parent's threads
    and maybe a lock the parent held mid-fork: its channels start afresh, with a thread of
    their own on their first event. Events queued in the parent are the parent's to deliver."""
    global _exit_lock
    _exit_lock = threading.Lock()
    for channel in list(_live):
        channel._fresh_thread_state()
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ObserverError:
    """What an observer raised, as reported: the observer, the run, the event and the error."""

    __slots__ = ("error", "event_kind", "observer", "run_id")

    def __init__(self, observer: str, run_id: str, event_kind: str, error: BaseException) -> None:
        self.observer = observer
        self.run_id = run_id
        self.event_kind = event_kind
        self.error = f"{type(error).__name__}: {error}"

    def __repr__(self) -> str:
        return f"ObserverError({self.observer!r}, run {self.run_id}, on {self.event_kind}: {self.error})"


class ObserverChannel:
    """One observer's queue and delivery thread.

    ``queue_max`` bounds the events waiting for a slow observer: beyond it, new events are
    dropped for that observer only (counted in ``dropped`` and reported once per run), so
    memory stays bounded whatever the observer does. The run itself never waits.

    ``delivery_interval_s`` is how long the thread gathers events before handing them over
    (see the module's docstring); ``None`` takes the observer's own ``delivery_interval_s``
    attribute if it has one, else :data:`DELIVERY_INTERVAL_S`.
    """

    def __init__(
        self,
        observer: Observer,
        name: str,
        *,
        queue_max: int = 100_000,
        drain_timeout_s: float = 5.0,
        delivery_interval_s: float | None = None,
    ) -> None:
        self.observer = observer
        self.name = name
        self.queue_max = queue_max
        self.drain_timeout_s = drain_timeout_s
        if delivery_interval_s is None:
            delivery_interval_s = getattr(observer, "delivery_interval_s", None)
        self.delivery_interval_s: float = DELIVERY_INTERVAL_S if delivery_interval_s is None else delivery_interval_s
        # A large backlog is handed over at once rather than at the end of the interval.
        self._batch_max = min(BATCH_MAX, queue_max)
        self.errors: list[ObserverError] = []
        self.dropped = 0
        self._closed = False
        self._queue: collections.deque[Event]
        self._cond: threading.Condition
        self._thread: threading.Thread | None
        self._busy: bool
        self._flushing: int  # threads waiting in flush(): the worker hands over at once
        self._fresh_thread_state()
        self._broken_runs: set[str] = set()
        self._full_runs: set[str] = set()
        # An observer may name event kinds it ignores (e.g. ``llm.token``): those are never
        # queued for it, which keeps the per-token cost off observers that do not use tokens.
        self.ignored_kinds: frozenset[str] = frozenset(getattr(observer, "ignored_event_kinds", None) or ())

    # ---- producer side (the run's emitting thread) ---------------------------------------

    def submit(self, event: Event) -> None:
        """Queue ``event`` for the observer; never blocks, never raises."""
        if event.kind in self.ignored_kinds:
            return
        with self._cond:
            if self._closed or event.run_id in self._broken_runs:
                return
            if len(self._queue) >= self.queue_max:
                self.dropped += 1
                if event.run_id not in self._full_runs:
                    self._full_runs.add(event.run_id)
                    log.warning(
                        "amsha: observer %s is %d events behind; further events of run %s are dropped for it",
                        self.name,
                        len(self._queue),
                        event.run_id,
                    )
                return
            self._queue.append(event)
            if self._thread is None:
                self._start()
            queued = len(self._queue)
            if queued == 1 or queued == self._batch_max:
                # The worker may be asleep on an empty queue; with more queued it is gathering
                # (or busy) and hands over when the interval ends, or now if the queue is large.
                self._cond.notify_all()

    def _fresh_thread_state(self) -> None:
        """The queue, lock and thread as a new channel has them (also in a forked child,
        which has none of the parent's threads and maybe a lock held mid-fork)."""
        self._cond = threading.Condition(threading.Lock())
        self._queue = collections.deque()
        self._thread = None
        self._busy = False
        self._flushing = 0

    def _start(self) -> None:
        global _exit_hook
        self._thread = threading.Thread(target=self._work, name=f"amsha-observer-{self.name}", daemon=True)
        self._thread.start()
        _live.add(self)
        with _exit_lock:
            # Registered after the first observer exists, so it runs before the exit hooks of
            # what the observer set up earlier (an OpenTelemetry provider's shutdown, say).
            if not _exit_hook:
                atexit.register(_drain_at_exit)
                _exit_hook = True

    # ---- consumer side (the channel's thread) --------------------------------------------

    def _work(self) -> None:
        interval = self.delivery_interval_s
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                if interval > 0:
                    deadline = time.monotonic() + interval
                    while not (self._closed or self._flushing) and len(self._queue) < self._batch_max:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                # Everything queued at once: one lock round trip per batch, not per event.
                batch, self._queue = self._queue, collections.deque()
                self._busy = True
            try:
                on_event = self.observer.on_event
                broken = self._broken_runs
                for event in batch:
                    if event.run_id in broken:
                        continue
                    try:
                        on_event(event)
                    except Exception as exc:
                        self._report(event, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _report(self, event: Event, exc: BaseException) -> None:
        error = ObserverError(self.name, event.run_id, event.kind, exc)
        with self._cond:
            self._broken_runs.add(event.run_id)
            self.errors.append(error)
            # The rest of that run's events are of no use to this observer.
            self._queue = collections.deque(e for e in self._queue if e.run_id != event.run_id)
        log.warning(
            "amsha: run %s: observer %s raised %s on %s; it is skipped for the rest of this run",
            event.run_id,
            self.name,
            error.error,
            event.kind,
        )

    # ---- waiting and closing -------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event has been handed over; False if ``timeout`` expired."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()  # a gathering worker hands over now
            try:
                while self._queue or self._busy:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float | None = None) -> None:
        """Drain (waiting at most ``timeout``, default ``drain_timeout_s``), stop the thread
        and close the observer. Events still queued after the wait are dropped and reported."""
        drained = self.flush(self.drain_timeout_s if timeout is None else timeout)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self._closed = True
            self._cond.notify_all()
        _live.discard(self)
        if not drained:
            self.dropped += left
            log.warning(
                "amsha: observer %s did not keep up: %d events were not delivered when the session closed",
                self.name,
                left,
            )
        close = getattr(self.observer, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # closing must not fail the client's shutdown
                log.warning("amsha: closing observer %s failed", self.name, exc_info=True)

    def __repr__(self) -> str:
        return f"ObserverChannel({self.name!r}, queued={len(self._queue)}, dropped={self.dropped})"


def observer_name(observer: Any, fallback: str) -> str:
    """A readable name for log lines: the observer's ``name`` attribute, else its class."""
    name = getattr(observer, "name", None)
    return name if isinstance(name, str) and name else fallback or type(observer).__name__
