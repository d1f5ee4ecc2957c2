"""Figures of amsha-observer-opentelemetry: what the ``opentelemetry`` observer adds to a run.

The same run (the ``direct`` orchestrator, the zero-latency ``scripted`` provider, the
``memory`` store) with the observer on against off, timed in adjacent batches. Each timed
operation is a whole run as the client sees it (``run().result()``); each batch of runs ends
with ``session.flush_observers()`` inside the timing, so all of the observer's work on the
batch is counted (its thread's share of the interpreter, span and metric building, the span
processor's queue) and none of it spills into the other side's batch. The SDK is set up as
an application would: a ``BatchSpanProcessor`` (its exporter drops the batches, so no
network is timed) and a metric reader. The peer, :class:`SdkApiObserver`, is an observer
made of nothing but the SDK's public API calls for the same three spans and four metric
points: what recording this data through OpenTelemetry costs at the least.
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness import Figure, Settings, Skip, benchmark, check, log, paired

STREAM_TOKENS = 100
SHORT = "Tide pools are rocky seaside basins where anemones, crabs and snails wait for the tide."
LONG = " ".join(f"word{i}" for i in range(STREAM_TOKENS))


def _config(answer: str) -> dict[str, Any]:
    return {
        "provider": {"name": "scripted", "model": "scripted-1", "options": {"responses": [answer]}},
        "agents": {"a": {"role": "Writer", "goal": "Write"}},
        "tasks": {"t": {"description": "Write one sentence.", "agent": "a"}},
    }


def _providers() -> tuple[Any, Any, Any]:
    """A tracer and a meter provider set up as an application would: a ``BatchSpanProcessor``
    whose exporter receives the batches as a network exporter would and drops them, and a
    metric reader. Returns (tracer provider, meter provider, the exporter's class)."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    except ImportError as exc:
        raise Skip(f"the OpenTelemetry SDK is not installed: {exc}") from None

    class Drop(SpanExporter):
        exported = 0

        def export(self, spans: Any) -> SpanExportResult:
            Drop.exported += len(spans)
            return SpanExportResult.SUCCESS

    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(Drop()))
    return tp, MeterProvider(metric_readers=[InMemoryMetricReader()]), Drop


def _observer(metrics: bool = True) -> Any:
    try:
        from amsha_otel import OtelObserver
    except ImportError as exc:
        raise Skip(f"amsha-observer-opentelemetry is not installed: {exc}") from None
    tp, mp, drop = _providers()
    observer = OtelObserver({"metrics": metrics}, tracer_provider=tp, meter_provider=mp)
    observer.bench_providers = (tp, mp, drop)  # type: ignore[attr-defined]
    return observer


class SdkApiObserver:
    """The peer: the OpenTelemetry SDK's public API and nothing around it. From the same
    events, on the same observer thread, it makes the same three spans (``Tracer.start_span``
    under their parents with all the attributes the Amsha observer exported for a real run of
    the same config, then ``end`` at the events' times) and the same four
    ``Histogram.record`` calls per LLM call. It keeps no state snapshot span events, checks
    nothing and reads no event data but the usage: less work than a real observer."""

    ignored_event_kinds = frozenset({"llm.token"})
    _STARTS: ClassVar[dict[str, str]] = {"run.started": "invoke_workflow", "task.started": "amsha.task", "llm.started": "chat"}
    _ENDS = frozenset({"run.finished", "task.finished", "llm.finished"})

    def __init__(self, answer: str) -> None:
        from amsha import ExecutionSession
        from amsha_otel import OtelObserver
        from opentelemetry import trace
        from opentelemetry.context import Context

        probe = OtelObserver({"exporter": "memory"})
        with ExecutionSession(_config(answer), observers=[probe]) as session:
            session.run().result()
            session.flush_observers()
        spans = probe.span_exporter.get_finished_spans()
        self.spans = {s.name.split()[0]: (s.name, s.kind, dict(s.attributes)) for s in spans}
        chat = self.spans["chat"][2]
        self.metric_attrs = {
            k: chat[k]
            for k in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system", "gen_ai.request.model")
        }
        self.metric_attrs["gen_ai.response.model"] = chat["gen_ai.response.model"]
        tp, mp, drop = _providers()
        self.bench_providers = (tp, mp, drop)
        self.tracer = tp.get_tracer("bench")
        meter = mp.get_meter("bench")
        self.usage = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
        self.duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
        self.ttft = meter.create_histogram("gen_ai.client.operation.time_to_first_chunk", unit="s")
        self.open: dict[str, Any] = {}
        self._set = trace.set_span_in_context
        self._context = Context

    def on_event(self, event: Any) -> None:
        kind = event.kind
        start = self._STARTS.get(kind)
        if start is not None:
            name, span_kind, attrs = self.spans[start]
            parent = self.open.get(event.parent_id) if event.parent_id else None
            context = self._set(parent, self._context()) if parent is not None else self._context()
            self.open[event.span_id] = self.tracer.start_span(
                name, context=context, kind=span_kind, attributes=attrs, start_time=int(event.ts * 1e9)
            )
        elif kind in self._ENDS:
            self.open.pop(event.span_id).end(end_time=int(event.ts * 1e9))
            if kind == "llm.finished":
                usage, attrs = event.data["usage"], self.metric_attrs
                self.usage.record(usage["input_tokens"], {**attrs, "gen_ai.token.type": "input"})
                self.usage.record(usage["output_tokens"], {**attrs, "gen_ai.token.type": "output"})
                self.duration.record(event.data["latency_s"], attrs)
                self.ttft.record(event.data["ttft_s"], attrs)

    def close(self) -> None:
        pass


