"""The core's built-in backends pass the contract suites they ship for plugin authors; a
deliberately broken backend fails them with messages naming the broken contract."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from amsha.builtins.observers import ConsoleObserver, JsonlObserver
from amsha.builtins.scripted import ScriptedProvider
from amsha.builtins.stores import FileStore, MemoryStore
from amsha.testing import ObserverContract, OrchestratorContract, ProviderContract, StateStoreContract

pytest_plugins = ["pytester"]


# What the contract's feature requests must be answered with (a real model would; a fake is told).
CONTRACT_RULES: list[dict[str, Any]] = [
    {"match": "magic_function(3)? Call", "tool_calls": [{"name": "magic_function", "arguments": {"input": 3}}]},
    {"match": "contract_person", "text": '{"contract_given_name": "Ada", "contract_age_years": 36}'},
]


def _failures(kind: str) -> list[dict[str, Any]]:
    if kind == "stream_interrupt":
        return [{"kind": kind, "after_tokens": 1, "times": 100}]
    return [{"kind": kind, "times": 100, "retry_after": 1}]


class TestScriptedProvider(ProviderContract):
    @pytest.fixture
    def provider(self) -> ScriptedProvider:
        return ScriptedProvider({"responses": [*CONTRACT_RULES, "Hello there, friend."]})

    @pytest.fixture
    def deterministic(self) -> bool:
        return True

    @pytest.fixture
    def other_model(self) -> str:
        return "scripted-2"

    @pytest.fixture
    def failing_provider(self) -> Callable[[str], Any]:
        return lambda kind: ScriptedProvider({"responses": ["Hello there, friend."], "failures": _failures(kind)})

    @pytest.fixture
    def peer_provider(self) -> None:
        return None  # in process: no HTTP

    @pytest.fixture
    def api_key_env(self) -> None:
        return None


class TestScriptedProviderWithoutStreaming(TestScriptedProvider):
    OPTIONS: ClassVar[dict[str, Any]] = {"streaming": False, "report_usage": False, "tools": False}

    @pytest.fixture
    def provider(self) -> ScriptedProvider:
        return ScriptedProvider({"responses": [*CONTRACT_RULES, "Hello there."], **self.OPTIONS})

    @pytest.fixture
    def failing_provider(self) -> Callable[[str], Any]:
        return lambda kind: ScriptedProvider(
            {"responses": ["Hello there."], "failures": _failures(kind), **self.OPTIONS}
        )


class TestMemoryStore(StateStoreContract):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()


class TestFileStore(StateStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FileStore:
        return FileStore(tmp_path / "store")


class TestDirectOrchestrator(OrchestratorContract):
    @pytest.fixture
    def orchestrator_config(self) -> dict[str, Any]:
        return {"name": "direct"}


class TestConsoleObserver(ObserverContract):
    @pytest.fixture
    def observer(self, tmp_path: Path) -> Iterator[ConsoleObserver]:
        with (tmp_path / "out.txt").open("w") as out:
            yield ConsoleObserver(file=out)

    @pytest.fixture
    def observer_output(self, tmp_path: Path) -> Callable[[], str]:
        return lambda: (tmp_path / "out.txt").read_text()


class TestJsonlObserver(ObserverContract):
    @pytest.fixture
    def observer(self, tmp_path: Path) -> JsonlObserver:
        return JsonlObserver(tmp_path / "events.jsonl")

    @pytest.fixture
    def observer_output(self, tmp_path: Path) -> Callable[[], str]:
        return lambda: (tmp_path / "events.jsonl").read_text()


BROKEN = """
import pytest
from amsha import LLMResponse, ProviderCapabilities
from amsha.errors import ServerError
from amsha.testing import ProviderContract, StateStoreContract
from amsha.builtins.stores import MemoryStore


class Broken:
    name = "broken"
    capabilities = ProviderCapabilities(streaming=True, usage_in_stream=True)

    def generate(self, request):
        return {"text": "a dict, not an LLMResponse"}

    def stream(self, request):
        return iter(["plain strings"])

    async def agenerate(self, request):
        return LLMResponse(text="ok")

    async def astream(self, request):
        yield "nope"

    def close(self):
        pass


class TestBroken(ProviderContract):
    @pytest.fixture
    def provider(self):
        return Broken()

    @pytest.fixture
    def failing_provider(self):
        def make(kind):
            class Fails(Broken):
                def generate(self, request):
                    raise ValueError("raw SDK error")
            return Fails()
        return make


class Overwrites(MemoryStore):
    def put_state(self, state_id, data, *, expected_version, run_id=None, reason=""):
        versions = self._states.get(state_id, [])
        return super().put_state(state_id, data, expected_version=len(versions), run_id=run_id, reason=reason)


class TestOverwritingStore(StateStoreContract):
    @pytest.fixture
    def store(self):
        return Overwrites()
"""


def test_a_broken_plugin_fails_with_contract_messages(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=textwrap.dedent(BROKEN))
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert "contract: generate() must return an LLMResponse, got dict" in out
    assert "contract: stream() must yield LLMChunk objects" in out
    assert "contract: a rate_limit failure must raise an amsha ProviderError from generate(), got ValueError" in out
    assert "contract: a write naming a stale version must raise VersionConflictError" in out
    assert "contract: checking that closing a stream closes its HTTP response needs the `peer_provider` fixture" in out
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 20
    # Every failure, including an exception the backend raised where an answer was due, is a
    # contract message.
    messages = [line for line in out.splitlines() if line.startswith("contract: ")]
    assert len(messages) == outcomes["failed"], out
    assert "\nE   " not in out  # no traceback: no failure other than a contract message
