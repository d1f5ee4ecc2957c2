"""generate / stream and their async twins against the local server: text, usage (reported,
with cached and reasoning tokens), what goes over the wire, tool calls, structured output."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from amsha import LLM, LLMRequest, Message, ToolCall, ToolSpec
from amsha.errors import BadRequestError, StructuredOutputError
from amsha_openai import OpenAIProvider
from amsha_openai.testing import OpenAIServer, Reply
from conftest import logged
from pydantic import BaseModel

LONG = "The quick brown fox jumps over the lazy dog while the cat sleeps"


def stream_text(llm: LLM, prompt: Any, **kw: Any) -> tuple[list[str], Any]:
    with llm.stream(prompt, **kw) as stream:
        pieces = [c.text for c in stream if c.text]
    return pieces, stream.response


async def astream_text(llm: LLM, prompt: Any, **kw: Any) -> tuple[list[str], Any]:
    async with llm.astream(prompt, **kw) as stream:
        pieces = [c.text async for c in stream if c.text]
    return pieces, stream.response


# ---- text and usage -------------------------------------------------------------------------


def test_generate_returns_text_usage_and_model(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply(LONG, usage={"prompt_tokens": 21, "completion_tokens": 13, "cached_tokens": 16}))
    response = LLM(provider).generate("Tell me about foxes")
    assert response.text == LONG
    assert response.finish_reason == "stop" and response.model == "test-model"
    usage = response.usage
    assert usage is not None and not usage.estimated
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (21, 13, 34)
    assert usage.cached_input_tokens == 16 and usage.reasoning_tokens is None
    assert response.ttft_s is not None and response.latency_s is not None


def test_stream_yields_word_chunks_and_ends_with_reported_usage(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.script(Reply(LONG, usage={"reasoning_tokens": 7}))
    pieces, response = stream_text(LLM(provider), "Tell me about foxes")
    assert "".join(pieces) == LONG and pieces[:2] == ["The ", "quick "]
    assert len(pieces) == len(LONG.split())
    assert response.text == LONG and response.finish_reason == "stop"
    assert response.usage.estimated is False
    assert response.usage.output_tokens == len(LONG.split()) and response.usage.reasoning_tokens == 7
    assert response.usage.input_tokens == 4  # the server counts the prompt's words
    body = openai_server.requests[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_the_usage_only_final_chunk_has_no_choices_and_is_mapped(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.script(Reply("a b c"))
    chunks = list(provider.stream(LLMRequest([Message("user", "hi")], model="test-model")))
    assert [c.text for c in chunks] == ["a ", "b ", "c", "", ""]  # the role-only first chunk is dropped
    assert chunks[-2].finish_reason == "stop" and chunks[-2].usage is None
    assert chunks[-1].usage is not None and chunks[-1].usage.output_tokens == 3 and chunks[-1].finish_reason is None


def test_include_usage_off_means_no_stream_options_and_an_honest_estimate(openai_server: OpenAIServer) -> None:
    provider = openai_server.provider(include_usage=False)
    assert provider.capabilities.usage_in_stream is False
    openai_server.script(Reply("one two three"))
    _, response = stream_text(LLM(provider), "count")
    assert "stream_options" not in openai_server.requests[-1].body
    assert response.text == "one two three" and response.usage.estimated is True
    provider.close()


def test_async_twins(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply("async whole", usage={"cached_tokens": 2}), Reply(LONG))
    llm = LLM(provider)

    async def main() -> tuple[Any, list[str], Any]:
        whole = await llm.agenerate("hi")
        pieces, response = await astream_text(llm, "hi")
        await provider.aclose()
        return whole, pieces, response

    whole, pieces, response = asyncio.run(main())
    assert whole.text == "async whole" and whole.usage.cached_input_tokens == 2
    assert "".join(pieces) == LONG and len(pieces) == len(LONG.split())
    assert response.usage.estimated is False and response.finish_reason == "stop"
    assert openai_server.wait_for(lambda s: s.open_connections == 0)


def test_one_connection_is_reused_across_calls(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    llm = LLM(provider)
    for _ in range(3):
        llm.generate("hi")
        stream_text(llm, "hi")
    assert openai_server.attempts == 6 and openai_server.connections == 1


# ---- what goes over the wire ----------------------------------------------------------------


def test_request_body_carries_defaults_overridden_per_call(openai_server: OpenAIServer) -> None:
    provider = openai_server.provider(temperature=0.2, max_tokens=50, stop="END", seed=7)
    llm = LLM(provider)
    llm.generate([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "name": "ann"}])
    body = openai_server.requests[-1].body
    assert body["model"] == "test-model"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi", "name": "ann"},
    ]
    assert (body["temperature"], body["max_tokens"], body["stop"], body["seed"]) == (0.2, 50, ["END"], 7)
    assert "stream" not in body and "tools" not in body and "response_format" not in body
    llm.generate("hi", temperature=0.9, max_tokens=5, model="other-model", top_p=0.5, top_k=40)
    body = openai_server.requests[-1].body
    assert (body["temperature"], body["max_tokens"], body["model"]) == (0.9, 5, "other-model")
    assert body["top_p"] == 0.5 and body["top_k"] == 40  # extra parameters go into the body as given
    provider.close()


def test_max_tokens_can_be_sent_as_max_completion_tokens(openai_server: OpenAIServer) -> None:
    provider = openai_server.provider(max_tokens=64, max_tokens_field="max_completion_tokens")
    LLM(provider).generate("hi")
    body = openai_server.requests[-1].body
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
    provider.close()


def test_headers_organization_project_and_extra(openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_OPENAI_KEY", "sk-test-header-key")
    monkeypatch.setenv("GATEWAY_TOKEN", "gw-secret-token")
    provider = openai_server.provider(
        api_key_env="MY_OPENAI_KEY",
        organization="org-123",
        project="proj-9",
        extra_headers={"X-Team": "search"},
        extra_headers_env={"X-Gateway-Token": "GATEWAY_TOKEN"},
    )
    LLM(provider).generate("hi")
    headers = openai_server.requests[-1].headers
    assert headers["authorization"] == "Bearer sk-test-header-key"
    assert headers["openai-organization"] == "org-123" and headers["openai-project"] == "proj-9"
    assert headers["x-team"] == "search" and headers["x-gateway-token"] == "gw-secret-token"
    provider.close()


def test_the_sdk_does_not_retry_on_its_own(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply.fail(500, "boom", times=5))
    with pytest.raises(Exception):
        provider.generate(LLMRequest([Message("user", "hi")]))
    assert openai_server.attempts == 1  # one HTTP attempt per provider call: retry is Amsha's
    assert provider.client.max_retries == 0


# ---- tools ----------------------------------------------------------------------------------

WEATHER = ToolSpec(
    "weather",
    "Weather of a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ToolSpec("time", "Time in a zone.", {"type": "object", "properties": {"zone": {"type": "string"}}})
CALLS = [
    {"id": "call_w", "name": "weather", "arguments": {"city": "Nairobi, Kenya", "units": "metric"}},
    {"id": "call_t", "name": "time", "arguments": {"zone": "Africa/Nairobi"}},
]


def test_tool_calls_from_a_json_response(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply(tool_calls=CALLS))
    response = LLM(provider).generate("weather and time in Nairobi?", tools=[WEATHER, TIME], tool_choice="auto")
    assert response.finish_reason == "tool_calls" and response.text == ""
    assert [(c.id, c.name, c.parsed_arguments()) for c in response.tool_calls] == [
        ("call_w", "weather", {"city": "Nairobi, Kenya", "units": "metric"}),
        ("call_t", "time", {"zone": "Africa/Nairobi"}),
    ]
    body = openai_server.requests[-1].body
    assert body["tools"][0] == {
        "type": "function",
        "function": {"name": "weather", "description": "Weather of a city.", "parameters": WEATHER.parameters},
    }
    assert body["tool_choice"] == "auto"


@pytest.mark.parametrize("interleave", [False, True], ids=["sequential", "interleaved"])
def test_parallel_tool_calls_assembled_from_split_deltas(
    openai_server: OpenAIServer, provider: OpenAIProvider, interleave: bool
) -> None:
    openai_server.script(Reply(tool_calls=CALLS, argument_chunk=5, interleave_tools=interleave, times=2))
    raw = list(provider.stream(LLMRequest([Message("user", "go")], tools=[WEATHER, TIME])))
    deltas = [d for c in raw for d in (c.tool_calls or [])]
    assert len(deltas) > 6 and {d.index for d in deltas} == {0, 1}  # really split, two calls
    _, response = stream_text(LLM(provider), "go", tools=[WEATHER, TIME])
    assert response.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.parsed_arguments()) for c in response.tool_calls] == [
        ("call_w", "weather", {"city": "Nairobi, Kenya", "units": "metric"}),
        ("call_t", "time", {"zone": "Africa/Nairobi"}),
    ]


def test_async_stream_tool_calls(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply(tool_calls=CALLS, argument_chunk=3, interleave_tools=True))

    async def main() -> Any:
        _, response = await astream_text(LLM(provider), "go", tools=[WEATHER, TIME])
        await provider.aclose()
        return response

    response = asyncio.run(main())
    assert [c.parsed_arguments() for c in response.tool_calls] == [c["arguments"] for c in CALLS]


def test_tool_results_are_sent_back_as_messages(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply("It is sunny in Nairobi."))
    messages = [
        Message("user", "weather in Nairobi?"),
        Message("assistant", None, tool_calls=[ToolCall("call_w", "weather", '{"city": "Nairobi"}')]),
        Message("tool", "sunny, 24C", tool_call_id="call_w"),
    ]
    assert LLM(provider).generate(messages, tools=[WEATHER]).text == "It is sunny in Nairobi."
    sent = openai_server.requests[-1].body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_w", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Nairobi"}'}}
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_w", "content": "sunny, 24C"}


def test_a_tool_message_without_its_call_id_is_refused_before_sending(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    with pytest.raises(BadRequestError, match=r"messages\[1\].*tool_call_id"):
        provider.generate(LLMRequest([Message("user", "x"), Message("tool", "result")]))
    assert openai_server.attempts == 0


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("required", "required"),
        ("none", "none"),
        ("weather", {"type": "function", "function": {"name": "weather"}}),
        ({"type": "function", "function": {"name": "time"}}, {"type": "function", "function": {"name": "time"}}),
    ],
)
def test_tool_choice_mapping(openai_server: OpenAIServer, provider: OpenAIProvider, given: Any, sent: Any) -> None:
    LLM(provider).generate("x", tools=[WEATHER, TIME], tool_choice=given)
    assert openai_server.requests[-1].body["tool_choice"] == sent


# ---- structured output ----------------------------------------------------------------------


class City(BaseModel):
    name: str
    population: int


def test_structured_output_sends_a_json_schema_and_parses_the_answer(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.script(Reply('{"name": "Nairobi", "population": 4397073}'))
    response = LLM(provider).generate("Largest city of Kenya?", response_model=City)
    assert response.parsed == City(name="Nairobi", population=4397073)
    fmt = openai_server.requests[-1].body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "City" and fmt["json_schema"]["schema"] == City.model_json_schema()
    # The schema is enforced by the API: no instruction was added to the messages.
    assert openai_server.requests[-1].body["messages"] == [{"role": "user", "content": "Largest city of Kenya?"}]


def test_structured_output_that_does_not_match_is_a_clear_error(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.script(Reply('{"name": "Nairobi", "population": "many"}'))
    with pytest.raises(StructuredOutputError, match="City") as info:
        LLM(provider).generate("Largest city of Kenya?", response_model=City)
    assert "population" in str(info.value) and info.value.text == '{"name": "Nairobi", "population": "many"}'


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        (
            {"name": "my task!", "schema": {"type": "object"}, "strict": True},
            {"type": "json_schema", "json_schema": {"name": "my_task_", "schema": {"type": "object"}, "strict": True}},
        ),
        ({"type": "object"}, {"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}}}),
        ({"type": "json_object"}, {"type": "json_object"}),
    ],
    ids=["amsha-form", "bare-schema", "openai-form"],
)
def test_response_format_forms(openai_server: OpenAIServer, provider: OpenAIProvider, given: Any, sent: Any) -> None:
    openai_server.script(Reply("{}"))
    assert LLM(provider).generate("x", response_format=given).parsed == {}
    assert openai_server.requests[-1].body["response_format"] == sent


def test_structured_output_streamed_through_the_wrapper(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    answer = json.dumps({"name": "Mombasa", "population": 1208333})
    openai_server.script(Reply(answer, chunks=[answer[i : i + 7] for i in range(0, len(answer), 7)]))
    llm, log = logged(provider)
    _, response = stream_text(llm, "x", response_format={"name": "City", "schema": City.model_json_schema()})
    assert City.model_validate_json(response.text).name == "Mombasa"
    assert log.events[0].kind == "llm.started" and log.events[-1].kind == "llm.finished"
