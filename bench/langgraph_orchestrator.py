"""The `langgraph` orchestrator against plain LangGraph running the same graph.

Figure ``langgraph.graph_run`` (goal 1.05: within 5%): one run of a two-node graph
(gather -> summarize, the second node given the first's output), each node one chat-model
call answering the same 12-word text, streamed token by token, with checkpoints kept.

- **Amsha**: ``session.run(["gather", "summarize"]).result()`` with ``orchestrator:
  langgraph`` (the registry graph), the zero-latency ``scripted`` provider and the ``memory``
  store: a LangGraph ``StateGraph`` whose nodes call ``AmshaChatModel`` over Amsha's ``LLM``,
  streamed with LangGraph's ``messages`` mode, plus everything Amsha adds (run record, ordered
  events for every token, task spans, state snapshots, checkpoints in the Amsha store).
- **peer**: the same ``StateGraph`` shape in plain LangGraph, nodes calling langchain-core's
  ``GenericFakeChatModel`` (which streams the same text word by word), compiled with
  LangGraph's ``InMemorySaver`` and consumed with ``graph.stream(..., stream_mode=["updates",
  "messages"])`` on a fresh thread id per run.

Both graphs are compiled once, outside the timing (Amsha compiles a registry graph once per task
list and reuses it). Work the peer does not do, by design: Amsha runs the graph on its event
loop thread and hands the result back to the caller's thread, keeps a run record, emits an
ordered event for every token, call and task, snapshots the state after each task, and stores
checkpoints as JSON through the StateStore protocol (the ``memory`` store here: like for like
with ``InMemorySaver``, which keeps msgpack blobs in a dict). The ``direct`` orchestrator on the
same two tasks (the core's fixed per-run share) takes about 0.7 ms of the Amsha figure.
"""

from __future__ import annotations

import itertools
import operator
import uuid
from typing import Annotated, Any, TypedDict

from harness import Figure, Settings, Skip, benchmark, log, timed

TEXT = "the quick brown fox jumps over the lazy dog and runs far away"


class _State(TypedDict):
    outputs: Annotated[dict[str, Any], operator.or_]


def _peer_graph() -> Any:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph

    model = GenericFakeChatModel(messages=itertools.cycle([AIMessage(TEXT)]))

    def node(name: str, context: str | None) -> Any:
        def run(state: _State) -> dict[str, Any]:
            user = f"Do {name}."
            if context:
                user += f"\n\nContext from task {context!r}:\n{state['outputs'][context]}"
            answer = model.invoke([SystemMessage(f"You are {name}r."), HumanMessage(user)])
            return {"outputs": {name: answer.content}}

        return run

    graph = StateGraph(_State)
    graph.add_node("gather", node("gather", None))
    graph.add_node("summarize", node("summarize", "gather"))
    graph.add_edge(START, "gather")
    graph.add_edge("gather", "summarize")
    graph.add_edge("summarize", END)
    return graph.compile(checkpointer=InMemorySaver())


def _amsha_session() -> Any:
    from amsha import ExecutionSession

    return ExecutionSession(
        {
            "provider": {"name": "scripted", "options": {"responses": [TEXT]}},
            "orchestrator": "langgraph",
            "agents": {"gatherer": {"role": "gatherer", "goal": "gather"}, "summarizer": {"role": "s", "goal": "s"}},
            "tasks": {
                "gather": {"description": "Do gather.", "agent": "gatherer"},
                "summarize": {"description": "Do summarize.", "agent": "summarizer", "context": ["gather"]},
            },
        }
    )


@benchmark("langgraph.graph_run")
def graph_run(settings: Settings) -> list[Figure]:
    try:
        import amsha_langgraph  # noqa: F401
        import langgraph  # noqa: F401
    except ImportError as exc:
        raise Skip(f"langgraph or amsha-orchestrator-langgraph not installed: {exc}") from exc
    session = _amsha_session()
    peer = _peer_graph()

    def amsha_run() -> None:
        session.run(["gather", "summarize"]).result(timeout=60)

    def peer_run() -> None:
        config = {"configurable": {"thread_id": uuid.uuid4().hex}}
        for _ in peer.stream({"outputs": {}}, config, stream_mode=["updates", "messages"]):
            pass

    # Both sides do the same work: two nodes, the same text, streamed word by word.
    handle = session.run(["gather", "summarize"])
    tokens = [e.text for e in handle.stream() if e.kind == "llm.token"]
    assert handle.result(timeout=60).outputs == {"gather": TEXT, "summarize": TEXT}
    config = {"configurable": {"thread_id": "check"}}
    chunks = list(peer.stream({"outputs": {}}, config, stream_mode=["updates", "messages"]))
    peer_tokens = [c[1][0].content for c in chunks if c[0] == "messages" and c[1][0].content]
    assert peer.get_state(config).values["outputs"] == {"gather": TEXT, "summarize": TEXT}
    assert "".join(tokens) == "".join(peer_tokens) == TEXT * 2, (tokens, peer_tokens)

    target = settings.pick(250, 60)
    repeat = settings.pick(15, 5)
    amsha = timed(amsha_run, settings=settings, target_ms=target, repeat=repeat)
    peer_t = timed(peer_run, settings=settings, target_ms=target, repeat=repeat)
    session.close()
    log(f"  amsha langgraph run: {amsha.median / 1e6:.3f} ms ({amsha.low / 1e6:.3f}..{amsha.high / 1e6:.3f})")
    log(f"  plain LangGraph run: {peer_t.median / 1e6:.3f} ms ({peer_t.low / 1e6:.3f}..{peer_t.high / 1e6:.3f})")
    return [
        Figure(
            "langgraph.graph_run",
            amsha.median / 1e6,
            peer_t.median / 1e6,
            "plain LangGraph, same 2-node graph, GenericFakeChatModel, InMemorySaver, stream updates+messages",
            "ms",
            1.05,
        )
    ]
