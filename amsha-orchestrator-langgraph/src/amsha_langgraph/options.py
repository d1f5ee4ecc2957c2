"""Options of the ``langgraph`` orchestrator (pydantic only: imported at plugin discovery)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LangGraphOptions"]


class LangGraphOptions(BaseModel):
    """``orchestrator: {name: langgraph, options: {...}}``."""

    model_config = ConfigDict(extra="forbid")

    graph: str | None = Field(
        None,
        description=(
            "a client graph builder, 'module:callable', imported when a run starts; it gets the registry and an "
            "llm(agent) factory and returns a StateGraph or a compiled graph. Unset: a graph of the registry's "
            "tasks (from code: amsha_langgraph.use_graph(session, builder))"
        ),
    )
    checkpoint: bool = Field(True, description="keep LangGraph checkpoints in the session's state store")
    checkpoint_types: list[str] = Field(
        default_factory=list, description="'module:Class' of pydantic models and dataclasses checkpoints may revive"
    )
    thread_input: str = Field(
        "thread_id", description="the run input naming the LangGraph thread (default: the run's state id)"
    )
    resume_input: str = Field(
        "resume", description="the run input whose value resumes an interrupted graph (Command(resume=...))"
    )
    recursion_limit: int = Field(25, ge=1, description="LangGraph's recursion limit (supersteps per run)")
    max_tool_rounds: int = Field(8, ge=1, description="tool-call round trips per task node of a registry graph")
