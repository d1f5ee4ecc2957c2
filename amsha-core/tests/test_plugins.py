"""Plugin discovery in process: code-passed plugins, names, load errors, versions, cache.

Discovery of installed distributions through entry points is tested in the repository's
cross-package tests, which pip-install fixture plugins into a fresh environment.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _amsha_support import make_config

import amsha.plugins as plugins_module
from amsha import ExecutionSession, hookimpl, load_plugins
from amsha.builtins.scripted import ScriptedProvider
from amsha.errors import ConfigError, DuplicatePluginError, PluginVersionError, UnknownBackendError
from amsha.hookspecs import PLUGIN_API_VERSION
from amsha.plugins import BackendContext


def _plugin(name: str, provider: str = "code-echo", api: str | None = None, hook: Any = None) -> types.ModuleType:
    module = types.ModuleType(name)

    def build(ctx: BackendContext) -> ScriptedProvider:
        return ScriptedProvider({"default": f"{name} says hi"}, model=ctx.model)

    @hookimpl
    def amsha_register_providers(register: Any) -> None:
        register(provider, build, description="test provider")

    module.amsha_register_providers = hook or amsha_register_providers  # type: ignore[attr-defined]
    if api is not None:
        module.AMSHA_PLUGIN_API = api  # type: ignore[attr-defined]
    return module


@pytest.fixture(autouse=True)
def _fresh_discovery() -> Iterator[None]:
    plugins_module.refresh()
    yield
    plugins_module.refresh()


def test_builtins_are_always_registered() -> None:
    found = load_plugins()
    assert found.names("provider")[:1] == ["scripted"] or "scripted" in found.names("provider")
    assert {"direct"} <= set(found.names("orchestrator"))
    assert {"memory", "file"} <= set(found.names("state_store"))
    assert {"console", "jsonl"} <= set(found.names("observer"))
    core = next(p for p in found.plugins if p.builtin)
    assert core.distribution == "amsha-core" and core.error is None


def test_plugin_passed_in_code_is_selectable() -> None:
    plugin = _plugin("my_plugin")
    with ExecutionSession(make_config(provider={"name": "code-echo"}), plugins=[plugin]) as session:
        assert session.llm().generate("x").text == "my_plugin says hi"


def test_two_plugins_claiming_one_name_is_a_clear_error() -> None:
    a, b = _plugin("plugin_a"), _plugin("plugin_b")
    with pytest.raises(DuplicatePluginError) as info:
        ExecutionSession(make_config(provider={"name": "code-echo"}), plugins=[a, b])
    assert "plugin_a" in str(info.value) and "plugin_b" in str(info.value)
    # A session that does not select the contested name is unaffected.
    with ExecutionSession(make_config(), plugins=[a, b]):
        pass
    assert load_plugins([a, b]).conflicts()


def test_overriding_a_builtin_name_is_a_duplicate() -> None:
    with pytest.raises(DuplicatePluginError, match="scripted"):
        ExecutionSession(make_config(), plugins=[_plugin("shadow", provider="scripted")])


def test_incompatible_plugin_refused_only_when_selected() -> None:
    future = _plugin("future_plugin", provider="future", api="2.0")
    found = load_plugins([future])
    info = next(p for p in found.plugins if p.name == "future_plugin")
    assert info.compatible is False
    with pytest.raises(PluginVersionError) as err:
        ExecutionSession(make_config(provider={"name": "future"}), plugins=[future])
    assert "2.0" in str(err.value) and PLUGIN_API_VERSION in str(err.value)
    with ExecutionSession(make_config(), plugins=[future]):
        pass


def test_incompatible_plugin_hooks_are_not_called_nor_offered(tmp_path: Path) -> None:
    called: list[str] = []

    @hookimpl
    def amsha_register_providers(register: Any) -> None:
        called.append("yes")
        register("future", lambda ctx: None)

    future = _plugin("future_plugin", provider="future", api="2.0", hook=amsha_register_providers)
    found = load_plugins([future])
    info = next(p for p in found.plugins if p.name == "future_plugin")
    assert called == [] and info.registers == [] and info.implements == ["provider"]
    assert "future" not in found.names("provider")
    config = tmp_path / "amsha.yaml"
    config.write_text(yaml.safe_dump(make_config(provider={"name": "future"})))
    with pytest.raises(PluginVersionError) as err:
        ExecutionSession(config, plugins=[future])
    text = str(err.value)
    assert str(config) in text and "provider.name" in text and "'future_plugin'" in text
    assert "2.0" in text and PLUGIN_API_VERSION in text
    # An unknown name does not offer the incompatible plugin's backends as installed.
    other = _plugin("other_plugin", provider="other")
    with pytest.raises(UnknownBackendError) as unknown:
        ExecutionSession(config, plugins=[other])
    assert "future" not in str(unknown.value).split("installed providers:")[1]


def test_option_errors_name_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "amsha.yaml"
    config.write_text(yaml.safe_dump(make_config(provider={"name": "scripted", "options": {"tokn_delay_s": 1}})))
    with pytest.raises(ConfigError) as err:
        ExecutionSession(config)
    assert str(err.value).startswith(f"{config}: provider.options.tokn_delay_s")


def test_a_raising_hook_is_reported_and_others_still_load() -> None:
    @hookimpl
    def amsha_register_providers(register: Any) -> None:
        raise RuntimeError("boom in register")

    broken = _plugin("broken_plugin", hook=amsha_register_providers)
    good = _plugin("good_plugin", provider="good")
    found = load_plugins([broken, good])
    info = next(p for p in found.plugins if p.name == "broken_plugin")
    assert info.error is not None and "boom in register" in info.error
    assert "good" in found.names("provider")
    with pytest.raises(UnknownBackendError) as err:
        found.get("provider", "code-echo")
    assert "broken_plugin" in str(err.value) and "boom in register" in str(err.value)


def test_an_unknown_hook_is_refused_by_name() -> None:
    module = types.ModuleType("typo_plugin")

    @hookimpl
    def amsha_register_provider(register: Any) -> None:  # missing "s"
        register("x", lambda ctx: None)

    module.amsha_register_provider = amsha_register_provider  # type: ignore[attr-defined]
    found = load_plugins([module])
    info = next(p for p in found.plugins if p.name == "typo_plugin")
    assert info.error is not None and "amsha_register_provider" in info.error


def test_discovery_is_cached_across_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = plugins_module._load_entry_points

    def counting(key: Any) -> Any:
        calls.append(key)
        return original(key)

    monkeypatch.setattr(plugins_module, "_load_entry_points", counting)
    plugins_module.refresh()
    calls.clear()
    for _ in range(5):
        ExecutionSession().close()
    assert calls == []
    assert load_plugins() is load_plugins()


def test_disable_autoload_keeps_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMSHA_DISABLE_PLUGIN_AUTOLOAD", "1")
    found = load_plugins()
    assert [p.name for p in found.plugins] == ["amsha"]
    with ExecutionSession(make_config()) as session:
        assert session.llm().provider_name == "scripted"


def test_lazy_factory_strings_import_only_when_built() -> None:
    found = load_plugins()
    entry = found.get("provider", "scripted")
    assert isinstance(entry.factory, str) and entry.factory.endswith(":build")
