"""Events of LLM calls made outside any run (``session.llm().generate(...)``, spec 2.4).

A call through a session's LLM that is not bound to a run gets a scope of its own: an id
(``call-<hex>``), a gap-free event stream framed as a run's is (``run.started`` with
``mode: "standalone"``, the call's ``llm.*`` events, then ``run.finished``,
``run.failed`` or ``run.cancelled`` carrying the scope's :class:`~amsha.AmshaMetrics`),
delivered through the session's observer channels like any run's events, so consoles,
JSONL files and traces see standalone calls too. The session also sums every standalone
call's usage in :attr:`StandaloneScope.totals` (``session.llm_totals``).

A standalone call is not a run: it has no run record and its events are not written to the
state store (a call that should be recorded belongs in a run). In a session with no
observers a call emits nothing and is only counted (a few microseconds); with observers it
costs one small event log and four events, the same events a call in a run emits.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import AmshaError, RunCancelledError
from .events import Event, RunEventLog
from .llm import CallContext
from .metrics import CallMetrics, MetricsCollector, UsageTotals
from .provider import Usage

if TYPE_CHECKING:
    from .llm import LLM
    from .provider import LLMRequest, LLMResponse

__all__ = ["StandaloneScope"]


class _ScopeLog(RunEventLog):
    """A standalone call's event log: nobody can wait on it (it is the call's own), so an
    event wakes no one."""

    def _wake(self) -> None:
        pass


class _ScopeContext(CallContext):
    __slots__ = ("collector", "started")

    def __init__(self, log: RunEventLog, collector: MetricsCollector) -> None:
        super().__init__(log, log.run_id)
        self.collector = collector
        self.started = time.time()


class StandaloneScope:
    """The :class:`~amsha.llm.CallScope` of a session's LLMs (see the module docs).

    ``sinks``: where each event goes (the session's observer channels). ``links``: called
    with the scope id in the caller's thread, as a run's start does, for what observers
    carry on ``run.started`` (a tracing observer's ``traceparent``)."""

    def __init__(
        self,
        sinks: Sequence[Callable[[Event], None]],
        links: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        self._sinks = list(sinks)
        self._links = links
        self._lock = threading.Lock()
        self.totals = UsageTotals()
        """Usage, latency, retries and errors of every standalone call so far."""

    def open(self, llm: LLM, request: LLMRequest) -> CallContext | None:
        if not self._sinks:
            return None  # no observer to tell: the call is only counted (see close)
        scope_id = f"call-{random.getrandbits(64):016x}"  # as a call id: no os.urandom per call
        collector = MetricsCollector(scope_id)
        log = _ScopeLog(scope_id, [collector, *self._sinks])
        data: dict[str, Any] = {"mode": "standalone", "tasks": [], "orchestrator": None, "llm": llm.name}
        links = self._links(scope_id) if self._links is not None else None
        if links:
            data["links"] = dict(links)
        log.emit("run.started", scope_id, None, data=data)
        return _ScopeContext(log, collector)

    def close(self, ctx: CallContext | None, outcome: BaseException | str | None, response: LLMResponse) -> None:
        if ctx is None:
            self._count(outcome, response)
            return
        if not isinstance(ctx, _ScopeContext) or ctx.log is None or ctx.log.closed:
            return
        log, collector = ctx.log, ctx.collector
        data: dict[str, Any]
        if outcome is None:
            kind, data = "run.finished", {}
        elif outcome == "cancelled" or isinstance(outcome, RunCancelledError):
            kind, data = "run.cancelled", {"reason": "the call was closed before its end", "partial_text": ""}
        else:
            assert isinstance(outcome, BaseException)
            error = (
                outcome.to_dict()
                if isinstance(outcome, AmshaError)
                else {"type": type(outcome).__name__, "message": str(outcome)}
            )
            kind, data = "run.failed", {"error": error}
        log.emit(
            kind,
            log.run_id,
            None,
            data={
                **data,
                "outputs": {},
                "latency_s": time.time() - ctx.started,
                "metrics": collector.metrics.to_dict(),
            },
        )
        log.close()
        with self._lock:
            for call in collector.metrics.calls:
                self.totals.add_call(call)

    def _count(self, outcome: BaseException | str | None, response: LLMResponse) -> None:
        """What a call without events adds to :attr:`totals`, as its metrics would."""
        usage = response.usage or Usage()
        failed = isinstance(outcome, BaseException) and not isinstance(outcome, RunCancelledError)
        call = CallMetrics(
            "",
            None,
            None,
            response.model,
            usage.input_tokens,
            usage.output_tokens,
            usage.total_tokens,
            usage.cached_input_tokens,
            usage.reasoning_tokens,
            usage.estimated,
            response.latency_s,
            response.ttft_s,
            response.retries,
            type(outcome).__name__ if failed else None,
        )
        with self._lock:
            self.totals.add_call(call)
