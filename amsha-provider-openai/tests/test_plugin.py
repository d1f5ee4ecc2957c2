"""The distribution installs, is discovered through its entry point, registers provider
``openai`` and ships its test server's pytest plugin, all without importing the SDK."""

from __future__ import annotations

import json
import subprocess
import sys

from amsha import load_plugins

FRAMEWORKS = "('openai', 'httpx', 'httpx2', 'crewai', 'langgraph', 'langchain_core')"


def imported_frameworks(code: str) -> str:
    probe = f"{code}; import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_entry_point_is_discovered_and_registers_openai() -> None:
    plugins = load_plugins(refresh=True)
    info = [p for p in plugins.plugins if p.name == "openai"]
    assert info, [p.name for p in plugins.plugins]
    assert info[0].distribution == "amsha-provider-openai"
    assert info[0].error is None and info[0].compatible
    assert ("provider", "openai") in info[0].registers


def test_cli_lists_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "amsha", "plugins", "--json"], capture_output=True, text=True, check=True
    )
    plugin = next(p for p in json.loads(out.stdout)["plugins"] if p["name"] == "openai")
    assert plugin["distribution"] == "amsha-provider-openai" and plugin["error"] is None
    assert {"kind": "provider", "name": "openai"} in plugin["registers"]


def test_plugin_module_imports_no_framework() -> None:
    assert imported_frameworks("import amsha_openai.plugin") == "[]"


def test_package_and_its_pytest_plugin_import_no_sdk() -> None:
    assert imported_frameworks("import amsha_openai, amsha_openai.testing.pytest_plugin") == "[]"
    assert imported_frameworks("from amsha_openai.testing import OpenAIServer; OpenAIServer().stop()") == "[]"


def test_session_creation_imports_no_sdk_until_the_provider_is_used() -> None:
    code = (
        "import amsha; s = amsha.ExecutionSession({'provider': {'name': 'openai', 'model': 'm', "
        "'options': {'base_url': 'http://127.0.0.1:9/v1'}}}); s.close()"
    )
    assert imported_frameworks(code) == "[]"
