"""A canary API key is planted, used for real (the server insists on it), made to fail (the
server echoes it in an error body), and then searched for in every event, log record, error
text and repr, run record, state, store file, observer file and terminal output."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from amsha import LLM, ExecutionSession
from amsha.errors import AuthenticationError, RunFailedError
from amsha_openai.testing import OpenAIServer, Reply
from conftest import logged


def _reprs(error: BaseException | None) -> str:
    """str and repr of an error and of every error chained to it."""
    out = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        out += [str(error), repr(error), repr(error.args)]
        if hasattr(error, "to_dict"):
            out.append(json.dumps(error.to_dict(), default=str))
        error = error.__cause__ or error.__context__
    return "\n".join(out)


def test_the_key_never_leaves_the_request(
    openai_server: OpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    canary = f"sk-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("CANARY_OPENAI_KEY", canary)
    monkeypatch.setenv("OPENAI_LOG", "debug")  # the SDK's own debug logging, at its most talkative
    caplog.set_level(logging.DEBUG)
    openai_server.api_key = canary
    provider_cfg = openai_server.provider_config(api_key_env="CANARY_OPENAI_KEY", extra_headers={"X-Trace": "on"})
    config: dict[str, Any] = {
        "provider": provider_cfg,
        "state": {"name": "file", "options": {"path": str(tmp_path / "store")}},
        "observers": [{"name": "jsonl", "options": {"path": str(tmp_path / "events.jsonl")}}, "console"],
        "agents": {"writer": {"role": "Writer", "goal": "Write"}},
        "tasks": {
            "first": {"description": "Say something.", "agent": "writer"},
            "second": {"description": "Say more.", "agent": "writer", "context": ["first"]},
        },
    }
    texts: list[str] = []
    with ExecutionSession(config) as session:
        # 1. A run that works: the key really is sent (the server checks it).
        openai_server.script(Reply("all good here"))
        ok = session.run(["first"])
        result = ok.result(timeout=30)
        assert result.outputs == {"first": "all good here"}
        assert openai_server.requests[-1].headers["authorization"] == f"Bearer {canary}"
        # 2. A run that fails with the key echoed back by the server.
        openai_server.script(Reply.fail(401, f"Incorrect API key provided: {canary}", code="invalid_api_key"))
        failed = session.run(["second"], state=result.state)
        with pytest.raises(RunFailedError) as info:
            failed.result(timeout=30)
        assert isinstance(info.value.cause, AuthenticationError)
        assert "Incorrect API key provided: ***" in str(info.value)
        texts += [_reprs(info.value), _reprs(info.value.cause)]
        # 3. The LLM alone, sync and streamed, failing the same way.
        openai_server.script(Reply.fail(401, f"bad key {canary}", times=2))
        llm, log = logged(session.llm().provider)
        for call in (lambda: llm.generate("hi"), lambda: list(llm.stream("hi"))):
            with pytest.raises(AuthenticationError) as direct:
                call()
            texts.append(_reprs(direct.value))
        texts.append(json.dumps([e.to_dict() for e in log.events], default=str))
        session.flush_observers()
        for handle in (ok, failed):
            texts.append(json.dumps([e.to_dict() for e in handle.stream()], default=str))
            texts.append(handle.to_json())
            texts.append(json.dumps(session.store.get_run(handle.run_id).to_dict(), default=str))
        provider = session.llm().provider
        texts += [repr(provider), repr(session.llm()), repr(provider.options), provider.options.model_dump_json()]
        texts.append(json.dumps(session.config.model_dump(mode="json")))
        texts.append(json.dumps(result.state.to_dict() if hasattr(result.state, "to_dict") else result.state.data))

    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.args) for r in caplog.records]
    out = capsys.readouterr()
    texts += [out.out, out.err]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 4  # the store's runs, events and states, and the jsonl observer file
    texts += [p.read_bytes().decode("utf-8", "replace") for p in files]

    assert any("Incorrect API key provided" in t for t in texts)  # the failure was recorded...
    assert any(r.name.startswith(("openai", "httpx")) for r in caplog.records)  # ...and the SDK logged
    leaks = [t[:200] for t in texts if canary in t]
    assert not leaks, leaks


def test_the_key_is_not_in_the_provider_or_its_options(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = f"sk-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("CANARY_OPENAI_KEY", canary)
    provider = openai_server.provider(api_key_env="CANARY_OPENAI_KEY")
    llm = LLM(provider)
    llm.generate("hi")
    for text in (
        repr(provider),
        repr(llm),
        repr(provider.options),
        str(vars(provider.options)),
        str(provider.capabilities),
    ):
        assert canary not in text
    provider.close()
