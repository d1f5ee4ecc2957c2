"""Orchestrator ``crewai``: real CrewAI objects built from Amsha's passive registry.

Each run builds an ``Agent`` per agent its tasks name (role, goal, backstory, tools, and an
:class:`~amsha_crewai.llm.AmshaCrewLLM` so every LLM call goes through Amsha's LLM), a
``Task`` per task the client named (description, expected output, context from earlier tasks
of the run), and a sequential ``Crew`` over exactly those tasks in that order. CrewAI thinks
as it always does; Amsha executes, observes and keeps state:

- CrewAI's lifecycle events (crew, task, agent, tool) become Amsha events of the run. CrewAI
  delivers them to handlers on a thread pool, so they may arrive out of order: they are
  buffered, the bus is flushed, and they are emitted in CrewAI's emission order before and
  after every LLM call and when the crew ends. CrewAI's own LLM events are not translated:
  Amsha's LLM emits those already.
- Each task's output is written into the run's ExecutionState under the task's name and
  snapshotted when the task finishes (from the task's callback, in the crew's thread).
- Cancel: Amsha's LLM raises at the next call or token; CrewAI's agent-level retry is off, so
  the crew stops there and the run is recorded CANCELLED.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import threading
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from . import _env

_env.apply()  # before CrewAI is imported

from amsha import LLM  # noqa: E402
from amsha.errors import AmshaError, ConfigError  # noqa: E402
from amsha.llm import strip_fences  # noqa: E402
from amsha.orchestrator import BaseOrchestrator, RunContext  # noqa: E402
from amsha.plugins import BackendContext  # noqa: E402
from crewai import Agent, Crew, Process, Task  # noqa: E402
from crewai.events.event_bus import crewai_event_bus  # noqa: E402
from crewai.events.types.agent_events import (  # noqa: E402
    AgentExecutionCompletedEvent,
    AgentExecutionErrorEvent,
    AgentExecutionStartedEvent,
)
from crewai.events.types.crew_events import (  # noqa: E402
    CrewKickoffCompletedEvent,
    CrewKickoffFailedEvent,
    CrewKickoffStartedEvent,
)
from crewai.events.types.task_events import TaskStartedEvent  # noqa: E402
from crewai.events.types.tool_usage_events import (  # noqa: E402
    ToolUsageErrorEvent,
    ToolUsageFinishedEvent,
    ToolUsageStartedEvent,
)
from crewai.tools import BaseTool  # noqa: E402
from crewai.tools import tool as crewai_tool  # noqa: E402

from .llm import AmshaCrewLLM  # noqa: E402
from .options import CrewAIOptions  # noqa: E402

__all__ = ["CrewAIOrchestrator", "RunBridge", "build", "to_crewai_tool"]

_BRIDGE: contextvars.ContextVar[RunBridge | None] = contextvars.ContextVar("amsha_crewai_bridge", default=None)
_TRANSLATED = (
    CrewKickoffStartedEvent,
    CrewKickoffCompletedEvent,
    CrewKickoffFailedEvent,
    TaskStartedEvent,
    AgentExecutionStartedEvent,
    AgentExecutionCompletedEvent,
    AgentExecutionErrorEvent,
    ToolUsageStartedEvent,
    ToolUsageFinishedEvent,
    ToolUsageErrorEvent,
)
_installed = False
_install_lock = threading.Lock()


def _install_handlers() -> None:
    """Subscribe once per process to the CrewAI events Amsha translates. The handler routes
    each event to the Amsha run whose crew emitted it (a context variable set in the crew's
    thread, which CrewAI copies into its handler threads); events of crews not run by Amsha
    are ignored."""
    global _installed
    with _install_lock:
        if _installed:
            return
        for event_type in _TRANSLATED:
            crewai_event_bus.on(event_type)(_on_event)
        _installed = True


def _on_event(source: Any, event: Any) -> None:
    bridge = _BRIDGE.get()
    if bridge is not None:
        bridge.receive(event)


def to_crewai_tool(name: str, fn: Callable[..., Any]) -> BaseTool:
    """A CrewAI tool for a client callable (its name, docstring and annotated parameters
    become the tool's schema). A CrewAI ``BaseTool`` is returned as is."""
    if isinstance(fn, BaseTool):
        return fn
    target = fn
    if not (fn.__doc__ or "").strip():
        # CrewAI requires a docstring; give the model at least the tool's name.
        def target(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        target.__doc__ = f"Tool {name}."
        target.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
        target.__annotations__ = dict(getattr(fn, "__annotations__", {}))
    return crewai_tool(name)(target)


class RunBridge:
    """Links one crew to one Amsha run: task spans, CrewAI events in order, task outputs."""

    def __init__(self, run: RunContext, flush_timeout_s: float) -> None:
        self.run = run
        self.flush_timeout_s = flush_timeout_s
        self.crew_span = f"crew-{uuid.uuid4().hex[:12]}"
        self.task_spans: dict[str, str] = {}
        self.task_agents: dict[str, str] = {}
        self.agent_spans: dict[str, str] = {}
        self.tasks_by_id: dict[int, str] = {}
        self.agents_by_id: dict[int, str] = {}
        self.current_task: str | None = None
        self._pending: list[tuple[int, int, Any]] = []
        self._lock = threading.Lock()
        self._tool_spans: dict[tuple[str | None, str], list[str]] = {}
        self._arrivals = 0

    # ---- CrewAI events --------------------------------------------------------------------

    def receive(self, event: Any) -> None:
        """Called from CrewAI's handler threads: buffer the event."""
        with self._lock:
            self._arrivals += 1
            self._pending.append((getattr(event, "emission_sequence", None) or 0, self._arrivals, event))

    def drain(self) -> None:
        """Wait for CrewAI's pending handlers, then emit the buffered events in emission order."""
        crewai_event_bus.flush(timeout=self.flush_timeout_s)
        with self._lock:
            pending, self._pending = self._pending, []
        for _seq, _n, event in sorted(pending, key=lambda p: (p[0], p[1])):
            self._translate(event)

    def _task_name(self, task: Any) -> str | None:
        if task is None:
            return None
        return self.tasks_by_id.get(id(task))

    def _translate(self, event: Any) -> None:
        run = self.run
        seq = {"crewai_seq": getattr(event, "emission_sequence", None)}
        if isinstance(event, CrewKickoffStartedEvent):
            run.emit("framework.crew.started", span_id=self.crew_span, data={**seq, "crew": event.crew_name})
        elif isinstance(event, CrewKickoffCompletedEvent):
            run.emit("framework.crew.finished", span_id=self.crew_span, data={**seq, "crew": event.crew_name})
        elif isinstance(event, CrewKickoffFailedEvent):
            run.emit(
                "framework.crew.failed",
                span_id=self.crew_span,
                data={**seq, "crew": event.crew_name, "error": event.error},
            )
        elif isinstance(event, TaskStartedEvent):
            name = self._task_name(getattr(event, "task", None))
            if name is not None:
                self.current_task = name
                agent = self.task_agents[name]
                run.emit(
                    "task.started", span_id=self.task_spans[name], task=name, agent=agent, data={**seq, "agent": agent}
                )
        elif isinstance(event, AgentExecutionStartedEvent | AgentExecutionCompletedEvent | AgentExecutionErrorEvent):
            name = self._task_name(getattr(event, "task", None))
            agent = self.agents_by_id.get(id(getattr(event, "agent", None)))
            if name is None or agent is None:
                return
            data: dict[str, Any] = {**seq, "agent": agent}
            task_span = self.task_spans[name]
            if isinstance(event, AgentExecutionStartedEvent):
                # The agent's execution is a span of its own under the task; the LLM calls and
                # tools of that execution go under it.
                span = self.agent_spans[name] = f"agent-{uuid.uuid4().hex[:12]}"
                run.emit("agent.started", span_id=span, parent_id=task_span, task=name, agent=agent, data=data)
                return
            span = self.agent_spans.pop(name, None) or f"agent-{uuid.uuid4().hex[:12]}"
            if isinstance(event, AgentExecutionErrorEvent):
                data["error"] = {"type": "AgentExecutionError", "message": str(event.error)}
            run.emit("agent.finished", span_id=span, parent_id=task_span, task=name, agent=agent, data=data)
        elif isinstance(event, ToolUsageStartedEvent | ToolUsageFinishedEvent | ToolUsageErrorEvent):
            name = self._task_name(getattr(event, "from_task", None)) or self.current_task
            agent = self.task_agents.get(name) if name else None
            key = (name, event.tool_name)
            parent = (self.agent_spans.get(name) or self.task_spans.get(name)) if name else None
            if isinstance(event, ToolUsageStartedEvent):
                span = f"tool-{uuid.uuid4().hex[:12]}"
                self._tool_spans.setdefault(key, []).append(span)
                args = event.tool_args if isinstance(event.tool_args, str) else json.dumps(event.tool_args, default=str)
                data = {**seq, "tool": event.tool_name, "arguments": args}
                run.emit("tool.started", span_id=span, parent_id=parent, task=name, agent=agent, data=data)
                return
            spans = self._tool_spans.get(key) or [f"tool-{uuid.uuid4().hex[:12]}"]
            span = spans.pop(0)
            if isinstance(event, ToolUsageFinishedEvent):
                output = event.output if isinstance(event.output, str) else json.dumps(event.output, default=str)
                run.emit(
                    "tool.finished",
                    span_id=span,
                    parent_id=parent,
                    task=name,
                    agent=agent,
                    data={**seq, "tool": event.tool_name, "result": output},
                )
            else:
                run.emit(
                    "tool.failed",
                    span_id=span,
                    parent_id=parent,
                    task=name,
                    agent=agent,
                    data={**seq, "tool": event.tool_name, "error": str(event.error)},
                )

    # ---- LLM calls and task outputs ---------------------------------------------------------

    def llm_for(self, crew_task: Any, crew_agent: Any) -> LLM:
        """The run's LLM for a call CrewAI makes for ``crew_task`` by ``crew_agent``."""
        name = self._task_name(crew_task) or self.current_task
        agent = self.agents_by_id.get(id(crew_agent)) if crew_agent is not None else None
        if name is not None:
            agent = agent or self.task_agents[name]
            parent = self.agent_spans.get(name) or self.task_spans[name]
            return self.run.llm_for(agent, task=name, parent_id=parent)
        return self.run.llm_for(agent, parent_id=self.crew_span)

    def on_call(self, after: bool) -> None:
        """Before a call: CrewAI's events so far go out first, in order. After it: only the
        cancel check (the next call, the task's end or the crew's end drains again)."""
        self.run.check_cancelled()
        if not after:
            self.drain()


def _output_value(output: Any) -> Any:
    """A CrewAI ``TaskOutput`` as JSON: the structured output when there is one, else the text."""
    json_dict = getattr(output, "json_dict", None)
    if json_dict:
        return json_dict
    pydantic_obj = getattr(output, "pydantic", None)
    if pydantic_obj is not None:
        return pydantic_obj.model_dump(mode="json")
    return getattr(output, "raw", str(output))


class CrewAIOrchestrator(BaseOrchestrator):
    """Runs the named tasks as a sequential CrewAI crew (executes in a worker thread)."""

    name = "crewai"

    def __init__(self, options: CrewAIOptions | None = None) -> None:
        self.options = options or CrewAIOptions()

    def build_crew(self, run: RunContext, bridge: RunBridge) -> Crew:
        """The CrewAI objects for ``run``: agents of the named tasks, the tasks, the crew."""
        opts = self.options
        registry = run.registry
        agents: dict[str, Agent] = {}
        tasks: dict[str, Task] = {}
        for name in run.task_names:
            spec = registry.task(name)
            agent_name = spec.agent
            if agent_name not in agents:
                aspec = registry.agent(agent_name)
                llm = AmshaCrewLLM.wrap(resolver=bridge.llm_for, on_call=bridge.on_call, model=aspec.llm or "amsha")
                agents[agent_name] = Agent(
                    role=aspec.role,
                    goal=aspec.goal,
                    backstory=aspec.backstory or aspec.role,
                    llm=llm,
                    tools=[to_crewai_tool(t, self._tool(run, t)) for t in aspec.tools],
                    allow_delegation=opts.allow_delegation,
                    max_iter=opts.max_iter,
                    max_retry_limit=0,  # one retry layer: Amsha's
                    verbose=opts.verbose,
                )
                bridge.agents_by_id[id(agents[agent_name])] = agent_name
            description = spec.description
            in_run = [tasks[ref] for ref in spec.context if ref in tasks]
            for ref, value in run.context_for(name).items():
                if ref not in tasks:  # an output of an earlier run, kept in the state
                    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                    description += f"\n\nContext from task {ref!r}:\n{text}"
            if spec.output_schema:
                description += "\n\nReply with only a JSON value matching this JSON schema:\n" + json.dumps(
                    spec.output_schema
                )
            with warnings.catch_warnings():
                # CrewAI warns that a function callback prevents its own checkpointing; state
                # is kept by Amsha (the callback is how each output reaches it).
                warnings.filterwarnings("ignore", message="function callbacks cannot be serialized")
                task = Task(
                    name=name,
                    description=description,
                    expected_output=spec.expected_output or "A complete answer to the task.",
                    agent=agents[agent_name],
                    context=in_run or None,
                    tools=[to_crewai_tool(t, self._tool(run, t)) for t in spec.tools] or None,
                    callback=_callback(bridge, name, bool(spec.output_schema)),
                )
            tasks[name] = task
            bridge.tasks_by_id[id(task)] = name
            bridge.task_spans[name] = f"task-{uuid.uuid4().hex[:12]}"
            bridge.task_agents[name] = agent_name
        return Crew(
            agents=list(agents.values()),
            tasks=[tasks[n] for n in run.task_names],
            process=Process.sequential,
            verbose=opts.verbose,
        )

    @staticmethod
    def _tool(run: RunContext, name: str) -> Callable[..., Any]:
        try:
            return run.tools[name]
        except KeyError:
            raise ConfigError(
                [(f"tools.{name}", f"no tool named {name!r} is registered; known: {', '.join(run.tools) or 'none'}")]
            ) from None

    def execute(self, run: RunContext) -> None:
        _install_handlers()
        bridge = RunBridge(run, self.options.event_flush_timeout_s)
        crew = self.build_crew(run, bridge)
        token = _BRIDGE.set(bridge)
        try:
            run.check_cancelled()
            crew.kickoff()
        except BaseException as exc:
            bridge.drain()
            name = bridge.current_task
            if name is not None and name not in run.outputs:
                error = _unwrap(exc)
                run.fail_task(name, error, span_id=bridge.task_spans[name], agent=bridge.task_agents[name])
                if error is not exc:
                    raise error from None
            raise
        finally:
            bridge.drain()
            _BRIDGE.reset(token)


def _callback(bridge: RunBridge, name: str, structured: bool) -> Callable[[Any], None]:
    def done(output: Any) -> None:
        value = _output_value(output)
        if structured and isinstance(value, str):
            try:
                value = json.loads(strip_fences(value))
            except ValueError:
                pass
        bridge.drain()
        bridge.run.finish_task(name, value, span_id=bridge.task_spans[name], agent=bridge.task_agents[name])

    return done



def _unwrap(exc: BaseException) -> BaseException:
    """The Amsha error behind ``exc`` (CrewAI may wrap it), else ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, AmshaError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return exc


def build(ctx: BackendContext) -> CrewAIOrchestrator:
    """Factory registered as orchestrator ``crewai``."""
    return CrewAIOrchestrator(ctx.options)
