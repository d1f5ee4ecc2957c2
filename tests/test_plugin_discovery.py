"""Plugin discovery through real distributions installed into fresh environments.

``venv_main`` holds amsha-core with amsha-fixture-good (provider ``echo-fixture``, observer
``count-fixture``), amsha-fixture-broken (its module raises ImportError) and
amsha-fixture-incompatible (plugin API 2.0, provider ``future-fixture``). ``venv_dup`` holds
amsha-fixture-good with amsha-fixture-dup, which claims ``echo-fixture`` too.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from amsha.hookspecs import PLUGIN_API_VERSION
from conftest import Venv, describe

PREFIX = "FIXTURE-ECHO >> "
FRAMEWORKS = ("openai", "crewai", "langchain", "langchain_core", "langgraph")


def write_config(
    path: Path,
    provider: dict[str, Any],
    *,
    observers: list[dict[str, Any]] | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """A one-agent, one-task config selecting ``provider``."""
    config: dict[str, Any] = {
        "provider": provider,
        "agents": {"greeter": {"role": "Greeter", "goal": "Greet {name} politely"}},
        "tasks": {"greet": {"description": "Say hello to {name}.", "agent": "greeter"}},
    }
    if observers is not None:
        config["observers"] = observers
    if state is not None:
        config["state"] = state
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def echo_config(tmp_path: Path, **options: Any) -> Path:
    return write_config(tmp_path / "echo.yaml", {"name": "echo-fixture", "options": {"prefix": PREFIX, **options}})


def plugins_json(venv: Venv, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = venv.amsha("plugins", "--json", env=env)
    assert proc.returncode == 0, describe(proc)
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def rows_by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in data["plugins"]}


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """Assert ``proc`` failed with ``code`` and one line on stderr, no traceback; return it."""
    assert proc.returncode == code, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, describe(proc)
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("amsha: error: "), describe(proc)
    return lines[0]


# ---- amsha plugins --------------------------------------------------------------------------


def test_plugins_json_lists_the_good_plugin_with_its_distribution_and_registrations(venv_main: Venv) -> None:
    rows = rows_by_name(plugins_json(venv_main))
    good = rows["fixture-good"]
    assert good["distribution"] == "amsha-fixture-good"
    assert good["version"] == "1.2.3"
    assert good["module"] == "amsha_fixture_good.plugin"
    assert good["compatible"] is True and good["builtin"] is False and good["error"] is None
    assert {(r["kind"], r["name"]) for r in good["registers"]} == {
        ("provider", "echo-fixture"),
        ("observer", "count-fixture"),
    }
    core = rows["amsha"]
    assert core["builtin"] is True and core["distribution"] == "amsha-core"
    assert ("provider", "scripted") in {(r["kind"], r["name"]) for r in core["registers"]}


def test_plugins_lists_the_broken_plugin_with_its_load_error(venv_main: Venv) -> None:
    data = plugins_json(venv_main)
    broken = rows_by_name(data)["fixture-broken"]
    assert broken["distribution"] == "amsha-fixture-broken" and broken["version"] == "0.0.1"
    assert broken["error"] is not None
    assert broken["error"].startswith("ImportError: ")
    assert "broken on purpose" in broken["error"]
    assert broken["registers"] == []
    # The others still loaded.
    assert rows_by_name(data)["fixture-good"]["error"] is None

    text = venv_main.amsha("plugins")
    assert text.returncode == 0, describe(text)
    lines = text.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("fixture-broken"))
    assert "amsha-fixture-broken 0.0.1" in lines[header]
    assert "LOAD ERROR: ImportError" in lines[header + 1] and "broken on purpose" in lines[header + 1]


def test_plugins_marks_the_incompatible_plugin(venv_main: Venv) -> None:
    row = rows_by_name(plugins_json(venv_main))["fixture-incompatible"]
    assert row["compatible"] is False
    assert row["plugin_api"] == "2.0"
    assert row["error"] is None
    # Built for another plugin API: its hooks are not called, so it registers nothing; what it
    # would register is known by kind only.
    assert row["registers"] == [] and row["implements"] == ["provider"]
    text = venv_main.amsha("plugins")
    line = next(line for line in text.stdout.splitlines() if line.startswith("fixture-incompatible"))
    assert "INCOMPATIBLE" in line and "2.0" in line


# ---- selecting backends ---------------------------------------------------------------------


def test_fixture_provider_and_observer_run_end_to_end(venv_main: Venv, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "echo.yaml",
        {"name": "echo-fixture", "model": "echo-7", "options": {"prefix": PREFIX}},
        observers=[{"name": "count-fixture", "options": {"path": "counts.json"}}],
    )
    proc = venv_main.amsha("run", str(config), "--input", "name=Ada", "--json", cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    result = json.loads(proc.stdout)
    assert result["status"] == "SUCCEEDED"
    # The answer comes from echo-fixture: its prefix, then the rendered task description.
    assert result["outputs"]["greet"].startswith(PREFIX)
    assert "Say hello to Ada." in result["outputs"]["greet"]
    total = result["metrics"]["total"]
    assert total["calls"] == 1 and total["input_tokens"] > 0 and total["output_tokens"] > 0
    assert total["tokens_estimated"] is False  # echo-fixture reports usage itself
    # The observer from the same distribution saw the run (base_dir is the config's folder).
    counts = json.loads((tmp_path / "counts.json").read_text(encoding="utf-8"))
    assert counts["run.started"] == 1 and counts["run.finished"] == 1
    assert counts["llm.token"] == len(re.findall(r"\S+\s*|\s+", result["outputs"]["greet"]))


def test_fixture_provider_streams_through_the_python_api(venv_main: Venv, tmp_path: Path) -> None:
    config = echo_config(tmp_path)
    code = textwrap.dedent(
        """
        import asyncio, json, sys
        from amsha import ExecutionSession

        async def main(session):
            llm = session.llm()
            text = "".join([c.text async for c in llm.astream("async hello")])
            return text, (await llm.agenerate("agen")).text

        with ExecutionSession(sys.argv[1]) as session:
            llm = session.llm()
            out = {
                "generate": llm.generate("plain").text,
                "stream": "".join(c.text for c in llm.stream("one two three")),
                "async": asyncio.run(main(session)),
                "streaming": llm.provider.capabilities.streaming,
                "tokens": [e.text for e in session.run(inputs={"name": "Bo"}).stream() if e.kind == "llm.token"],
            }
        print(json.dumps(out))
        """
    )
    proc = venv_main.py(code, str(config))
    assert proc.returncode == 0, describe(proc)
    out = json.loads(proc.stdout)
    assert out["generate"] == PREFIX + "plain"
    assert out["stream"] == PREFIX + "one two three"
    assert out["async"] == [PREFIX + "async hello", PREFIX + "agen"]
    assert out["streaming"] is True
    assert len(out["tokens"]) > 1 and "".join(out["tokens"]).startswith(PREFIX)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"prefix": 5}, "provider.options.prefix: Input should be a valid string"),
        ({"colour": "red"}, "provider.options.colour: unknown key"),
    ],
    ids=["wrong-type", "unknown-key"],
)
def test_bad_provider_option_fails_at_session_creation(
    venv_main: Venv, tmp_path: Path, options: dict[str, Any], expected: str
) -> None:
    config = write_config(tmp_path / "bad.yaml", {"name": "echo-fixture", "options": options})
    proc = venv_main.amsha("run", str(config), "--input", "name=Ada", "--json")
    line = one_line_error(proc, 2)
    assert expected in line, line
    assert proc.stdout == ""  # no run was started
    check = venv_main.amsha("config", "check", str(config))
    assert expected in one_line_error(check, 2)
    # In Python: the constructor raises, with the key path in ``problems``.
    code = textwrap.dedent(
        """
        import sys
        from amsha import ExecutionSession
        from amsha.errors import ConfigError
        try:
            ExecutionSession(sys.argv[1])
        except ConfigError as exc:
            print(exc.problems[0][0])
        else:
            raise SystemExit("no ConfigError at session creation")
        """
    )
    py = venv_main.py(code, str(config))
    assert py.returncode == 0, describe(py)
    assert py.stdout.strip() == expected.split(":", maxsplit=1)[0]


def test_unknown_provider_lists_installed_provider_names(venv_main: Venv, tmp_path: Path) -> None:
    config = write_config(tmp_path / "unknown.yaml", {"name": "no-such-provider"})
    line = one_line_error(venv_main.amsha("run", str(config), "--input", "name=Ada"), 2)
    assert "provider.name" in line
    assert "unknown provider 'no-such-provider'" in line
    assert "installed providers: echo-fixture, scripted" in line  # not the incompatible plugin's
    # The plugin that failed to load is named: it may be the one that would have provided it.
    assert "fixture-broken" in line and "ImportError" in line


def test_incompatible_plugin_is_refused_only_when_selected(venv_main: Venv, tmp_path: Path) -> None:
    config = write_config(tmp_path / "future.yaml", {"name": "future-fixture"})
    line = one_line_error(venv_main.amsha("run", str(config), "--input", "name=Ada"), 2)
    assert "fixture-incompatible" in line
    assert "2.0" in line and PLUGIN_API_VERSION in line  # the plugin's API and the core's
    assert "amsha-fixture-incompatible" in line  # what to upgrade
    assert str(config) in line and "provider.name" in line  # where the config selects it
    # The same environment runs sessions that do not select it: the built-in provider ...
    scripted = write_config(tmp_path / "scripted.yaml", {"name": "scripted", "options": {"default": "built in"}})
    proc = venv_main.amsha("run", str(scripted), "--input", "name=Ada", "--json")
    assert proc.returncode == 0, describe(proc)
    assert json.loads(proc.stdout)["outputs"] == {"greet": "built in"}
    # ... and a third-party one.
    proc = venv_main.amsha("run", str(echo_config(tmp_path)), "--input", "name=Ada", "--json")
    assert proc.returncode == 0, describe(proc)
    assert json.loads(proc.stdout)["outputs"]["greet"].startswith(PREFIX)


def test_backend_modules_are_imported_only_when_selected(venv_main: Venv, tmp_path: Path) -> None:
    scripted = write_config(tmp_path / "scripted.yaml", {"name": "scripted"})
    echo = echo_config(tmp_path)
    code = textwrap.dedent(
        """
        import json, sys
        from amsha import ExecutionSession, load_plugins

        def loaded():
            return {name: name in sys.modules for name in (
                "amsha_fixture_good.plugin", "amsha_fixture_good.provider", "amsha_fixture_good.observer")}

        steps = {}
        load_plugins()
        steps["discovery"] = loaded()
        ExecutionSession(sys.argv[1]).close()
        steps["other session"] = loaded()
        with ExecutionSession(sys.argv[2]) as session:
            session.run(inputs={"name": "Ada"}).result(timeout=30)
        steps["selected"] = loaded()
        steps["frameworks"] = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[3].split(",")))
        print(json.dumps(steps))
        """
    )
    proc = venv_main.py(code, str(scripted), str(echo), ",".join(FRAMEWORKS))
    assert proc.returncode == 0, describe(proc)
    steps = json.loads(proc.stdout)
    lazy = {
        "amsha_fixture_good.plugin": True,
        "amsha_fixture_good.provider": False,
        "amsha_fixture_good.observer": False,
    }
    assert steps["discovery"] == lazy
    assert steps["other session"] == lazy
    assert steps["selected"]["amsha_fixture_good.provider"] is True
    assert steps["selected"]["amsha_fixture_good.observer"] is False
    assert steps["frameworks"] == []


# ---- loading controls -----------------------------------------------------------------------


@pytest.mark.parametrize("allow", ["amsha-fixture-good", "fixture-good"], ids=["distribution", "entry-point"])
def test_load_plugins_allowlist_limits_loading(venv_main: Venv, tmp_path: Path, allow: str) -> None:
    env = {"AMSHA_LOAD_PLUGINS": allow}
    data = plugins_json(venv_main, env)
    assert [row["name"] for row in data["plugins"]] == ["amsha", "fixture-good"]
    assert all(row["error"] is None for row in data["plugins"])
    text = venv_main.amsha("plugins", env=env)
    assert "broken on purpose" not in text.stdout + text.stderr
    # Unknown names no longer list the broken plugin, nor the incompatible one's provider.
    unknown = write_config(tmp_path / "unknown.yaml", {"name": "no-such-provider"})
    line = one_line_error(venv_main.amsha("run", str(unknown), "--input", "name=Ada", env=env), 2)
    assert "installed providers: echo-fixture, scripted" in line
    assert "fixture-broken" not in line
    proc = venv_main.amsha("run", str(echo_config(tmp_path)), "--input", "name=Ada", "--json", env=env)
    assert proc.returncode == 0, describe(proc)
    assert json.loads(proc.stdout)["outputs"]["greet"].startswith(PREFIX)


def test_disable_autoload_loads_only_builtins(venv_main: Venv, tmp_path: Path) -> None:
    env = {"AMSHA_DISABLE_PLUGIN_AUTOLOAD": "1"}
    data = plugins_json(venv_main, env)
    assert [row["name"] for row in data["plugins"]] == ["amsha"]
    assert data["conflicts"] == []
    line = one_line_error(venv_main.amsha("run", str(echo_config(tmp_path)), "--input", "name=Ada", env=env), 2)
    assert "unknown provider 'echo-fixture'; installed providers: scripted" in line
    scripted = write_config(tmp_path / "scripted.yaml", {"name": "scripted", "options": {"default": "ok"}})
    proc = venv_main.amsha("run", str(scripted), "--input", "name=Ada", "--json", env=env)
    assert proc.returncode == 0, describe(proc)


def test_a_session_in_the_fixture_venv_imports_no_framework(venv_main: Venv) -> None:
    code = textwrap.dedent(
        """
        import json, sys
        frameworks = set(sys.argv[1].split(","))
        import amsha
        after_import = sorted({m.split(".")[0] for m in sys.modules} & frameworks)
        from amsha import ExecutionSession
        session = ExecutionSession()
        names = [p.name for p in session.plugins.plugins]
        session.close()
        after_session = sorted({m.split(".")[0] for m in sys.modules} & frameworks)
        print(json.dumps({"import": after_import, "session": after_session, "plugins": names}))
        """
    )
    proc = venv_main.py(code, ",".join(FRAMEWORKS))
    assert proc.returncode == 0, describe(proc)
    out = json.loads(proc.stdout)
    assert out["import"] == [] and out["session"] == []
    assert sorted(out["plugins"]) == ["amsha", "fixture-broken", "fixture-good", "fixture-incompatible"]


# ---- duplicates -----------------------------------------------------------------------------


def test_duplicate_provider_name_is_a_clear_error_naming_both_plugins(venv_dup: Venv, tmp_path: Path) -> None:
    proc = venv_dup.amsha("run", str(echo_config(tmp_path)), "--input", "name=Ada", "--json")
    line = one_line_error(proc, 2)
    assert "provider 'echo-fixture' is registered by more than one plugin" in line
    assert "fixture-good (amsha-fixture-good)" in line and "fixture-dup (amsha-fixture-dup)" in line
    assert "AMSHA_LOAD_PLUGINS" in line
    # A session that does not select the contested name is not affected.
    scripted = write_config(tmp_path / "scripted.yaml", {"name": "scripted", "options": {"default": "fine"}})
    ok = venv_dup.amsha("run", str(scripted), "--input", "name=Ada", "--json")
    assert ok.returncode == 0, describe(ok)
    assert json.loads(ok.stdout)["outputs"] == {"greet": "fine"}


def test_plugins_command_reports_the_conflict(venv_dup: Venv) -> None:
    data = plugins_json(venv_dup)
    assert len(data["conflicts"]) == 1
    conflict = data["conflicts"][0]
    assert "echo-fixture" in conflict and "fixture-good" in conflict and "fixture-dup" in conflict
    rows = rows_by_name(data)
    assert rows["fixture-dup"]["distribution"] == "amsha-fixture-dup"
    assert ("provider", "echo-fixture") in {(r["kind"], r["name"]) for r in rows["fixture-dup"]["registers"]}
    text = venv_dup.amsha("plugins")
    assert text.returncode == 0, describe(text)
    conflicts = [line for line in text.stdout.splitlines() if line.startswith("CONFLICT: ")]
    assert len(conflicts) == 1 and "echo-fixture" in conflicts[0]


@pytest.mark.parametrize(
    ("allow", "answer"),
    [("fixture-good", PREFIX), ("amsha-fixture-dup", "answered by amsha-fixture-dup")],
    ids=["keep-good", "keep-dup"],
)
def test_the_allowlist_resolves_a_duplicate(venv_dup: Venv, tmp_path: Path, allow: str, answer: str) -> None:
    """The duplicate error's advice works, and picks the plugin named."""
    env = {"AMSHA_LOAD_PLUGINS": allow}
    assert plugins_json(venv_dup, env)["conflicts"] == []
    proc = venv_dup.amsha("run", str(echo_config(tmp_path)), "--input", "name=Ada", "--json", env=env)
    assert proc.returncode == 0, describe(proc)
    output = json.loads(proc.stdout)["outputs"]["greet"]
    assert output == answer or (answer == PREFIX and output.startswith(PREFIX) and "Ada" in output), output
