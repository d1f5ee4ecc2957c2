"""Figures of amsha-observer-opentelemetry: what the ``opentelemetry`` observer adds to a run.

The same run (the ``direct`` orchestrator, the zero-latency ``scripted`` provider, the
``memory`` store) with the observer on against off, timed in adjacent batches. Each timed
operation is a whole run as the client sees it (``run().result()``); each batch of runs ends
with ``session.flush_observers()`` inside the timing, so all of the observer's work on the
batch is counted (its thread's share of the interpreter, span and metric building, the span
processor's queue) and none of it spills into the other side's batch. The SDK is set up as
an application would: a ``BatchSpanProcessor`` (its exporter drops the batches, so no
network is timed) and a metric reader. ``otel.sdk.floor_per_call`` is what the SDK's public
API alone takes for the same three spans and four metric points, for scale.
"""

from __future__ import annotations

from typing import Any

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


def _observer(metrics: bool = True) -> Any:
    try:
        from amsha_otel import OtelObserver
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    except ImportError as exc:
        raise Skip(f"amsha-observer-opentelemetry is not installed: {exc}") from None

    class Drop(SpanExporter):
        """Receives the batches as a network exporter would, and drops them."""

        exported = 0

        def export(self, spans: Any) -> SpanExportResult:
            Drop.exported += len(spans)
            return SpanExportResult.SUCCESS

    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(Drop()))
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    observer = OtelObserver({"metrics": metrics}, tracer_provider=tp, meter_provider=mp)
    observer.bench_providers = (tp, mp, Drop)  # type: ignore[attr-defined]
    return observer


def _pair(answer: str, settings: Settings, metrics: bool = True) -> tuple[Any, int]:
    from amsha import ExecutionSession

    observer = _observer(metrics)
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


def _best_us(fn: Any, number: int = 2000) -> float:
    import time

    for _ in range(number):
        fn()
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number * 1e6)
    return best


def _sdk_floor_us() -> tuple[float, float]:
    """What the OpenTelemetry SDK's public API alone takes for the data one call makes: the
    three spans (``Tracer.start_span`` under their parents, with exactly the attributes the
    observer exported for a real run, then ``end``) and the four metric points
    (``Histogram.record`` with its attributes), nothing of Amsha's around them. Returns
    (spans, points) in us."""
    from amsha import ExecutionSession
    from amsha_otel import OtelObserver
    from opentelemetry import trace
    from opentelemetry.context import Context

    probe = OtelObserver({"exporter": "memory"})
    with ExecutionSession(_config(SHORT), observers=[probe]) as session:
        session.run().result()
        session.flush_observers()
    spans = sorted(probe.span_exporter.get_finished_spans(), key=lambda s: s.start_time)
    assert [s.name.split()[0] for s in spans] == ["invoke_workflow", "amsha.task", "chat"], spans
    data = [(s.name, s.kind, dict(s.attributes)) for s in spans]

    observer = _observer()
    tracer = observer.tracer

    def three_spans() -> None:
        context = Context()
        opened = []
        for name, kind, attrs in data:
            span = tracer.start_span(name, context=context, kind=kind, attributes=attrs, start_time=1)
            context = trace.set_span_in_context(span, Context())
            opened.append(span)
        for span in reversed(opened):
            span.end(end_time=2)

    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "scripted",
        "gen_ai.system": "scripted",
        "gen_ai.request.model": "scripted-1",
        "gen_ai.response.model": "scripted-1",
    }
    tokens_in, tokens_out = {**attrs, "gen_ai.token.type": "input"}, {**attrs, "gen_ai.token.type": "output"}
    usage, duration, ttft = observer._token_usage, observer._duration, observer._ttft

    def four_points() -> None:
        usage.record(20, tokens_in)
        usage.record(15, tokens_out)
        duration.record(0.0004, attrs)
        ttft.record(0.0002, attrs)

    return _best_us(three_spans), _best_us(four_points)


@benchmark("otel.observer.per_call", "otel.observer.per_call.traces_only", "otel.sdk.floor_per_call")
def per_call(settings: Settings) -> list[Figure]:
    """A one-task run (one LLM call, a short answer) with the observer on, against off; also
    with traces only (``metrics: false``), and what the SDK's public API alone takes for the
    same spans and metric points."""
    timing, tokens = _pair(SHORT, settings)
    log(f"  run with one call ({tokens} tokens), observer on vs off: {timing.describe()}")
    log(f"  overhead {100 * timing.overhead / timing.bare:.1f}% of the run")
    traces, _ = _pair(SHORT, settings, metrics=False)
    log(f"  traces only (metrics: false): {traces.describe()}")
    log(f"  overhead {100 * traces.overhead / traces.bare:.1f}% of the run")
    spans_us, points_us = _sdk_floor_us()
    bare_us = timing.bare / 1e3
    log(
        f"  the SDK's public API alone, same data: 3 spans {spans_us:.1f} us + 4 metric points {points_us:.1f} us"
        f" = {100 * (spans_us + points_us) / bare_us:.1f}% of the run"
    )
    return [
        Figure(
            "otel.observer.per_call",
            timing.wrapped / 1e3,
            bare_us,
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
            "otel.sdk.floor_per_call",
            bare_us + spans_us + points_us,
            bare_us,
            "the run with no observer (amsha side: that run plus the SDK's public API alone building the same "
            "3 spans and 4 metric points)",
            "us/call",
            None,
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
