"""The LLM wrapper: retry policy, streaming rules, usage, structured output, async twins."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel

from amsha import LLM, BaseProvider, LLMRequest, LLMResponse, ProviderCapabilities, RetryConfig, Usage
from amsha.builtins.scripted import ScriptedProvider
from amsha.errors import (
    BadRequestError,
    NotFoundError,
    ProviderError,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
    StructuredOutputError,
)
from amsha.events import RunEventLog
from amsha.llm import CallContext, retry_delay

FAST = RetryConfig(max_retries=2, initial_backoff_s=0.001, max_backoff_s=0.002)


def scripted(**options: Any) -> ScriptedProvider:
    options.setdefault("responses", ["one two three four five"])
    return ScriptedProvider(options)


def logged(provider: Any, retry: RetryConfig = FAST) -> tuple[LLM, RunEventLog]:
    log = RunEventLog("run-test")
    return LLM(provider, retry=retry).bind(CallContext(log, "run-test", task="t", agent="a")), log


def test_generate_and_stream_give_the_same_answer() -> None:
    llm = LLM(scripted())
    assert llm.generate("hi").text == "one two three four five"
    with llm.stream("hi") as stream:
        pieces = [c.text for c in stream if c.text]
    assert pieces == ["one ", "two ", "three ", "four ", "five"]
    assert stream.response is not None and stream.response.text == "one two three four five"
    assert stream.response.usage is not None and stream.response.usage.output_tokens == 5
    assert stream.response.ttft_s is not None and stream.response.latency_s is not None


@pytest.mark.parametrize("kind", ["server", "timeout", "connection", "rate_limit"])
def test_retryable_errors_are_retried_up_to_max(kind: str) -> None:
    provider = scripted(failures=[{"kind": kind, "times": 2}])
    llm, log = logged(provider)
    assert llm.generate("hi").text.startswith("one")
    assert provider.calls == 3
    retries = [e for e in log.events if e.kind == "llm.retry"]
    assert [e.data["attempt"] for e in retries] == [1, 2]
    assert log.events[-1].kind == "llm.finished" and log.events[-1].data["retries"] == 2


def test_retries_stop_at_max_and_raise_the_typed_error() -> None:
    provider = scripted(failures=[{"kind": "server", "times": 10}])
    llm, log = logged(provider)
    with pytest.raises(ServerError):
        llm.generate("hi")
    assert provider.calls == 3  # max_retries=2: three attempts in all
    assert [e.kind for e in log.events].count("llm.retry") == 2
    assert log.events[-1].kind == "llm.failed"


@pytest.mark.parametrize(
    ("kind", "error"), [("bad_request", BadRequestError), ("not_found", NotFoundError), ("auth", ProviderError)]
)
def test_non_retryable_errors_fail_at_once(kind: str, error: type[Exception]) -> None:
    provider = scripted(failures=[{"kind": kind}])
    llm, log = logged(provider)
    with pytest.raises(error):
        llm.generate("hi")
    assert provider.calls == 1
    assert not [e for e in log.events if e.kind == "llm.retry"]


def test_retry_after_is_honored() -> None:
    provider = scripted(failures=[{"kind": "rate_limit", "retry_after": 0.2}])
    llm, log = logged(provider, RetryConfig(max_retries=1, initial_backoff_s=5, max_backoff_s=5))
    started = time.perf_counter()
    llm.generate("hi")
    elapsed = time.perf_counter() - started
    retry = next(e for e in log.events if e.kind == "llm.retry")
    assert retry.data["wait_s"] == 0.2
    assert retry.data["error"]["retry_after"] == 0.2
    assert 0.2 <= elapsed < 2  # waited what the server asked, not the 5 s backoff


def test_retry_after_longer_than_allowed_is_not_waited_for() -> None:
    provider = scripted(failures=[{"kind": "rate_limit", "retry_after": 120}])
    llm, _ = logged(provider, RetryConfig(max_retries=3, max_retry_after_s=10))
    with pytest.raises(RateLimitError):
        llm.generate("hi")
    assert provider.calls == 1


def test_backoff_is_exponential_with_full_jitter() -> None:
    policy = RetryConfig(max_retries=5, initial_backoff_s=1, max_backoff_s=4, jitter=False)
    err = ServerError("x")
    assert [retry_delay(err, n, policy) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    jittered = RetryConfig(max_retries=5, initial_backoff_s=1, max_backoff_s=4)
    delays = [retry_delay(err, 3, jittered) for _ in range(200)]
    assert all(d is not None and 0 <= d <= 4 for d in delays) and len(set(delays)) > 100
    assert retry_delay(err, 6, policy) is None
    assert retry_delay(BadRequestError("x"), 1, policy) is None
    assert retry_delay(ValueError("x"), 1, policy) is None


def test_stream_errors_before_the_first_token_are_retried() -> None:
    provider = scripted(failures=[{"kind": "server"}])
    llm, _ = logged(provider)
    assert "".join(c.text for c in llm.stream("hi")) == "one two three four five"
    assert provider.calls == 2


def test_no_retry_after_the_first_token() -> None:
    provider = scripted(failures=[{"kind": "stream_interrupt", "after_tokens": 2}])
    llm, log = logged(provider)
    seen = []
    with pytest.raises(StreamInterruptedError) as info:
        for chunk in llm.stream("hi"):
            seen.append(chunk.text)
    assert provider.calls == 1
    assert info.value.partial_text == "one two " == "".join(seen)
    assert info.value.retryable is False
    failed = log.events[-1]
    assert failed.kind == "llm.failed" and failed.data["partial_text"] == "one two "
    assert not [e for e in log.events if e.kind == "llm.retry"]


def test_usage_estimate_is_marked() -> None:
    llm = LLM(scripted(report_usage=False))
    usage = llm.generate("a prompt of some length").usage
    assert usage is not None and usage.estimated and usage.output_tokens > 0
    reported = LLM(scripted()).generate("x").usage
    assert reported is not None and not reported.estimated


class Plain(BaseProvider):
    """A provider that cannot stream and has no async code."""

    name = "plain"
    capabilities = ProviderCapabilities(streaming=False)

    def generate(self, request: LLMRequest) -> LLMResponse:
        return LLMResponse(text="whole answer", usage=Usage(3, 2, 5))


def test_non_streaming_provider_streams_as_one_chunk() -> None:
    llm = LLM(Plain())
    chunks = list(llm.stream("hi"))
    assert [c.text for c in chunks] == ["whole answer"]
    assert asyncio.run(_collect(llm)) == ["whole answer"]


async def _collect(llm: LLM) -> list[str]:
    return [c.text async for c in llm.astream("hi") if c.text]


class Answer(BaseModel):
    city: str
    population: int


def test_structured_output_is_validated() -> None:
    good = LLM(scripted(responses=['{"city": "Oslo", "population": 700000}']))
    response = good.generate("where?", response_model=Answer)
    assert response.parsed == Answer(city="Oslo", population=700000)
    bad = LLM(scripted(responses=['{"city": "Oslo"}']))
    with pytest.raises(StructuredOutputError, match="Answer") as info:
        bad.generate("where?", response_model=Answer)
    assert info.value.text == '{"city": "Oslo"}'


def test_structured_output_degrades_to_instructions() -> None:
    provider = scripted(structured_output=False, responses=['```json\n{"city": "Rome", "population": 1}\n```'])
    llm = LLM(provider)
    request = llm.request("where?", response_model=Answer)
    assert request.messages[0].role == "system" and "JSON schema" in (request.messages[0].content or "")
    assert llm.generate("where?", response_model=Answer).parsed == Answer(city="Rome", population=1)


def test_tool_calls_round_trip_through_the_stream() -> None:
    provider = scripted(
        responses=[
            {
                "text": "",
                "tool_calls": [{"name": "search", "arguments": {"q": "x"}}, {"name": "add", "arguments": '{"a": 1}'}],
            }
        ]
    )
    llm = LLM(provider)
    with llm.stream("use tools") as stream:
        list(stream)
    response = stream.response
    assert response is not None
    assert [(c.name, c.parsed_arguments()) for c in response.tool_calls] == [("search", {"q": "x"}), ("add", {"a": 1})]
    assert response.finish_reason == "tool_calls"


def test_async_twins_retry_and_stream() -> None:
    provider = scripted(failures=[{"kind": "server"}], token_delay_s=0.001)
    llm, log = logged(provider)

    async def main() -> tuple[str, str]:
        generated = await llm.agenerate("hi")
        stream = llm.astream("hi")
        text = "".join([c.text async for c in stream])
        return generated.text, text

    generated, streamed = asyncio.run(main())
    assert generated == streamed == "one two three four five"
    assert provider.calls == 3
    assert [e.kind for e in log.events].count("llm.finished") == 2


def test_closing_a_stream_closes_the_provider_stream() -> None:
    closed = []

    class Tracking(ScriptedProvider):
        def stream(self, request: LLMRequest) -> Any:
            try:
                yield from super().stream(request)
            finally:
                closed.append(True)

    llm, log = logged(Tracking({"responses": ["a b c d e f"]}))
    stream = llm.stream("hi")
    next(iter(stream))
    stream.close()
    assert closed == [True]
    last = log.events[-1]
    assert last.kind == "llm.finished" and last.data["cancelled"] is True


def test_async_cancel_closes_the_provider_stream_quickly() -> None:
    provider = scripted(token_delay_s=0.5)
    llm = LLM(provider)

    async def main() -> float:
        async def consume() -> None:
            async for _ in llm.astream("hi"):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.perf_counter() - started

    assert asyncio.run(main()) < 0.1


def test_events_link_to_the_task_and_carry_the_request() -> None:
    llm, log = logged(scripted())
    llm.generate([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    started, finished = log.events[0], log.events[-1]
    assert started.kind == "llm.started" and started.parent_id == "run-test"
    assert started.task == "t" and started.agent == "a"
    assert started.data["request"]["messages"][0] == {"role": "system", "content": "be brief"}
    assert started.data["fingerprint"]["index"] == 0
    assert finished.span_id == started.span_id
    assert finished.data["usage"]["total_tokens"] > 0


class _DeclaresRetry(ScriptedProvider):
    """A provider whose options carry a retry count (as provider ``openai``'s ``max_retries``)."""

    retry_config = RetryConfig(max_retries=5, initial_backoff_s=0.0, max_backoff_s=0.0)


def test_a_provider_declared_retry_policy_is_the_default() -> None:
    provider = _DeclaresRetry({"responses": ["ok"], "failures": [{"kind": "server", "times": 4}]})
    assert LLM(provider).retry.max_retries == 5
    assert LLM(provider).generate("hi").text == "ok" and provider.calls == 5
    assert LLM(provider, retry=FAST).retry is FAST  # an explicit policy wins


def test_session_retry_precedence_section_then_provider_then_top_level() -> None:
    from amsha import ExecutionSession, hookimpl

    class Plugin:
        @hookimpl
        def amsha_register_providers(self, register: Any) -> None:
            register("declares-retry", lambda ctx: _DeclaresRetry({"responses": ["ok"]}))

    config: dict[str, Any] = {"provider": {"name": "declares-retry"}, "retry": {"max_retries": 1}}
    with ExecutionSession(config, plugins=[Plugin()]) as session:
        assert session.llm().retry.max_retries == 5
    config["provider"]["retry"] = {"max_retries": 3}
    with ExecutionSession(config, plugins=[Plugin()]) as session:
        assert session.llm().retry.max_retries == 3


def test_with_retry_changes_only_the_copy() -> None:
    provider = scripted(failures=[{"kind": "server", "times": 10}])
    llm = LLM(provider, retry=FAST)
    none = llm.with_retry(max_retries=0)
    assert none.retry.max_retries == 0 and llm.retry.max_retries == 2
    assert none.retry.initial_backoff_s == FAST.initial_backoff_s
    with pytest.raises(ServerError):
        none.generate("hi")
    assert provider.calls == 1


def test_timeout_travels_on_the_request_but_not_in_its_fingerprint() -> None:
    llm = LLM(scripted())
    plain, timed = llm.request("hi"), llm.request("hi", timeout_s=2.5)
    assert timed.timeout_s == 2.5 and "timeout_s" not in timed.extra
    assert timed.fingerprint() == plain.fingerprint()  # replay matches it all the same
    assert LLMRequest.from_dict(timed.to_dict()).timeout_s == 2.5
    assert "timeout_s" not in plain.to_dict()


def test_json_object_format_is_asked_for_in_words_without_structured_output() -> None:
    provider = scripted(responses=['{"a": 1}'], structured_output=False)
    llm = LLM(provider)
    request = llm.request("json please", response_format={"type": "json_object"})
    assert request.messages[0].role == "system" and request.messages[0].content == "Reply with only a JSON object."
    assert llm.generate("json please", response_format={"type": "json_object"}).parsed == {"a": 1}


def test_sync_and_async_twins_report_alike() -> None:
    """generate/agenerate and stream/astream share their book-keeping: same events, same
    response fields, same retry accounting."""

    def run_sync() -> tuple[list[str], LLMResponse, LLMResponse | None]:
        llm, log = logged(scripted(failures=[{"kind": "server", "times": 1}]))
        response = llm.generate("hi")
        with llm.stream("hi") as stream:
            for _ in stream:
                pass
        return [e.kind for e in log.events if e.kind != "llm.token"], response, stream.response

    async def run_async() -> tuple[list[str], LLMResponse, LLMResponse | None]:
        llm, log = logged(scripted(failures=[{"kind": "server", "times": 1}]))
        response = await llm.agenerate("hi")
        async with llm.astream("hi") as stream:
            async for _ in stream:
                pass
        return [e.kind for e in log.events if e.kind != "llm.token"], response, stream.response

    sync, asynchronous = run_sync(), asyncio.run(run_async())
    assert sync[0] == asynchronous[0] == ["llm.started", "llm.retry", "llm.finished", "llm.started", "llm.finished"]
    for one, other in ((sync[1], asynchronous[1]), (sync[2], asynchronous[2])):
        assert other is not None and one is not None
        assert (one.text, one.finish_reason, one.retries, one.usage) == (
            other.text,
            other.finish_reason,
            other.retries,
            other.usage,
        )
        assert one.ttft_s is not None and one.latency_s is not None and one.ttft_s <= one.latency_s
    assert sync[1].retries == 1


def test_to_dict_of_usage_and_capabilities_names_every_field() -> None:
    import dataclasses

    from amsha import ProviderCapabilities

    usage = Usage(1, 2, 3, 4, 5, True)
    assert usage.to_dict() == {f.name: getattr(usage, f.name) for f in dataclasses.fields(usage)}
    caps = ProviderCapabilities(True, True, False, True, False)
    assert caps.to_dict() == {f.name: getattr(caps, f.name) for f in dataclasses.fields(caps)}


def test_a_complete_answers_tool_calls_get_an_id_and_json_arguments() -> None:
    from amsha import ToolCall

    class Bare(BaseProvider):
        name = "bare"

        def generate(self, request: LLMRequest) -> LLMResponse:
            return LLMResponse(tool_calls=[ToolCall(id="", name="lookup", arguments="")])

    response = LLM(Bare()).generate("hi")
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [("call_0", "lookup", "{}")]
    assert response.finish_reason == "tool_calls" and response.usage is not None and response.usage.estimated
