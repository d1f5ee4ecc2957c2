"""Servers that misbehave: keep-alive only, too slow overall, HTML or bad JSON where an
event stream belongs, surrogate pairs split across events, keys with whitespace, keys
echoed back masked. Each ends in a typed error, promptly, saying what came back."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from amsha import ExecutionSession
from amsha.errors import ConfigError, ProviderError, ProviderTimeoutError, StreamInterruptedError
from amsha_openai.testing import OpenAIServer, Reply
from conftest import FAST, logged


def _canary() -> str:
    return f"sk-{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"


def _clean(text: str, key: str) -> None:
    for fragment in (key, key[:8], key[-8:], f"{key[:8]}****"):
        assert fragment not in text


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_keep_alive_only_stream_times_out(openai_server: OpenAIServer, mode: str) -> None:
    openai_server.script(Reply(keepalive_s=0.1), Reply(keepalive_s=0.1))
    provider = openai_server.provider(timeout_s=0.5)
    llm, _ = logged(provider, FAST.model_copy(update={"max_retries": 1}))
    started = time.perf_counter()

    async def consume() -> None:
        async for _ in llm.astream("hi"):
            pass

    with pytest.raises(ProviderTimeoutError, match="idle_timeout_s"):
        if mode == "sync":
            list(llm.stream("hi"))
        else:
            asyncio.run(consume())
    # Two attempts of 0.5 s idle each (the keep-alives every 0.1 s reset no deadline).
    assert time.perf_counter() - started < 3
    assert openai_server.attempts == 2
    provider.close()


def test_idle_timeout_is_its_own_option(openai_server: OpenAIServer) -> None:
    openai_server.script(Reply(keepalive_s=0.05, keepalive_for_s=0.4, text="late but fine"))
    provider = openai_server.provider(timeout_s=0.2, idle_timeout_s=2)
    llm, _ = logged(provider)
    assert "".join(c.text for c in llm.stream("hi")) == "late but fine"
    provider.close()


def test_a_stream_past_its_total_deadline_fails(openai_server: OpenAIServer) -> None:
    openai_server.script(Reply(text="one two three four five six seven eight", chunk_delay_s=0.15))
    provider = openai_server.provider(total_timeout_s=0.4)
    llm, _ = logged(provider)
    started = time.perf_counter()
    with pytest.raises(StreamInterruptedError, match="total_timeout_s") as info:
        list(llm.stream("hi"))
    assert time.perf_counter() - started < 1.5
    assert info.value.partial_text.startswith("one")
    provider.close()


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (Reply(raw_body=b"<html><title>Sign in</title></html>"), "text/html"),
        (Reply(raw_body=b'{"ok": true}', content_type="application/json"), "application/json"),
    ],
    ids=["html", "json"],
)
def test_a_stream_request_answered_without_an_event_stream(
    openai_server: OpenAIServer, reply: Reply, says: str
) -> None:
    openai_server.script(reply, reply, reply)
    provider = openai_server.provider()
    llm, _ = logged(provider)
    with pytest.raises(ProviderError) as info:
        list(llm.stream("hi"))
    text = str(info.value)
    assert says in text and "HTTP 200" in text and openai_server.base_url in text and "base_url" in text
    assert reply.raw_body is not None and reply.raw_body.decode()[:10] in text
    assert info.value.retryable is False and openai_server.attempts == 1
    provider.close()


def test_the_first_bytes_shown_are_scrubbed(openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    key = _canary()
    monkeypatch.setenv("FAULT_KEY", key)
    openai_server.script(Reply(raw_body=f"<p>your key {key} is wrong</p>".encode()))
    provider = openai_server.provider(api_key_env="FAULT_KEY")
    llm, _ = logged(provider)
    with pytest.raises(ProviderError) as info:
        list(llm.stream("hi"))
    assert "your key ***" in str(info.value)
    _clean(str(info.value) + repr(info.value) + repr(info.value.args), key)
    provider.close()


@pytest.mark.parametrize("payload", [b'{"choices": [', b"not json", b'{"choices": [{"delta": {"content": "x"}'])
def test_an_event_that_is_not_json_is_described_and_not_retried(openai_server: OpenAIServer, payload: bytes) -> None:
    openai_server.script(Reply(raw_events=[payload]), Reply(raw_events=[payload]))
    provider = openai_server.provider()
    llm, _ = logged(provider)
    with pytest.raises(ProviderError, match="not JSON") as info:
        list(llm.stream("hi"))
    assert payload.decode()[:6] in str(info.value) and info.value.retryable is False
    assert openai_server.attempts == 1
    provider.close()


def test_html_to_a_plain_request_is_described(openai_server: OpenAIServer) -> None:
    openai_server.script(Reply(raw_body=b"<html>gateway</html>"))
    provider = openai_server.provider()
    llm, _ = logged(provider)
    with pytest.raises(ProviderError, match="gateway") as info:
        llm.generate("hi")
    assert "base_url" in str(info.value) and openai_server.attempts == 1
    provider.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_surrogate_pair_split_across_events_is_one_character(openai_server: OpenAIServer, mode: str) -> None:
    openai_server.script(Reply(chunks=["smile \ud83d", "\ude00 and ", "\ud83d", "\udc4d!"]))
    provider = openai_server.provider()
    llm, log = logged(provider)

    async def collect() -> list[str]:
        return [c.text async for c in llm.astream("hi")]

    pieces = [c.text for c in llm.stream("hi")] if mode == "sync" else asyncio.run(collect())
    assert "".join(pieces) == "smile 😀 and 👍!"
    for piece in pieces:
        piece.encode("utf-8")  # no lone surrogate in any piece
    assert "".join(e.text for e in log.events) == "smile 😀 and 👍!"
    provider.close()


def test_a_key_with_a_trailing_newline_is_refused_naming_the_variable(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    key = _canary()
    monkeypatch.setenv("NEWLINE_KEY", key + "\n")
    config = {"provider": openai_server.provider_config(api_key_env="NEWLINE_KEY")}
    with pytest.raises(ConfigError) as info:
        ExecutionSession(config)
    assert "NEWLINE_KEY" in str(info.value) and "provider.options.api_key_env" in str(info.value)
    _clean(str(info.value), key)
    assert openai_server.attempts == 0


def test_an_openai_style_masked_key_is_scrubbed(openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    key = _canary()
    monkeypatch.setenv("MASKED_KEY", key)
    openai_server.api_key = "sk-the-right-one-0000000000"
    with ExecutionSession({"provider": openai_server.provider_config(api_key_env="MASKED_KEY")}) as session:
        llm, log = logged(session.llm().provider)
        with pytest.raises(ProviderError) as info:
            llm.generate("hi")
    text = str(info.value) + repr(info.value.args) + str([e.to_dict() for e in log.events])
    assert "Incorrect API key provided: ***" in text
    _clean(text, key)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_plain_answer_dripped_past_its_total_deadline_fails(openai_server: OpenAIServer, mode: str) -> None:
    openai_server.script(Reply("a long enough answer to drip", drip_s=0.05), Reply("fast"))
    provider = openai_server.provider(timeout_s=1, total_timeout_s=0.5)
    llm, _ = logged(provider, FAST.model_copy(update={"max_retries": 1}))
    started = time.perf_counter()
    text = llm.generate("hi").text if mode == "sync" else asyncio.run(llm.agenerate("hi")).text
    # The drip (each piece well within timeout_s) outlasts the total deadline: retried.
    assert text == "fast" and openai_server.attempts == 2
    assert time.perf_counter() - started < 2
    provider.close()


def test_a_plain_answer_within_its_total_deadline(openai_server: OpenAIServer) -> None:
    openai_server.script(Reply("quick", drip_s=0.001))
    provider = openai_server.provider(total_timeout_s=5)
    llm, _ = logged(provider)
    response = llm.generate("hi")
    assert response.text == "quick" and response.usage is not None and not response.usage.estimated
    provider.close()
