"""``import amsha`` stays cheap and framework-free; the public API is re-exported."""

from __future__ import annotations

import subprocess
import sys

import amsha

FRAMEWORKS = ("openai", "crewai", "langchain", "langchain_core", "langgraph", "litellm")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {m.split(".")[0] for m in out.stdout.split()}


def test_import_amsha_imports_no_framework_and_not_even_pydantic() -> None:
    loaded = _modules_after("import amsha")
    assert not loaded & set(FRAMEWORKS)
    assert "pydantic" not in loaded and "pluggy" not in loaded


def test_a_whole_run_imports_no_framework() -> None:
    code = (
        "from amsha import ExecutionSession\n"
        "s = ExecutionSession({'agents': {'a': {'role': 'r', 'goal': 'g'}}, 'tasks': {'t': {'description': 'd', 'agent': 'a'}}})\n"
        "s.run().result(); s.close()"
    )
    assert not _modules_after(code) & set(FRAMEWORKS)


def test_every_public_name_resolves() -> None:
    for name in amsha.__all__:
        assert getattr(amsha, name) is not None, name


def test_import_amsha_does_not_load_the_testing_kit() -> None:
    loaded = _modules_after("import amsha")
    assert "pytest" not in loaded and "http" not in loaded


def test_the_testing_kit_and_its_http_peer_import_no_framework_nor_http_client() -> None:
    loaded = _modules_after("import amsha.testing\nfrom amsha.testing import HTTPPeer\nHTTPPeer().start().stop()")
    assert not loaded & {*FRAMEWORKS, "httpx", "httpcore", "requests", "aiohttp"}
