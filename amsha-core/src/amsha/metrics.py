"""``AmshaMetrics``: the normalized summary of a run, computed from its events.

Metrics are derived from the same events that observers and traces see, so they always
agree with them. Usage is attributed to the call that spent it and summed per task and per
run, once (never per agent sharing an LLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .events import Event

__all__ = ["AmshaMetrics", "CallMetrics", "MetricsCollector", "UsageTotals"]


@dataclass(slots=True)
class UsageTotals:
    """Token counts and timing summed over some calls."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    tokens_estimated: bool = False
    """True if any call's usage was estimated rather than reported by the provider."""
    latency_s: float = 0.0
    """Sum of call latencies."""
    retries: int = 0
    errors: int = 0

    def add_call(self, call: CallMetrics) -> None:
        self.calls += 1
        self.input_tokens += call.input_tokens
        self.output_tokens += call.output_tokens
        self.total_tokens += call.total_tokens
        self.cached_input_tokens += call.cached_input_tokens or 0
        self.reasoning_tokens += call.reasoning_tokens or 0
        self.tokens_estimated = self.tokens_estimated or call.tokens_estimated
        self.latency_s += call.latency_s or 0.0
        self.retries += call.retries
        self.errors += 1 if call.error else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "tokens_estimated": self.tokens_estimated,
            "latency_s": round(self.latency_s, 6),
            "retries": self.retries,
            "errors": self.errors,
        }


@dataclass(slots=True)
class CallMetrics:
    """One LLM call: tokens (and whether they were estimated), latency, TTFT, retries."""

    call_id: str
    task: str | None
    agent: str | None
    model: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    tokens_estimated: bool = False
    latency_s: float | None = None
    ttft_s: float | None = None
    retries: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "task": self.task,
            "agent": self.agent,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "tokens_estimated": self.tokens_estimated,
            "latency_s": self.latency_s,
            "ttft_s": self.ttft_s,
            "retries": self.retries,
            "error": self.error,
        }


@dataclass(slots=True)
class AmshaMetrics:
    """Metrics of one run: per call, per task and in total.

    ``ttft_s`` is the time from the run's start to its first output: the first streamed
    token, or, for calls that do not stream (a BACKGROUND LangGraph run's), the moment the
    first answer arrived; ``latency_s`` the run's wall time; ``errors`` counts failed calls (a retried failure counts as a retry).
    """

    run_id: str
    calls: list[CallMetrics] = field(default_factory=list)
    tasks: dict[str, UsageTotals] = field(default_factory=dict)
    total: UsageTotals = field(default_factory=UsageTotals)
    latency_s: float | None = None
    ttft_s: float | None = None

    @property
    def input_tokens(self) -> int:
        return self.total.input_tokens

    @property
    def output_tokens(self) -> int:
        return self.total.output_tokens

    @property
    def total_tokens(self) -> int:
        return self.total.total_tokens

    @property
    def retries(self) -> int:
        return self.total.retries

    @property
    def errors(self) -> int:
        return self.total.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "latency_s": self.latency_s,
            "ttft_s": self.ttft_s,
            "total": self.total.to_dict(),
            "tasks": {name: t.to_dict() for name, t in self.tasks.items()},
            "calls": [c.to_dict() for c in self.calls],
        }


class MetricsCollector:
    """Builds :class:`AmshaMetrics` from a run's events, as they come."""

    def __init__(self, run_id: str) -> None:
        self.metrics = AmshaMetrics(run_id)
        self._open: dict[str, CallMetrics] = {}
        self._started: float | None = None

    def __call__(self, event: Event) -> None:
        kind = event.kind
        if kind == "llm.token":
            if self.metrics.ttft_s is None and self._started is not None:
                self.metrics.ttft_s = event.ts - self._started
            return
        if kind == "llm.started":
            self._open[event.span_id] = CallMetrics(event.span_id, event.task, event.agent, event.data.get("model"))
        elif kind == "llm.retry":
            call = self._open.get(event.span_id)
            if call is not None:
                call.retries += 1
        elif kind in ("llm.finished", "llm.failed"):
            call = self._open.pop(event.span_id, None)
            if call is None:
                return
            usage = event.data.get("usage") or {}
            call.input_tokens = int(usage.get("input_tokens") or 0)
            call.output_tokens = int(usage.get("output_tokens") or 0)
            call.total_tokens = int(usage.get("total_tokens") or 0)
            call.cached_input_tokens = usage.get("cached_input_tokens")
            call.reasoning_tokens = usage.get("reasoning_tokens")
            call.tokens_estimated = bool(usage.get("estimated", False))
            call.latency_s = event.data.get("latency_s")
            call.ttft_s = event.data.get("ttft_s")
            if kind == "llm.failed":
                call.error = (event.data.get("error") or {}).get("type", "error")
            elif self._started is not None and call.latency_s is not None and call.ttft_s is not None:
                # A call that did not stream has no token events: its output came at its ttft.
                first = event.ts - call.latency_s + call.ttft_s - self._started
                if self.metrics.ttft_s is None or first < self.metrics.ttft_s:
                    self.metrics.ttft_s = max(0.0, first)
            self.metrics.calls.append(call)
            self.metrics.total.add_call(call)
            if call.task is not None:
                self.metrics.tasks.setdefault(call.task, UsageTotals()).add_call(call)
        elif kind == "run.started":
            self._started = event.ts
        elif kind in ("run.finished", "run.failed", "run.cancelled") and self._started is not None:
            self.metrics.latency_s = event.ts - self._started
