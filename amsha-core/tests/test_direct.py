"""The direct orchestrator: one call per task, tool round trips, structured output."""

from __future__ import annotations

from typing import Any

import pytest
from _amsha_support import make_config

from amsha import ExecutionSession
from amsha.tools import tool_spec

CALLS: list[tuple[int, int]] = []


def add(a: int, b: int) -> int:
    """Add two integers.

    Long description that the model does not need."""
    CALLS.append((a, b))
    return a + b


def _config(**over: Any) -> dict[str, Any]:
    config = make_config(
        tools={"add": "test_direct:add"},
        provider_options={
            "responses": [
                {"match": "42", "text": "The sum is 42."},
                {"match": "Compute", "tool_calls": [{"id": "c1", "name": "add", "arguments": {"a": 40, "b": 2}}]},
            ]
        },
    )
    config["agents"]["researcher"]["tools"] = ["add"]
    config["agents"]["researcher"]["goal"] = "Do arithmetic"
    config["tasks"] = {"sum": {"description": "Compute 40 + 2 with the tool.", "agent": "researcher"}}
    config.update(over)
    return config


def test_tool_spec_from_signature() -> None:
    spec = tool_spec("add", add)
    assert spec.description == "Add two integers."
    assert spec.parameters["properties"] == {
        "a": {"type": "integer", "title": "A"},
        "b": {"type": "integer", "title": "B"},
    }
    assert spec.parameters["required"] == ["a", "b"]


def test_tool_round_trip_with_events() -> None:
    CALLS.clear()
    with ExecutionSession(_config()) as session:
        handle = session.run(inputs={"topic": "x"})
        result = handle.result()
        events = list(handle.stream())
    assert result.outputs == {"sum": "The sum is 42."}
    assert CALLS == [(40, 2)]
    kinds = [e.kind for e in events if e.kind.startswith(("llm.started", "tool."))]
    assert kinds == ["llm.started", "tool.started", "tool.finished", "llm.started"]
    tool_done = next(e for e in events if e.kind == "tool.finished")
    task_span = next(e for e in events if e.kind == "task.started").span_id
    assert tool_done.parent_id == task_span and tool_done.data["result"] == "42"
    second = [e for e in events if e.kind == "llm.started"][1].data["request"]
    assert second["tools"][0]["name"] == "add"
    assert second["messages"][-2]["tool_calls"][0]["name"] == "add"
    assert second["messages"][-1] == {"role": "tool", "content": "42", "tool_call_id": "c1"}
    assert result.metrics is not None and result.metrics.tasks["sum"].calls == 2


def test_bad_tool_arguments_go_back_to_the_model() -> None:
    config = _config()
    config["provider"]["options"]["responses"] = [
        {"match": "do not fit", "text": "I could not add those."},
        {"match": "Compute", "tool_calls": [{"name": "add", "arguments": {"a": "forty"}}]},
    ]
    with ExecutionSession(config) as session:
        handle = session.run()
        assert handle.result().outputs["sum"] == "I could not add those."
        failed = [e for e in handle.stream() if e.kind == "tool.failed"]
    assert failed and "do not fit" in failed[0].data["error"]


def test_tool_rounds_are_bounded() -> None:
    config = _config(orchestrator={"name": "direct", "options": {"max_tool_rounds": 2}})
    config["provider"]["options"]["responses"] = [{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 1}}]}]
    with ExecutionSession(config) as session, pytest.raises(Exception, match="after 2 rounds"):
        session.run().result()


def test_structured_output_task_stores_parsed_json() -> None:
    config = make_config(provider_options={"responses": ['{"facts": ["a", "b"]}']})
    config["tasks"] = {
        "facts": {
            "description": "List facts.",
            "agent": "researcher",
            "output_schema": {
                "type": "object",
                "properties": {"facts": {"type": "array", "items": {"type": "string"}}},
            },
        }
    }
    config["agents"]["researcher"]["goal"] = "facts"
    with ExecutionSession(config) as session:
        result = session.run().result()
    assert result.outputs == {"facts": {"facts": ["a", "b"]}}
    assert result.state is not None and result.state["facts"] == {"facts": ["a", "b"]}
