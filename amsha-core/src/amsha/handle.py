"""``ExecutionHandle``: what every run returns, and ``RunResult``: what it ends with.

A handle abstracts sync vs async, streaming vs not, local vs another process:
``status()``, ``result(timeout)``, ``stream()``, ``cancel()`` and their async twins. A
handle of a run in this process reads its live event log; a handle of a run executing
elsewhere (attached by ``run_id``, or handed to a worker) reads the shared store through
:class:`amsha.runcontrol.StoreRun`, with the same semantics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import AmshaError, RunCancelledError, RunFailedError, RunLostError, RunTimeoutError, error_from_dict
from .events import TERMINAL_KINDS, Event, RunEventLog
from .metrics import AmshaMetrics
from .runcontrol import StoreRun
from .state import CancelOutcome, ExecutionState, RunStatus, StateStore

if TYPE_CHECKING:
    from ._run import _Run

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


class ExecutionHandle:
    """The client's grip on one run. Create runs with ``ExecutionSession.run``/``arun``, or
    attach to one by id with ``ExecutionSession.attach``.

    The same API wherever the run executes: in this process (events come from the run's
    live log), or in another process or machine that shares the store (a worker, a detached
    ``amsha run``, an attached id: events are tailed from the store as they are committed,
    status comes from the store with LOST applied, and cancel is a request recorded in the
    store that the run's owner acts on within ``runs.cancel_poll_s``).
    """

    def __init__(
        self,
        run_id: str,
        mode: ExecutionMode,
        *,
        run: _Run | None = None,
        store: StateStore | None = None,
        detach: bool = False,
        poll_max_s: float = 0.25,
    ) -> None:
        self.run_id = run_id
        self.mode = mode
        self.detached = detach
        self._run = run
        # A run executing elsewhere is read through the store: attached, or handed to a worker.
        if run is not None:
            self._view: StoreRun | None = run.remote
        else:
            assert store is not None
            self._view = StoreRun(store, run_id, poll_max_s=poll_max_s)

    def __repr__(self) -> str:
        return f"ExecutionHandle(run_id={self.run_id!r}, mode={self.mode.value}, status={self.status()})"

    # ---- status and result --------------------------------------------------------------

    def status(self) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED or LOST."""
        if self._view is not None:
            return self._view.status()
        assert self._run is not None
        return self._run.status

    def done(self) -> bool:
        """True once the run ended (LOST included)."""
        return self.status() in RunStatus.TERMINAL

    def result(self, timeout: float | None = None) -> RunResult:
        """Wait for the run and return its :class:`RunResult`.

        Raises :class:`RunFailedError` (``cause`` is the original error),
        :class:`RunCancelledError`, or :class:`RunLostError` when the run's owner stopped
        renewing its lease (it never hangs on a dead owner); :class:`RunTimeoutError` if
        ``timeout`` seconds pass first (the run goes on).
        """
        if self._view is not None:
            return self._view.result(self._view.wait(timeout))
        assert self._run is not None
        try:
            self._run.done.result(timeout)
        except concurrent.futures.TimeoutError:
            raise RunTimeoutError(
                f"run {self.run_id} did not finish within {timeout}s; it is still {self.status()}"
            ) from None
        return self._run.outcome()

    async def aresult(self, timeout: float | None = None) -> RunResult:
        """Async twin of :meth:`result`."""
        if self._view is not None:
            return self._view.result(await self._view.await_(timeout))
        assert self._run is not None
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._run.done)), timeout)
        except TimeoutError:
            raise RunTimeoutError(
                f"run {self.run_id} did not finish within {timeout}s; it is still {self.status()}"
            ) from None
        return self._run.outcome()

    # ---- streaming ----------------------------------------------------------------------

    def stream(self, from_seq: int = 0, *, kinds: Iterable[str] | None = None) -> Iterator[Event]:
        """Every event of the run from ``from_seq`` on, live, ending after the terminal one
        (or, for a LOST run, after the last one it committed).

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
        if self._view is not None:
            yield from self._view.events(from_seq)
            return
        assert self._run is not None
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
        if self._view is not None:
            async for event in self._view.aevents(from_seq):
                yield event
            return
        assert self._run is not None
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
        """Cancel the run, wherever it executes: the provider stream is closed, the run records
        CANCELLED with the partial text in its outputs and the usage so far, and the last state
        snapshot is kept. For a run in another process this records a cancel request in the
        store, which the run's owner acts on within ``runs.cancel_poll_s``.

        Idempotent. Returns True if this call asked the run to stop; False if the run had
        already ended (or was LOST, or already asked): cancelling a finished run changes
        nothing.
        """
        if self._view is not None:
            outcome = self._view.cancel(reason)
            return outcome in (CancelOutcome.REQUESTED, CancelOutcome.CANCELLED)
        assert self._run is not None
        return self._run.cancel(reason)

    async def acancel(self, reason: str = "cancelled by the client") -> bool:
        """Async twin of :meth:`cancel`; waits until the run has ended."""
        changed = await asyncio.to_thread(self.cancel, reason) if self._view is not None else self.cancel(reason)
        if self._view is not None:
            try:
                await self._view.await_(None)
            except AmshaError:
                pass
        else:
            assert self._run is not None
            await asyncio.wrap_future(self._run.done)
        return changed

    # ---- more ---------------------------------------------------------------------------

    @property
    def state(self) -> ExecutionState | None:
        """The state this run writes into (None for a run attached by id)."""
        return self._run.state if self._run is not None else None

    @property
    def metrics(self) -> AmshaMetrics:
        """Metrics so far (final once the run ended)."""
        if self._view is not None:
            return self._view.metrics()
        assert self._run is not None
        return self._run.collector.metrics

    def to_json(self) -> str:
        """What another process needs to attach: ``session.attach(handle_json)``."""
        return json.dumps({"run_id": self.run_id, "mode": self.mode.value})


def raise_for(result: RunResult, cause: BaseException | None = None) -> None:
    """Raise the error a handle raises for a run that ended as ``result`` says (nothing for
    SUCCEEDED)."""
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
    if result.status == RunStatus.LOST:
        error = result.error or {}
        lost = RunLostError(result.run_id, error.get("owner"), error.get("heartbeat_at"))
        lost.result = result
        raise lost
