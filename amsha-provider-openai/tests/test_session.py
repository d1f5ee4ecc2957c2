"""Provider ``openai`` selected by config in an ExecutionSession: options validated, runs
through the ``direct`` orchestrator with reported usage, tool round trips, structured output,
retry policy from config, and the errors a user sees when something is missing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from amsha import LLM, ExecutionSession
from amsha.errors import ConfigError, NotFoundError, RunFailedError
from amsha_openai import OpenAIProvider
from amsha_openai.testing import OpenAIServer, Reply


def config(server: OpenAIServer, **provider: Any) -> dict[str, Any]:
    section = server.provider_config()
    section.update(provider)
    return {
        "provider": section,
        "agents": {"analyst": {"role": "Analyst", "goal": "Answer precisely", "tools": ["lookup"]}},
        "tools": {"lookup": "test_session:lookup"},
        "tasks": {
            "answer": {"description": "How many people live in {city}?", "agent": "analyst"},
            "facts": {
                "description": "Facts about {city} as JSON.",
                "agent": "analyst",
                "output_schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "people": {"type": "integer"}},
                    "required": ["city", "people"],
                },
            },
        },
    }


def lookup(city: str) -> str:
    """Look up a city's population."""
    return json.dumps({"city": city, "people": 4397073})


def test_a_run_with_a_tool_round_trip_and_structured_output(openai_server: OpenAIServer) -> None:
    openai_server.script(
        Reply(tool_calls=[{"id": "call_1", "name": "lookup", "arguments": {"city": "Nairobi"}}], argument_chunk=4),
        Reply("About 4.4 million people live in Nairobi.", usage={"cached_tokens": 5}),
        Reply('{"city": "Nairobi", "people": 4397073}'),
    )
    with ExecutionSession(config(openai_server)) as session:
        handle = session.run(["answer", "facts"], inputs={"city": "Nairobi"})
        text = "".join(handle.stream_text())
        result = handle.result(timeout=30)
    assert result.outputs == {
        "answer": "About 4.4 million people live in Nairobi.",
        "facts": {"city": "Nairobi", "people": 4397073},
    }
    assert "4.4 million" in text
    # The tool result went back to the server as a tool message answering the call.
    second = openai_server.requests[1].body
    assert second["messages"][-2]["tool_calls"][0]["id"] == "call_1"
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": lookup("Nairobi")}
    assert second["tools"][0]["function"]["name"] == "lookup"
    assert openai_server.requests[2].body["response_format"]["json_schema"]["name"] == "facts"
    total = result.metrics.to_dict()["total"]
    assert total["calls"] == 3 and total["tokens_estimated"] is False
    assert total["input_tokens"] > 0 and total["output_tokens"] > 0
    finished = [e for e in handle.stream() if e.kind == "llm.finished"]
    assert finished[1].data["usage"]["cached_input_tokens"] == 5
    assert all(e.data["usage"]["estimated"] is False for e in finished)


def test_provider_retry_section_and_max_retries_option(openai_server: OpenAIServer) -> None:
    fast = {"initial_backoff_s": 0.001, "max_backoff_s": 0.001}
    openai_server.script(Reply.fail(503, "busy", times=100))
    cfg = config(openai_server)
    cfg["retry"] = {"max_retries": 1, **fast}
    cfg["provider"]["options"]["max_retries"] = 3
    with ExecutionSession(cfg) as session:
        assert session.llm().retry.max_retries == 3 and session.llm().retry.initial_backoff_s == 0.001
        with pytest.raises(RunFailedError):
            session.run(["answer"], inputs={"city": "x"}).result(timeout=30)
    assert openai_server.attempts == 4
    cfg["provider"]["retry"] = {"max_retries": 0}  # the config's own section for this provider wins
    openai_server.reset()
    openai_server.script(Reply.fail(503, "busy", times=100))
    with ExecutionSession(cfg) as session:
        with pytest.raises(RunFailedError):
            session.run(["answer"], inputs={"city": "x"}).result(timeout=30)
    assert openai_server.attempts == 1


def test_a_bad_model_fails_the_run_naming_the_model(openai_server: OpenAIServer) -> None:
    openai_server.models = {"gpt-real"}
    with ExecutionSession(config(openai_server, model="gpt-imaginary")) as session:
        with pytest.raises(RunFailedError) as info:
            session.run(["answer"], inputs={"city": "x"}).result(timeout=30)
    assert isinstance(info.value.cause, NotFoundError)
    assert "gpt-imaginary" in str(info.value) and "answer" in str(info.value)
    assert openai_server.attempts == 1


def test_llms_entries_share_the_provider_options(openai_server: OpenAIServer) -> None:
    cfg = config(openai_server)
    cfg["llms"] = {"small": "tiny-model", "warm": {"options": {"temperature": 0.9}}}
    with ExecutionSession(cfg) as session:
        session.llm("small").generate("hi")
        session.llm("warm").generate("hi")
    assert openai_server.requests[0].body["model"] == "tiny-model"
    assert openai_server.requests[1].body["model"] == "test-model"
    assert openai_server.requests[1].body["temperature"] == 0.9


# ---- config errors --------------------------------------------------------------------------


def test_unknown_option_is_an_error_naming_the_key(openai_server: OpenAIServer) -> None:
    cfg = config(openai_server)
    cfg["provider"]["options"]["timout_s"] = 5
    with pytest.raises(ConfigError, match=r"provider\.options\.timout_s"):
        ExecutionSession(cfg)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"base_url": "localhost:8000/v1"}, "base_url"),
        ({"extra_headers": {"Authorization": "Bearer x"}}, "extra_headers"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_bad_option_values(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"provider\.options\.{key}"):
        ExecutionSession({"provider": {"name": "openai", "model": "m", "options": options}})


def test_a_missing_model_is_an_error_naming_the_key(openai_server: OpenAIServer) -> None:
    cfg = config(openai_server)
    del cfg["provider"]["model"]
    with ExecutionSession(cfg) as session:
        with pytest.raises(ConfigError, match=r"provider\.model"):
            session.llm()
    cfg["provider"]["options"]["model"] = "from-options"
    with ExecutionSession(cfg) as session:
        session.llm().generate("hi")
    assert openai_server.requests[-1].body["model"] == "from-options"


def test_openai_without_a_key_is_an_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ExecutionSession({"provider": {"name": "openai", "model": "gpt-4o-mini"}}) as session:
        with pytest.raises(ConfigError) as info:
            session.llm()
    assert "provider.options.api_key_env" in str(info.value) and "'OPENAI_API_KEY' is not set" in str(info.value)
    with pytest.raises(ConfigError, match=r"llms\.x\.options\.api_key_env"):
        OpenAIProvider({"api_key_env": "NO_SUCH_VARIABLE_HERE"}, model="m", key="llms.x")


def test_a_local_server_needs_no_key(openai_server: OpenAIServer) -> None:
    provider = OpenAIProvider({"base_url": openai_server.base_url, "api_key_env": "NO_SUCH_VARIABLE_HERE"}, model="m")
    LLM(provider).generate("hi")
    assert openai_server.requests[-1].headers["authorization"] == "Bearer amsha-no-key"
    provider.close()


def test_openai_base_url_from_the_environment_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    provider = OpenAIProvider({}, model="gpt-4o-mini")
    assert provider.base_url == "https://api.openai.com/v1"
    assert str(provider.client.base_url) == "https://api.openai.com/v1/"
    provider.close()
