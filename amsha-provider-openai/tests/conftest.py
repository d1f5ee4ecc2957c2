"""Shared helpers: every test talks to a real local server (``openai_server``, the fixture this
distribution ships through its ``pytest11`` entry point) with the real ``openai`` SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from amsha import LLM, RetryConfig
from amsha.events import RunEventLog
from amsha.llm import CallContext
from amsha_openai import OpenAIProvider
from amsha_openai.testing import OpenAIServer

#: Retry quickly in tests; two retries = at most three HTTP attempts.
FAST = RetryConfig(max_retries=2, initial_backoff_s=0.001, max_backoff_s=0.002)


def logged(provider: Any, retry: RetryConfig = FAST) -> tuple[LLM, RunEventLog]:
    """An LLM over ``provider`` whose events land in a fresh run log."""
    log = RunEventLog("run-test")
    return LLM(provider, retry=retry).bind(CallContext(log, "run-test", task="t", agent="a")), log


@pytest.fixture
def provider(openai_server: OpenAIServer) -> Iterator[OpenAIProvider]:
    """An OpenAIProvider on the test server (no key needed: base_url is set)."""
    p = openai_server.provider()
    yield p
    p.close()


@pytest.fixture(autouse=True)
def _no_ambient_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's OpenAI variables must not change what is tested."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_LOG"):
        monkeypatch.delenv(name, raising=False)
