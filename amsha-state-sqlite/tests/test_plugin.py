"""The distribution installs and is discovered through its entry point."""

import json
import subprocess
import sys

from amsha import load_plugins


def test_entry_point_is_discovered() -> None:
    plugins = load_plugins(refresh=True)
    info = [p for p in plugins.plugins if p.name == "sqlite"]
    assert info, [p.name for p in plugins.plugins]
    assert info[0].distribution == "amsha-state-sqlite"
    assert info[0].error is None
    assert info[0].compatible


def test_cli_lists_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "amsha", "plugins", "--json"], capture_output=True, text=True, check=True
    )
    names = [p["name"] for p in json.loads(out.stdout)["plugins"]]
    assert "sqlite" in names


def test_plugin_module_imports_no_framework() -> None:
    code = "import amsha_sqlite.plugin, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('openai', 'crewai', 'langgraph', 'langchain_core')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
