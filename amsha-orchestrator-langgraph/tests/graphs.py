"""Client graph builders used by the tests and by the interrupt/resume worker process."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt


class ChatState(TypedDict, total=False):
    topic: str
    messages: Annotated[list[AnyMessage], add_messages]
    approvals: Annotated[list[str], operator.add]


def draft_review(registry: Any, llm: Any) -> StateGraph:
    """draft (writer LLM) -> review (interrupts for a human) -> final (writer LLM)."""
    writer = llm("writer")

    async def draft(state: ChatState) -> dict[str, Any]:
        answer = await writer.ainvoke([HumanMessage(f"Draft a line about {state['topic']}")])
        return {"messages": [answer]}

    def review(state: ChatState) -> dict[str, Any]:
        verdict = interrupt({"question": "approve the draft?", "draft": state["messages"][-1].content})
        return {"approvals": [verdict]}

    async def final(state: ChatState) -> dict[str, Any]:
        answer = await writer.ainvoke([HumanMessage(f"Polish the draft, approved: {state['approvals'][-1]}")])
        return {"messages": [answer]}

    graph = StateGraph(ChatState)
    graph.add_node("draft", draft)
    graph.add_node("review", review)
    graph.add_node("final", final)
    graph.add_edge(START, "draft")
    graph.add_edge("draft", "review")
    graph.add_edge("review", "final")
    graph.add_edge("final", END)
    return graph


def two_step(registry: Any, llm: Any) -> Any:
    """A compiled two-node graph using the registry's agents (no interrupt)."""
    first, second = llm("gatherer"), llm("summarizer")

    async def gather(state: ChatState) -> dict[str, Any]:
        return {"messages": [await first.ainvoke("Gather three words.")]}

    async def summarize(state: ChatState) -> dict[str, Any]:
        return {"messages": [await second.ainvoke(f"Summarize: {state['messages'][-1].content}")]}

    graph = StateGraph(ChatState)
    graph.add_node("gather", gather)
    graph.add_node("summarize", summarize)
    graph.add_edge(START, "gather")
    graph.add_edge("gather", "summarize")
    graph.add_edge("summarize", END)
    return graph.compile()
