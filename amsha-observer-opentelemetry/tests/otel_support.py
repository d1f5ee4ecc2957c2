"""Helpers shared by the plugin's tests (imported by module name; tests/ is on sys.path)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from amsha import ExecutionSession

TOOL_CALLS: list[tuple[int, int]] = []
LEAK: dict[str, str] = {}


def add(a: int, b: int) -> int:
    """Add two integers."""
    TOOL_CALLS.append((a, b))
    return a + b


def lookup(key: str) -> str:
    """Look a value up (returns whatever the test planted, a canary secret included)."""
    return LEAK.get(key, "nothing")


BASE: dict[str, Any] = {
    "provider": {
        "name": "scripted",
        "model": "scripted-1",
        "options": {
            "responses": [
                {"match": "The sum is 42", "text": "Done: the sum is 42."},
                {"match": "42", "text": "The sum is 42."},
                {"match": "Compute", "tool_calls": [{"id": "c1", "name": "add", "arguments": {"a": 40, "b": 2}}]},
            ]
        },
    },
    "agents": {
        "mathematician": {"role": "Mathematician", "goal": "Do arithmetic about {topic}", "tools": ["add"]},
        "writer": {"role": "Writer", "goal": "Write about {topic}"},
    },
    "tasks": {
        "sum": {"description": "Compute 40 + 2 with the tool.", "agent": "mathematician"},
        "write": {"description": "Write about the result.", "agent": "writer", "context": ["sum"]},
    },
    "pipeline": ["sum", "write"],
    "tools": {"add": "otel_support:add", "lookup": "otel_support:lookup"},
    "retry": {"max_retries": 2, "initial_backoff_s": 0.001, "max_backoff_s": 0.002},
}


def make_config(otel: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """The base config with the observer selected (in-memory exporter unless told)."""
    config = copy.deepcopy(BASE)
    options = overrides.pop("provider_options", None)
    if options is not None:
        config["provider"]["options"].update(options)
    config["observers"] = [{"name": "opentelemetry", "options": {"exporter": "memory", **(otel or {})}}]
    config.update(overrides)
    return config


def spans_of(session: ExecutionSession) -> list[Any]:
    """The finished spans of the session's observer, after it caught up."""
    assert session.flush_observers(10)
    return list(session.observers[0].span_exporter.get_finished_spans())


def metric_points(session: ExecutionSession) -> dict[str, list[Any]]:
    """Metric name -> its data points (the in-memory reader collects on demand)."""
    assert session.flush_observers(10)
    data = session.observers[0].metric_reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def dump(spans: Iterable[Any]) -> str:
    """Everything exported about the spans, as text (names, attributes, events, status)."""
    return "\n".join(span.to_json() for span in spans)


def by_name(spans: Iterable[Any]) -> dict[str, Any]:
    """Span name -> span, for span names that occur once (asserted)."""
    out: dict[str, Any] = {}
    for span in spans:
        assert span.name not in out, f"two spans named {span.name!r}"
        out[span.name] = span
    return out


def one(spans: Iterable[Any], name: str) -> Any:
    """The one span named ``name`` (asserted)."""
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r}"
    return found[0]


def parent_of(span: Any) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def as_json(value: str) -> Any:
    return json.loads(value)
