"""Sessions: each distribution installed alone into a fresh environment and tested there,
the cross-package tests, lint, types, the demo and the benchmarks.

``nox`` runs the default set (the whole test suite, as CI does); ``nox -s bench`` prints the
benchmark figures; ``nox -s demo`` runs the quickstart; ``nox -s faults`` the fault suite.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
nox.options.default_venv_backend = "uv|virtualenv"
# Every session runs by default (as CI does) except those marked ``default=False`` (bench).
nox.options.error_on_missing_interpreters = True

CORE = "./amsha-core"
DISTRIBUTED = ["dask[distributed]>=2024.1", "ray>=2.9"]
PLUGINS = [
    "amsha-provider-openai",
    "amsha-orchestrator-crewai",
    "amsha-orchestrator-langgraph",
    "amsha-state-sqlite",
    "amsha-state-postgres",
    "amsha-observer-opentelemetry",
    "amsha-ui",
]
# Frameworks phone home unless told not to; tests and demos run offline.
OFFLINE_ENV = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_DISABLE_VERSION_CHECK": "true",
    "LANGCHAIN_TRACING_V2": "false",
    "UV_COMPILE_BYTECODE": "1",
}


def _env(session: nox.Session) -> None:
    session.env.update(OFFLINE_ENV)
    session.env.pop("AMSHA_LOAD_PLUGINS", None)
    session.env.pop("AMSHA_DISABLE_PLUGIN_AUTOLOAD", None)


@nox.session
def core(session: nox.Session) -> None:
    """amsha-core alone with its declared dependencies: its own tests."""
    _env(session)
    session.install(f"{CORE}[test]")
    session.run(
        "python",
        "-c",
        "import amsha, sys; assert not [m for m in sys.modules if m.split('.')[0] in ('openai', 'crewai', 'langchain_core', 'langgraph')]",
    )
    session.run("pytest", "amsha-core/tests", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
@nox.parametrize("dist", PLUGINS, ids=[p.removeprefix("amsha-") for p in PLUGINS])
def plugin(session: nox.Session, dist: str) -> None:
    """One plugin with amsha-core and nothing else: smoke import, discovery, its tests."""
    _env(session)
    session.install(CORE, f"./{dist}[test]")
    module = {
        "amsha-provider-openai": "amsha_openai",
        "amsha-orchestrator-crewai": "amsha_crewai",
        "amsha-orchestrator-langgraph": "amsha_langgraph",
        "amsha-state-sqlite": "amsha_sqlite",
        "amsha-state-postgres": "amsha_postgres",
        "amsha-observer-opentelemetry": "amsha_otel",
        "amsha-ui": "amsha_ui",
    }[dist]
    session.run("python", "-c", f"import {module}.plugin")
    session.run("amsha", "plugins")
    session.run("pytest", f"{dist}/tests", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def example_plugin(session: nox.Session) -> None:
    """The third-party example plugin with amsha-core alone: its contract tests, then
    ``amsha run`` with a config that selects it."""
    _env(session)
    session.install(CORE, "./examples/third-party-plugin[test]")
    session.run("amsha", "plugins")
    session.run("pytest", "examples/third-party-plugin/tests", "-q", "-p", "no:cacheprovider", *session.posargs)
    session.run("amsha", "run", "examples/third-party-plugin/amsha.yaml", "--input", "name=Polly")


@nox.session
def kit_mutations(session: nox.Session) -> None:
    """The contract kit tests itself: reference plugins of every kind pass their suites, and
    each planted bug (kit/mutants.py) fails them with ``contract:`` messages; prints the score."""
    _env(session)
    session.install(CORE, "httpx>=0.27", "pytest>=8")
    session.run("python", "kit/run_mutations.py", *session.posargs)


@nox.session
def cross(session: nox.Session) -> None:
    """Cross-package tests: fresh environments with chosen plugins, end to end by CLI."""
    _env(session)
    # Real distributed engines for the run-control tests: Dask (LocalCluster with worker
    # processes) and Ray (local, worker processes); the tests start and stop them. The
    # langgraph plugin's test extra brings LangChain's standard suites, which
    # tests/test_chat_model_openai.py runs against the local Chat Completions server.
    session.install(
        f"{CORE}[test]", *[f"./{p}[test]" if p.endswith("langgraph") else f"./{p}" for p in PLUGINS], *DISTRIBUTED
    )
    session.run("pytest", "tests", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def faults(session: nox.Session) -> None:
    """The fault suite (``faults/``): a chaos Chat Completions server through ``LLM``, sessions
    and ``amsha run``; hypothesis over configs, and over states and run inputs on every
    built-in store; a canary key searched for in every artifact; SIGKILL and SIGINT rounds on
    writers. One JSON line per area (``area``, ``cases``, ``held``, ``broke``, ``lost``); fails
    unless broke and lost are 0. ``nox -s faults -- AREA...`` runs only those areas."""
    _env(session)
    session.install(
        CORE, "./amsha-provider-openai", "./amsha-state-sqlite", "./amsha-observer-opentelemetry", "hypothesis>=6.100"
    )
    session.run("python", "faults/run.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, with the core barred from importing any framework."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session
def types(session: nox.Session) -> None:
    """mypy, strict on the core package and on amsha-ui."""
    session.install(CORE, "./amsha-ui", "mypy>=1.10", "types-PyYAML", "pytest")
    session.run("mypy", "amsha-core/src/amsha", "amsha-ui/src/amsha_ui")


@nox.session
def demo(session: nox.Session) -> None:
    """The quickstart: two agents, two tasks, streamed, with metrics; then its replay."""
    _env(session)
    session.install(CORE)
    config = "examples/quickstart/amsha.yaml"
    session.run("amsha", "run", config, "--input", "topic=tide pools")
    session.run("amsha", "runs", "list", "--config", config, "--limit", "3")


@nox.session
def crewai_example(session: nox.Session) -> None:
    """The CrewAI example (examples/crewai): a crew from CrewAI's YAML files with a tool,
    streamed, then in the background."""
    _env(session)
    session.install(CORE, "./amsha-orchestrator-crewai")
    session.run("python", "examples/crewai/run.py", "--topic", "tide pools")
    session.run("python", "examples/crewai/run.py", "--topic", "tide pools", "--background")


@nox.session
def langgraph_example(session: nox.Session) -> None:
    """The LangGraph example (examples/langgraph): a registry graph streamed, then a client
    graph paused for a human and resumed from the store in a new session."""
    _env(session)
    session.install(CORE, "./amsha-orchestrator-langgraph")
    session.run("python", "examples/langgraph/run.py")


@nox.session(default=False)
def ui_screenshots(session: nox.Session) -> None:
    """The README's screenshots of amsha ui (runs list, a run's timeline), from the
    quickstart's runs, in Debian's Chromium: writes amsha-ui/docs/runs.png and run.png."""
    _env(session)
    session.install(CORE, "./amsha-ui[test]")
    session.run("python", "amsha-ui/docs/screenshots.py", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with peers; one JSON line per figure. The peers are listed in
    ``bench/requirements.txt``."""
    _env(session)
    session.install(CORE, *[f"./{p}" for p in PLUGINS], "-r", "bench/requirements.txt", *DISTRIBUTED)
    session.run("python", "bench/run.py", *session.posargs, env={"PYTHONDONTWRITEBYTECODE": ""})


if os.environ.get("CI"):
    nox.options.reuse_venv = "no"


# The two openai SDK worlds: CrewAI pins openai<3 and pydantic<2.13; without it a user gets
# openai 3.x and the newest pydantic.
OPENAI_SDKS = {"openai2": ["openai>=2,<3", "pydantic<2.13"], "openai3": ["openai>=3,<4"]}


@nox.session
@nox.parametrize("sdk", list(OPENAI_SDKS), ids=list(OPENAI_SDKS))
def openai_sdk(session: nox.Session, sdk: str) -> None:
    """amsha-provider-openai with amsha-core and each major of the openai SDK: its tests."""
    _env(session)
    session.install(CORE, "./amsha-provider-openai[test]", *OPENAI_SDKS[sdk])
    versions = "import openai, pydantic; print('openai', openai.__version__, 'pydantic', pydantic.VERSION)"
    session.run("python", "-c", versions)
    session.run("pytest", "amsha-provider-openai/tests", "-q", "-p", "no:cacheprovider", *session.posargs)
