"""Provider ``openai`` passes Amsha's provider contract, over HTTP against the local server."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from amsha.testing import ProviderContract
from amsha_openai import OpenAIProvider
from amsha_openai.testing import OpenAIServer, Reply

STATUS = {"rate_limit": 429, "server": 500, "auth": 401, "not_found": 404, "bad_request": 400}


class TestOpenAIProviderContract(ProviderContract):
    @pytest.fixture
    def provider(self, openai_server: OpenAIServer) -> Iterator[OpenAIProvider]:
        openai_server.default = Reply("Hello from the local Chat Completions server.", chunk_delay_s=0.01)
        p = openai_server.provider()
        yield p
        p.close()

    @pytest.fixture
    def deterministic(self) -> bool:
        return True

    @pytest.fixture
    def failing_provider(self, openai_server: OpenAIServer) -> Iterator[Callable[[str], OpenAIProvider]]:
        built: list[OpenAIProvider] = []

        def make(kind: str) -> OpenAIProvider:
            openai_server.script(Reply.fail(STATUS[kind], f"simulated {kind}", retry_after=0.01, times=100))
            built.append(openai_server.provider())
            return built[-1]

        yield make
        for p in built:
            p.close()
