"""A real CrewAI crew on provider ``openai`` against the local Chat Completions server: outputs,
usage equal to the server's, a tool round trip over HTTP, and one retry layer counted at the
server (CrewAI's own rate-limit retry and the SDK's retries would multiply the attempts)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from amsha import ExecutionSession
from amsha.errors import RateLimitError, RunFailedError
from amsha_openai.testing import OpenAIServer, Reply

RESEARCH = "Tide pools hold anemones, hermit crabs and sea stars."
POST = "Tide pools are small worlds."


def lookup(species: str) -> str:
    """Look up facts about a species."""
    return json.dumps({"species": species, "fact": "eats plankton"})


def config(server: OpenAIServer, **options: Any) -> dict[str, Any]:
    return {
        "provider": server.provider_config(**options),
        "orchestrator": {"name": "crewai"},
        "retry": {"max_retries": 2, "initial_backoff_s": 0.001, "max_backoff_s": 0.001},
        "tools": {"lookup": "test_crewai_openai:lookup"},
        "agents": {
            "researcher": {"role": "Researcher", "goal": "Find facts", "tools": ["lookup"]},
            "writer": {"role": "Writer", "goal": "Write short posts"},
        },
        "tasks": {
            "research": {"description": "Research {topic}", "agent": "researcher", "expected_output": "Facts"},
            "write": {
                "description": "Write a post about {topic}",
                "agent": "writer",
                "context": ["research"],
                "expected_output": "A post",
            },
        },
    }


def test_a_crew_on_provider_openai_with_a_tool_round_trip(openai_server: OpenAIServer) -> None:
    openai_server.script(
        Reply(tool_calls=[{"id": "call_1", "name": "lookup", "arguments": {"species": "anemone"}}]),
        Reply(RESEARCH, match="eats plankton"),
        Reply(POST, match="hermit crabs"),
    )
    with ExecutionSession(config(openai_server)) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        text = "".join(handle.stream_text())
        result = handle.result(timeout=60)
        events = list(handle.stream())
    assert result.outputs == {"research": RESEARCH, "write": POST}
    assert text == RESEARCH + POST
    bodies = [r.body for r in openai_server.requests]
    assert len(bodies) == 3
    # The tool went out as a function schema; its result came back as a tool message.
    assert bodies[0]["tools"][0]["function"]["name"] == "lookup"
    tool_msg = bodies[1]["messages"][-1]
    assert tool_msg["role"] == "tool" and tool_msg["tool_call_id"] == "call_1" and "plankton" in tool_msg["content"]
    # Messages reach the server clean: no key CrewAI adds for itself.
    allowed = {"role", "content", "tool_calls", "tool_call_id", "name"}
    assert all(set(m) <= allowed for body in bodies for m in body["messages"])
    usage = [e.data["usage"] for e in events if e.kind == "llm.finished"]
    total = result.metrics.to_dict()["total"]
    assert total["calls"] == 3 and total["tokens_estimated"] is False
    assert total["input_tokens"] == sum(u["input_tokens"] for u in usage) > 0
    assert [e.data["tool"] for e in events if e.kind == "tool.finished"] == ["lookup"]


@pytest.mark.parametrize("max_retries", [0, 2])
def test_attempts_against_a_server_that_always_answers_429(openai_server: OpenAIServer, max_retries: int) -> None:
    openai_server.script(Reply.fail(429, "slow down", retry_after=0.001, times=1000))
    cfg = config(openai_server, max_retries=max_retries)
    with ExecutionSession(cfg) as session:
        with pytest.raises(RunFailedError) as info:
            session.run(inputs={"topic": "tide pools"}).result(timeout=60)
    assert isinstance(info.value.cause, RateLimitError) and info.value.task == "research"
    # Exactly Amsha's policy: max_retries + 1 HTTP attempts (a naive adapter makes 9).
    assert openai_server.attempts == max_retries + 1
