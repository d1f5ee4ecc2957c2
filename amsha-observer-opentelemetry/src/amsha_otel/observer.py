"""The ``opentelemetry`` observer: Amsha events as OpenTelemetry GenAI spans and metrics.

Imported only when a session selects the observer (or a client builds one in code): this is
the module that imports the OpenTelemetry SDK.

Spans (parented through the events' ``span_id``/``parent_id``, timed by the events' own
timestamps, so the observer's thread being behind the run changes nothing):

===================  ===============================  =======================
Amsha                span name                        ``gen_ai.operation.name``
===================  ===============================  =======================
run                  ``invoke_workflow {workflow}``   ``invoke_workflow``
task                 ``amsha.task {task}``            (none: not a GenAI op)
agent                ``invoke_agent {agent}``         ``invoke_agent``
LLM call             ``chat {model}``                 ``chat``
tool call            ``execute_tool {tool}``          ``execute_tool``
===================  ===============================  =======================

Metrics: ``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration`` and
``gen_ai.client.operation.time_to_first_chunk`` histograms, and the ``amsha.llm.retries``
counter. The values are the events' own (the provider's usage, the wrapper's latency and
TTFT), the same figures :class:`amsha.AmshaMetrics` sums.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from amsha import Event
from amsha.errors import ConfigError
from amsha.plugins import BackendContext
from amsha.secrets import get_secret, has_secrets, redact
from opentelemetry import metrics as otel_metrics
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TracerProvider

from ._fastspan import FastTracer, context_with
from .options import OtelOptions

__all__ = ["SCHEMA_URL", "SEMCONV_VERSION", "OtelObserver", "build"]

SEMCONV_VERSION = "1.41.0"
"""The semantic conventions followed: GenAI as of their last release in the main repository
(still marked Development upstream, hence pinned)."""
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
SCOPE = "amsha_otel"
log = logging.getLogger("amsha")

# Bucket boundaries the GenAI conventions advise for their histograms.
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]

_ENDS = {
    "run.finished": "run.started",
    "run.failed": "run.started",
    "run.cancelled": "run.started",
}
_CANCELLED = "RunCancelledError"


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on", "span_only", "span_and_event")


class _Call:
    """What an open LLM call's end needs from its start: the metric attributes."""

    __slots__ = ("attrs", "span")

    def __init__(self, span: Span, attrs: dict[str, Any]) -> None:
        self.span = span
        self.attrs = attrs


class _RunTrace:
    """The spans of one run: those still open, and the contexts of those already ended (so a
    late child still finds its parent)."""

    __slots__ = ("calls", "ended", "open", "run_span")

    def __init__(self) -> None:
        self.open: dict[str, Span] = {}
        self.ended: dict[str, SpanContext] = {}
        self.calls: dict[str, _Call] = {}
        self.run_span: Span | None = None


