"""Entry point module of amsha-observer-opentelemetry (group ``amsha``).

Kept tiny on purpose: plugin modules are imported at session creation, so the OpenTelemetry
SDK is imported only by :mod:`amsha_otel.observer`, when a session selects the observer.
"""

from __future__ import annotations

from amsha import hookimpl
from amsha.hookspecs import Register

from .options import OtelOptions

AMSHA_PLUGIN_API = "1.0"


@hookimpl
def amsha_register_observers(register: Register) -> None:
    register(
        "opentelemetry",
        "amsha_otel.observer:build",
        options=OtelOptions,
        description="OpenTelemetry GenAI traces and metrics (OTLP over HTTP or gRPC, console)",
    )
