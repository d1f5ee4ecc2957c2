"""pytest plugin of amsha-provider-openai (entry point ``pytest11``): the ``openai_server``
fixture. Importing it imports nothing beyond pytest; the server loads when a test asks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .server import OpenAIServer


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A started :class:`~amsha_openai.testing.OpenAIServer` on 127.0.0.1 (a free port),
    stopped at the end of the test. Script it with ``openai_server.script(Reply(...))``;
    point a provider at it with ``openai_server.provider()`` or, in config,
    ``openai_server.provider_config()``."""
    from .server import OpenAIServer

    with OpenAIServer() as server:
        yield server
