"""Fixtures of the crewai orchestrator's tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # crew_support, for tools named by import path

from crew_support import crew_config


@pytest.fixture
def config() -> dict[str, Any]:
    return crew_config()
