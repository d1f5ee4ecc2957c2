"""The shipped test server itself, as any client sees it (here: the bare SDK and urllib)."""

from __future__ import annotations

import json
import time
import urllib.request

import openai
import pytest
from amsha_openai.testing import OpenAIServer, Reply


def bare_client(server: OpenAIServer, key: str = "sk-anything") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0)


def test_listens_on_loopback_and_lists_models(openai_server: OpenAIServer) -> None:
    assert openai_server.base_url.startswith("http://127.0.0.1:") and openai_server.base_url.endswith("/v1")
    openai_server.models = {"b-model", "a-model"}
    with bare_client(openai_server) as client:
        assert [m.id for m in client.models.list()] == ["a-model", "b-model"]


def test_sse_is_sent_chunk_by_chunk(openai_server: OpenAIServer) -> None:
    openai_server.script(Reply("one two three", chunk_delay_s=0.1))
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}).encode()
    request = urllib.request.Request(f"{openai_server.base_url}/chat/completions", body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Transfer-Encoding"] == "chunked"
        arrivals = []
        lines = []
        for line in response:
            if line.startswith(b"data: "):
                arrivals.append(time.perf_counter())
                lines.append(line[6:].strip())
    assert lines[-1] == b"[DONE]"
    assert [json.loads(x)["choices"][0]["delta"].get("content") for x in lines[1:4]] == ["one ", "two ", "three"]
    assert arrivals[3] - arrivals[1] >= 0.18  # really spread out, not one buffered body
    assert "usage" not in json.loads(lines[1])  # only with stream_options.include_usage


def test_scripted_replies_match_and_repeat(openai_server: OpenAIServer) -> None:
    openai_server.script(Reply("for cats", match="cat", times=2), "plain")
    openai_server.default = Reply("fallback")
    with bare_client(openai_server) as client:

        def ask(text: str) -> str:
            completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
            return completion.choices[0].message.content or ""

        assert [ask("dog"), ask("cat"), ask("cat"), ask("cat"), ask("dog")] == [
            "plain",
            "for cats",
            "for cats",
            "fallback",
            "fallback",
        ]
    assert openai_server.attempts == 5 and [r.outcome for r in openai_server.requests] == ["completed"] * 5


def test_api_key_check_masks_the_key_it_was_given(openai_server: OpenAIServer) -> None:
    openai_server.api_key = "sk-right-key-0000"
    with bare_client(openai_server, "sk-wrong-key-1234") as client:
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert "sk-wrong*****1234" in str(info.value) and "sk-wrong-key-1234" not in str(info.value)
    assert openai_server.requests[0].headers["authorization"] == "Bearer sk-wrong-key-1234"
    with bare_client(openai_server, "sk-right-key-0000") as client:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


def test_latency_and_reset(openai_server: OpenAIServer) -> None:
    openai_server.latency_s = 0.2
    with bare_client(openai_server) as client:
        started = time.perf_counter()
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert time.perf_counter() - started >= 0.2
    openai_server.reset()
    assert openai_server.requests == [] and openai_server.attempts == 0


def test_stop_closes_open_connections() -> None:
    server = OpenAIServer().start()
    server.script(Reply("a b c d e f", chunk_delay_s=5))
    client = bare_client(server)
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    next(iter(stream))
    started = time.perf_counter()
    server.stop()
    assert time.perf_counter() - started < 2
    with pytest.raises(Exception) as info:  # openai 3.x wraps it in APIConnectionError, 2.x does not
        list(stream)
    assert "RemoteProtocolError" in repr(info.value) or isinstance(info.value, openai.APIConnectionError)
    client.close()
