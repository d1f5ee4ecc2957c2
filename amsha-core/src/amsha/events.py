"""Typed, versioned, JSON-serializable lifecycle events.

Every event carries the run id and a gap-free sequence number within that run, a
timestamp, the id of the span it speaks about (the run, a task, an LLM call, a tool call)
and that span's parent, so observers can rebuild the tree. Two runs never share an event
stream. Events are what observers see, what stores persist, what metrics are computed from
and what replay reads back.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from . import secrets as _secrets
from .errors import SchemaVersionError
from .secrets import StreamScrubber, redact_obj

__all__ = ["EVENT_SCHEMA", "Event", "EventKind", "Observer", "RunEventLog"]

EVENT_SCHEMA = 1
"""Schema version stamped on every event; an unknown version fails on load."""


class EventKind(enum.StrEnum):
    """The kinds of events Amsha emits. Orchestrators may add ``framework.*`` kinds."""

    RUN_STARTED = "run.started"
    RUN_FINISHED = "run.finished"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    TASK_STARTED = "task.started"
    TASK_FINISHED = "task.finished"
    TASK_FAILED = "task.failed"
    AGENT_STARTED = "agent.started"
    AGENT_FINISHED = "agent.finished"
    LLM_STARTED = "llm.started"
    LLM_TOKEN = "llm.token"
    LLM_RETRY = "llm.retry"
    LLM_FINISHED = "llm.finished"
    LLM_FAILED = "llm.failed"
    TOOL_STARTED = "tool.started"
    TOOL_FINISHED = "tool.finished"
    TOOL_FAILED = "tool.failed"
    STATE_SNAPSHOT = "state.snapshot"
    OBSERVER_ERROR = "observer.error"
    FRAMEWORK = "framework"


TERMINAL_KINDS = frozenset({"run.finished", "run.failed", "run.cancelled"})


@dataclass(slots=True)
class Event:
    """One lifecycle event.

    ``kind`` is an :class:`EventKind` value (a plain string, so third-party kinds work);
    ``span_id`` names what the event is about and ``parent_id`` its parent span;
    ``task``/``agent`` are set when the event happens inside one; ``data`` is kind-specific
    JSON (for ``llm.token``: ``{"text": ...}``).
    """

    kind: str
    run_id: str
    seq: int
    ts: float
    span_id: str
    parent_id: str | None = None
    task: str | None = None
    agent: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The token text for ``llm.token`` events, else ''."""
        return str(self.data.get("text", "")) if self.kind == "llm.token" else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": EVENT_SCHEMA,
            "kind": self.kind,
            "run_id": self.run_id,
            "seq": self.seq,
            "ts": self.ts,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "task": self.task,
            "agent": self.agent,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        schema = data.get("schema", EVENT_SCHEMA)
        if schema != EVENT_SCHEMA:
            raise SchemaVersionError(
                f"event schema {schema!r} is not readable by this release (it reads schema {EVENT_SCHEMA}); "
                f"upgrade amsha-core"
            )
        return cls(
            kind=data["kind"],
            run_id=data["run_id"],
            seq=data["seq"],
            ts=data["ts"],
            span_id=data["span_id"],
            parent_id=data.get("parent_id"),
            task=data.get("task"),
            agent=data.get("agent"),
            data=data.get("data") or {},
        )


@runtime_checkable
class Observer(Protocol):
    """Receives every event of the runs of the session it is attached to.

    ``on_event`` is called in event order. An observer that raises is reported once (an
    ``observer.error`` event and a warning) and then skipped for the rest of that run; it
    never fails the run. ``close`` is called when the session closes.

    Optional: an ``ignored_event_kinds`` attribute (a collection of kinds, e.g.
    ``{"llm.token"}``) names events the observer is never sent; unset, it gets every event.
    Optional: a ``run_links(run_id) -> Mapping[str, str]`` method is called in the caller's
    thread when a run starts; what it returns is carried on ``run.started`` as ``links`` (a
    tracing observer passes the caller's ``traceparent`` this way).
    """

    def on_event(self, event: Event) -> None: ...

    def close(self) -> None: ...


