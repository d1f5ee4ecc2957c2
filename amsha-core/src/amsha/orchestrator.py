"""The orchestrator protocol (``IOrchestrator``) and the ``RunContext`` it executes in.

An orchestrator builds framework objects from the passive registry and executes exactly
the tasks the client named (``run.task_names``), in that order; it has no loops, conditions
or inference of its own. Everything it needs from Amsha comes through the
:class:`RunContext`: the rendered registry, inputs, the injected state, Amsha's LLM for
each agent (so every call is retried, counted, timed and observed in one place), the run's
event log, the cancel flag, and task scopes that emit lifecycle events, write each task's
output into the state under the task's name and snapshot it.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from .errors import AmshaError, ExecutionError, RunCancelledError
from .events import RunEventLog
from .llm import LLM, CallContext
from .registry import Registry
from .state import ExecutionState, StateStore
from .tools import invoke_tool

__all__ = ["BaseOrchestrator", "IOrchestrator", "RunContext", "TaskScope"]


class TaskScope:
    """One task's span. Use as ``with run.task(name) as scope:`` (or ``async with``) and set
    ``scope.output``; on exit the output is written to the state and snapshotted, and
    ``task.finished`` (or ``task.failed``) is emitted."""

    def __init__(self, run: RunContext, name: str) -> None:
        self.run = run
        self.name = name
        self.span_id = f"task-{uuid.uuid4().hex[:12]}"
        self.output: Any = None
        spec = run.registry.task(name)
        self.agent = spec.agent

    def llm(self) -> LLM:
        """Amsha's LLM for this task's agent, emitting into this task's span."""
        return self.run.llm_for(self.agent, task=self.name, parent_id=self.span_id)

    def __enter__(self) -> TaskScope:
        self.run.check_cancelled()
        self.run.emit(
            "task.started", span_id=self.span_id, task=self.name, agent=self.agent, data={"agent": self.agent}
        )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.run.finish_task(self.name, self.output, span_id=self.span_id, agent=self.agent)
        else:
            self.run.fail_task(self.name, exc, span_id=self.span_id, agent=self.agent)

    async def __aenter__(self) -> TaskScope:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


