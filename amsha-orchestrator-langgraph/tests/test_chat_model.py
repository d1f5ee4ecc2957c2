"""AmshaChatModel as a plain langchain-core chat model."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from amsha import ExecutionSession
from amsha.errors import RateLimitError
from amsha_langgraph import AmshaChatModel
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage, ToolMessage
from pydantic import BaseModel

RULES = [
    {"match": "weather", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}], "times": 1},
    {"match": "sunny", "text": "It is sunny in Oslo."},
    {"match": "person", "text": '{"name": "Ada", "age": 36}'},
    "hello there friend",
]


def _model(**options: Any) -> AmshaChatModel:
    opts = {"report_usage": True, "tools": True, "responses": RULES, **options}
    return AmshaChatModel(config={"provider": {"name": "scripted", "model": "scripted-1", "options": opts}})


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


class Person(BaseModel):
    name: str
    age: int


def test_invoke_stream_usage_and_token_callbacks() -> None:
    model = _model()
    answer = model.invoke("hi")
    assert answer.content == "hello there friend"
    assert answer.usage_metadata == {"input_tokens": 1, "output_tokens": 3, "total_tokens": 4}
    handler = Tokens()
    chunks = list(model.stream("hi", config={"callbacks": [handler]}))
    assert [c.content for c in chunks if c.content] == ["hello ", "there ", "friend"]
    assert handler.tokens[:3] == ["hello ", "there ", "friend"]
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.usage_metadata == {"input_tokens": 1, "output_tokens": 3, "total_tokens": 4}
    assert total.response_metadata["finish_reason"] == "stop"


def test_async_twins_and_batch() -> None:
    model = _model()

    async def go() -> tuple[Any, list[str], list[Any]]:
        one = await model.ainvoke("hi")
        parts = [c.content async for c in model.astream("hi")]
        many = await model.abatch(["hi", "hi"])
        return one, parts, many

    one, parts, many = asyncio.run(go())
    assert one.content == "hello there friend"
    assert "".join(parts) == "hello there friend"
    assert [m.content for m in many] == ["hello there friend"] * 2
    assert [m.content for m in model.batch(["hi", "hi"])] == ["hello there friend"] * 2


def test_tool_call_round_trip_maps_both_ways() -> None:
    session = ExecutionSession({"provider": {"name": "scripted", "options": {"tools": True, "responses": RULES}}})
    model = AmshaChatModel(llm=session.llm()).bind_tools([get_weather], tool_choice="auto")
    question = HumanMessage("what's the weather in Oslo")
    call = model.invoke([question])
    assert call.tool_calls == [{"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_0", "type": "tool_call"}]
    final = model.invoke([question, call, ToolMessage(get_weather("Oslo"), tool_call_id="call_0")])
    assert final.content == "It is sunny in Oslo."
    session.close()


def test_structured_output_json_schema_and_raw() -> None:
    model = _model()
    assert model.with_structured_output(Person).invoke("a person") == Person(name="Ada", age=36)
    raw = model.with_structured_output(Person, include_raw=True).invoke("a person")
    assert raw["parsed"] == Person(name="Ada", age=36) and raw["parsing_error"] is None
    assert model.with_structured_output(Person.model_json_schema()).invoke("a person") == {"name": "Ada", "age": 36}


def test_provider_errors_propagate_typed_after_amsha_retry() -> None:
    model = AmshaChatModel(
        config={
            "provider": {"name": "scripted", "options": {"failures": [{"kind": "rate_limit", "times": 5}]}},
            "retry": {"max_retries": 1, "initial_backoff_s": 0.001, "jitter": False},
        }
    )
    with pytest.raises(RateLimitError):
        model.invoke("hi")
