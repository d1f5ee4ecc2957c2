"""Options of the ``opentelemetry`` observer (imported at discovery: no OpenTelemetry here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Exporter", "OtelOptions"]

Exporter = Literal["auto", "otlp_http", "otlp_grpc", "console", "memory", "none"]


class OtelOptions(BaseModel):
    """Options of the ``opentelemetry`` observer.

    ``exporter``:
      - ``auto`` (default): the application's global tracer and meter providers when it has
        set them (Amsha then adds spans to the application's traces and never replaces a
        global provider); otherwise providers of the observer's own, exporting as the
        standard ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` (``otlp``, ``console``,
        ``none``; default ``otlp``) and ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``
        (``http/protobuf``, the default, or ``grpc``) variables say.
      - ``otlp_http``, ``otlp_grpc`` (needs the ``grpc`` extra), ``console``: providers of
        the observer's own with that exporter.
      - ``memory``: the SDK's in-memory span exporter and metric reader, for tests
        (``observer.span_exporter``, ``observer.metric_reader``).
      - ``none``: spans and metrics are built but exported nowhere.
    """

    model_config = ConfigDict(extra="forbid")
    exporter: Exporter = "auto"
    endpoint: str | None = Field(
        None,
        description="OTLP endpoint: the base URL for otlp_http (/v1/traces and /v1/metrics are appended, "
        "as for OTEL_EXPORTER_OTLP_ENDPOINT), host:port or URL for otlp_grpc; default from OTEL_* variables",
    )
    headers_env: str | None = Field(
        None,
        description="name of an environment variable holding OTLP headers as 'key=value,key2=value2' "
        "(an API key for a hosted backend); read as a secret, never written anywhere",
    )
    insecure: bool | None = Field(None, description="otlp_grpc only: plain-text connection")
    service_name: str | None = Field(None, description="resource service.name; default OTEL_SERVICE_NAME, else 'amsha'")
    capture_content: bool | None = Field(
        None,
        description="record prompts, completions, tool arguments and results, task outputs (secrets scrubbed); "
        "default from OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT, else off",
    )
    metrics: bool = Field(True, description="record the gen_ai.client.* and amsha.* metrics")
    openinference: bool = Field(
        False, description="also set OpenInference attributes (openinference.span.kind, llm.token_count.*, ...)"
    )
    workflow_name: str = Field("amsha", description="gen_ai.workflow.name of run spans")
    export_timeout_s: float | None = Field(
        None, gt=0, description="OTLP export timeout per request; default OTEL_EXPORTER_OTLP_TIMEOUT, else 10"
    )
    close_timeout_s: float = Field(
        5.0, ge=0, description="at most this long for the last flush and shutdown when the session closes"
    )
    max_content_chars: int = Field(16_384, ge=0, description="captured content longer than this is cut (0: no limit)")
    fast_spans: bool = Field(
        True,
        description="hand finished spans straight to the SDK's span processors when that provably gives the "
        "same spans (the SDK's Batch/Simple processors, a ParentBased sampler, no truncating limits); "
        "false: every span through Tracer.start_span",
    )
