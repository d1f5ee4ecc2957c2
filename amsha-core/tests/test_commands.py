"""Plugin commands (``amsha_register_commands``): discovered through a real entry point,
added to the ``amsha`` parser, dispatched, and refused when their name is contested."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import amsha.plugins as plugins_module
from amsha import cli, load_plugins

SETUP_MODULE = """
def setup(parser):
    parser.add_argument("--name", default="world")
    parser.add_argument("--code", type=int, default=0)

    def handler(args):
        import {heavy}  # imported when the command runs, not when the parser is built
        print(f"hello {{args.name}}")
        return args.code

    return handler


def broken_setup(parser):
    raise RuntimeError("setup exploded")
"""

PLUGIN_MODULE = """
from amsha import hookimpl

AMSHA_PLUGIN_API = "1.1"


@hookimpl
def amsha_register_commands(register):
{body}
"""


def _install(root: Path, dist: str, module: str, body: str) -> None:
    """A real installed distribution (a ``.dist-info`` folder on sys.path) with an ``amsha``
    entry point, so discovery goes through importlib.metadata as it does for users. Each test
    gets fresh names (``root.name`` differs), so no import cache can hand back another
    test's module."""
    tag = root.name.replace("-", "_")
    dist, module = f"{dist}-{tag}", f"{module}_{tag}"
    os.environ["AMSHA_LOAD_PLUGINS"] = os.environ.get("AMSHA_LOAD_PLUGINS", "") + f",{module}"
    (root / f"{module}.py").write_text(PLUGIN_MODULE.format(body=textwrap.indent(body, "    ")), encoding="utf-8")
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[amsha]\n{module} = {module}\n", encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    heavy = "cmdtest_heavy"
    (tmp_path / f"{heavy}.py").write_text("LOADED = True\n", encoding="utf-8")
    (tmp_path / "cmdtest_setup.py").write_text(SETUP_MODULE.format(heavy=heavy), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("AMSHA_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("AMSHA_LOAD_PLUGINS", "none")
    plugins_module.refresh()
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("cmdtest_")]:
        del sys.modules[name]
    monkeypatch.delenv("AMSHA_LOAD_PLUGINS")
    plugins_module.refresh()


def _plugin(found: object, prefix: str) -> object:
    return next(p for p in found.plugins if p.name.startswith(prefix))  # type: ignore[attr-defined]


def test_a_plugin_command_is_discovered_parsed_and_run(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _install(site, "cmdtest-a", "cmdtest_a", 'register("hello", "cmdtest_setup:setup", help="say hello")')
    plugins_module.refresh()
    assert "cmdtest_setup" not in sys.modules  # a "module:attr" setup is imported only for the parser
    found = load_plugins()
    entry = found.command("hello")
    assert entry is not None and entry.plugin.startswith("cmdtest_a") and entry.distribution.startswith("cmdtest-a")
    assert ("command", "hello") in _plugin(found, "cmdtest_a").registers  # type: ignore[attr-defined]

    assert cli.main(["hello", "--name", "<b>amsha</b>", "--code", "3"]) == 3
    assert capsys.readouterr().out == "hello <b>amsha</b>\n"
    assert "cmdtest_heavy" in sys.modules
    assert cli.main(["hello"]) == 0  # a handler returning 0 (or None) exits 0

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "hello" in out and "say hello" in out
    assert cli.main(["plugins"]) == 0
    assert "command: hello" in capsys.readouterr().out


def test_a_plugin_cannot_take_a_builtin_command(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _install(site, "cmdtest-a", "cmdtest_a", 'register("plugins", "cmdtest_setup:setup")')
    plugins_module.refresh()
    assert load_plugins().command("plugins") is None
    assert cli.main(["plugins"]) == 0  # still the built-in one
    out = capsys.readouterr().out
    assert "CONFLICT" in out and "plugins" in out and "cmdtest_a" in out


def test_two_plugins_claiming_one_command_get_neither(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _install(site, "cmdtest-a", "cmdtest_a", 'register("hello", "cmdtest_setup:setup")')
    _install(site, "cmdtest-b", "cmdtest_b", 'register("hello", "cmdtest_setup:setup")')
    plugins_module.refresh()
    found = load_plugins()
    assert found.command("hello") is None
    assert any("cmdtest_a" in str(c) and "cmdtest_b" in str(c) for c in found.conflicts())
    with pytest.raises(SystemExit) as info:
        cli.main(["hello"])
    assert info.value.code == 2  # argparse: no such command


def test_a_failing_setup_breaks_only_its_command(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _install(site, "cmdtest-a", "cmdtest_a", 'register("boom", "cmdtest_setup:broken_setup")')
    _install(site, "cmdtest-b", "cmdtest_b", 'register("hello", "cmdtest_setup:setup")')
    plugins_module.refresh()
    assert cli.main(["hello"]) == 0
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert "cmdtest_a" in err and "setup exploded" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["boom", "--traceback"]) == 2  # the options every command takes
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("body", ['register("", "cmdtest_setup:setup")', 'register("x", 42)'])
def test_a_bad_registration_is_a_load_error_of_that_plugin(site: Path, body: str) -> None:
    _install(site, "cmdtest-c", "cmdtest_c", body)
    plugins_module.refresh()
    found = load_plugins()
    info: Any = _plugin(found, "cmdtest_c")
    assert info.error is not None and "command" in info.error
    assert not found.commands
