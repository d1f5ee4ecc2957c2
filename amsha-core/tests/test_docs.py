"""Hooks are documented as they are: every hook spec appears in the plugin guide with its
exact signature, and every contract suite is listed there."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from amsha import hookspecs, testing

README = Path(__file__).resolve().parents[2] / "README.md"
HOOKS = [name for name in dir(hookspecs) if name.startswith("amsha_")]


@pytest.fixture(scope="module")
def guide() -> str:
    if not README.exists():  # the distribution is tested outside its repository
        pytest.skip(f"{README} is not next to this checkout")
    return README.read_text(encoding="utf-8")


def test_the_five_hooks_exist() -> None:
    assert HOOKS == [
        "amsha_register_commands",
        "amsha_register_observers",
        "amsha_register_orchestrators",
        "amsha_register_providers",
        "amsha_register_state_stores",
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_in_the_guide_with_its_signature(guide: str, hook: str) -> None:
    signature = f"{hook}{inspect.signature(getattr(hookspecs, hook))}"
    assert signature.replace("'", "") in guide


@pytest.mark.parametrize("suite", testing.__all__)
def test_every_contract_suite_is_in_the_guide(guide: str, suite: str) -> None:
    assert f"`{suite}`" in guide
