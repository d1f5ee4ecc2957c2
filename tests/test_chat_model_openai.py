"""``AmshaChatModel`` on provider ``openai`` against the local Chat Completions server: what
its constructor arguments and message kinds put on the wire (the real SDK over HTTP), and
LangChain's standard integration suite for chat models."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from amsha.errors import InputError, ProviderTimeoutError, ServerError
from amsha_langgraph import AmshaChatModel
from amsha_openai.testing import OpenAIServer, Reply
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


def _model(server: OpenAIServer, **kw: Any) -> AmshaChatModel:
    config = {"provider": server.provider_config(), "retry": {"initial_backoff_s": 0.001, "max_backoff_s": 0.002}}
    return AmshaChatModel(config=config, **kw)


def _last_body(server: OpenAIServer) -> dict[str, Any]:
    body = server.requests[-1].body
    assert isinstance(body, dict)
    return body


def test_stop_is_sent_by_either_name(server: OpenAIServer) -> None:
    for kw in ({"stop": ["END"]}, {"stop_sequences": ["END"]}):
        model = _model(server, **kw)
        assert model.stop == ["END"]
        model.invoke("hi")
        assert _last_body(server)["stop"] == ["END"], kw
    _model(server).invoke("hi", stop=["HALT"])
    assert _last_body(server)["stop"] == ["HALT"]


def test_max_retries_sets_the_attempts(server: OpenAIServer) -> None:
    for max_retries in (0, 3):
        server.reset()
        server.script(*[Reply.fail(500, "down")] * 10)
        with pytest.raises(ServerError):
            _model(server, max_retries=max_retries).invoke("hi")
        assert server.attempts == max_retries + 1
        server.reset()


def test_timeout_is_this_requests_own(server: OpenAIServer) -> None:
    server.reset()
    server.script(Reply("late", first_byte_delay_s=1.0))
    with pytest.raises(ProviderTimeoutError):
        _model(server, timeout=0.2, max_retries=0).invoke("hi")
    server.reset()
    assert _model(server, timeout=5).invoke("hi").content == "echo: hi"


def test_streaming_true_makes_invoke_stream(server: OpenAIServer) -> None:
    answer = _model(server, streaming=True).invoke("tide pools")
    assert answer.content == "echo: tide pools"
    assert _last_body(server).get("stream") is True
    _model(server).invoke("hi")
    assert "stream" not in _last_body(server)


def test_api_key_is_refused_with_the_way_to_give_one(server: OpenAIServer) -> None:
    with pytest.raises(InputError, match="api_key_env"):
        _model(server, api_key="sk-not-here")


def test_an_image_block_is_refused_not_dropped(server: OpenAIServer) -> None:
    server.reset()
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    message = HumanMessage(content=[{"type": "text", "text": "what is this?"}, image])
    with pytest.raises(InputError, match=r"messages\[0\].*'image_url'"):
        _model(server).invoke([message])
    assert server.attempts == 0  # nothing was sent without the image


def test_a_failed_tool_result_is_sent_as_it_is(server: OpenAIServer) -> None:
    history = [
        HumanMessage("weather?"),
        AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Oslo"}, "id": "call_1"}]),
        ToolMessage("Error: the weather service is down", tool_call_id="call_1", status="error"),
    ]
    _model(server).invoke(history)
    sent = _last_body(server)["messages"][-1]
    assert sent == {"role": "tool", "tool_call_id": "call_1", "content": "Error: the weather service is down"}


def test_json_mode_asks_for_a_json_object(server: OpenAIServer) -> None:
    server.script(Reply('{"a": 1}'))
    parsed = _model(server).with_structured_output(None, method="json_mode").invoke("json please")  # type: ignore[arg-type]
    assert parsed == {"a": 1}
    assert _last_body(server)["response_format"] == {"type": "json_object"}


class TestAmshaChatModelIntegration(ChatModelIntegrationTests):
    """LangChain's standard integration suite against the local server. The server echoes,
    so the tests that need a model that reasons (call the right tool, follow a schema) fail:
    they are marked below as strict expected failures (an unexpected pass fails the run).
    ChatOpenAI on the same server fails those same 18, and test_usage_metadata_streaming
    as well (checked 2026-12-02: 24 passed, 19 failed, 7 skipped; AmshaChatModel 25
    passed, 18 expected failures, the same 7 skipped: PDF, audio, image, Anthropic-style
    inputs and VCR)."""

    @pytest.fixture(autouse=True)
    def _server(self) -> Iterator[None]:
        with OpenAIServer() as srv:
            type(self).url = srv.base_url
            yield

    url = ""

    @property
    def chat_model_class(self) -> type[AmshaChatModel]:
        return AmshaChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        provider = {"name": "openai", "model": "test-model", "options": {"base_url": self.url}}
        return {"config": {"provider": provider}}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = dict(super().standard_chat_model_params)
        params.pop("api_key", None)  # refused on purpose: see test_api_key_is_refused...
        return params

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False  # refused with InputError: Amsha messages carry text

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "test-model-2"


# The suite's async tests rely on pytest-asyncio: mark them here (this repo does not set
# asyncio_mode=auto for every test).
for _name, _test in vars(ChatModelIntegrationTests).items():
    if _name.startswith("test_") and inspect.iscoroutinefunction(_test):
        setattr(TestAmshaChatModelIntegration, _name, pytest.mark.asyncio(_test))

_ECHO = "the local server echoes the prompt: it cannot follow this instruction"
for _name in (
    "test_tool_calling",
    "test_tool_calling_async",
    "test_bind_runnables_as_tools",
    "test_tool_calling_with_no_arguments",
    "test_tool_choice",
    "test_structured_output",
    "test_structured_output_async",
    "test_structured_output_pydantic_2_v1",
    "test_structured_output_optional_param",
    "test_json_mode",
    "test_agent_loop",
    "test_unicode_tool_call_integration",
):
    if hasattr(ChatModelIntegrationTests, _name):
        _test = getattr(TestAmshaChatModelIntegration, _name)
        setattr(TestAmshaChatModelIntegration, _name, pytest.mark.xfail(reason=_ECHO, strict=True)(_test))