class OtelObserver:
    """An :class:`amsha.Observer` that turns a session's events into OpenTelemetry spans and
    metrics following the GenAI semantic conventions.

    ``tracer_provider`` / ``meter_provider``: the application's own providers, used as they
    are (never shut down by the observer, only flushed). Without them, ``options.exporter``
    decides (see :class:`OtelOptions`). The observer never sets a global provider and never
    touches ``OTEL_SDK_DISABLED``.
    """

    name = "opentelemetry"
    #: Tokens are never queued for this observer: timing comes from each call's own ttft_s.
    ignored_event_kinds = frozenset({"llm.token"})

    def __init__(
        self,
        options: OtelOptions | Mapping[str, Any] | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        if not isinstance(options, OtelOptions):
            options = OtelOptions.model_validate(dict(options or {}))
        self.options = options
        self.span_exporter: Any = None
        """The in-memory span exporter when ``exporter: memory``."""
        self.metric_reader: Any = None
        """The in-memory metric reader when ``exporter: memory``."""
        self._owned: list[Any] = []  # providers this observer built, shut down on close
        self._flush: list[Any] = []  # every provider used, flushed on close
        capture = options.capture_content
        if capture is None:
            capture = _truthy(os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"))
        self.capture_content: bool = capture
        # Until the GenAI conventions are stable, instrumentations keep the older attribute
        # names unless the user opts into the latest ones; we always emit the latest and add
        # the deprecated `gen_ai.system` unless so opted in.
        opt_in = os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
        self._legacy = "gen_ai_latest_experimental" not in {p.strip() for p in opt_in.split(",")}
        self._limit = options.max_content_chars
        tp, mp = self._providers(tracer_provider, meter_provider)
        self.tracer = tp.get_tracer(SCOPE, _version(), schema_url=SCHEMA_URL)
        self._fast = FastTracer.of(self.tracer) if options.fast_spans else None
        self._meter_enabled = options.metrics and mp is not None
        if mp is not None and options.metrics:
            meter = mp.get_meter(SCOPE, _version(), schema_url=SCHEMA_URL)
            self._token_usage = meter.create_histogram(
                "gen_ai.client.token.usage",
                unit="{token}",
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
            )
            self._duration = meter.create_histogram(
                "gen_ai.client.operation.duration",
                unit="s",
                description="GenAI operation duration.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
            self._ttft = meter.create_histogram(
                "gen_ai.client.operation.time_to_first_chunk",
                unit="s",
                description="Time to the first streamed chunk (Amsha's TTFT), from the request.",
                explicit_bucket_boundaries_advisory=TTFT_BUCKETS,
            )
            self._retries = meter.create_counter(
                "amsha.llm.retries", unit="{retry}", description="Retries of LLM calls by Amsha's retry policy."
            )
        self._runs: dict[str, _RunTrace] = {}
        self._lock = threading.Lock()
        self._closed = False

    # ---- providers ------------------------------------------------------------------------

    def _providers(
        self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
    ) -> tuple[TracerProvider, MeterProvider | None]:
        opts = self.options
        if tracer_provider is not None:
            mp = meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
            self._flush += [tracer_provider, mp]
            return tracer_provider, mp
        exporter: str = opts.exporter
        if exporter == "auto":
            global_tp = trace.get_tracer_provider()
            if not isinstance(global_tp, trace.ProxyTracerProvider):
                # The application configured OpenTelemetry: join its traces, change nothing.
                mp = meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
                self._flush += [global_tp, mp]
                return global_tp, mp
            exporter = _exporter_from_env("OTEL_TRACES_EXPORTER", "TRACES")
            metric_exporter: str = _exporter_from_env("OTEL_METRICS_EXPORTER", "METRICS")
        else:
            metric_exporter = exporter
        return self._own_tracer_provider(exporter), (
            meter_provider if meter_provider is not None else self._own_meter_provider(metric_exporter)
        )

    def _resource(self) -> Any:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource

        attrs = {SERVICE_NAME: self.options.service_name} if self.options.service_name else {}
        resource = Resource.create(attrs)
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "amsha"}))
        return resource

    def _headers(self) -> dict[str, str] | None:
        env = self.options.headers_env
        if not env:
            return None
        secret = get_secret(env, key="observers[].options.headers_env")
        assert secret is not None
        headers: dict[str, str] = {}
        for part in secret.get_secret_value().split(","):
            if "=" not in part:
                raise ConfigError([("observers[].options.headers_env", f"{env} must hold 'key=value,...' pairs")])
            key, value = part.split("=", 1)
            headers[key.strip()] = value.strip()
        return headers

    def _endpoint(self, signal: str) -> str | None:
        endpoint = self.options.endpoint
        if endpoint is None:
            return None  # the exporter reads OTEL_EXPORTER_OTLP_* itself
        return endpoint.rstrip("/") + f"/v1/{signal}"

    def _own_tracer_provider(self, exporter: str) -> TracerProvider:
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = SdkTracerProvider(resource=self._resource())
        if exporter == "memory":
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            self.span_exporter = InMemorySpanExporter()
            provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        elif exporter == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif exporter == "otlp_http":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(
                BatchSpanProcessor(
                    OTLPSpanExporter(
                        endpoint=self._endpoint("traces"),
                        headers=self._headers(),
                        timeout=self.options.export_timeout_s,
                    )
                )
            )
        elif exporter == "otlp_grpc":
            grpc = _grpc()
            provider.add_span_processor(
                BatchSpanProcessor(
                    grpc.OTLPSpanExporter(
                        endpoint=self.options.endpoint,
                        headers=self._headers(),
                        insecure=self.options.insecure,
                        timeout=self.options.export_timeout_s,
                    )
                )
            )
        self._owned.append(provider)
        self._flush.append(provider)
        return provider

    def _own_meter_provider(self, exporter: str) -> MeterProvider | None:
        if not self.options.metrics or exporter == "none":
            return None
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader

        reader: MetricReader
        if exporter == "memory":
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader

            self.metric_reader = reader = InMemoryMetricReader()
        elif exporter == "console":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            reader = PeriodicExportingMetricReader(ConsoleMetricExporter())
        elif exporter == "otlp_http":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            reader = PeriodicExportingMetricReader(
                OTLPMetricExporter(
                    endpoint=self._endpoint("metrics"), headers=self._headers(), timeout=self.options.export_timeout_s
                )
            )
        else:
            grpc = _grpc()
            reader = PeriodicExportingMetricReader(
                grpc.OTLPMetricExporter(
                    endpoint=self.options.endpoint,
                    headers=self._headers(),
                    insecure=self.options.insecure,
                    timeout=self.options.export_timeout_s,
                )
            )
        provider = SdkMeterProvider(resource=self._resource(), metric_readers=[reader])
        self._owned.append(provider)
        self._flush.append(provider)
        return provider

    # ---- events ---------------------------------------------------------------------------

    def run_links(self, run_id: str) -> dict[str, str]:
        """Called by the session in the caller's thread as a run starts: the caller's active
        trace context (W3C ``traceparent``), so the run's span becomes its child."""
        if not trace.get_current_span().get_span_context().is_valid:
            return {}
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier

    def on_event(self, event: Event) -> None:
        """Turn one event into span starts, ends, span events and metric points."""
        kind = event.kind
        if kind == "llm.token":
            return  # timing comes from the call's own ttft_s; content from its response
        with self._lock:
            if self._closed:
                return
            run = self._runs.get(event.run_id)
            if run is None:
                if kind in _ENDS:
                    return  # a run we never saw start (a cancel before it ran, say)
                run = self._runs[event.run_id] = _RunTrace()
            handler = _HANDLERS.get(kind)
            if handler is not None:
                handler(self, run, event)
            else:
                self._span_event(run, event)

    @staticmethod
    def _parent(run: _RunTrace, parent_id: str | None) -> Span | SpanContext | None:
        """The parent of a new span: the open span ``parent_id`` names, else the context of
        that span if it already ended, else the run's span."""
        if parent_id is not None:
            span = run.open.get(parent_id)
            if span is not None:
                return span
            ended = run.ended.get(parent_id)
            if ended is not None:
                return ended
        return run.run_span

    def _start(
        self, run: _RunTrace, event: Event, name: str, attrs: dict[str, Any], kind: SpanKind = SpanKind.INTERNAL
    ) -> Any:
        """Start the span of ``event`` under its parent (see :meth:`_parent`); returns it."""
        span = self._start_span(name, kind, attrs, _ns(event.ts), self._parent(run, event.parent_id))
        run.open[event.span_id] = span
        return span

    def _start_span(
        self,
        name: str,
        kind: SpanKind,
        attrs: dict[str, Any],
        start_ns: int,
        parent: Span | SpanContext | None,
        context: Context | None = None,
    ) -> Any:
        """A span through the fast path when it is usable, else ``Tracer.start_span``.
        ``context`` (the run's span only): the caller's context, holding the parent."""
        fast = self._fast
        if fast is not None and fast.usable():
            if parent is not None and not isinstance(parent, SpanContext):
                parent = parent.get_span_context()
            return fast.start_span(name, parent, kind, attrs, start_ns, context=context)
        if context is None:
            context = context_with(parent)
        return self.tracer.start_span(name, context=context, kind=kind, attributes=attrs, start_time=start_ns)

    def _end(self, run: _RunTrace, event: Event, error: Mapping[str, Any] | None = None) -> Span | None:
        span = run.open.pop(event.span_id, None)
        if span is None:
            return None
        if error is not None:
            _set_error(span, error)
        run.ended[event.span_id] = span.get_span_context()
        span.end(end_time=_ns(event.ts))
        return span

    def _content(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        if has_secrets():
            text = redact(text)
        if self._limit and len(text) > self._limit:
            text = text[: self._limit] + "…"
        return text

    @staticmethod
    def _scrub(value: Any) -> Any:
        return redact(value) if isinstance(value, str) and has_secrets() else value

    # -- run --

    def _run_started(self, run: _RunTrace, event: Event) -> None:
        d = event.data
        workflow = self.options.workflow_name
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.workflow.name": workflow,
            "amsha.run.id": event.run_id,
            "amsha.run.mode": str(d.get("mode") or ""),
            "amsha.run.tasks": tuple(str(t) for t in d.get("tasks") or ()),
        }
        if d.get("orchestrator"):
            attrs["amsha.orchestrator"] = str(d["orchestrator"])
        if self.options.openinference:
            attrs["openinference.span.kind"] = "CHAIN"
        links = d.get("links")
        # The caller's trace context, captured when it started the run (see run_links).
        caller = propagate.extract(links) if isinstance(links, Mapping) and links else Context()
        name = f"invoke_workflow {workflow}"
        span = self._start_span(name, SpanKind.INTERNAL, attrs, _ns(event.ts), None, context=caller)
        run.open[event.span_id] = span
        run.run_span = span

    def _run_ended(self, run: _RunTrace, event: Event) -> None:
        d = event.data
        kind = event.kind
        status = {"run.finished": "succeeded", "run.failed": "failed", "run.cancelled": "cancelled"}[kind]
        error: dict[str, Any] | None = None
        if kind == "run.failed":
            error = dict(d.get("error") or {"type": "error"})
        elif kind == "run.cancelled":
            error = {"type": _CANCELLED, "message": f"cancelled: {d.get('reason') or ''}".rstrip(": ")}
        # Whatever is still open (a call cut by the cancel, a task that never reported) ends
        # here, innermost first, so no span is left dangling.
        end_ns = _ns(event.ts)
        for span_id in reversed([s for s in run.open if s != event.span_id]):
            inner = run.open.pop(span_id)
            inner.set_attribute("amsha.incomplete", True)
            if error is not None:
                _set_error(inner, error)
            inner.end(end_time=end_ns)
        span = run.open.get(event.span_id)
        if span is not None:
            metrics = d.get("metrics") or {}
            total = metrics.get("total") or {}
            attrs: dict[str, Any] = {"amsha.run.status": status}
            for key in ("input_tokens", "output_tokens", "total_tokens", "calls", "retries", "errors"):
                if key in total:
                    attrs[f"amsha.usage.{key}" if "tokens" in key else f"amsha.run.{key}"] = int(total[key] or 0)
            if total.get("tokens_estimated"):
                attrs["amsha.usage.estimated"] = True
            if metrics.get("ttft_s") is not None:
                attrs["amsha.run.ttft_s"] = float(metrics["ttft_s"])
            if d.get("latency_s") is not None:
                attrs["amsha.run.latency_s"] = float(d["latency_s"])
            if self.capture_content and d.get("outputs"):
                attrs["amsha.run.outputs"] = self._content(d["outputs"])
            span.set_attributes(attrs)
            self._end(run, event, error)
        self._runs.pop(event.run_id, None)

    # -- task and agent --

    def _task_started(self, run: _RunTrace, event: Event) -> None:
        attrs: dict[str, Any] = {"amsha.task.name": event.task or ""}
        if event.agent:
            attrs["gen_ai.agent.name"] = event.agent
        if self.options.openinference:
            attrs["openinference.span.kind"] = "CHAIN"
        self._start(run, event, f"amsha.task {event.task}", attrs)

    def _task_ended(self, run: _RunTrace, event: Event) -> None:
        span = run.open.get(event.span_id)
        if span is None:
            return
        if event.kind == "task.failed":
            error = dict(event.data.get("error") or {"type": "error"})
            if error.get("cancelled"):
                error["type"] = _CANCELLED
            self._end(run, event, error)
            return
        if self.capture_content and "output" in event.data:
            span.set_attribute("amsha.task.output", self._content(event.data["output"]))
            if self.options.openinference:
                span.set_attribute("output.value", self._content(event.data["output"]))
        self._end(run, event)

    def _agent_started(self, run: _RunTrace, event: Event) -> None:
        agent = event.agent or str(event.data.get("agent") or "")
        attrs: dict[str, Any] = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent}
        if event.task:
            attrs["amsha.task.name"] = event.task
        if self.options.openinference:
            attrs["openinference.span.kind"] = "AGENT"
        self._start(run, event, f"invoke_agent {agent}".rstrip(), attrs)

    def _agent_ended(self, run: _RunTrace, event: Event) -> None:
        error = event.data.get("error")
        self._end(run, event, dict(error) if isinstance(error, Mapping) else None)

    # -- LLM calls --

    def _llm_started(self, run: _RunTrace, event: Event) -> None:
        d = event.data
        request = d.get("request") or {}
        model = d.get("model") or request.get("model")
        provider = str(d.get("provider") or "")
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
        }
        if self._legacy:
            attrs["gen_ai.system"] = provider
        if model:
            attrs["gen_ai.request.model"] = str(model)
        metric_attrs = dict(attrs)
        if request.get("response_format"):
            attrs["gen_ai.output.type"] = "json"
        for key, attr, kind in (
            ("temperature", "gen_ai.request.temperature", float),
            ("max_tokens", "gen_ai.request.max_tokens", int),
            ("seed", "gen_ai.request.seed", int),
        ):
            if request.get(key) is not None:
                attrs[attr] = kind(request[key])
        if request.get("stop"):
            attrs["gen_ai.request.stop_sequences"] = tuple(str(s) for s in request["stop"])
        if event.task:
            attrs["amsha.task.name"] = event.task
        if event.agent:
            attrs["gen_ai.agent.name"] = event.agent
        if d.get("llm"):
            attrs["amsha.llm.name"] = str(d["llm"])
        if self.capture_content:
            system, messages = _input_messages(request.get("messages") or [])
            if system:
                attrs["gen_ai.system_instructions"] = self._content(system)
            attrs["gen_ai.input.messages"] = self._content(messages)
            if request.get("tools"):
                attrs["gen_ai.tool.definitions"] = self._content([{"type": "function", **t} for t in request["tools"]])
        if self.options.openinference:
            attrs["openinference.span.kind"] = "LLM"
            attrs["llm.provider"] = provider
            if model:
                attrs["llm.model_name"] = str(model)
            if self.capture_content:
                attrs["input.value"] = attrs["gen_ai.input.messages"]
                attrs["input.mime_type"] = "application/json"
        span = self._start(run, event, f"chat {model}" if model else "chat", attrs, SpanKind.CLIENT)
        run.calls[event.span_id] = _Call(span, metric_attrs)

    def _llm_retry(self, run: _RunTrace, event: Event) -> None:
        call = run.calls.get(event.span_id)
        d = event.data
        error = d.get("error") or {}
        if call is not None:
            call.span.add_event(
                "amsha.llm.retry",
                {
                    "amsha.retry.attempt": int(d.get("attempt") or 0),
                    "amsha.retry.wait_s": float(d.get("wait_s") or 0.0),
                    "error.type": str(error.get("type") or "error"),
                },
                timestamp=_ns(event.ts),
            )
        if self._meter_enabled:
            self._retries.add(1, call.attrs if call is not None else {})

    def _llm_ended(self, run: _RunTrace, event: Event) -> None:
        call = run.calls.pop(event.span_id, None)
        if call is None:
            return
        span, d = call.span, event.data
        failed = event.kind == "llm.failed"
        response = d.get("response") or {}
        usage = d.get("usage") or {}
        attrs: dict[str, Any] = {}
        metric_attrs = call.attrs
        model = response.get("model")
        if model:
            attrs["gen_ai.response.model"] = str(model)
            metric_attrs = {**metric_attrs, "gen_ai.response.model": str(model)}
        if response.get("finish_reason"):
            attrs["gen_ai.response.finish_reasons"] = (str(response["finish_reason"]),)
        input_tokens = int(usage.get("input_tokens") or 0)
        output_tokens = int(usage.get("output_tokens") or 0)
        if usage:
            attrs["gen_ai.usage.input_tokens"] = input_tokens
            attrs["gen_ai.usage.output_tokens"] = output_tokens
            attrs["amsha.usage.total_tokens"] = int(usage.get("total_tokens") or input_tokens + output_tokens)
            attrs["amsha.usage.estimated"] = bool(usage.get("estimated", False))
            if usage.get("cached_input_tokens") is not None:
                attrs["gen_ai.usage.cache_read.input_tokens"] = int(usage["cached_input_tokens"])
            if usage.get("reasoning_tokens") is not None:
                attrs["gen_ai.usage.reasoning.output_tokens"] = int(usage["reasoning_tokens"])
        ttft = d.get("ttft_s")
        if ttft is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = float(ttft)
        latency = d.get("latency_s")
        if latency is not None:
            attrs["amsha.llm.latency_s"] = float(latency)
        retries = int(d.get("retries") or 0)
        if retries:
            attrs["amsha.llm.retries"] = retries
        if self.capture_content:
            if failed:
                if d.get("partial_text"):
                    attrs["amsha.llm.partial_text"] = self._content(d["partial_text"])
            else:
                attrs["gen_ai.output.messages"] = self._content(_output_messages(response))
        if self.options.openinference:
            if usage:
                attrs["llm.token_count.prompt"] = input_tokens
                attrs["llm.token_count.completion"] = output_tokens
                attrs["llm.token_count.total"] = attrs["amsha.usage.total_tokens"]
            if self.capture_content and not failed:
                attrs["output.value"] = attrs["gen_ai.output.messages"]
                attrs["output.mime_type"] = "application/json"
        span.set_attributes(attrs)
        error: dict[str, Any] | None = None
        if failed:
            error = dict(d.get("error") or {"type": "error"})
        elif d.get("cancelled"):
            error = {"type": _CANCELLED, "message": "cancelled"}
        self._end(run, event, error)
        if self._meter_enabled:
            if usage:
                self._token_usage.record(input_tokens, {**metric_attrs, "gen_ai.token.type": "input"})
                self._token_usage.record(output_tokens, {**metric_attrs, "gen_ai.token.type": "output"})
            if latency is not None:
                duration_attrs = metric_attrs if error is None else {**metric_attrs, "error.type": error["type"]}
                self._duration.record(float(latency), duration_attrs)
            if ttft is not None and not failed:
                self._ttft.record(float(ttft), metric_attrs)

    # -- tools --

    def _tool_started(self, run: _RunTrace, event: Event) -> None:
        d = event.data
        tool = str(d.get("tool") or "")
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.type": "function",
        }
        if d.get("call_id"):
            attrs["gen_ai.tool.call.id"] = str(d["call_id"])
        if event.task:
            attrs["amsha.task.name"] = event.task
        if event.agent:
            attrs["gen_ai.agent.name"] = event.agent
        if self.capture_content and "arguments" in d:
            attrs["gen_ai.tool.call.arguments"] = self._content(d["arguments"])
        if self.options.openinference:
            attrs["openinference.span.kind"] = "TOOL"
            attrs["tool.name"] = tool
            if self.capture_content and "arguments" in d:
                attrs["input.value"] = attrs["gen_ai.tool.call.arguments"]
        self._start(run, event, f"execute_tool {tool}".rstrip(), attrs)

    def _tool_ended(self, run: _RunTrace, event: Event) -> None:
        span = run.open.get(event.span_id)
        if span is None:
            return
        d = event.data
        if event.kind == "tool.failed":
            message = d.get("error")
            error = dict(message) if isinstance(message, Mapping) else {"type": "ToolError", "message": str(message)}
            self._end(run, event, error)
            return
        if self.capture_content and "result" in d:
            span.set_attribute("gen_ai.tool.call.result", self._content(d["result"]))
            if self.options.openinference:
                span.set_attribute("output.value", self._content(d["result"]))
        self._end(run, event)

    # -- everything else --

    def _span_event(self, run: _RunTrace, event: Event) -> None:
        """Kinds without a span of their own (state snapshots, observer errors, an
        orchestrator's ``framework.*`` events) become span events on the span they speak
        about, else its parent, else the run span. Only scalar data is kept; strings only
        when content is captured."""
        span = run.open.get(event.span_id) or (run.open.get(event.parent_id) if event.parent_id else None)
        span = span or run.run_span
        if span is None:
            return
        attrs: dict[str, Any] = {}
        for key, value in event.data.items():
            if isinstance(value, bool | int | float):
                attrs[f"amsha.{key}"] = value
            elif isinstance(value, str) and (self.capture_content or event.kind == "state.snapshot"):
                attrs[f"amsha.{key}"] = self._content(value)
        if event.task:
            attrs["amsha.task.name"] = event.task
        span.add_event(event.kind, attrs, timestamp=_ns(event.ts))

    # ---- closing --------------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 10_000) -> None:
        """Export what the span processors and metric readers hold."""
        for provider in self._flush:
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush(timeout_millis)

    def close(self) -> None:
        """End the spans still open (marked ``amsha.incomplete``), flush, and shut down the
        providers this observer built (never the application's), waiting at most
        ``close_timeout_s`` for an unreachable collector. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            runs, self._runs = self._runs, {}
        for run in runs.values():
            for span in reversed(list(run.open.values())):
                span.set_attribute("amsha.incomplete", True)
                span.end()
        timeout = self.options.close_timeout_s
        worker = threading.Thread(target=self._shutdown, args=(timeout,), name="amsha-otel-close", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            log.warning(
                "amsha: opentelemetry observer: the exporter did not finish within %ss; what it still held is dropped",
                timeout,
            )

    def _shutdown(self, timeout: float) -> None:
        try:
            self.force_flush(int(timeout * 1000))
        except Exception:
            log.warning("amsha: opentelemetry observer: the last flush failed", exc_info=True)
        for provider in self._owned:
            try:
                provider.shutdown()
            except Exception:
                log.warning("amsha: opentelemetry observer: shutting down %r failed", provider, exc_info=True)

    def __repr__(self) -> str:
        return f"OtelObserver(exporter={self.options.exporter!r}, capture_content={self.capture_content})"


_HANDLERS = {
    "run.started": OtelObserver._run_started,
    "run.finished": OtelObserver._run_ended,
    "run.failed": OtelObserver._run_ended,
    "run.cancelled": OtelObserver._run_ended,
    "task.started": OtelObserver._task_started,
    "task.finished": OtelObserver._task_ended,
    "task.failed": OtelObserver._task_ended,
    "agent.started": OtelObserver._agent_started,
    "agent.finished": OtelObserver._agent_ended,
    "llm.started": OtelObserver._llm_started,
    "llm.retry": OtelObserver._llm_retry,
    "llm.finished": OtelObserver._llm_ended,
    "llm.failed": OtelObserver._llm_ended,
    "tool.started": OtelObserver._tool_started,
    "tool.finished": OtelObserver._tool_ended,
    "tool.failed": OtelObserver._tool_ended,
}


def _set_error(span: Span, error: Mapping[str, Any]) -> None:
    etype = str(error.get("type") or "error")
    message = error.get("message")
    span.set_attribute("error.type", etype)
    description = f"{etype}: {message}" if message else etype
    span.set_status(Status(StatusCode.ERROR, redact(description) if has_secrets() else description))


def _input_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Amsha's chat messages in the GenAI conventions' shape: system instructions apart,
    each other message as ``{role, parts}``."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            system.append({"type": "text", "content": m.get("content") or ""})
            continue
        parts: list[dict[str, Any]] = []
        if role == "tool":
            parts.append({"type": "tool_call_response", "id": m.get("tool_call_id"), "response": m.get("content")})
        elif m.get("content"):
            parts.append({"type": "text", "content": m["content"]})
        for call in m.get("tool_calls") or []:
            parts.append(_tool_call_part(call))
        out.append({"role": role, "parts": parts})
    return system, out


def _output_messages(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if response.get("text"):
        parts.append({"type": "text", "content": response["text"]})
    for call in response.get("tool_calls") or []:
        parts.append(_tool_call_part(call))
    return [{"role": "assistant", "parts": parts, "finish_reason": response.get("finish_reason") or "stop"}]


def _tool_call_part(call: Mapping[str, Any]) -> dict[str, Any]:
    arguments: Any = call.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return {"type": "tool_call", "id": call.get("id"), "name": call.get("name"), "arguments": arguments}


def _exporter_from_env(variable: str, signal: str) -> str:
    """The exporter the standard variables ask for: ``OTEL_{TRACES,METRICS}_EXPORTER``
    (first entry; default ``otlp``) and the OTLP protocol (default ``http/protobuf``)."""
    value = (os.environ.get(variable) or "otlp").split(",")[0].strip().lower()
    if value in ("none", "console"):
        return value
    if value != "otlp":
        raise ConfigError(
            [(variable, f"{value!r} is not an exporter the opentelemetry observer builds (otlp, console, none)")]
        )
    protocol_var = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    protocol = (
        os.environ.get(protocol_var) or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    ).lower()
    if protocol == "grpc":
        return "otlp_grpc"
    if protocol in ("http/protobuf", "http"):
        return "otlp_http"
    raise ConfigError([(protocol_var, f"unsupported OTLP protocol {protocol!r} (http/protobuf or grpc)")])


class _Grpc:
    OTLPSpanExporter: Any
    OTLPMetricExporter: Any


def _grpc() -> _Grpc:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError(
            [
                (
                    "observers[].options.exporter",
                    f"otlp_grpc needs the gRPC exporter: pip install 'amsha-observer-opentelemetry[grpc]' ({exc})",
                )
            ]
        ) from None
    out = _Grpc()
    out.OTLPSpanExporter = OTLPSpanExporter
    out.OTLPMetricExporter = OTLPMetricExporter
    return out


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("amsha-observer-opentelemetry")
    except metadata.PackageNotFoundError:
        return "0"


def build(ctx: BackendContext) -> OtelObserver:
    """The factory registered as observer ``opentelemetry``."""
    return OtelObserver(ctx.options)
