"""Hooks are documented as they are: every hook spec appears in the plugin guide with its
exact signature, and every contract suite is listed there."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from amsha import hookspecs, testing

pytest_plugins = ["pytester"]

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


def test_every_capability_flag_is_in_the_guide(guide: str) -> None:
    from amsha import ProviderCapabilities

    for flag in ProviderCapabilities.__dataclass_fields__:
        assert f"| `{flag}` |" in guide, flag


def test_every_provider_error_is_in_the_guide_with_its_retryable(guide: str) -> None:
    from amsha import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ProviderError)]
    for cls in classes:
        row = next((line for line in guide.splitlines() if line.startswith(f"| `{cls.__name__}` |")), None)
        assert row is not None, cls.__name__
        assert row.rstrip().endswith("| yes |" if cls.retryable else "| no |"), row


def test_every_store_method_is_in_the_guide(guide: str) -> None:
    from amsha.state import StateStore

    for name in (
        "put_state",
        "get_state",
        "list_versions",
        "put_run",
        "get_run",
        "list_runs",
        "append_events",
        "read_events",
        "delete_run",
        "close",
    ):
        assert callable(getattr(StateStore, name))
        assert f"| `{name}(" in guide, name


def test_every_request_and_answer_type_is_in_the_guide(guide: str) -> None:
    for name in ("LLMRequest", "Message", "ToolSpec", "LLMResponse", "ToolCall", "LLMChunk", "ToolCallDelta", "Usage"):
        assert f"| `{name}` |" in guide, name


def _blocks(guide: str, marker: str) -> str:
    start = guide.index(marker)
    return guide[start : guide.index("```", start)]


def test_the_guides_acme_provider_passes_the_provider_contract(guide: str, pytester: pytest.Pytester) -> None:
    """The plugin, provider and test of the guide, as written, pass ProviderContract."""
    pytest.importorskip("httpx")
    plugin = _blocks(guide, "# amsha_acme/plugin.py")
    provider = _blocks(guide, "# amsha_acme/provider.py")
    start = guide.index("### Testing a plugin with the contract suites")
    test = guide[
        guide.index("```python", start) + len("```python") : guide.index("```\n", guide.index("```python", start) + 9)
    ]
    pkg = pytester.mkpydir("amsha_acme")
    (pkg / "plugin.py").write_text(plugin)
    (pkg / "provider.py").write_text(provider)
    pytester.makepyfile(test_acme=test)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "failed" not in out
