"""Delivery of events to observers, off the run's path.

Each observer of a session gets an :class:`ObserverChannel`: a queue and one daemon thread
that hands it events in sequence order. Emitting an event only appends to the queue, so a
slow observer (a tracing exporter on a slow network, a 1-second-per-event hook) never holds
back token streaming or the run, and an observer that raises is reported once per run and
skipped for the rest of that run; it never fails the run.

``ExecutionSession.flush_observers()`` waits until every observer has seen every event so
far (the CLI calls it before printing a summary); ``ExecutionSession.close()`` drains the
queues, waiting at most each observer's ``drain_timeout_s``, then closes the observers.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from .events import Event, Observer

__all__ = ["ObserverChannel", "ObserverError"]

log = logging.getLogger("amsha")


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
    """

    def __init__(self, observer: Observer, name: str, *, queue_max: int = 100_000, drain_timeout_s: float = 5.0) -> None:
        self.observer = observer
        self.name = name
        self.queue_max = queue_max
        self.drain_timeout_s = drain_timeout_s
        self.errors: list[ObserverError] = []
        self.dropped = 0
        self._queue: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
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
                self._thread = threading.Thread(target=self._work, name=f"amsha-observer-{self.name}", daemon=True)
                self._thread.start()
            if len(self._queue) == 1:
                self._cond.notify_all()  # the worker may be asleep; with more queued it is awake

    # ---- consumer side (the channel's thread) --------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
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
            while self._queue or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
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
