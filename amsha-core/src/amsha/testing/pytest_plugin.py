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


@pytest.fixture
def http_peer() -> Iterator[Any]:
    """A started :class:`~amsha.testing.HTTPPeer` on 127.0.0.1 (a free port), stopped at
    the end of the test. Script it with ``http_peer.script(PeerReply(...))`` or give it a
    ``responder``; point the client under test at ``http_peer.url``."""
    from amsha.testing.peer import HTTPPeer

    with HTTPPeer() as peer:
        yield peer
