"""Orchestrator ``crewai`` passes Amsha's orchestrator contract, with a real CrewAI crew."""

from __future__ import annotations

from typing import Any

import pytest
from amsha.testing import OrchestratorContract


class TestCrewAIContract(OrchestratorContract):
    @pytest.fixture
    def orchestrator_config(self) -> dict[str, Any]:
        return {"name": "crewai"}
