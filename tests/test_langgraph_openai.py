"""LangGraph graphs on provider ``openai`` against the local Chat Completions server: a registry
graph streamed token by token (outputs, token order, events, usage equal to what the server
reported), a client builder graph, a tool-calling node whose tool round trip goes over HTTP,
and provider errors (401, 400) surfacing as Amsha's typed errors naming the node."""

from __future__ import annotations

import json
from typing import Any

import pytest
from amsha import ExecutionSession, RunStatus
from amsha.errors import AuthenticationError, BadRequestError, RunFailedError
from amsha_openai.testing import OpenAIServer, Reply

GATHER = "Anemones, hermit crabs and sea stars."
SUMMARY = "Tide pools teem with life."
GATHER_USAGE = {"prompt_tokens": 17, "completion_tokens": 6}
SUMMARY_USAGE = {"prompt_tokens": 31, "completion_tokens": 5}


def lookup(species: str) -> str:
    """Look up facts about a species."""
    return json.dumps({"species": species, "fact": "eats plankton"})


def config(server: OpenAIServer, graph: str | None = None, **options: Any) -> dict[str, Any]:
    return {
        "provider": server.provider_config(**options),
        "orchestrator": {"name": "langgraph", "options": {"graph": graph}},
        "retry": {"max_retries": 0},
        "tools": {"lookup": "test_langgraph_openai:lookup"},
        "agents": {
            "gatherer": {"role": "Gatherer", "goal": "Gather facts"},
            "summarizer": {"role": "Summarizer", "goal": "Summarize facts"},
        },
        "tasks": {
            "gather": {"description": "Gather facts about {topic}.", "agent": "gatherer"},
            "summarize": {"description": "Summarize the facts.", "agent": "summarizer", "context": ["gather"]},
        },
        "pipeline": ["gather", "summarize"],
    }


def two_step(registry: Any, llm: Any) -> Any:
    """A client graph: two nodes, each one call of its agent's model."""
    from langchain_core.messages import HumanMessage
    from langgraph.graph import END, START, MessagesState, StateGraph

    first, second = llm("gatherer"), llm("summarizer")

    async def gather(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await first.ainvoke([HumanMessage("Gather facts about tide pools.")])]}

    async def summarize(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await second.ainvoke([HumanMessage(f"Summarize: {state['messages'][-1].content}")])]}

    graph = StateGraph(MessagesState)
    graph.add_node("gather", gather)
    graph.add_node("summarize", summarize)
    graph.add_edge(START, "gather")
    graph.add_edge("gather", "summarize")
    graph.add_edge("summarize", END)
    return graph


def test_registry_graph_streams_over_http(openai_server: OpenAIServer) -> None:
    openai_server.script(
        Reply(GATHER, match="Gather facts", usage=GATHER_USAGE),
        Reply(SUMMARY, match="Summarize the facts", usage=SUMMARY_USAGE),
    )
    with ExecutionSession(config(openai_server)) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        tokens = list(handle.stream_text())
        result = handle.result(timeout=60)
        events = list(handle.stream())
        stored = session.store.get_state(result.state.state_id).data
    assert result.outputs == {"gather": GATHER, "summarize": SUMMARY}
    # Token by token, in the order the server sent its SSE chunks (word by word).
    assert tokens == ["Anemones, ", "hermit ", "crabs ", "and ", "sea ", "stars.", "Tide ", "pools ", "teem ",
                      "with ", "life."]  # fmt: skip
    kinds = [e.kind for e in events if e.kind != "llm.token"]
    assert kinds == [
        "run.started",
        "task.started", "llm.started", "llm.finished", "task.finished", "state.snapshot",
        "task.started", "llm.started", "llm.finished", "task.finished", "state.snapshot",
        "run.finished",
    ]  # fmt: skip
    assert [e.task for e in events if e.kind == "llm.token"] == ["gather"] * 6 + ["summarize"] * 5
    # Both calls streamed over HTTP, the summarize call carrying gather's output as context.
    bodies = [r.body for r in openai_server.requests]
    assert [b["stream"] for b in bodies] == [True, True]
    assert "Gather facts about tide pools." in bodies[0]["messages"][-1]["content"]
    assert GATHER in bodies[1]["messages"][-1]["content"]
    # Usage is what the server reported, per call and in total (not estimated).
    usage = [e.data["usage"] for e in events if e.kind == "llm.finished"]
    assert [(u["input_tokens"], u["output_tokens"]) for u in usage] == [(17, 6), (31, 5)]
    total = result.metrics.to_dict()["total"]
    assert total["calls"] == 2 and total["tokens_estimated"] is False
    assert (total["input_tokens"], total["output_tokens"]) == (17 + 31, 6 + 5)
    assert stored == result.outputs


