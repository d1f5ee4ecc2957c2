"""The ``langgraph`` orchestrator: a LangGraph graph per run, streamed, checkpointed and
observed through Amsha.

The graph is either built from the registry (each task a node run by its agent's LLM, edges
in the order the run names its tasks or the pipeline hint gives, each task's ``context``
outputs passed on through the graph state) or by the client's builder (option ``graph``):
Amsha adds no edges or conditions of its own. LangGraph and langchain-core are imported when
the first run executes, not when the backend is built.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from amsha import BackendContext, BaseOrchestrator, Registry, RunContext, StateStore
from amsha.errors import ConfigError, InputError

from .options import LangGraphOptions

__all__ = ["GraphBuilder", "LangGraphOrchestrator", "build", "use_graph"]

_MAX_GRAPHS = 64
"""Compiled registry graphs kept per orchestrator (one per distinct task list)."""

GraphBuilder = Callable[[Registry, Callable[..., Any]], Any]
"""``builder(registry, llm) -> StateGraph | compiled graph``; ``llm(agent=None)`` returns an
:class:`~amsha_langgraph.AmshaChatModel` for that agent, bound to the run."""


class LangGraphOrchestrator(BaseOrchestrator):
    """Runs a LangGraph graph per run (see the module docs). A builder passed here (or later
    through :meth:`use_graph`) wins over the ``graph`` option."""

    name = "langgraph"

    def __init__(self, options: LangGraphOptions | None = None, *, graph: GraphBuilder | None = None) -> None:
        self.options = options or LangGraphOptions()
        self._builder: GraphBuilder | None = graph
        self._lock = threading.Lock()
        self._graphs: dict[tuple[Any, ...], Any] = {}
        self._saver: tuple[Any, Any] | None = None

    def use_graph(self, builder: GraphBuilder | None) -> None:
        """Run ``builder``'s graph from now on (None: back to the registry graph or the
        ``graph`` option)."""
        if builder is not None and not callable(builder):
            raise InputError(f"use_graph: expected a callable graph builder, got {builder!r}")
        self._builder = builder

    def builder(self) -> GraphBuilder | None:
        """The client's graph builder, imported on first use, or None for a registry graph."""
        if self._builder is None and self.options.graph is not None:
            spec = self.options.graph
            key = "orchestrator.options.graph"
            module, _, attr = spec.partition(":")
            if not module or not attr:
                raise ConfigError([(key, f"expected 'module:callable', got {spec!r}")])
            try:
                found = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError([(key, f"cannot import {spec!r}: {type(exc).__name__}: {exc}")]) from exc
            if not callable(found):
                raise ConfigError([(key, f"{spec!r} is not callable")])
            self._builder = found
        return self._builder

    def saver(self, store: StateStore) -> Any:
        """The checkpointer over ``store``, made once and shared by the runs of the session."""
        with self._lock:
            if self._saver is None or self._saver[0] is not store:
                from .checkpoint import AmshaCheckpointSaver

                self._saver = (store, AmshaCheckpointSaver(store, allowed_types=self.options.checkpoint_types))
            return self._saver[1]

    def compiled(self, tasks: tuple[str, ...], saver: Any, make: Callable[[], Any]) -> Any:
        """The compiled registry graph for ``tasks`` (compiling costs more than a short run,
        so each task list is compiled once; the nodes read their run from context)."""
        key = (tasks, saver)
        with self._lock:
            graph = self._graphs.get(key)
        if graph is None:
            graph = make().compile(checkpointer=saver)
            with self._lock:
                if len(self._graphs) >= _MAX_GRAPHS:
                    self._graphs.pop(next(iter(self._graphs)))
                graph = self._graphs.setdefault(key, graph)
        return graph

    async def aexecute(self, run: RunContext) -> None:
        from ._graph import execute

        await execute(self, run)


def use_graph(session: Any, builder: GraphBuilder | None) -> None:
    """Make ``session`` (whose orchestrator is ``langgraph``) run ``builder``'s graph: the
    way to hand in a builder from code (config carries only ``module:callable`` strings)."""
    orch = getattr(session, "orchestrator", None)
    if not isinstance(orch, LangGraphOrchestrator):
        raise InputError(
            f"use_graph: the session's orchestrator is {getattr(orch, 'name', orch)!r}, not 'langgraph'; "
            "select it with orchestrator: langgraph"
        )
    orch.use_graph(builder)


def build(ctx: BackendContext) -> LangGraphOrchestrator:
    """The factory the plugin registers (imports no framework)."""
    return LangGraphOrchestrator(ctx.options)
