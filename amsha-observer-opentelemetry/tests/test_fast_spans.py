"""The fast span path gives exactly the spans ``Tracer.start_span`` gives, and steps aside for
any setup where it could not (a processor acting on start, a custom sampler, truncating
limits)."""

from __future__ import annotations

from typing import Any

import pytest
from amsha import ExecutionSession, RunStatus
from otel_support import make_config


def _providers(**tracer_kwargs: Any) -> tuple[Any, Any, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tp = TracerProvider(**tracer_kwargs)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter, None


def _run(tp: Any, *, fast: bool = True, otel: dict[str, Any] | None = None, **config: Any) -> tuple[Any, Any]:
    from amsha_otel import OtelObserver

    observer = OtelObserver({"metrics": False, "fast_spans": fast, **(otel or {})}, tracer_provider=tp)
    cfg = make_config(**config)
    del cfg["observers"]
    with ExecutionSession(cfg, observers=[observer]) as session:
        result = session.run(inputs={"topic": "x"}).result(timeout=30)
        assert session.flush_observers(10)
    return observer, result


def _stable(attributes: Any) -> dict[str, Any]:
    """Attributes with the values that differ from run to run (ids, timings) masked; types
    are kept, so a list where the SDK gives a tuple would show."""
    volatile = (".id", "_id", "_s", "time_to_first_chunk")
    return {k: type(v).__name__ if k.endswith(volatile) else v for k, v in dict(attributes or {}).items()}


def _shape(spans: Any) -> list[tuple[Any, ...]]:
    """Everything exported about the spans but their random ids and run-to-run timings:
    parents by name, and the order of starts."""
    names = {s.context.span_id: s.name for s in spans}
    ordered = sorted(spans, key=lambda s: (s.start_time, s.name))
    return [
        (
            s.name,
            s.kind,
            names.get(s.parent.span_id) if s.parent else None,
            _stable(s.attributes),
            [(e.name, _stable(e.attributes)) for e in s.events],
            (s.status.status_code, s.status.description),
            s.end_time >= s.start_time,
            dict(s.resource.attributes),
            (s.instrumentation_scope.name, s.instrumentation_scope.version, s.instrumentation_scope.schema_url),
            s.context.trace_flags,
            s.context.is_remote,
            s.parent.is_remote if s.parent else None,
        )
        for s in ordered
    ]


@pytest.mark.parametrize("span_path", ["fast"], indirect=True)
@pytest.mark.parametrize("content", [False, True])
def test_fast_and_sdk_paths_export_the_same_spans(content: bool) -> None:
    shapes = []
    for fast in (True, False):
        tp, exporter, _ = _providers()
        observer, result = _run(tp, fast=fast, otel={"capture_content": content, "openinference": content})
        assert result.status == RunStatus.SUCCEEDED
        assert (observer._fast is not None) is fast
        spans = exporter.get_finished_spans()
        assert len(spans) == 7
        trace_ids = {s.context.trace_id for s in spans}
        assert len(trace_ids) == 1
        shapes.append(_shape(spans))
    assert shapes[0] == shapes[1]


def _spans_with(processor: Any) -> list[Any]:
    tp, exporter, _ = _providers()
    tp.add_span_processor(processor)
    _run(tp)
    return list(exporter.get_finished_spans())


@pytest.mark.parametrize("span_path", ["fast"], indirect=True)
def test_a_processor_acting_on_start_is_honoured() -> None:
    from opentelemetry.sdk.trace import SpanProcessor

    class Tenant(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            span.set_attribute("app.tenant", "acme")

    spans = _spans_with(Tenant())
    assert len(spans) == 7 and all(s.attributes.get("app.tenant") == "acme" for s in spans)


@pytest.mark.parametrize("span_path", ["fast"], indirect=True)
def test_a_processor_added_after_the_observer_was_built_is_honoured() -> None:
    from amsha_otel import OtelObserver
    from opentelemetry.sdk.trace import SpanProcessor

    started: list[str] = []

    class Counting(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            started.append(span.name)

    tp, exporter, _ = _providers()
    observer = OtelObserver({"metrics": False}, tracer_provider=tp)
    assert observer._fast is not None and observer._fast.usable()
    tp.add_span_processor(Counting())
    assert not observer._fast.usable()
    cfg = make_config()
    del cfg["observers"]
    with ExecutionSession(cfg, observers=[observer]) as session:
        session.run(inputs={"topic": "x"}).result(timeout=30)
    assert len(started) == 7 == len(exporter.get_finished_spans())


@pytest.mark.parametrize("span_path", ["fast"], indirect=True)
def test_samplers_and_limits_decide_as_the_sdk_does() -> None:
    from opentelemetry.sdk.trace import SpanLimits
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

    # The default-style ParentBased sampler keeps the fast path, whatever its root sampler.
    tp, exporter, _ = _providers(sampler=ParentBased(ALWAYS_OFF))
    observer, result = _run(tp)
    assert observer._fast is not None and result.status == RunStatus.SUCCEEDED
    assert exporter.get_finished_spans() == ()

    # Any other sampler, a ParentBased that decides otherwise included: every span through
    # the SDK.
    class Choosy(ParentBased):
        def should_sample(self, *args: Any, **kwargs: Any) -> Any:
            return super().should_sample(*args, **kwargs)

    for sampler in (TraceIdRatioBased(1.0), Choosy(ALWAYS_OFF)):
        tp, exporter, _ = _providers(sampler=sampler)
        observer, _ = _run(tp)
        assert observer._fast is None
    tp, exporter, _ = _providers(sampler=TraceIdRatioBased(1.0))
    observer, _ = _run(tp)
    assert observer._fast is None and len(exporter.get_finished_spans()) == 7
    # Limits that truncate values: the SDK applies them.
    tp, exporter, _ = _providers(span_limits=SpanLimits(max_span_attribute_length=5))
    observer, _ = _run(tp)
    assert observer._fast is None
    run_span = next(s for s in exporter.get_finished_spans() if s.name.startswith("invoke_workflow"))
    assert run_span.attributes["amsha.run.status"] == "succe"


@pytest.mark.parametrize("span_path", ["fast"], indirect=True)
def test_a_remote_parent_that_is_not_sampled_drops_the_whole_run() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    tp, exporter, _ = _providers()
    parent = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(0))
    with trace.use_span(NonRecordingSpan(parent)):
        from amsha_otel import OtelObserver

        observer = OtelObserver({"metrics": False}, tracer_provider=tp)
        cfg = make_config()
        del cfg["observers"]
        with ExecutionSession(cfg, observers=[observer]) as session:
            session.run(inputs={"topic": "x"}).result(timeout=30)
    assert exporter.get_finished_spans() == ()


def _event(kind: str, seq: int, span_id: str, parent_id: str | None, **data: Any) -> Any:
    import time

    from amsha.events import Event

    return Event(kind, "r1", seq, time.time(), span_id, parent_id, "t", "a", data=data)


def test_span_events_are_bounded_as_the_sdk_bounds_them() -> None:
    """Runs on both paths (the autouse fixture): 200 state snapshots on one run span keep
    the SDK's default 128 (the latest), the rest counted as dropped."""
    from amsha_otel import OtelObserver

    observer = OtelObserver({"exporter": "memory", "metrics": False})
    observer.on_event(_event("run.started", 0, "r1", None, mode="interactive", tasks=["t"]))
    for i in range(200):
        observer.on_event(_event("state.snapshot", i + 1, "r1", None, version=i))
    observer.on_event(_event("run.finished", 201, "r1", None))
    [span] = observer.span_exporter.get_finished_spans()
    assert len(span.events) == 128 and span.dropped_events == 72
    assert [e.attributes["amsha.version"] for e in span.events] == list(range(72, 200))
    observer.close()


@pytest.mark.parametrize("span_path", ["fast"], indirect=True)
def test_a_processor_added_mid_run_keeps_the_trace_whole() -> None:
    """Spans started on the fast path, then a processor acting on start: the next spans go
    through the SDK and still hang under the same trace and parents."""
    from amsha_otel import OtelObserver
    from opentelemetry.sdk.trace import SpanProcessor

    class Marking(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            span.set_attribute("app.marked", True)

    tp, exporter, _ = _providers()
    observer = OtelObserver({"metrics": False}, tracer_provider=tp)
    observer.on_event(_event("run.started", 0, "r1", None, mode="interactive", tasks=["t"]))
    observer.on_event(_event("task.started", 1, "task-1", "r1"))
    tp.add_span_processor(Marking())
    observer.on_event(_event("llm.started", 2, "llm-1", "task-1", provider="scripted", model="m"))
    observer.on_event(_event("llm.finished", 3, "llm-1", "task-1", usage={"input_tokens": 1, "output_tokens": 2}))
    observer.on_event(_event("task.finished", 4, "task-1", "r1"))
    observer.on_event(_event("run.finished", 5, "r1", None))
    spans = {s.name.split()[0]: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"invoke_workflow", "amsha.task", "chat"}
    assert len({s.context.trace_id for s in spans.values()}) == 1
    assert spans["chat"].parent.span_id == spans["amsha.task"].context.span_id
    assert spans["amsha.task"].parent.span_id == spans["invoke_workflow"].context.span_id
    assert spans["chat"].attributes.get("app.marked") is True
    assert "app.marked" not in spans["amsha.task"].attributes  # started before the processor
    observer.close()


@pytest.mark.parametrize("span_path", ["fast"], indirect=True)
def test_event_attribute_limits_apply_as_in_the_sdk() -> None:
    """Limits that leave span attributes alone but bound event attributes keep the fast
    path, and its events come out as the SDK's."""
    from opentelemetry.sdk.trace import SpanLimits

    exported = []
    for fast in (True, False):
        limits = SpanLimits(max_event_attributes=2, max_attribute_length=4, max_span_attribute_length=SpanLimits.UNSET)
        tp, exporter, _ = _providers(span_limits=limits)
        from amsha_otel import OtelObserver

        observer = OtelObserver({"metrics": False, "fast_spans": fast}, tracer_provider=tp)
        assert (observer._fast is not None) is fast
        observer.on_event(_event("run.started", 0, "r1", None, mode="interactive", tasks=["t"]))
        observer.on_event(_event("state.snapshot", 1, "r1", None, version=1, reason="a long reason", state_id="s"))
        observer.on_event(_event("state.snapshot", 2, "r1", None, version=2))
        observer.on_event(_event("run.finished", 3, "r1", None))
        [span] = exporter.get_finished_spans()
        exported.append([(e.name, dict(e.attributes), e.dropped_attributes) for e in span.events])
        observer.close()
    assert exported[0] == exported[1]
    assert exported[0][0][2] > 0 and all(len(v) <= 4 for v in exported[0][0][1].values() if isinstance(v, str))
