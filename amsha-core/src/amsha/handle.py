"""``ExecutionHandle``: what every run returns, and ``RunResult``: what it ends with.

A handle abstracts sync vs async, streaming vs not, local vs another process:
``status()``, ``result(timeout)``, ``stream()``, ``cancel()`` and their async twins. A
handle of a run in this process reads its live event log; a handle attached by ``run_id``
(``session.attach``) reads the shared store and polls it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import RunCancelledError, RunFailedError, RunTimeoutError, error_from_dict
from .events import TERMINAL_KINDS, Event, RunEventLog
from .metrics import AmshaMetrics, MetricsCollector
from .state import ExecutionState, RunRecord, RunStatus, StateStore

if TYPE_CHECKING:
    from .session import _Run

__all__ = ["ExecutionHandle", "ExecutionMode", "RunResult"]


class ExecutionMode(enum.StrEnum):
    """How a run executes.

    ``INTERACTIVE``: streaming, token by token, cancelable; closing the stream early cancels
    the run (unless it was started with ``detach=True``). ``BACKGROUND``: detached, pollable,
    serializable; it may run on an executor the client hands in.
    """

    INTERACTIVE = "interactive"
    BACKGROUND = "background"


@dataclass(slots=True)
class RunResult:
    """The end of a run: outputs by task name, the state, metrics, and the error if any."""

    run_id: str
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    state: ExecutionState | None = None
    metrics: AmshaMetrics | None = None
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "outputs": self.outputs,
            "state": {"state_id": self.state.state_id, "version": self.state.version} if self.state else None,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "error": self.error,
        }


POLL_S = 0.05


class ExecutionHandle:
    """The client's grip on one run. Create runs with ``ExecutionSession.run``/``arun``."""

    def __init__(
        self,
        run_id: str,
        mode: ExecutionMode,
        *,
        run: _Run | None = None,
        store: StateStore | None = None,
        detach: bool = False,
    ) -> None:
        self.run_id = run_id
        self.mode = mode
        self.detached = detach
        self._run = run
        self._store = store

    def __repr__(self) -> str:
        return f"ExecutionHandle(run_id={self.run_id!r}, mode={self.mode.value}, status={self.status()})"

    # ---- status and result --------------------------------------------------------------

    def status(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or CANCELLED."""
        if self._run is not None:
            return self._run.status
        assert self._store is not None
        return self._store.get_run(self.run_id).status

    def done(self) -> bool:
        return self.status() in RunStatus.TERMINAL

    def result(self, timeout: float | None = None) -> RunResult:
        """Wait for the run and return its :class:`RunResult`.

        Raises :class:`RunFailedError` (``cause`` is the original error) or
        :class:`RunCancelledError`; :class:`RunTimeoutError` if ``timeout`` seconds pass
        first (the run goes on).
        """
        if self._run is not None:
            try:
                self._run.done.result(timeout)
            except concurrent.futures.TimeoutError:
                raise RunTimeoutError(
                    f"run {self.run_id} did not finish within {timeout}s; it is still {self.status()}"
                ) from None
            return self._run.outcome()
        return self._poll_result(timeout)

    async def aresult(self, timeout: float | None = None) -> RunResult:
        """Async twin of :meth:`result`."""
        if self._run is not None:
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._run.done)), timeout)
            except TimeoutError:
                raise RunTimeoutError(
                    f"run {self.run_id} did not finish within {timeout}s; it is still {self.status()}"
                ) from None
            return self._run.outcome()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self._record()
            if record.status in RunStatus.TERMINAL:
                return _result_from_record(record, self._store)
            if deadline is not None and time.monotonic() > deadline:
                raise RunTimeoutError(
                    f"run {self.run_id} did not finish within {timeout}s; it is still {record.status}"
                )
            await asyncio.sleep(POLL_S)

    def _record(self) -> RunRecord:
        assert self._store is not None
        return self._store.get_run(self.run_id)

    def _poll_result(self, timeout: float | None) -> RunResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self._record()
            if record.status in RunStatus.TERMINAL:
                return _result_from_record(record, self._store)
            if deadline is not None and time.monotonic() > deadline:
                raise RunTimeoutError(
                    f"run {self.run_id} did not finish within {timeout}s; it is still {record.status}"
                )
            time.sleep(POLL_S)

    # ---- streaming ----------------------------------------------------------------------

    def stream(self, from_seq: int = 0, *, kinds: Iterable[str] | None = None) -> Iterator[Event]:
        """Every event of the run from ``from_seq`` on, live, ending after the terminal one.

        Replays what was missed first, so a consumer that reconnects with the last ``seq`` it
        saw plus one loses nothing. ``kinds`` filters (``{"llm.token"}`` for text only).
        Closing this iterator early cancels an INTERACTIVE run unless it was detached.
        """
        wanted = frozenset(kinds) if kinds is not None else None
        finished = False
        try:
            for event in self._events(from_seq):
                if event.kind in TERMINAL_KINDS:
                    finished = True
                if wanted is None or event.kind in wanted:
                    yield event
            finished = True
        finally:
            if not finished:
                self._consumer_left()

    def stream_text(self) -> Iterator[str]:
        """Just the streamed text, token by token."""
        for event in self.stream(kinds=("llm.token",)):
            yield event.text

    def _events(self, from_seq: int) -> Iterator[Event]:
        if self._run is not None:
            log = self._run.log
            seen = from_seq
            while True:
                if len(log.events) > seen:
                    batch = log.events[seen:]
                    seen += len(batch)
                    yield from batch
                    continue
                if log.closed:
                    return
                log.wait(seen, 1.0)
        else:
            yield from self._poll_events(from_seq)

    def _poll_events(self, from_seq: int) -> Iterator[Event]:
        assert self._store is not None
        seq = from_seq
        while True:
            batch = self._store.read_events(self.run_id, seq)
            for raw in batch:
                event = Event.from_dict(raw)
                seq = event.seq + 1
                yield event
                if event.kind in TERMINAL_KINDS:
                    return
            if not batch:
                if self._record().status in RunStatus.TERMINAL and not self._store.read_events(self.run_id, seq):
                    return
                time.sleep(POLL_S)

    async def astream(self, from_seq: int = 0, *, kinds: Iterable[str] | None = None) -> AsyncIterator[Event]:
        """Async twin of :meth:`stream`."""
        wanted = frozenset(kinds) if kinds is not None else None
        finished = False
        try:
            async for event in self._aevents(from_seq):
                if event.kind in TERMINAL_KINDS:
                    finished = True
                if wanted is None or event.kind in wanted:
                    yield event
            finished = True
        finally:
            if not finished:
                self._consumer_left()

    async def astream_text(self) -> AsyncIterator[str]:
        """Async twin of :meth:`stream_text`."""
        async for event in self.astream(kinds=("llm.token",)):
            yield event.text

    async def _aevents(self, from_seq: int) -> AsyncIterator[Event]:
        if self._run is None:
            assert self._store is not None
            seq = from_seq
            while True:
                batch = await asyncio.to_thread(self._store.read_events, self.run_id, seq)
                for raw in batch:
                    event = Event.from_dict(raw)
                    seq = event.seq + 1
                    yield event
                    if event.kind in TERMINAL_KINDS:
                        return
                if not batch:
                    record = await asyncio.to_thread(self._record)
                    if record.status in RunStatus.TERMINAL and not self._store.read_events(self.run_id, seq):
                        return
                    await asyncio.sleep(POLL_S)
        log: RunEventLog = self._run.log
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def notify() -> None:
            loop.call_soon_threadsafe(wake.set)

        log.add_async_waiter(notify)
        seen = from_seq
        try:
            while True:
                wake.clear()
                if len(log.events) > seen:
                    fresh = log.events[seen:]
                    seen += len(fresh)
                    for item in fresh:
                        yield item
                    continue
                if log.closed:
                    return
                await wake.wait()
        finally:
            log.remove_async_waiter(notify)

    def _consumer_left(self) -> None:
        if self.mode is ExecutionMode.INTERACTIVE and not self.detached and not self.done():
            self.cancel("the stream's consumer went away")

    # ---- cancel -------------------------------------------------------------------------

    def cancel(self, reason: str = "cancelled by the client") -> bool:
        """Cancel the run: the provider stream is closed, the status becomes CANCELLED and the
        last state snapshot is kept. Idempotent; returns False if the run had already ended."""
        if self._run is None:
            raise RunCancelledError(self.run_id, "cannot cancel a run attached from the store; cancel it where it runs")
        return self._run.cancel(reason)

    async def acancel(self, reason: str = "cancelled by the client") -> bool:
        """Async twin of :meth:`cancel`; waits until the run has recorded CANCELLED."""
        changed = self.cancel(reason)
        if self._run is not None:
            await asyncio.wrap_future(self._run.done)
        return changed

    # ---- more ---------------------------------------------------------------------------

    @property
    def state(self) -> ExecutionState | None:
        """The state this run writes into."""
        return self._run.state if self._run is not None else None

    @property
    def metrics(self) -> AmshaMetrics:
        """Metrics so far (final once the run ended)."""
        if self._run is not None:
            return self._run.collector.metrics
        assert self._store is not None
        collector = MetricsCollector(self.run_id)
        for raw in self._store.read_events(self.run_id):
            collector(Event.from_dict(raw))
        return collector.metrics

    def to_json(self) -> str:
        """What another process needs to attach: ``session.attach(handle_json)``."""
        return json.dumps({"run_id": self.run_id, "mode": self.mode.value})


def _result_from_record(record: RunRecord, store: StateStore | None) -> RunResult:
    state = None
    if store is not None and record.state_id and record.state_version:
        state = ExecutionState.from_store(store, record.state_id, record.state_version)
    metrics = None
    if store is not None:
        collector = MetricsCollector(record.run_id)
        for raw in store.read_events(record.run_id):
            collector(Event.from_dict(raw))
        metrics = collector.metrics
    result = RunResult(record.run_id, record.status, dict(record.outputs), state, metrics, record.error)
    raise_for(result)
    return result


def raise_for(result: RunResult, cause: BaseException | None = None) -> None:
    if result.status == RunStatus.FAILED:
        error = result.error or {"type": "Error", "message": "unknown"}
        failed = RunFailedError(result.run_id, error, cause or error_from_dict(error))
        failed.result = result
        raise failed
    if result.status == RunStatus.CANCELLED:
        reason = (result.error or {}).get("message", "cancelled")
        cancelled = RunCancelledError(result.run_id, reason)
        cancelled.result = result
        raise cancelled
