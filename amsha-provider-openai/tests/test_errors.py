"""Errors: each HTTP failure mapped to its typed Amsha error with the right ``retryable``; retry
counted in HTTP attempts at the server and in events; Retry-After honoured; never a retry once
a stream has produced output."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from amsha import LLM, LLMRequest, Message, RetryConfig
from amsha import errors as E
from amsha_openai import OpenAIProvider
from amsha_openai._errors import parse_retry_after
from amsha_openai.testing import OpenAIServer, Reply
from conftest import FAST, logged

REQUEST = LLMRequest([Message("user", "hello there")])

STATUS_CASES = [
    # status, expected type, retryable, a word the message must carry
    (400, E.BadRequestError, False, "max_tokens is too large"),
    (401, E.AuthenticationError, False, "AMSHA_OPENAI_TEST_SERVER_KEY"),
    (403, E.PermissionDeniedError, False, "not allowed"),
    (404, E.NotFoundError, False, "test-model"),
    (408, E.ProviderTimeoutError, True, "took too long"),
    (409, E.ConflictError, True, "conflict"),
    (422, E.BadRequestError, False, "unprocessable"),
    (429, E.RateLimitError, True, "slow down"),
    (418, E.ProviderError, False, "teapot"),
    (500, E.ServerError, True, "internal"),
    (502, E.ServerError, True, "bad gateway"),
    (503, E.ServerError, True, "overloaded"),
]
MESSAGES = {
    400: "max_tokens is too large",
    401: "bad key",
    403: "not allowed",
    404: "no such thing",
    408: "took too long",
    409: "conflict",
    422: "unprocessable",
    429: "slow down",
    418: "teapot",
    500: "internal",
    502: "bad gateway",
    503: "overloaded",
}


@pytest.mark.parametrize(("status", "kind", "retryable", "word"), STATUS_CASES, ids=[str(c[0]) for c in STATUS_CASES])
def test_status_maps_to_a_typed_error(
    openai_server: OpenAIServer, provider: OpenAIProvider, status: int, kind: type, retryable: bool, word: str
) -> None:
    openai_server.script(Reply.fail(status, MESSAGES[status]))
    with pytest.raises(E.ProviderError) as info:
        provider.generate(REQUEST)
    error = info.value
    assert type(error) is kind and error.retryable is retryable
    assert error.status == status and error.provider == "openai"
    assert word in str(error) and MESSAGES[status] in str(error)
    assert "request id req_" in str(error)  # the server's request id, for support tickets
    assert openai_server.attempts == 1


def test_a_bad_model_name_is_a_clear_not_found_error_naming_it(openai_server: OpenAIServer) -> None:
    openai_server.models = {"gpt-real"}
    provider = openai_server.provider(model="gpt-typo")
    for call in (provider.generate, lambda r: list(provider.stream(r))):
        with pytest.raises(E.NotFoundError) as info:
            call(REQUEST)
        text = str(info.value)
        assert "model 'gpt-typo' was not found" in text and "does not exist" in text and "/v1" in text
        assert info.value.retryable is False
    _, log = logged(provider)
    llm, log = logged(provider)
    with pytest.raises(E.NotFoundError):
        llm.generate("hi")
    assert openai_server.attempts == 3  # not retried
    assert log.events[-1].kind == "llm.failed" and "gpt-typo" in log.events[-1].data["error"]["message"]
    provider.close()


def test_a_non_json_error_page_is_still_typed(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply(status=502, raw_body=b"<html><body>502 Bad Gateway</body></html>"))
    with pytest.raises(E.ServerError, match="502 Bad Gateway"):
        provider.generate(REQUEST)


def test_insufficient_quota_is_a_429_that_is_not_retried(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(
        Reply.fail(429, "You exceeded your current quota", type="insufficient_quota", code="insufficient_quota")
    )
    llm, log = logged(provider)
    with pytest.raises(E.RateLimitError) as info:
        llm.generate("hi")
    assert info.value.retryable is False and "quota" in str(info.value)
    assert openai_server.attempts == 1 and not [e for e in log.events if e.kind == "llm.retry"]


# ---- retry --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
def test_retryable_statuses_get_at_most_three_attempts(
    openai_server: OpenAIServer, provider: OpenAIProvider, status: int
) -> None:
    openai_server.script(Reply.fail(status, "try again", times=10))
    llm, log = logged(provider)
    with pytest.raises(E.ProviderError) as info:
        llm.generate("hi")
    assert info.value.status == status
    assert openai_server.attempts == 3  # max_retries 2: one attempt and two retries
    assert [e.data["attempt"] for e in log.events if e.kind == "llm.retry"] == [1, 2]
    assert log.events[-1].kind == "llm.failed" and log.events[-1].data["retries"] == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_non_retryable_statuses_get_one_attempt(
    openai_server: OpenAIServer, provider: OpenAIProvider, status: int
) -> None:
    openai_server.script(Reply.fail(status, "no", times=10))
    llm, log = logged(provider)
    with pytest.raises(E.ProviderError):
        llm.generate("hi")
    with pytest.raises(E.ProviderError):
        list(llm.stream("hi"))
    assert openai_server.attempts == 2 and not [e for e in log.events if e.kind == "llm.retry"]


def test_retry_after_is_honoured_and_shown_in_events(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply.fail(429, "slow down", retry_after=0.3), Reply("finally"))
    llm, log = logged(provider, RetryConfig(max_retries=2, initial_backoff_s=5, max_backoff_s=5))
    started = time.perf_counter()
    assert llm.generate("hi").text == "finally"
    waited = openai_server.requests[1].received_at - openai_server.requests[0].received_at
    assert 0.3 <= waited < 2 and time.perf_counter() - started < 2  # the header, not the 5 s backoff
    retry = next(e for e in log.events if e.kind == "llm.retry")
    assert retry.data["wait_s"] == 0.3 and retry.data["error"]["retry_after"] == 0.3
    assert retry.data["error"]["type"] == "RateLimitError" and retry.data["error"]["status"] == 429


def test_retry_after_longer_than_allowed_fails_at_once(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply.fail(429, "come back tomorrow", retry_after=86400))
    llm, _ = logged(provider, RetryConfig(max_retries=2, max_retry_after_s=60))
    with pytest.raises(E.RateLimitError) as info:
        llm.generate("hi")
    assert info.value.retry_after == 86400 and openai_server.attempts == 1


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    in_3s = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3))
    assert 1 <= (parse_retry_after({"retry-after": in_3s}) or 0) <= 3.5
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


def test_slow_first_byte_times_out_and_is_retried(openai_server: OpenAIServer) -> None:
    openai_server.script(Reply("late", first_byte_delay_s=1.0, times=3))
    provider = openai_server.provider(timeout_s=0.2)
    llm, log = logged(provider)
    started = time.perf_counter()
    with pytest.raises(E.ProviderTimeoutError) as info:
        llm.generate("hi")
    assert time.perf_counter() - started < 2.5
    assert info.value.retryable is True and "timed out" in str(info.value)
    assert openai_server.attempts == 3 and len([e for e in log.events if e.kind == "llm.retry"]) == 2
    provider.close()


def test_slow_first_byte_within_the_timeout_is_fine(openai_server: OpenAIServer) -> None:
    openai_server.script(Reply("patience", first_byte_delay_s=0.3))
    provider = openai_server.provider(timeout_s=2)
    with LLM(provider).stream("hi") as stream:
        assert "".join(c.text for c in stream) == "patience"
    assert stream.response is not None and stream.response.ttft_s is not None and stream.response.ttft_s >= 0.3
    provider.close()


def test_connection_refused_is_a_retryable_connection_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAIProvider({"base_url": f"http://127.0.0.1:{port}/v1"}, model="m")
    llm, log = logged(provider)
    with pytest.raises(E.ProviderConnectionError) as info:
        llm.generate("hi")
    assert info.value.retryable is True and f"127.0.0.1:{port}" in str(info.value)
    assert len([e for e in log.events if e.kind == "llm.retry"]) == 2
    provider.close()


def test_max_retries_option_sets_the_wrapper_policy(openai_server: OpenAIServer) -> None:
    provider = openai_server.provider(max_retries=4)
    assert provider.retry_config is not None and provider.retry_config.max_retries == 4
    openai_server.script(Reply.fail(500, "down", times=10))
    llm = LLM(provider)
    llm.retry = llm.retry.model_copy(update={"initial_backoff_s": 0.001, "max_backoff_s": 0.001})
    with pytest.raises(E.ServerError):
        llm.generate("hi")
    assert openai_server.attempts == 5
    assert openai_server.provider().retry_config is None  # unset: the config's retry decides
    provider.close()


# ---- streams --------------------------------------------------------------------------------


def test_no_retry_after_the_first_token(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply("one two three four five", cut_after=2), Reply("should never be asked"))
    llm, log = logged(provider)
    seen: list[str] = []
    with pytest.raises(E.StreamInterruptedError) as info:
        for chunk in llm.stream("count"):
            seen.append(chunk.text)
    assert "".join(seen) == "one two " == info.value.partial_text
    assert info.value.retryable is False
    assert openai_server.attempts == 1 and openai_server.requests[0].outcome == "cut"
    failed = log.events[-1]
    assert failed.kind == "llm.failed" and failed.data["partial_text"] == "one two "
    assert failed.data["error"]["type"] == "StreamInterruptedError"
    assert not [e for e in log.events if e.kind == "llm.retry"]
    assert openai_server.wait_for(lambda s: s.open_connections <= 1)


def test_a_stream_cut_before_any_token_is_retried(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply("never", cut_after=0), Reply("second time lucky"))
    llm, log = logged(provider)
    with llm.stream("hi") as stream:
        assert "".join(c.text for c in stream) == "second time lucky"
    assert openai_server.attempts == 2 and [e.kind for e in log.events].count("llm.retry") == 1


def test_a_body_that_ends_before_the_answer_is_an_interruption(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.script(Reply("one two three", cut_after=1, cut_cleanly=True))
    with pytest.raises(E.StreamInterruptedError, match="ended before the answer was finished") as info:
        list(LLM(provider, retry=FAST).stream("hi"))
    assert info.value.partial_text == "one "


def test_an_error_event_inside_the_stream(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(
        Reply("one two three", error_event_after=2, error={"message": "model crashed", "type": "server_error"}),
        Reply("x", error_event_after=0, error={"message": "overloaded", "type": "server_error"}),
        Reply("after the error"),
    )
    with pytest.raises(E.StreamInterruptedError, match="model crashed") as info:
        list(LLM(provider, retry=FAST).stream("hi"))
    assert info.value.partial_text == "one two "
    with LLM(provider, retry=FAST).stream("hi") as stream:  # before any token: a retryable ServerError
        assert "".join(c.text for c in stream) == "after the error"
    assert openai_server.attempts == 3


def test_async_errors_retry_and_interruption(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(
        Reply.fail(503, "busy"),
        Reply("async ok"),
        Reply.fail(429, "wait", retry_after=0.05),
        Reply("alpha beta gamma", cut_after=1),
        Reply.fail(404, "missing"),
    )
    llm, log = logged(provider)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {"generated": (await llm.agenerate("hi")).text}
        with pytest.raises(E.StreamInterruptedError) as info:
            async with llm.astream("hi") as stream:
                async for _ in stream:
                    pass
        out["partial"] = info.value.partial_text
        with pytest.raises(E.NotFoundError):
            await llm.agenerate("hi")
        await provider.aclose()
        return out

    out = asyncio.run(main())
    assert out == {"generated": "async ok", "partial": "alpha "}
    assert openai_server.attempts == 5
    assert [e.data["wait_s"] for e in log.events if e.kind == "llm.retry"][1] == 0.05
