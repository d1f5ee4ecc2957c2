"""amsha-observer-opentelemetry: Amsha events as OpenTelemetry GenAI traces and metrics.

``OtelObserver`` is loaded on first use, so that importing the package (as plugin discovery
does) never imports the OpenTelemetry SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import OtelOptions

if TYPE_CHECKING:
    from .observer import OtelObserver

__all__ = ["OtelObserver", "OtelOptions"]


def __getattr__(name: str) -> Any:
    if name == "OtelObserver":
        from .observer import OtelObserver

        return OtelObserver
    raise AttributeError(f"module 'amsha_otel' has no attribute {name!r}")
