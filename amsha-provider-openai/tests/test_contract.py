"""Provider ``openai`` passes Amsha's provider contract, over HTTP: answers from the local
Chat Completions server, transport checks against an HTTPPeer speaking the protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from amsha.testing import HTTPPeer, ProviderContract
from amsha_openai import OpenAIProvider
from amsha_openai.testing import OpenAIServer, Reply
from amsha_openai.testing.peer import chat_completions_responder

STATUS = {
    "rate_limit": 429,
    "server": 500,
    "auth": 401,
    "permission": 403,
    "not_found": 404,
    "bad_request": 400,
    "timeout": 408,
}
KEY_ENV = "AMSHA_CONTRACT_OPENAI_KEY"


class TestOpenAIProviderContract(ProviderContract):
    @pytest.fixture
    def provider(self, openai_server: OpenAIServer) -> Iterator[OpenAIProvider]:
        openai_server.default = Reply("Hello from the local Chat Completions server.", chunk_delay_s=0.005)
        openai_server.script(
            Reply(
                tool_calls=[{"name": "magic_function", "arguments": {"input": 3}}],
                match="Call magic_function with input 3",
                times=1000,
            ),
            Reply('{"contract_given_name": "Ada", "contract_age_years": 36}', match="contract_person", times=1000),
        )
        p = openai_server.provider()
        yield p
        p.close()

    @pytest.fixture
    def deterministic(self) -> bool:
        return True

    @pytest.fixture
    def other_model(self) -> str:
        return "test-model-2"

    @pytest.fixture
    def api_key_env(self) -> str:
        return KEY_ENV

    @pytest.fixture
    def peer_provider(self) -> Callable[[HTTPPeer, float], OpenAIProvider]:
        def make(peer: HTTPPeer, timeout_s: float) -> OpenAIProvider:
            peer.responder = chat_completions_responder
            return OpenAIProvider(
                {"base_url": f"{peer.url}/v1", "api_key_env": KEY_ENV, "timeout_s": timeout_s}, model="test-model"
            )

        return make

    @pytest.fixture
    def failing_provider(self, openai_server: OpenAIServer) -> Iterator[Callable[[str], OpenAIProvider | None]]:
        built: list[OpenAIProvider] = []

        def make(kind: str) -> OpenAIProvider | None:
            if kind not in STATUS:
                return None  # timeouts, refused connections, drops: the suite makes them with its peer
            openai_server.script(Reply.fail(STATUS[kind], f"simulated {kind}", retry_after=1, times=100))
            built.append(openai_server.provider())
            return built[-1]

        yield make
        for p in built:
            p.close()
