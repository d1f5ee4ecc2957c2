"""Prompt and completion content: off unless asked; secrets never, whatever is asked."""

from __future__ import annotations

import json

import pytest
from amsha import ExecutionSession, RunStatus, get_secret
from otel_support import LEAK, dump, make_config, metric_points, one, spans_of

CONTENT_KEYS = (
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    "gen_ai.tool.definitions",
    "amsha.task.output",
    "amsha.run.outputs",
)


def _run(config: dict, topic: str = "numbers") -> tuple[list, str]:
    with ExecutionSession(config) as session:
        result = session.run(inputs={"topic": topic}).result(timeout=30)
        spans = spans_of(session)
    return spans, json.dumps(result.outputs)


def test_content_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    spans, _ = _run(make_config(), topic="zebrafish")
    assert spans
    for span in spans:
        assert not set(CONTENT_KEYS) & set(span.attributes), span.name
    text = dump(spans)
    # Neither the prompt (task text, the input) nor the answer appears anywhere.
    for needle in ("zebrafish", "Compute 40 + 2", "The sum is 42", "Mathematician"):
        assert needle not in text


def test_content_is_captured_when_asked() -> None:
    spans, _ = _run(make_config({"capture_content": True}), topic="zebrafish")
    chats = sorted((s for s in spans if s.name.startswith("chat")), key=lambda s: s.start_time)
    first_in = json.loads(chats[0].attributes["gen_ai.input.messages"])
    assert first_in[0]["role"] == "user"
    assert first_in[0]["parts"][0]["type"] == "text" and "Compute 40 + 2" in first_in[0]["parts"][0]["content"]
    system = json.loads(chats[0].attributes["gen_ai.system_instructions"])
    assert "zebrafish" in system[0]["content"]  # the agent's goal, with the input filled in
    (definition,) = json.loads(chats[0].attributes["gen_ai.tool.definitions"])
    assert definition["name"] == "add" and definition["type"] == "function"
    first_out = json.loads(chats[0].attributes["gen_ai.output.messages"])
    assert first_out == [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "c1", "name": "add", "arguments": {"a": 40, "b": 2}}],
            "finish_reason": "tool_calls",
        }
    ]
    # The second call carries the tool call and its response back to the model.
    second_in = json.loads(chats[1].attributes["gen_ai.input.messages"])
    assert second_in[-1] == {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "42"}]}
    second_out = json.loads(chats[1].attributes["gen_ai.output.messages"])
    assert second_out[0]["parts"] == [{"type": "text", "content": "The sum is 42."}]
    tool = one(spans, "execute_tool add")
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {"a": 40, "b": 2}
    assert tool.attributes["gen_ai.tool.call.result"] == "42"
    assert one(spans, "amsha.task sum").attributes["amsha.task.output"] == "The sum is 42."


def test_content_switch_from_the_standard_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    spans, _ = _run(make_config())
    assert any("gen_ai.input.messages" in s.attributes for s in spans)
    # Config wins over the variable.
    spans, _ = _run(make_config({"capture_content": False}))
    assert not any("gen_ai.input.messages" in s.attributes for s in spans)


def test_content_is_cut_at_the_limit() -> None:
    config = make_config({"capture_content": True, "max_content_chars": 20})
    spans, _ = _run(config)
    for span in spans:
        for key in CONTENT_KEYS:
            if key in span.attributes:
                assert len(span.attributes[key]) <= 21


def test_a_secret_appears_nowhere_even_with_content_captured(monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "sk-canary-7f3a9c2e41b04d6f"
    monkeypatch.setenv("AMSHA_TEST_CANARY_KEY", canary)
    get_secret("AMSHA_TEST_CANARY_KEY")  # as a provider reading its api_key_env does
    LEAK["key"] = canary
    config = make_config({"capture_content": True, "openinference": True})
    # The secret reaches the prompt (an input), the answer (echoed) and a tool result.
    config["provider"]["options"]["responses"][:0] = [
        {"match": "Look up", "times": 1, "tool_calls": [{"id": "l1", "name": "lookup", "arguments": {"key": "key"}}]},
        {"match": canary, "text": f"the key is {canary}"},
    ]
    config["agents"]["writer"]["tools"] = ["lookup"]
    config["tasks"]["leak"] = {"description": "Look up the key for {topic}.", "agent": "writer"}
    config["pipeline"] = ["sum", "leak"]
    try:
        with ExecutionSession(config) as session:
            result = session.run(inputs={"topic": f"project {canary}"}).result(timeout=30)
            spans = spans_of(session)
            points = metric_points(session)
    finally:
        LEAK.clear()
    assert result.status == RunStatus.SUCCEEDED
    assert canary in result.outputs["leak"]  # the run itself saw the real value
    text = dump(spans)
    assert "execute_tool lookup" in text and "gen_ai.input.messages" in text
    assert canary not in text
    assert "***" in text  # scrubbed where it was, not silently dropped
    assert canary not in repr(points)
