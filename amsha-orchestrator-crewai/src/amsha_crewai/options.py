"""Options of orchestrator ``crewai``: the ``options`` mapping under ``orchestrator`` in config.

Validated where declared (pydantic, ``extra="forbid"``), so a typo is an error naming the key.
Importing this module imports pydantic only, never CrewAI.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CrewAIOptions"]


class CrewAIOptions(BaseModel):
    """Options of orchestrator ``crewai``.

    The crew's process is always sequential: the client names the tasks (or the registry's
    ``pipeline`` hint does) and they run in that order, nothing decided by Amsha or by a
    manager agent. Retries of whole steps belong to the client, so CrewAI's own agent-level
    retry (``max_retry_limit``) is 0 and LLM calls are retried by Amsha's policy alone.
    """

    model_config = ConfigDict(extra="forbid")

    max_iter: int = Field(25, ge=1, description="agent reasoning iterations allowed per task (CrewAI's Agent.max_iter)")
    allow_delegation: bool = Field(
        False, description="let agents delegate to each other (CrewAI's Agent.allow_delegation)"
    )
    verbose: bool = Field(False, description="CrewAI's own console output")
    event_flush_timeout_s: float = Field(
        5.0, gt=0, description="seconds to wait for CrewAI's event handlers when ordering its events"
    )