def _pair(answer: str, settings: Settings, metrics: bool = True, peer: bool = False) -> tuple[Any, int]:
    from amsha import ExecutionSession

    observer = SdkApiObserver(answer) if peer else _observer(metrics)
    on = ExecutionSession(_config(answer), observers=[observer])
    off = ExecutionSession(_config(answer))
    tp, _mp, drop = observer.bench_providers

    def run(session: Any) -> None:
        session.run().result()

    # Both sides do the same run; the observer really builds the spans.
    for session in (on, off):
        result = session.run().result()
        assert result.outputs["t"] == answer, result.outputs
    on.flush_observers()
    tp.force_flush()
    assert drop.exported == 3, drop.exported  # run, task, chat
    tokens = sum(1 for e in on.run().stream() if e.kind == "llm.token")
    on.flush_observers()
    try:
        # Each batch of runs ends with flush_observers(), inside the timing: all of the
        # observer's work on the batch is counted, and none spills into the other side's.
        timing = paired(
            lambda: run(on), lambda: run(off), settings=settings, settle=(on.flush_observers, off.flush_observers)
        )
    finally:
        on.close()
        off.close()
    check(
        "otel.observer.no_errors",
        not on.observer_errors,
        f"observer errors: {on.observer_errors or 'none'}; spans exported {drop.exported}",
    )
    return timing, tokens


@benchmark("otel.observer.per_call", "otel.observer.per_call.traces_only", "otel.observer.per_call.vs_sdk_api")
def per_call(settings: Settings) -> list[Figure]:
    """A one-task run (one LLM call, a short answer) with the observer on, against off; with
    traces only (``metrics: false``); and the observer's cost against the peer's, an observer
    made of nothing but the SDK's public API calls for the same spans and metric points."""
    timing, tokens = _pair(SHORT, settings)
    log(f"  run with one call ({tokens} tokens), observer on vs off: {timing.describe()}")
    log(f"  overhead {100 * timing.overhead / timing.bare:.1f}% of the run")
    traces, _ = _pair(SHORT, settings, metrics=False)
    log(f"  traces only (metrics: false): {traces.describe()}")
    log(f"  overhead {100 * traces.overhead / traces.bare:.1f}% of the run")
    peer, _ = _pair(SHORT, settings, peer=True)
    log(f"  the SDK's public API alone (SdkApiObserver), on vs off: {peer.describe()}")
    log(f"  overhead {100 * peer.overhead / peer.bare:.1f}% of the run")
    return [
        Figure(
            "otel.observer.per_call",
            timing.wrapped / 1e3,
            timing.bare / 1e3,
            "the same one-call run with no observer",
            "us/call",
            1.1,
        ),
        Figure(
            "otel.observer.per_call.traces_only",
            traces.wrapped / 1e3,
            traces.bare / 1e3,
            "the same one-call run with no observer",
            "us/call",
            None,
        ),
        Figure(
            "otel.observer.per_call.vs_sdk_api",
            timing.overhead / 1e3,
            peer.overhead / 1e3,
            "what an observer of nothing but the SDK's public API calls for the same 3 spans and 4 metric "
            "points adds to the same run (SdkApiObserver)",
            "us/call",
            1.0,
        ),
    ]


@benchmark("otel.observer.per_token")
def per_token(settings: Settings) -> list[Figure]:
    """A one-task run streaming a 100-token answer, per token, with the observer on against
    off (the per-call part amortized over the tokens)."""
    timing, tokens = _pair(LONG, settings)
    assert tokens == STREAM_TOKENS, tokens
    log(f"  run streaming {tokens} tokens, per token, observer on vs off: {timing.describe(per=tokens)}")
    log(f"  overhead {100 * timing.overhead / timing.bare:.1f}% of the run")
    return [
        Figure(
            "otel.observer.per_token",
            timing.wrapped / 1e3 / tokens,
            timing.bare / 1e3 / tokens,
            "the same 100-token streamed run with no observer, per token",
            "us/token",
            1.1,
        )
    ]
