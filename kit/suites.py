"""The contract suites run against each reference plugin and each of its mutants (one test
class apiece); collected by ``kit/run_mutations.py`` with the ``kit.harness`` plugin."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from amsha.testing import HTTPPeer, ObserverContract, OrchestratorContract, ProviderContract, StateStoreContract

from kit.mutants import MUTANTS
from kit.reference.observer import ReferenceObserver
from kit.reference.orchestrator import Plugin, ReferenceOrchestrator
from kit.reference.provider import KEY_ENV, ReferenceProvider, on_peer, responder
from kit.reference.store import ReferenceStore


class ProviderCase(ProviderContract):
    BACKEND: Any = ReferenceProvider
    MUTANT: str | None = None

    @pytest.fixture
    def provider(self) -> Iterator[Any]:
        with HTTPPeer(responder) as peer:
            p = self.BACKEND(peer.url)
            yield p
            p.close()

    @pytest.fixture
    def deterministic(self) -> bool:
        return True

    @pytest.fixture
    def other_model(self) -> str:
        return "ref-2"

    @pytest.fixture
    def peer_provider(self) -> Callable[[HTTPPeer, float], Any]:
        return on_peer(self.BACKEND)

    @pytest.fixture
    def failing_provider(self) -> Callable[[str], Any]:
        return lambda kind: None  # every failure is produced with the peer

    @pytest.fixture
    def api_key_env(self) -> str:
        return KEY_ENV


class StoreCase(StateStoreContract):
    BACKEND: Any = ReferenceStore
    MUTANT: str | None = None

    @pytest.fixture
    def store(self) -> Any:
        return self.BACKEND()


class OrchestratorCase(OrchestratorContract):
    BACKEND: Any = ReferenceOrchestrator
    MUTANT: str | None = None

    @pytest.fixture
    def orchestrator_config(self) -> dict[str, Any]:
        return {"name": "kit-reference"}

    @pytest.fixture
    def orchestrator_plugins(self) -> list[Any]:
        return [Plugin(self.BACKEND, "kit-reference")]


class ObserverCase(ObserverContract):
    BACKEND: Any = ReferenceObserver
    MUTANT: str | None = None

    @pytest.fixture
    def observer(self) -> Any:
        return self.BACKEND()

    @pytest.fixture
    def observer_output(self, observer: Any) -> Callable[[], str]:
        return observer.output  # type: ignore[no-any-return]


CASES: dict[str, type[Any]] = {
    "provider": ProviderCase,
    "state_store": StoreCase,
    "orchestrator": OrchestratorCase,
    "observer": ObserverCase,
}

for _kind, _case in CASES.items():
    globals()[f"Test_{_kind}__reference"] = type(f"Test_{_kind}__reference", (_case,), {})
    for _name, (_what, _cls) in MUTANTS[_kind].items():
        _title = f"Test_{_kind}__{_name}"
        globals()[_title] = type(_title, (_case,), {"BACKEND": _cls, "MUTANT": _name, "__doc__": _what})
