"""The parrot provider passes Amsha's provider contract, and is discovered and selected
through its entry point like any installed plugin."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from amsha import ExecutionSession, load_plugins
from amsha.testing import ProviderContract
from amsha_parrot.plugin import ParrotOptions
from amsha_parrot.provider import ParrotProvider

HERE = Path(__file__).parent


class TestParrotContract(ProviderContract):
    @pytest.fixture
    def provider(self) -> ParrotProvider:
        return ParrotProvider(ParrotOptions(prefix="you said: "))

    @pytest.fixture
    def deterministic(self) -> bool:
        return True

    @pytest.fixture
    def other_model(self) -> str:
        return "parrot-2"

    @pytest.fixture
    def failing_provider(self) -> Callable[[str], ParrotProvider]:
        return lambda kind: ParrotProvider(ParrotOptions(fail_with=kind))

    @pytest.fixture
    def peer_provider(self) -> None:
        return None  # parrot answers in process: it speaks no HTTP

    @pytest.fixture
    def api_key_env(self) -> None:
        return None  # and takes no key


def test_discovered_through_its_entry_point() -> None:
    plugins = load_plugins(refresh=True)
    info = next(p for p in plugins.plugins if p.name == "parrot")
    assert info.distribution == "amsha-provider-parrot" and info.compatible and info.error is None
    assert ("provider", "parrot") in info.registers


def test_selected_by_config() -> None:
    with ExecutionSession(HERE.parent / "amsha.yaml") as session:
        result = session.run(inputs={"name": "Polly"}).result()
    assert result.outputs["greet"].startswith("squawk! Say hello to Polly")


def test_amsha_run_selects_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "amsha", "run", str(HERE.parent / "amsha.yaml"), "--input", "name=Polly", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    payload = json.loads(out.stdout)
    assert payload["status"] == "SUCCEEDED"
    assert payload["outputs"]["greet"].startswith("squawk!")
    assert payload["metrics"]["total"]["tokens_estimated"] is False
