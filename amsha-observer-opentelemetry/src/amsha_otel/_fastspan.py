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
  ``BatchSpanProcessor`` and ``SimpleSpanProcessor``, or the base class's no-ops), inside the
  SDK's own multi-processor, checked again whenever a processor is added;
* the sampler is ``ParentBased`` itself with the default decisions for local parents (a
  child follows its parent), which is the SDK's default whatever the root sampler; the run's
  own span is sampled by the real sampler, with the caller's context;
* span limits leave span attribute values untruncated and allow the attributes the observer
  sets; span events are bounded as ``Span.add_event`` bounds them (``BoundedList``,
  ``BoundedAttributes`` with the same limits);
* the SDK's own self-monitoring span counters are off (they count in ``start_span``).

Anything else (a processor with an ``on_start``, another sampler, limits that truncate, the
SDK's span counters on) uses ``Tracer.start_span`` for every span, as does
``fast_spans: false``. A test checks that both paths export identical spans.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import (
    ConcurrentMultiSpanProcessor,
    ReadableSpan,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
)
from opentelemetry.sdk.trace import Event as SdkEvent
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

__all__ = ["FastSpan", "FastTracer"]

_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_RANDOM = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)  # newer SDKs flag random trace ids
# The most attributes one observer span carries (content and OpenInference on); its events
# are bounded as the SDK bounds them (BoundedList, BoundedAttributes), they have no maximum.
_MOST_ATTRIBUTES = 40
_MULTI = (SynchronousMultiSpanProcessor, ConcurrentMultiSpanProcessor)


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
    observer uses, with the SDK span's semantics for it. Ending it hands a ``ReadableSpan``
    to the span processors."""

    __slots__ = (
        "_attributes",
        "_context",
        "_ended",
        "_events",
        "_kind",
        "_name",
        "_parent",
        "_start",
        "_status",
        "_tracer",
    )

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
        self._events: list[SdkEvent] | None = None  # made on the first event: most spans have none
        self._status = _UNSET
        self._ended = False

    def get_span_context(self) -> SpanContext:
        return self._context

    def set_attribute(self, key: str, value: Any) -> None:
        if not self._ended:
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if not self._ended:
            self._attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        """As ``Span.add_event``: the span's limits bound the events (at :meth:`end`) and
        their attributes (here, when they exceed a limit: else they are kept as given, which
        exports the same)."""
        if self._ended:
            return
        if attributes:
            limits = self._tracer.limits
            most, longest = limits.max_event_attributes, limits.max_attribute_length
            if (most is not None and len(attributes) > most) or (
                longest is not None and any(isinstance(v, str) and len(v) > longest for v in attributes.values())
            ):
                attributes = BoundedAttributes(most, attributes, max_value_len=longest)
        if self._events is None:
            self._events = []
        self._events.append(SdkEvent(name, attributes, timestamp))

    def set_status(self, status: Status) -> None:
        if self._ended:
            return
        if self._status.status_code is not StatusCode.OK and status.status_code is not StatusCode.UNSET:
            self._status = status

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        tracer = self._tracer
        sdk = tracer.tracer
        events: Any = self._events or ()
        most = tracer.limits.max_events
        if most is not None and len(events) > most:
            events = BoundedList(most)  # as Span.add_event would have: the latest kept, the rest counted
            events.extend(self._events)
        tracer.processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=sdk.resource,  # read now: the SDK updates it after a fork
                attributes=self._attributes,
                events=events,
                kind=self._kind,
                status=self._status,
                start_time=self._start,
                end_time=time_ns() if end_time is None else end_time,
                instrumentation_info=tracer.info,
                instrumentation_scope=tracer.scope,
            )
        )


class FastTracer:
    """The fast path over one SDK tracer (see the module's docstring)."""

    __slots__ = ("_checked", "_ok", "ids", "info", "limits", "processor", "sampler", "scope", "tracer")

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.sampler = tracer.sampler
        self.processor = tracer.span_processor
        self.ids = tracer.id_generator
        self.limits = tracer._span_limits
        self.scope = tracer._instrumentation_scope
        self.info = getattr(tracer, "instrumentation_info", None)
        self._checked: Any = object()
        self._ok = False

    @classmethod
    def of(cls, tracer: Any) -> FastTracer | None:
        """The fast path for ``tracer``, or None if it is not the SDK's, or its sampler,
        limits or self-monitoring rule the fast path out for good."""
        if not isinstance(tracer, SdkTracer):
            return None
        needed = ("sampler", "resource", "span_processor", "id_generator", "_instrumentation_scope", "_span_limits")
        if not all(hasattr(tracer, name) for name in needed):
            return None
        sampler = tracer.sampler
        # ParentBased itself (a subclass may decide otherwise), children following parents.
        if not isinstance(sampler, ParentBased) or type(sampler).should_sample is not ParentBased.should_sample:
            return None
        if getattr(sampler, "_local_parent_sampled", None) is not ALWAYS_ON:
            return None
        if getattr(sampler, "_local_parent_not_sampled", None) is not ALWAYS_OFF:
            return None
        limits = tracer._span_limits
        # Span attribute values untruncated (event values are bounded as the SDK bounds them).
        if getattr(limits, "max_span_attribute_length", 0) is not None:
            return None
        most = getattr(limits, "max_span_attributes", 0)
        if most is not None and most < _MOST_ATTRIBUTES:  # None: no limit
            return None
        if not all(hasattr(limits, name) for name in ("max_events", "max_event_attributes", "max_attribute_length")):
            return None
        # The SDK's own span counters (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) count spans
        # at start_span: with them on, every span goes through it.
        metrics = getattr(tracer, "_tracer_metrics", None)
        if metrics is not None and type(metrics).__name__ != "NoOpTracerMetrics":
            return None
        return cls(tracer)

    def usable(self) -> bool:
        """True while the tracer is enabled and every span processor is quiet on start."""
        processor = self.processor
        processors = getattr(processor, "_span_processors", None) if type(processor) in _MULTI else None
        if processors is None:
            processors = (processor,)
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
        """A span under ``parent``, a span of this observer's (None or invalid: a new trace).
        ``context``, for the run's span only: the caller's context, which holds the parent
        and is what the sampler decides on."""
        if context is not None:
            parent = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self.ids.generate_trace_id()
            is_random = getattr(self.ids, "is_trace_id_random", None)
            random = bool(is_random()) if is_random is not None else False
        else:
            trace_id = parent.trace_id
            random = bool(parent.trace_flags & _RANDOM) if _RANDOM else False
        if context is not None or parent is None:
            result = self.sampler.should_sample(
                context if context is not None else Context(), trace_id, name, kind, attributes, ()
            )
            sampled = result.decision.is_sampled()
            recording = result.decision.is_recording()
            trace_state = result.trace_state
            if recording and result.attributes is not None:
                attributes = dict(result.attributes)
        else:  # ParentBased, a local parent, default decisions: the child follows the parent
            sampled = recording = parent.trace_flags.sampled
            trace_state = parent.trace_state
        flags = TraceFlags((_SAMPLED if sampled else 0) | (_RANDOM if random else 0))
        context_ = SpanContext(trace_id, self.ids.generate_span_id(), False, flags, trace_state)
        if not recording:
            return NonRecordingSpan(context_)
        return FastSpan(self, name, context_, parent, kind, attributes, start_time)


def context_with(span: Any) -> Context:
    """A context holding ``span`` as current: an SDK span as it is; a fast-path span or a
    SpanContext (of a span already ended) as a non-recording span over its context."""
    if span is None:
        return Context()
    if isinstance(span, SpanContext):
        span = NonRecordingSpan(span)
    elif not isinstance(span, trace.Span):
        span = NonRecordingSpan(span.get_span_context())
    return trace.set_span_in_context(span, Context())
