"""Shared fixtures for amsha-core's own tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _amsha_support import make_config

from amsha import ExecutionSession


@pytest.fixture
def session_factory() -> Iterator[Any]:
    sessions: list[ExecutionSession] = []

    def make(config: Any = None, **kwargs: Any) -> ExecutionSession:
        session = ExecutionSession(make_config() if config is None else config, **kwargs)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()
