"""pytest plugin shipped with amsha-core: fixtures for tests of Amsha plugins and apps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def amsha_session_factory() -> Iterator[Any]:
    """Build ``ExecutionSession`` objects that are closed at the end of the test."""
    from amsha import ExecutionSession

    sessions: list[Any] = []

    def make(config: Any = None, **kwargs: Any) -> Any:
        session = ExecutionSession(config, **kwargs)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()