class RunEventLog:
    """The ordered, gap-free event stream of one run.

    Thread-safe: orchestrators may emit from worker threads. Holds every event in memory
    for ``stream()`` consumers (sync, through a condition; async, through per-waiter
    wake-ups), hands each one to the sinks (observers, the store) in sequence order.
    """

    def __init__(self, run_id: str, sinks: list[Callable[[Event], None]] | None = None) -> None:
        self.run_id = run_id
        self.events: list[Event] = []
        self.closed = False
        self._sinks = list(sinks or [])
        self._lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._async_waiters: list[Callable[[], None]] = []
        self._scrubbers: dict[str, tuple[StreamScrubber, str | None, str | None, str | None]] = {}

    def add_sink(self, sink: Callable[[Event], None]) -> None:
        self._sinks.append(sink)

    def emit(
        self,
        kind: str,
        span_id: str,
        parent_id: str | None = None,
        *,
        task: str | None = None,
        agent: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event:
        """Append an event; sequence numbers are assigned here, gap-free.

        Registered secrets are scrubbed here, before any sink (store, observer, stream
        consumer) sees the event. A token's text goes through the call's
        :class:`~amsha.secrets.StreamScrubber`, so a secret split across tokens is scrubbed
        too: text that may be the start of one is held back and sent with the next token,
        or as a last ``llm.token`` of the call just before its ``llm.finished`` /
        ``llm.failed`` (or the run's end).
        """
        if not _secrets.ACTIVE:
            # One lock for numbering and dispatch keeps sinks in sequence order even when
            # several threads emit at once.
            with self._lock:
                event = Event(
                    kind, self.run_id, len(self.events), time.time(), span_id, parent_id, task, agent, data or {}
                )
                self.events.append(event)
                for sink in self._sinks:
                    sink(event)
            self._wake()
            return event
        return self._emit_scrubbed(kind, span_id, parent_id, task, agent, data)

    def _emit_scrubbed(
        self,
        kind: str,
        span_id: str,
        parent_id: str | None,
        task: str | None,
        agent: str | None,
        data: dict[str, Any] | None,
    ) -> Event:
        token = kind == "llm.token"
        if data and not token:
            data = redact_obj(data)
        with self._lock:
            if token:
                entry = self._scrubbers.get(span_id)
                if entry is None:
                    entry = self._scrubbers[span_id] = (StreamScrubber(), parent_id, task, agent)
                text = data.get("text", "") if data else ""
                data = (
                    {**data, "text": entry[0].feed(text if type(text) is str else str(text))} if data else {"text": ""}
                )
            elif self._scrubbers:
                if kind in TERMINAL_KINDS:
                    for held_span in list(self._scrubbers):
                        self._flush_scrubber(held_span)
                elif span_id in self._scrubbers:
                    self._flush_scrubber(span_id)
            event = Event(kind, self.run_id, len(self.events), time.time(), span_id, parent_id, task, agent, data or {})
            self._dispatch(event)
        self._wake()
        return event

    def _flush_scrubber(self, span_id: str) -> None:
        scrubber, parent_id, task, agent = self._scrubbers.pop(span_id)
        held = scrubber.flush()
        if held:
            self._dispatch(
                Event(
                    "llm.token",
                    self.run_id,
                    len(self.events),
                    time.time(),
                    span_id,
                    parent_id,
                    task,
                    agent,
                    {"text": held},
                )
            )

    def _dispatch(self, event: Event) -> None:
        self.events.append(event)
        for sink in self._sinks:
            sink(event)

    def close(self) -> None:
        """No more events will come; wakes every waiting consumer."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
        if self._async_waiters:
            for wake in list(self._async_waiters):
                wake()

    def wait(self, seen: int, timeout: float | None = None) -> bool:
        """Block until there are more than ``seen`` events or the log is closed."""
        with self._cond:
            if len(self.events) > seen or self.closed:
                return True
            return self._cond.wait(timeout)

    def add_async_waiter(self, wake: Callable[[], None]) -> None:
        self._async_waiters.append(wake)

    def remove_async_waiter(self, wake: Callable[[], None]) -> None:
        try:
            self._async_waiters.remove(wake)
        except ValueError:
            pass
