"""Figures of amsha-observer-opentelemetry: what the ``opentelemetry`` observer adds to a run.

The same run (the ``direct`` orchestrator, the zero-latency ``scripted`` provider, the
``memory`` store) with the observer on against off, timed in adjacent batches. Each timed
operation is a whole run as the client sees it (``run().result()``): the observer works on a
thread of its own, so what it costs the run is handing it events plus its thread's share of
the interpreter while the run goes on. ``*.with_observer_work`` figures add
``session.flush_observers()`` to each run, so they also count all of the observer's own work
(span and metric building, the span processor's queue): reported, with no goal, since on a
zero-latency provider that is the OpenTelemetry SDK's cost against a run that does nothing. The SDK is set up as an
application would: a ``BatchSpanProcessor`` (its exporter drops the batches, so no network
is timed) and a metric reader.
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


def _observer() -> Any:
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
    observer = OtelObserver(tracer_provider=tp, meter_provider=mp)
    observer.bench_providers = (tp, mp, Drop)  # type: ignore[attr-defined]
    return observer


def _pair(answer: str, settings: Settings, flush: bool = False) -> tuple[Any, int]:
    from amsha import ExecutionSession

    observer = _observer()
    on = ExecutionSession(_config(answer), observers=[observer])
    off = ExecutionSession(_config(answer))
    tp, _mp, drop = observer.bench_providers

    def run(session: Any) -> None:
        session.run().result()
        if flush:
            session.flush_observers()

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
        timing = paired(lambda: run(on), lambda: run(off), settings=settings)
    finally:
        on.close()
        off.close()
    check(
        "otel.observer.no_errors",
        not on.observer_errors,
        f"observer errors: {on.observer_errors or 'none'}; spans exported {drop.exported}",
    )
    return timing, tokens


@benchmark("otel.observer.per_call", "otel.observer.per_call.with_observer_work")
def per_call(settings: Settings) -> list[Figure]:
    """A one-task run (one LLM call, a short answer) with the observer on, against off."""
    work, _ = _pair(SHORT, settings, flush=True)
    log(f"  with the observer's own work (flushed each run): {work.describe()}")
    timing, tokens = _pair(SHORT, settings)
    log(f"  run with one call ({tokens} tokens), observer on vs off: {timing.describe()}")
    log(f"  overhead {100 * timing.overhead / timing.bare:.1f}% of the run")
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
            "otel.observer.per_call.with_observer_work",
            work.wrapped / 1e3,
            work.bare / 1e3,
            "the same one-call run with no observer (observer flushed each run)",
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
