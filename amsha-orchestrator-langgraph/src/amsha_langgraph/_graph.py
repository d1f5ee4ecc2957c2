"""The LangGraph side of the orchestrator (imported only when a run executes)."""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Annotated, Any, TypedDict
from uuid import UUID

from amsha import LLM, RunContext
from amsha.builtins.direct import task_messages
from amsha.errors import ExecutionError
from amsha.llm import strip_fences
from amsha.tools import tool_spec
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.errors import GraphBubbleUp
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Interrupt, Send
from pydantic import BaseModel

from .chat_model import AmshaChatModel, _text

if TYPE_CHECKING:
    from .orchestrator import LangGraphOrchestrator

INTERRUPT_KEY = "__interrupt__"
"""State key holding the pending interrupts of a graph that stopped for a human."""


def _merge(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    return {**(left or {}), **(right or {})}


class RegistryState(TypedDict):
    """The state of a registry graph: the outputs of the tasks so far, by task name."""

    outputs: Annotated[dict[str, Any], _merge]


def jsonable(value: Any) -> Any:
    """A JSON form of a node's output (messages, pydantic models, LangGraph commands)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, BaseMessage):
        out: dict[str, Any] = {"type": value.type, "content": jsonable(value.content)}
        for key in ("name", "tool_call_id"):
            if getattr(value, key, None):
                out[key] = getattr(value, key)
        if isinstance(value, AIMessage) and value.tool_calls:
            out["tool_calls"] = jsonable(value.tool_calls)
        return out
    if isinstance(value, Command):
        return {"command": {"update": jsonable(value.update), "goto": jsonable(value.goto), "graph": value.graph}}
    if isinstance(value, Interrupt):
        return {"id": value.id, "value": jsonable(value.value)}
    if isinstance(value, Send):
        return {"send": value.node, "arg": jsonable(value.arg)}
    if isinstance(value, BaseModel):
        return jsonable(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    return str(value)


def _lc_messages(messages: list[Any]) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for m in messages:
        out.append(SystemMessage(m.content or "") if m.role == "system" else HumanMessage(m.content or ""))
    return out


class _NodeEvents(BaseCallbackHandler):
    """Turns the start and end of each node of a client graph into Amsha task events, and
    knows each running node's span so LLM calls inside it are linked to it."""

    run_inline = True  # called in the node's own context, before its body runs

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.by_ns: dict[str, str] = {}
        self.by_run: dict[UUID, tuple[str, str, str]] = {}

    def span_for(self, metadata: Mapping[str, Any]) -> str | None:
        return self.by_ns.get(str(metadata.get("langgraph_checkpoint_ns", "")))

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        md = metadata or {}
        node = md.get("langgraph_node")
        ns = md.get("langgraph_checkpoint_ns")
        if not node or ns is None or node.startswith("__") or kwargs.get("name") != node or ns in self.by_ns:
            return
        self.run.check_cancelled()
        span = f"node-{uuid.uuid4().hex[:12]}"
        self.by_ns[ns] = span
        self.by_run[run_id] = (node, ns, span)
        self.run.emit("task.started", span_id=span, task=node, data={"node": node, "step": md.get("langgraph_step")})

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        entry = self.by_run.pop(run_id, None)
        if entry is not None:
            node, ns, span = entry
            self.by_ns.pop(ns, None)
            self.run.finish_task(node, jsonable(outputs), span_id=span)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        entry = self.by_run.pop(run_id, None)
        if entry is None:
            return
        node, ns, span = entry
        self.by_ns.pop(ns, None)
        if isinstance(error, GraphBubbleUp):  # an interrupt (or a hand-off to a parent graph)
            interrupts = [jsonable(i) for i in getattr(error, "args", [()])[0] or ()] if error.args else []
            self.run.emit(
                "framework.langgraph.interrupted",
                span_id=span,
                task=node,
                data={"node": node, "interrupts": interrupts},
            )
        else:
            self.run.fail_task(node, error, span_id=span)


_RUN: ContextVar[RunContext] = ContextVar("amsha_langgraph_run")
"""The run a registry graph's nodes execute for (compiled graphs are cached and shared)."""
_TASK_LLM: ContextVar[LLM] = ContextVar("amsha_langgraph_task_llm")
"""The LLM of the registry node running in this context (bound to its task scope)."""


def _task_llm(metadata: Mapping[str, Any]) -> LLM:
    return _TASK_LLM.get()


def registry_graph(orch: LangGraphOrchestrator, task_names: Sequence[str]) -> StateGraph:
    """One node per task, chained in the order given; no conditions. The nodes hold no run:
    they find it (and their task scope) in context variables, so the compiled graph is built
    once per task list and reused by every run."""
    graph = StateGraph(RegistryState)
    # One chat model for every node and run: each call resolves the LLM of its task scope.
    base_model = AmshaChatModel(resolver=_task_llm)

    def make(name: str) -> Any:
        async def node(state: RegistryState) -> dict[str, Any]:
            run = _RUN.get()
            max_rounds = orch.options.max_tool_rounds
            task = run.registry.task(name)
            agent = run.registry.agent(task.agent)
            async with run.task(name) as scope:
                token = _TASK_LLM.set(scope.llm())
                try:
                    done = state.get("outputs") or {}
                    context = run.context_for(name)
                    context.update({ref: done[ref] for ref in task.context if ref in done})
                    messages = _lc_messages(
                        task_messages(agent, task, {r: context[r] for r in task.context if r in context})
                    )
                    tools = {n: run.tools[n] for n in dict.fromkeys([*agent.tools, *task.tools])}
                    model: Any = base_model
                    if tools:
                        model = model.bind_tools([tool_spec(n, fn) for n, fn in tools.items()])
                    params = (
                        {"response_format": {"name": name, "schema": task.output_schema}} if task.output_schema else {}
                    )
                    for _round in range(max_rounds + 1):
                        answer: AIMessage = await model.ainvoke(messages, **params)
                        if not answer.tool_calls:
                            break
                        messages.append(answer)
                        for call in answer.tool_calls:
                            run.check_cancelled()
                            result = await run.call_tool(
                                scope, tools, call["name"], call.get("id") or "", json.dumps(call.get("args") or {})
                            )
                            messages.append(ToolMessage(result, tool_call_id=call.get("id") or ""))
                    else:
                        raise ExecutionError(f"task {name!r}: the model still called tools after {max_rounds} rounds")
                    text = _text(answer.content)
                    scope.output = json.loads(strip_fences(text)) if task.output_schema else text
                finally:
                    _TASK_LLM.reset(token)
            return {"outputs": {name: scope.output}}

        node.__name__ = name
        return node

    previous = START
    for name in task_names:
        graph.add_node(name, make(name))
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph


async def execute(orch: LangGraphOrchestrator, run: RunContext) -> None:
    """Build, compile and stream the run's graph (see the orchestrator's docs)."""
    opts = orch.options
    builder = orch.builder()
    events = _NodeEvents(run) if builder is not None else None
    saver = orch.saver(run.store) if opts.checkpoint and run.store is not None else None
    if builder is not None:
        assert events is not None
        handler = events

        def llm(agent: str | None = None) -> AmshaChatModel:
            def resolve(metadata: Mapping[str, Any]) -> LLM:
                return run.llm_for(
                    agent, task=metadata.get("langgraph_node"), parent_id=handler.span_for(metadata) or run.run_id
                )

            return AmshaChatModel(llm=run.llm_for(agent), resolver=resolve)

        graph: Any = builder(run.registry, llm)
        if isinstance(graph, StateGraph):
            graph = graph.compile(checkpointer=saver)
        elif saver is not None and getattr(graph, "checkpointer", None) is None:
            graph = graph.copy(update={"checkpointer": saver})
    else:
        graph = orch.compiled(tuple(run.task_names), saver, lambda: registry_graph(orch, run.task_names))

    thread_id = str(run.inputs.get(opts.thread_input) or run.state.state_id)
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id}, "recursion_limit": opts.recursion_limit}
    if events is not None:
        config["callbacks"] = [events]
    if opts.resume_input in run.inputs:
        graph_input: Any = Command(resume=run.inputs[opts.resume_input])
        if INTERRUPT_KEY in run.state:
            del run.state[INTERRUPT_KEY]
    elif builder is None:
        graph_input = {"outputs": {}}
    else:
        graph_input = {k: v for k, v in run.inputs.items() if k not in (opts.thread_input, opts.resume_input)}
    # `messages` makes every chat model in the graph stream, so INTERACTIVE runs get their
    # tokens out of the handle one by one; BACKGROUND runs need only the node updates.
    modes = ["updates", "messages"] if run.mode == "interactive" else ["updates"]
    interrupts: list[Any] = []
    token = _RUN.set(run)
    try:
        async for mode, chunk in graph.astream(graph_input, config, stream_mode=modes):
            if mode == "updates" and isinstance(chunk, dict) and INTERRUPT_KEY in chunk:
                interrupts.extend(chunk[INTERRUPT_KEY])
    finally:
        _RUN.reset(token)
    if interrupts:
        pending = [jsonable(i) for i in interrupts]
        run.state[INTERRUPT_KEY] = pending
        run.emit("framework.langgraph.interrupt", data={"thread_id": thread_id, "interrupts": pending})