def test_client_builder_graph_over_http(openai_server: OpenAIServer) -> None:
    openai_server.script(
        Reply(GATHER, match="Gather facts", usage=GATHER_USAGE),
        Reply(SUMMARY, match="Summarize:", usage=SUMMARY_USAGE),
    )
    with ExecutionSession(config(openai_server, graph="test_langgraph_openai:two_step")) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        text = "".join(handle.stream_text())
        result = handle.result(timeout=60)
        events = list(handle.stream())
    assert text == GATHER + SUMMARY
    assert result.status == RunStatus.SUCCEEDED
    # Node outputs (the AIMessages, as JSON) are written into the state under the node names.
    gather = result.outputs["gather"]["messages"][0]
    assert gather["type"] == "ai" and gather["content"] == GATHER
    assert result.outputs["summarize"]["messages"][0]["content"] == SUMMARY
    assert GATHER in openai_server.requests[1].body["messages"][-1]["content"]
    # Each call is linked to the node that made it.
    starts = {e.span_id: e.task for e in events if e.kind == "task.started"}
    calls = [e for e in events if e.kind == "llm.started"]
    assert [starts[e.parent_id] for e in calls] == ["gather", "summarize"]
    usage = [e.data["usage"] for e in events if e.kind == "llm.finished"]
    assert [(u["input_tokens"], u["output_tokens"]) for u in usage] == [(17, 6), (31, 5)]


def test_tool_calling_node_round_trip_over_http(openai_server: OpenAIServer) -> None:
    openai_server.script(
        Reply(tool_calls=[{"id": "call_7", "name": "lookup", "arguments": {"species": "anemone"}}]),
        Reply(GATHER, match="eats plankton"),
    )
    cfg = config(openai_server)
    cfg["tasks"]["gather"]["tools"] = ["lookup"]
    with ExecutionSession(cfg) as session:
        handle = session.run(["gather"], inputs={"topic": "tide pools"})
        result = handle.result(timeout=60)
        events = list(handle.stream())
    assert result.outputs == {"gather": GATHER}
    bodies = [r.body for r in openai_server.requests]
    assert len(bodies) == 2
    # The tool went out as a function schema ...
    assert [t["function"]["name"] for t in bodies[0]["tools"]] == ["lookup"]
    assert "species" in bodies[0]["tools"][0]["function"]["parameters"]["properties"]
    # ... the model's call came back, and the tool's result went out as a tool message.
    call, answer = bodies[1]["messages"][-2], bodies[1]["messages"][-1]
    assert call["role"] == "assistant" and call["tool_calls"][0]["id"] == "call_7"
    assert json.loads(call["tool_calls"][0]["function"]["arguments"]) == {"species": "anemone"}
    assert answer["role"] == "tool" and answer["tool_call_id"] == "call_7"
    assert json.loads(answer["content"]) == {"species": "anemone", "fact": "eats plankton"}
    tool = [(e.kind, e.data["tool"]) for e in events if e.kind.startswith("tool.")]
    assert tool == [("tool.started", "lookup"), ("tool.finished", "lookup")]


@pytest.mark.parametrize("graph", [None, "test_langgraph_openai:two_step"], ids=["registry", "builder"])
@pytest.mark.parametrize(("status", "error"), [(401, AuthenticationError), (400, BadRequestError)], ids=["401", "400"])
def test_provider_error_surfaces_typed(
    openai_server: OpenAIServer, graph: str | None, status: int, error: type[Exception]
) -> None:
    openai_server.script(Reply.fail(status, "nope: rejected by the server", times=10))
    with ExecutionSession(config(openai_server, graph=graph)) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        with pytest.raises(RunFailedError) as info:
            handle.result(timeout=60)
        events = list(handle.stream())
    assert isinstance(info.value.cause, error)
    assert "rejected by the server" in str(info.value.cause)
    assert info.value.task == "gather"
    assert handle.status() == RunStatus.FAILED
    # One attempt (retries are off; a 4xx is not retried anyway), and the graph stopped there.
    assert openai_server.attempts == 1
    assert [e.task for e in events if e.kind == "task.failed"] == ["gather"]
    assert "summarize" not in {e.task for e in events if e.kind == "task.started"}