class RunContext:
    """Everything an orchestrator may use during one run."""

    def __init__(
        self,
        *,
        run_id: str,
        mode: str,
        registry: Registry,
        task_names: list[str],
        inputs: dict[str, Any],
        state: ExecutionState,
        log: RunEventLog,
        llm_factory: Callable[[str | None], LLM],
        snapshot: Callable[[str], None],
        tools: dict[str, Callable[..., Any]],
        cancel_event: threading.Event,
        options: dict[str, Any] | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.run_id = run_id
        self.mode = mode
        self.registry = registry
        self.task_names = task_names
        self.inputs = inputs
        self.state = state
        self.log = log
        self.tools = tools
        self.cancel_event = cancel_event
        self.outputs: dict[str, Any] = {}
        self.options = options or {}
        self.store = store
        """The session's state store, for orchestrators that keep framework data (checkpoints)
        next to the run's state; None when the run has no store."""
        self._llm_factory = llm_factory
        self._snapshot = snapshot
        self._call_ctx = CallContext(log, run_id, cancel_event=cancel_event)

    # ---- execution helpers --------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`RunCancelledError` if the run has been cancelled."""
        if self.cancel_event.is_set():
            raise RunCancelledError(self.run_id, "cancelled")

    def llm_for(self, agent: str | None, *, task: str | None = None, parent_id: str | None = None) -> LLM:
        """Amsha's LLM for ``agent`` (its ``llm:`` or the default provider), bound to this
        run so that its calls emit events into it, under ``parent_id``."""
        llm_name = self.registry.agent(agent).llm if agent else None
        base = self._llm_factory(llm_name)
        return base.bind(self._call_ctx.child(parent_id=parent_id or self.run_id, task=task, agent=agent))

    def task(self, name: str) -> TaskScope:
        """A :class:`TaskScope` for ``name``."""
        return TaskScope(self, name)

    def context_for(self, task: str) -> dict[str, Any]:
        """The outputs this task's ``context`` names: from this run, else from the state
        (outputs of earlier runs sharing it)."""
        spec = self.registry.task(task)
        found: dict[str, Any] = {}
        for ref in spec.context:
            if ref in self.outputs:
                found[ref] = self.outputs[ref]
            elif ref in self.state:
                found[ref] = self.state.get(ref)
        return found

    def emit(
        self,
        kind: str,
        *,
        span_id: str | None = None,
        parent_id: str | None = None,
        task: str | None = None,
        agent: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Emit an event into this run (orchestrators use ``framework.*`` kinds for their own)."""
        self.log.emit(
            kind,
            span_id or self.run_id,
            parent_id if parent_id is not None else self.run_id,
            task=task,
            agent=agent,
            data=data,
        )

    async def call_tool(
        self, scope: TaskScope, tools: dict[str, Callable[..., Any]], name: str, call_id: str, arguments: str
    ) -> str:
        """Execute a tool call the model made in ``scope``: ``tool.*`` events under the task,
        and the result (or an ``error: ...`` text the model can correct itself from) to send
        back. An unknown tool name or a failing tool never fails the run."""
        span = f"tool-{uuid.uuid4().hex[:12]}"
        common = {"span_id": span, "parent_id": scope.span_id, "task": scope.name, "agent": scope.agent}
        self.emit("tool.started", data={"tool": name, "call_id": call_id, "arguments": arguments}, **common)
        fn = tools.get(name)
        if fn is None:
            result = f"error: there is no tool named {name!r}; available: {', '.join(tools) or 'none'}"
            self.emit("tool.failed", data={"tool": name, "error": result}, **common)
            return result
        try:
            result = await invoke_tool(name, fn, arguments)
        except ExecutionError as exc:
            self.emit("tool.failed", data={"tool": name, "error": str(exc)}, **common)
            return f"error: {exc}"
        self.emit("tool.finished", data={"tool": name, "result": result}, **common)
        return result

    def finish_task(self, name: str, output: Any, *, span_id: str | None = None, agent: str | None = None) -> None:
        """Record a task's output: into the state under the task's name, snapshot, event."""
        self.outputs[name] = output
        self.state[name] = output
        self.emit("task.finished", span_id=span_id, task=name, agent=agent, data={"output": output})
        self._snapshot(f"task {name} finished")

    def fail_task(
        self, name: str, error: BaseException, *, span_id: str | None = None, agent: str | None = None
    ) -> None:
        data: dict[str, Any] = (
            error.to_dict() if isinstance(error, AmshaError) else {"type": type(error).__name__, "message": str(error)}
        )
        if isinstance(error, RunCancelledError | asyncio.CancelledError):
            data["cancelled"] = True
        self.emit("task.failed", span_id=span_id, task=name, agent=agent, data={"error": data})
        if isinstance(error, AmshaError) and not hasattr(error, "task_name"):
            error.task_name = name  # type: ignore[attr-defined]


@runtime_checkable
class IOrchestrator(Protocol):
    """What an orchestrator backend implements.

    ``aexecute(run)`` executes ``run.task_names`` in order and records each task through
    ``run.task(name)`` (or ``run.finish_task``). It must call LLMs only through
    ``run.llm_for(...)`` or ``scope.llm()`` (the proxy rule) and stop promptly when the run
    is cancelled (Amsha's LLM raises at the next call or token; async code is cancelled).
    """

    name: str

    async def aexecute(self, run: RunContext) -> None: ...

    def close(self) -> None: ...


class BaseOrchestrator:
    """Base for orchestrators: implement ``execute(run)`` (sync, run in a worker thread) or
    override ``aexecute(run)`` with native async code."""

    name = "orchestrator"

    def execute(self, run: RunContext) -> None:
        raise NotImplementedError(f"{type(self).__name__} implements neither execute nor aexecute")

    async def aexecute(self, run: RunContext) -> None:
        await asyncio.to_thread(self.execute, run)

    def close(self) -> None:
        """Release resources when the session closes."""
