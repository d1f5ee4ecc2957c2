"""The ``opentelemetry`` observer over real orchestrators: the span tree of a CrewAI crew and of
a LangGraph graph, read back from the SDK's in-memory exporter, with token figures equal to
the provider's usage as the run's events carry it."""

from __future__ import annotations

from typing import Any

import pytest
from amsha import ExecutionSession, RunStatus

RESPONSES = [
    {"match": "Research tide pools", "text": "Tide pools hold anemones and crabs."},
    {"match": "anemones and crabs", "text": "A post about tide pools."},
]


def config(orchestrator: str) -> dict[str, Any]:
    return {
        "provider": {"name": "scripted", "model": "scripted-1", "options": {"responses": RESPONSES}},
        "orchestrator": {"name": orchestrator},
        "observers": [{"name": "opentelemetry", "options": {"exporter": "memory"}}],
        "agents": {
            "researcher": {"role": "Researcher", "goal": "Find facts"},
            "writer": {"role": "Writer", "goal": "Write"},
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
        "pipeline": ["research", "write"],
    }


def _parent(span: Any) -> int | None:
    return span.parent.span_id if span.parent is not None else None


@pytest.mark.parametrize("orchestrator", ["crewai", "langgraph"])
def test_span_tree_of_a_real_orchestrator(orchestrator: str) -> None:
    with ExecutionSession(config(orchestrator)) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        result = handle.result(timeout=120)
        assert session.flush_observers(10)
        spans = list(session.observers[0].span_exporter.get_finished_spans())
        events = list(handle.stream())
    assert result.status == RunStatus.SUCCEEDED
    assert result.outputs["write"] == "A post about tide pools."
    by_id = {s.context.span_id: s for s in spans}
    runs = [s for s in spans if s.name == "invoke_workflow amsha"]
    tasks = {s.attributes["amsha.task.name"]: s for s in spans if s.name.startswith("amsha.task")}
    chats = [s for s in spans if s.name == "chat scripted-1"]
    assert len(runs) == 1 and set(tasks) == {"research", "write"} and len(chats) == 2
    run = runs[0]
    # One trace rooted at the run; every span ended; tasks under the run.
    assert {s.context.trace_id for s in spans} == {run.context.trace_id}
    assert run.parent is None and all(s.end_time is not None for s in spans)
    assert {_parent(t) for t in tasks.values()} == {run.context.span_id}
    for chat in chats:
        # Each call sits under its task, directly or through the agent's execution span.
        task_name = chat.attributes.get("amsha.task.name")
        ancestor = by_id[_parent(chat)]
        if ancestor.name.startswith("invoke_agent"):
            assert _parent(ancestor) == tasks[task_name].context.span_id
            ancestor = by_id[_parent(ancestor)]
        assert ancestor is tasks[task_name]
    if orchestrator == "crewai":
        agents = [s for s in spans if s.name.startswith("invoke_agent")]
        assert sorted(s.name for s in agents) == ["invoke_agent researcher", "invoke_agent writer"]
    # Token figures on the spans are the provider's usage, as the run's events carry it.
    usage = [e.data["usage"] for e in events if e.kind == "llm.finished"]
    assert sorted(c.attributes["gen_ai.usage.input_tokens"] for c in chats) == sorted(u["input_tokens"] for u in usage)
    assert sorted(c.attributes["gen_ai.usage.output_tokens"] for c in chats) == sorted(
        u["output_tokens"] for u in usage
    )
    totals = result.metrics.to_dict()["total"]
    assert sum(c.attributes["gen_ai.usage.input_tokens"] for c in chats) == totals["input_tokens"]
