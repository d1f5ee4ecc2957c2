"""LangGraph through Amsha, offline.

1. The registry as a graph: each task a node, streamed token by token out of the handle.
2. A client graph (`headline_graph` below) that stops for a human with LangGraph's
   `interrupt`, then is resumed from the state store, as a later process would.

Run:  python examples/langgraph/run.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from amsha import ExecutionSession
from amsha_langgraph import use_graph
from langchain_core.messages import AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt

HERE = Path(__file__).parent


class Headline(TypedDict, total=False):
    topic: str
    messages: Annotated[list[AnyMessage], add_messages]
    approved: str


def headline_graph(registry: Any, llm: Any) -> StateGraph:
    """draft (writer) -> ask a human -> polish (writer). The client's flow, not Amsha's."""
    writer = llm("writer")

    async def draft(state: Headline) -> dict[str, Any]:
        return {"messages": [await writer.ainvoke([HumanMessage(f"Draft a headline about {state['topic']}")])]}

    def ask(state: Headline) -> dict[str, Any]:
        return {"approved": interrupt({"headline": state["messages"][-1].content, "question": "ok?"})}

    async def polish(state: Headline) -> dict[str, Any]:
        return {"messages": [await writer.ainvoke([HumanMessage(f"Polish: {state['messages'][-1].content}")])]}

    graph = StateGraph(Headline)
    for name, fn in (("draft", draft), ("ask", ask), ("polish", polish)):
        graph.add_node(name, fn)
    graph.add_edge(START, "draft")
    graph.add_edge("draft", "ask")
    graph.add_edge("ask", "polish")
    graph.add_edge("polish", END)
    return graph


def main() -> int:
    with ExecutionSession(HERE / "amsha.yaml") as session:
        handle = session.run(inputs={"topic": "kelp"})
        for token in handle.stream_text():
            print(token, end="", flush=True)
        result = handle.result(timeout=60)
        print(f"\n[{result.status}] tasks: {list(result.outputs)}, tokens: {result.metrics.total_tokens}")

    with ExecutionSession(HERE / "amsha.yaml") as session:
        use_graph(session, headline_graph)
        paused = session.run(inputs={"topic": "kelp"}).result(timeout=60)
        question = paused.state["__interrupt__"][0]["value"]
        print(f"graph paused for a human: {question}; state {paused.state.state_id}")
        state_id = paused.state.state_id

    # A new session (in real use, a new process) resumes from the store by state id.
    with ExecutionSession(HERE / "amsha.yaml") as session:
        use_graph(session, headline_graph)
        done = session.run(inputs={"topic": "kelp", "resume": "yes"}, state=state_id).result(timeout=60)
        headline = done.outputs["polish"]["messages"][0]["content"]
        print(f"[{done.status}] final headline: {headline}")
        ok = headline == "Kelp, the Ocean's Fastest Forest" and "__interrupt__" not in done.state
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
