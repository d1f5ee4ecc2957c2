"""Every test of the plugin runs twice: spans through the fast path (finished spans handed to
the SDK's span processors) and through ``Tracer.start_span`` (the path any setup the fast
path cannot prove equivalent takes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, params=["fast", "sdk"])
def span_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "sdk":
        from amsha_otel._fastspan import FastTracer

        monkeypatch.setattr(FastTracer, "of", classmethod(lambda cls, tracer: None))
    yield request.param
