"""Testing helpers for Amsha plugins and apps, shipped with amsha-core.

Contract suites, one per plugin kind: subclass one in your tests, supply the fixtures that
build your backend, and run pytest (see each class for its fixtures)::

    from amsha.testing import ProviderContract, StateStoreContract, OrchestratorContract, ObserverContract

:class:`HTTPPeer` is a scriptable HTTP server on 127.0.0.1 (status, headers, body, chunks,
delays, stalls, dropped connections) for testing providers that speak HTTP without mocks;
``ProviderContract`` uses it through the ``peer_provider`` fixture.

amsha-core also registers a pytest plugin (entry point ``pytest11``) with the
``amsha_session_factory`` and ``http_peer`` fixtures.

Importing this package imports pytest; ``import amsha`` never imports it.
"""

from __future__ import annotations

from ._common import Missing
from ._provider import MAGIC_TOOL, PERSON_SCHEMA, conversation, structured_request, tool_history, tool_request
from .contracts import ObserverContract, OrchestratorContract, ProviderContract, StateStoreContract
from .peer import HTTPPeer, PeerReply, PeerRequest, free_port
from .runcontrol import RunControlContract
from .runpages import RunPageContract

__all__ = [
    "MAGIC_TOOL",
    "PERSON_SCHEMA",
    "HTTPPeer",
    "Missing",
    "ObserverContract",
    "OrchestratorContract",
    "PeerReply",
    "PeerRequest",
    "ProviderContract",
    "RunControlContract",
    "RunPageContract",
    "StateStoreContract",
    "conversation",
    "free_port",
    "structured_request",
    "tool_history",
    "tool_request",
]
