"""Entry point module of amsha-orchestrator-crewai (group ``amsha``): registers orchestrator
``crewai``.

Tiny on purpose: it is imported whenever plugins are discovered, so the orchestrator module
(which imports CrewAI) is named as a string and imported only when a session selects
``crewai``.
"""

from __future__ import annotations

from typing import Any

from amsha import hookimpl

from .options import CrewAIOptions

AMSHA_PLUGIN_API = "1.0"


@hookimpl
def amsha_register_orchestrators(register: Any) -> None:
    register(
        "crewai",
        "amsha_crewai.orchestrator:build",
        options=CrewAIOptions,
        description="CrewAI crews built from the registry; every LLM call through Amsha's LLM",
    )
