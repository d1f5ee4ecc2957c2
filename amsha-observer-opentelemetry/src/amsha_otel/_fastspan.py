"""Spans recorded straight into the OpenTelemetry SDK's span processors.

The observer knows each span's parent, times and attributes from the events themselves, and
its attribute values are always of the types OpenTelemetry accepts. The SDK's
``Tracer.start_span`` spends most of its time on what that makes redundant: a context per
parent, attribute validation value by value, a lock per span. On a run against a fast
provider that was most of the observer's cost, so where the result is provably the same the
observer builds the SDK's own :class:`~opentelemetry.sdk.trace.ReadableSpan` and hands it to
the provider's span processors, as ``Span.end`` would.

"Provably the same" is checked, not assumed (:meth:`FastTracer.of`, :meth:`FastTracer.usable`):

* the tracer is the SDK's ``Tracer`` and enabled;
* every span processor is one whose ``on_start`` and ``_on_ending`` do nothing (the SDK's
  ``BatchSpanProcessor`` and ``SimpleSpanProcessor``, or the base class's no-ops), checked
  again whenever a processor is added;
* the sampler is ``ParentBased`` with the default decisions for local parents (a child
  follows its parent), which is the SDK's default whatever the root sampler; the run's own
  span is sampled by the real sampler, with the caller's context;
* span limits leave attribute values untruncated and allow the attributes and events the
  observer sets.

Anything else (a processor with an ``on_start``, a custom sampler, limits set to truncate)
uses ``Tracer.start_span`` for every span, as does ``fast_spans: false``. A test checks that
both paths export identical spans. What the fast path does not do: the SDK's own
self-monitoring span counters (``otel.sdk.span.*``) do not count these spans.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event as SdkEvent
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

__all__ = ["FastSpan", "FastTracer"]

_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_RANDOM = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)  # newer SDKs flag random trace ids
# The most attributes and events one observer span carries (content and OpenInference on).
_MOST_ATTRIBUTES = 40
_MOST_EVENTS = 32


def _noops(name: str) -> set[Any]:
    return {f for f in (getattr(c, name, None) for c in (SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor)) if f}


_NOOP_ON_START = _noops("on_start")
_NOOP_ON_ENDING = _noops("_on_ending")


def _quiet(processor: Any) -> bool:
    """True if ``processor`` does nothing when a span starts or is ending."""
    cls = type(processor)
    return getattr(cls, "on_start", None) in _NOOP_ON_START and getattr(cls, "_on_ending", None) in (
        _NOOP_ON_ENDING | {None}
    )


class FastSpan:
    """A recording span of the fast path: the part of ``opentelemetry.trace.Span`` the
    observer uses. Ending it hands a ``ReadableSpan`` to the span processors."""

    __slots__ = ("_attributes", "_context", "_events", "_kind", "_name", "_parent", "_start", "_status", "_tracer")

    def __init__(
        self,
        tracer: FastTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_time: int,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._start = start_time
        self._events: list[SdkEvent] = []
        self._status = _UNSET

    def get_span_context(self) -> SpanContext:
        return self._context

    def set_attribute(self, key: str, value: Any) -> None:
        self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        self._events.append(SdkEvent(name, attributes, timestamp))

    def set_status(self, status: Status) -> None:
        if self._status.status_code is not StatusCode.OK and status.status_code is not StatusCode.UNSET:
            self._status = status

    def end(self, end_time: int | None = None) -> None:
        tracer = self._tracer
        tracer.processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=tracer.resource,
                attributes=self._attributes,
                events=tuple(self._events),
                kind=self._kind,
                status=self._status,
                start_time=self._start,
                end_time=time_ns() if end_time is None else end_time,
                instrumentation_scope=tracer.scope,
            )
        )


class FastTracer:
    """The fast path over one SDK tracer (see the module's docstring)."""

    __slots__ = ("_checked", "_ok", "ids", "processor", "random_ids", "resource", "sampler", "scope", "tracer")

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.sampler = tracer.sampler
        self.resource = tracer.resource
        self.processor = tracer.span_processor
        self.ids = tracer.id_generator
        self.scope = tracer._instrumentation_scope
        random_ids = getattr(self.ids, "is_trace_id_random", None)
        self.random_ids = bool(random_ids()) if random_ids is not None else False
        self._checked: Any = object()
        self._ok = False

    @classmethod
    def of(cls, tracer: Any) -> FastTracer | None:
        """The fast path for ``tracer``, or None if it is not the SDK's or its sampler or
        limits rule the fast path out for good."""
        if not isinstance(tracer, SdkTracer):
            return None
        needed = ("sampler", "resource", "span_processor", "id_generator", "_instrumentation_scope", "_span_limits")
        if not all(hasattr(tracer, name) for name in needed):
            return None
        sampler = tracer.sampler
        if not isinstance(sampler, ParentBased):
            return None
        if getattr(sampler, "_local_parent_sampled", None) is not ALWAYS_ON:
            return None
        if getattr(sampler, "_local_parent_not_sampled", None) is not ALWAYS_OFF:
            return None
        limits = tracer._span_limits
        if getattr(limits, "max_span_attribute_length", 0) is not None:
            return None
        for name, least in (
            ("max_span_attributes", _MOST_ATTRIBUTES),
            ("max_event_attributes", _MOST_ATTRIBUTES),
            ("max_events", _MOST_EVENTS),
        ):
            value = getattr(limits, name, 0)
            if value is not None and value < least:  # None: no limit
                return None
        return cls(tracer)

    def usable(self) -> bool:
        """True while the tracer is enabled and every span processor is quiet on start."""
        processors = getattr(self.processor, "_span_processors", None)
        if processors is None:
            processors = (self.processor,)
        if processors is not self._checked:
            self._checked = processors
            self._ok = all(_quiet(p) for p in processors)
        is_enabled = getattr(self.tracer, "_is_enabled", None)
        return self._ok and (is_enabled is None or is_enabled())

    def start_span(
        self,
        name: str,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_time: int,
        context: Context | None = None,
    ) -> FastSpan | NonRecordingSpan:
        """A span under ``parent`` (None or invalid: a new trace). ``context`` is given for
        the run's span only: the caller's context, for the real sampler's decision."""
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self.ids.generate_trace_id()
            random = self.random_ids
        else:
            trace_id = parent.trace_id
            random = bool(parent.trace_flags & _RANDOM) if _RANDOM else False
        if context is not None or parent is None:
            result = self.sampler.should_sample(context, trace_id, name, kind, attributes, ())
            sampled = result.decision.is_sampled()
            recording = result.decision.is_recording()
            trace_state = result.trace_state
            if recording and result.attributes is not None:
                attributes = dict(result.attributes)
        else:  # ParentBased, local parent, default decisions: the child follows the parent
            sampled = recording = parent.trace_flags.sampled
            trace_state = parent.trace_state
        flags = TraceFlags((_SAMPLED if sampled else 0) | (_RANDOM if random else 0))
        context_ = SpanContext(trace_id, self.ids.generate_span_id(), False, flags, trace_state)
        if not recording:
            return NonRecordingSpan(context_)
        return FastSpan(self, name, context_, parent, kind, attributes, start_time)


def context_with(span: Any) -> Context:
    """A context holding ``span`` (or a non-recording span over a SpanContext) as current."""
    if isinstance(span, SpanContext):
        span = NonRecordingSpan(span)
    return trace.set_span_in_context(span, Context()) if span is not None else Context()
