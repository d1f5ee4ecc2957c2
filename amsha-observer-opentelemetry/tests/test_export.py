"""Exporters and providers: OTLP over HTTP to a real local receiver, the standard OTEL_*
variables, the application's own providers, and the global one left alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from amsha import ExecutionSession, RunStatus
from amsha.errors import ConfigError
from otel_support import make_config
from receiver import OtlpReceiver, attrs

HERE = Path(__file__).resolve().parent


def test_otlp_http_export_reaches_a_real_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "otlp-token-5e1d0c9b7a"
    monkeypatch.setenv("AMSHA_TEST_OTLP_HEADERS", f"authorization=Bearer {token},x-tenant=amsha")
    with OtlpReceiver() as rx:
        config = make_config(
            {
                "exporter": "otlp_http",
                "endpoint": rx.endpoint,
                "headers_env": "AMSHA_TEST_OTLP_HEADERS",
                "service_name": "otel-test",
                "capture_content": True,
            }
        )
        session = ExecutionSession(config)
        result = session.run(inputs={"topic": "numbers"}).result(timeout=30)
        session.close()  # drains the observer, flushes and shuts down its providers
        assert rx.arrived.is_set()
    assert result.status == RunStatus.SUCCEEDED and result.metrics is not None
    names = sorted(s.name for s in rx.spans)
    assert names == sorted(
        ["invoke_workflow amsha", "amsha.task sum", "amsha.task write", "execute_tool add"] + ["chat scripted-1"] * 3
    )
    run = next(s for s in rx.spans if s.name == "invoke_workflow amsha")
    assert attrs(run)["amsha.run.id"] == result.run_id
    assert {s.trace_id for s in rx.spans} == {run.trace_id}
    chats = [attrs(s) for s in rx.spans if s.name.startswith("chat")]
    assert sum(c["gen_ai.usage.input_tokens"] for c in chats) == result.metrics.input_tokens
    assert sum(c["gen_ai.usage.output_tokens"] for c in chats) == result.metrics.output_tokens
    resource = {kv.key: kv.value.string_value for kv in rx.resources[0].attributes}
    assert resource["service.name"] == "otel-test"
    metric_names = {m.name for m in rx.metrics}
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"} <= metric_names
    assert set(rx.paths) == {"/v1/traces", "/v1/metrics"}
    # The headers (a hosted backend's key) are sent, and written nowhere else.
    assert all(h.get("authorization") == f"Bearer {token}" and h.get("x-tenant") == "amsha" for h in rx.headers)
    assert not any(token.encode() in body for body in rx.bodies)


def test_standard_variables_choose_the_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """exporter ``auto`` without an application provider: OTEL_EXPORTER_OTLP_ENDPOINT and
    OTEL_SERVICE_NAME, as any OpenTelemetry SDK reads them."""
    with OtlpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
        monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
        config = make_config({"exporter": "auto"})
        with ExecutionSession(config) as session:
            session.run(["sum"], inputs={"topic": "x"}).result(timeout=30)
        assert rx.arrived.is_set()
    assert "invoke_workflow amsha" in {s.name for s in rx.spans}
    assert {kv.key: kv.value.string_value for kv in rx.resources[0].attributes}["service.name"] == "from-env"


def test_bad_standard_variables_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from amsha_otel import OtelObserver

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        OtelObserver({"exporter": "auto"})
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigError, match="http/json"):
        OtelObserver({"exporter": "auto"})
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    observer = OtelObserver({"exporter": "auto"})
    assert observer.span_exporter is None and not observer._meter_enabled
    observer.close()


def test_unknown_option_and_missing_header_variable_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config({"exporterr": "memory"})
    with pytest.raises(ConfigError, match="exporterr"):
        ExecutionSession(config)
    monkeypatch.delenv("AMSHA_TEST_NO_SUCH_VAR", raising=False)
    config = make_config({"exporter": "otlp_http", "headers_env": "AMSHA_TEST_NO_SUCH_VAR"})
    with pytest.raises(ConfigError, match="AMSHA_TEST_NO_SUCH_VAR"):
        ExecutionSession(config)


def test_application_providers_passed_in_code() -> None:
    from amsha_otel import OtelObserver
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    mp = MeterProvider(metric_readers=[reader])
    observer = OtelObserver(tracer_provider=tp, meter_provider=mp)
    config = make_config()
    del config["observers"]
    with ExecutionSession(config, observers=[observer]) as session:
        result = session.run(inputs={"topic": "x"}).result(timeout=30)
    assert result.status == RunStatus.SUCCEEDED
    assert len(exporter.get_finished_spans()) == 7
    data = reader.get_metrics_data()
    assert data is not None and data.resource_metrics
    # The application's providers are flushed, never shut down: they still work.
    with tp.get_tracer("app").start_as_current_span("after"):
        pass
    assert exporter.get_finished_spans()[-1].name == "after"


def test_auto_joins_the_application_global_provider_and_replaces_nothing() -> None:
    script = textwrap.dedent(
        """
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from amsha import ExecutionSession
        from otel_support import make_config

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        with ExecutionSession(make_config({"exporter": "auto"})) as session:
            session.run(["sum"], inputs={"topic": "x"}).result(timeout=30)
        print(json.dumps({
            "spans": sorted(s.name for s in exporter.get_finished_spans()),
            "same_global": trace.get_tracer_provider() is provider,
            "observer_exporter": session.observers[0].span_exporter is None,
        }))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=HERE, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "invoke_workflow amsha" in out["spans"] and "chat scripted-1" in out["spans"]
    assert out["same_global"] is True and out["observer_exporter"] is True


def test_an_unreachable_collector_never_stalls_a_run_nor_its_closing() -> None:
    # A port nothing listens on: exports fail in the background; the run does not wait, and
    # closing the session waits at most close_timeout_s for the last flush.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = make_config(
        {
            "exporter": "otlp_http",
            "endpoint": f"http://127.0.0.1:{port}",
            "close_timeout_s": 0.5,
            "export_timeout_s": 0.3,
        }
    )
    session = ExecutionSession(config)
    t0 = time.monotonic()
    result = session.run(inputs={"topic": "x"}).result(timeout=30)
    assert result.status == RunStatus.SUCCEEDED
    assert time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    session.close()
    assert time.monotonic() - t0 < 2.0
