"""Entry point module of amsha-orchestrator-langgraph (group ``amsha``).

Registers the orchestrator ``langgraph``. Kept tiny on purpose: plugin modules are imported
at session creation, so LangGraph and langchain-core are imported only when a run of a
session that selects ``langgraph`` executes.
"""

from __future__ import annotations

from typing import Any

from amsha import hookimpl

from .options import LangGraphOptions

AMSHA_PLUGIN_API = "1.0"


@hookimpl
def amsha_register_orchestrators(register: Any) -> None:
    register(
        "langgraph",
        "amsha_langgraph.orchestrator:build",
        options=LangGraphOptions,
        description="LangGraph graphs from the registry or a client builder; checkpoints in the state store",
    )
