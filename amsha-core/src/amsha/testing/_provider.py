"""``ProviderContract``: what every :class:`~amsha.ILLMProvider` must do, checked by answers.

See :class:`ProviderContract` for the fixtures. Tests fall in three groups:

* answers of the ``provider`` fixture: shapes, the four paths agreeing, usage, the model
  asked for, tool calls with parsed arguments, structured output, stop sequences, several
  event loops and threads, inputs and outputs not aliased;
* typed errors, from ``failing_provider`` or produced with an :class:`~amsha.testing.HTTPPeer`;
* the transport, through ``peer_provider`` (a provider pointed at a peer the suite
  controls): closed streams close their connection, async methods do not block the loop,
  async clients survive several event loops, messages, tools, schemas, stop sequences and
  the model reach the wire, and a secret given to the provider never reaches what it
  returns or raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from ..config import RetryConfig
from ..errors import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    ServerError,
    StreamInterruptedError,
)
from ..llm import LLM
from ..provider import LLMChunk, LLMRequest, LLMResponse, Message, ProviderCapabilities, ToolCall, ToolSpec, Usage
from ._common import (
    Missing,
    canary,
    contract_suite,
    exception_texts,
    fail,
    leaks,
    registered_secret,
    require,
    with_watchdog,
)
from .peer import HTTPPeer, PeerReply, PeerRequest

__all__ = ["ProviderContract"]

#: Error kinds: expected class, its ``retryable``, and the HTTP status a peer answers with.
ERROR_KINDS: dict[str, tuple[type[ProviderError], bool, int | None]] = {
    "rate_limit": (RateLimitError, True, 429),
    "server": (ServerError, True, 500),
    "timeout": (ProviderTimeoutError, True, None),
    "connection": (ProviderConnectionError, True, None),
    "auth": (AuthenticationError, False, 401),
    "permission": (PermissionDeniedError, False, 403),
    "not_found": (NotFoundError, False, 404),
    "bad_request": (BadRequestError, False, 400),
}
_ERROR_TYPES = {
    429: "rate_limit_exceeded",
    500: "server_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "not_found_error",
    400: "invalid_request_error",
}
TIMEOUT_S = 0.2
"""The client timeout ``peer_provider`` is asked for in the timeout checks."""
WATCHDOG_LIMIT_S = 0.2
"""The longest an async method may hold the event loop while waiting on the network."""

MAGIC_TOOL = ToolSpec(
    "magic_function",
    "Apply a magic function to an input.",
    {"type": "object", "properties": {"input": {"type": "integer"}}, "required": ["input"]},
)
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"contract_given_name": {"type": "string"}, "contract_age_years": {"type": "integer"}},
    "required": ["contract_given_name", "contract_age_years"],
    "additionalProperties": False,
}


def tool_request() -> LLMRequest:
    """The request the tool checks send: the answer must be one call of ``magic_function``
    with arguments ``{"input": 3}`` (the tool choice forces it)."""
    return LLMRequest(
        messages=[Message("user", "What is the value of magic_function(3)? Call magic_function with input 3.")],
        tools=[copy.deepcopy(MAGIC_TOOL)],
        tool_choice="magic_function",
    )


def structured_request() -> LLMRequest:
    """The request the structured-output checks send: the answer must be the JSON object
    ``{"contract_given_name": "Ada", "contract_age_years": 36}`` (any values of those types)."""
    return LLMRequest(
        messages=[Message("user", "Describe Ada, aged 36, as a contract_person JSON object.")],
        response_format={"name": "contract_person", "schema": copy.deepcopy(PERSON_SCHEMA)},
    )


def conversation() -> list[Message]:
    """A system message and three turns, each with a marker the wire checks look for."""
    return [
        Message("system", "You are contract-system-marker, a terse assistant."),
        Message("user", "Remember contract-turn-one."),
        Message("assistant", "Noted: contract-turn-two."),
        Message("user", "What did I ask you to remember? contract-turn-three"),
    ]


def tool_history() -> list[Message]:
    """A tool call answered by a tool result, then a question about it."""
    return [
        Message("user", "What is the value of magic_function(3)?"),
        Message(
            "assistant",
            None,
            tool_calls=[ToolCall("call_contract_1", "magic_function", '{"input": 3}')],
        ),
        Message("tool", "contract-tool-result-22", tool_call_id="call_contract_1"),
        Message("user", "So what was the result?"),
    ]


def _text(chunks: list[LLMChunk]) -> str:
    return "".join(c.text for c in chunks)


async def _adrain(provider: Any, request: LLMRequest) -> list[LLMChunk]:
    return [c async for c in provider.astream(request)]


def _check_usage(usage: Any, where: str) -> None:
    if not isinstance(usage, Usage):
        fail(f"{where}: usage must be an amsha Usage, got {type(usage).__name__}")
    for name in ("input_tokens", "output_tokens", "total_tokens"):
        value = getattr(usage, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            fail(f"{where}: usage.{name} must be a non-negative int, got {value!r}")
    if usage.total_tokens < usage.input_tokens + usage.output_tokens:
        fail(f"{where}: usage total {usage.total_tokens} is less than input + output")
    if usage.estimated:
        fail(f"{where}: a provider reports the API's usage; `estimated` is for Amsha's own estimate")


def _check_magic_call(calls: list[ToolCall], where: str) -> None:
    if not calls:
        fail(
            f"{where} returned no tool call, though capabilities.tools is True and the request forced "
            "tool_choice='magic_function' (tool calls dropped?)"
        )
    call = calls[0]
    if not isinstance(call, ToolCall):
        fail(f"{where}: tool calls must be amsha ToolCall objects, got {type(call).__name__}")
    if call.name != "magic_function":
        fail(f"{where}: the tool call names {call.name!r}, the request offered only 'magic_function'")
    if not isinstance(call.id, str) or not call.id:
        fail(f"{where}: a tool call needs a non-empty string id (tool results answer it by id)")
    try:
        args = call.parsed_arguments()
    except ValueError:
        fail(f"{where}: tool call arguments must be JSON text, got {call.arguments!r}")
    if args != {"input": 3}:
        fail(f"{where}: the tool call's parsed arguments must be {{'input': 3}}, got {args!r}")


def _check_person(text: str, where: str) -> None:
    try:
        data = json.loads(text)
    except ValueError:
        fail(f"{where}: with response_format set, the answer must be JSON, got {text[:80]!r}")
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("contract_given_name"), str)
        or not isinstance(data.get("contract_age_years"), int)
    ):
        fail(f"{where}: the JSON answer must match the requested schema, got {data!r}")


def _error_reply(status: int, message: str, times: int = 50) -> PeerReply:
    headers = {"Retry-After": "1"} if status == 429 else {}
    body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "error"), "code": None}}
    return PeerReply.json(body, status=status, headers=headers, times=times)


class _Peers:
    """Peers and providers a test made, stopped and closed at its end."""

    def __init__(self, factory: Callable[[HTTPPeer, float], Any] | None) -> None:
        self.factory = factory
        self.peers: list[HTTPPeer] = []
        self.providers: list[Any] = []

    def peer(self) -> HTTPPeer:
        peer = HTTPPeer().start()
        self.peers.append(peer)
        return peer

    def provider(self, peer: HTTPPeer, timeout_s: float = 5.0) -> Any:
        assert self.factory is not None
        provider = self.factory(peer, timeout_s)
        self.providers.append(provider)
        return provider

    def close(self) -> None:
        for provider in self.providers:
            with contextlib.suppress(Exception):
                provider.close()
        for peer in self.peers:
            peer.stop()


@contract_suite
class ProviderContract:
    """What every :class:`~amsha.ILLMProvider` must do.

    Fixtures (``provider`` is required; for each other one the suite says, when a test
    needs it, what to return):

    ``provider``
        The provider under test, answering the requests below (a fake, a local server, or
        the real API).
    ``deterministic``
        True if the provider gives the same answer to the same request on every path
        (``generate``, ``stream``, ``agenerate``, ``astream``), as a fake or a scripted
        server does; False for a real model (the comparisons are then skipped).
    ``other_model``
        A model name the provider can serve other than its default: the suite asks for it
        in ``LLMRequest.model`` and checks the answer (``LLMResponse.model``) and the wire.
    ``failing_provider``
        ``kind -> provider``: a provider failing in that way on every call, for the kinds
        of :data:`ERROR_KINDS` plus ``stream_interrupt`` (a stream that breaks after its
        first text). Return None for a kind to have the suite produce it with the peer.
    ``peer_provider``
        ``(peer, timeout_s) -> provider``: a new provider pointed at ``peer.url`` (an
        :class:`~amsha.testing.HTTPPeer`) with that client timeout, after setting
        ``peer.responder`` to answer in the provider's protocol (streams as lists of pieces:
        :meth:`PeerReply.sse` or :meth:`PeerReply.lines`). The responder answers
        :func:`tool_request` with the ``magic_function`` call and :func:`structured_request`
        with its JSON when the provider declares those features. Return None (the fixture
        value) if the provider speaks no HTTP.
    ``api_key_env``
        The environment variable the provider reads its API key from (None if it takes
        none): the suite sets it to a canary for the secret checks.
    ``llm_request``
        A request the provider can answer (default: "Say hello"); the answer must have at
        least two words for the stop-sequence check.

    The provider must answer :func:`tool_request` (when it declares ``tools``) with one call
    of ``magic_function`` with ``{"input": 3}``, and :func:`structured_request` (when it
    declares ``structured_output``) with a JSON object of :data:`PERSON_SCHEMA`. A real
    model does; a fake is scripted to.
    """

    ERROR_KINDS: ClassVar[dict[str, tuple[type[ProviderError], bool, int | None]]] = ERROR_KINDS

    # ---- fixtures (defaults) -----------------------------------------------------------

    @pytest.fixture
    def provider(self) -> Any:
        """Required: the provider under test."""
        fail("supply the `provider` fixture: return the provider under test")

    @pytest.fixture
    def llm_request(self) -> LLMRequest:
        """A request the provider can answer."""
        return LLMRequest(messages=[Message("user", "Say hello")])

    @pytest.fixture
    def deterministic(self) -> bool | Missing:
        """True if every path gives the same answer to the same request."""
        return Missing(
            "deterministic",
            "return True if the provider answers a request the same way on every path (a fake, a scripted "
            "server), False for a real model",
        )

    @pytest.fixture
    def other_model(self) -> str | Missing:
        """A model the provider serves besides its default."""
        return Missing("other_model", "return a model name the provider can serve other than its default")

    @pytest.fixture
    def failing_provider(self) -> Callable[[str], Any] | Missing:
        """``kind -> provider`` failing that way."""
        return Missing(
            "failing_provider",
            "return a callable kind -> provider failing that way on every call (kinds: "
            f"{', '.join([*ERROR_KINDS, 'stream_interrupt'])}), or supply `peer_provider` and the suite "
            "produces the failures with an HTTPPeer",
        )

    @pytest.fixture
    def peer_provider(self) -> Callable[[HTTPPeer, float], Any] | Missing | None:
        """``(peer, timeout_s) -> provider`` pointed at an HTTPPeer; None if not HTTP."""
        return Missing(
            "peer_provider",
            "return a callable (peer: amsha.testing.HTTPPeer, timeout_s: float) -> provider that sets "
            "peer.responder to answer in the provider's protocol and builds a provider whose base URL is "
            "peer.url with that client timeout; or return None if the provider speaks no HTTP",
        )

    @pytest.fixture
    def api_key_env(self) -> str | Missing | None:
        """The environment variable holding the provider's key (None: it takes none)."""
        return Missing(
            "api_key_env",
            "return the name of the environment variable the provider reads its API key from, or None if it "
            "takes no secret",
        )

    @pytest.fixture
    def _peers(self, peer_provider: Any) -> Iterator[_Peers]:
        peers = _Peers(peer_provider if callable(peer_provider) else None)
        yield peers
        peers.close()

    @staticmethod
    def _need_peer(peer_provider: Any, why: str) -> None:
        value = require(peer_provider, why)
        if value is None:
            pytest.skip(f"{why}: the provider speaks no HTTP (`peer_provider` is None)")

    # ---- shapes ------------------------------------------------------------------------

    def test_declares_name_and_capabilities(self, provider: Any) -> None:
        if not isinstance(getattr(provider, "name", None), str) or not provider.name:
            fail("a provider has a non-empty string `name`")
        if not isinstance(getattr(provider, "capabilities", None), ProviderCapabilities):
            fail(
                f"`capabilities` must be a ProviderCapabilities, got {type(getattr(provider, 'capabilities', None)).__name__}"
            )
        for method in ("generate", "stream", "agenerate", "astream", "close"):
            if not callable(getattr(provider, method, None)):
                fail(f"a provider implements {method}() (BaseProvider has defaults for the async twins)")
        if not asyncio.iscoroutinefunction(provider.agenerate):
            fail("agenerate() must be `async def`")

    def test_generate_returns_a_response(self, provider: Any, llm_request: LLMRequest) -> None:
        response = provider.generate(llm_request)
        if not isinstance(response, LLMResponse):
            fail(f"generate() must return an LLMResponse, got {type(response).__name__}")
        if not isinstance(response.text, str) or not isinstance(response.tool_calls, list):
            fail("LLMResponse.text must be a str and .tool_calls a list")
        if not response.text and not response.tool_calls:
            fail("generate() returned neither text nor tool calls")

    def test_stream_yields_chunks(self, provider: Any, llm_request: LLMRequest) -> None:
        if not provider.capabilities.streaming:
            chunks = list(LLM(provider).stream(llm_request))
            if len(chunks) != 1:
                fail("a non-streaming provider must still stream through the LLM wrapper, as one chunk")
            return
        chunks = list(provider.stream(llm_request))
        if not chunks or not all(isinstance(c, LLMChunk) for c in chunks):
            fail(f"stream() must yield LLMChunk objects, got {[type(c).__name__ for c in chunks][:5]}")
        if not _text(chunks) and not any(c.tool_calls for c in chunks):
            fail("stream() produced no text and no tool calls")

    def test_async_twins(self, provider: Any, llm_request: LLMRequest) -> None:
        async def both() -> tuple[Any, list[Any]]:
            response = await provider.agenerate(llm_request)
            chunks = await _adrain(provider, llm_request) if provider.capabilities.streaming else []
            return response, chunks

        async def watched() -> tuple[tuple[Any, list[Any]], float]:
            await both()  # once unwatched: building a client on first use may block briefly
            return await with_watchdog(both)

        (response, chunks), lag = asyncio.run(watched())
        if lag > WATCHDOG_LIMIT_S:
            fail(
                f"agenerate()/astream() held the event loop for {lag:.2f}s: they must not block it (use async "
                "I/O, or asyncio.to_thread for blocking work)"
            )
        if not isinstance(response, LLMResponse):
            fail(f"agenerate() must return an LLMResponse, got {type(response).__name__}")
        if not response.text and not response.tool_calls:
            fail("agenerate() returned neither text nor tool calls")
        if provider.capabilities.streaming:
            if not chunks or not all(isinstance(c, LLMChunk) for c in chunks):
                fail("astream() must yield LLMChunk objects")
            if not _text(chunks) and not any(c.tool_calls for c in chunks):
                fail("astream() produced no text and no tool calls")

    def test_every_path_gives_the_same_answer(
        self, provider: Any, llm_request: LLMRequest, deterministic: bool | Missing
    ) -> None:
        if not require(deterministic, "comparing generate, stream, agenerate and astream"):
            pytest.skip("the provider is declared not deterministic (fixture `deterministic` is False)")
        answers = {"generate()": provider.generate(llm_request).text}
        answers["agenerate()"] = asyncio.run(provider.agenerate(llm_request)).text
        if provider.capabilities.streaming:
            answers["stream()"] = _text(list(provider.stream(llm_request)))
            answers["astream()"] = _text(asyncio.run(_adrain(provider, llm_request)))
        answers["LLM.stream()"] = "".join(c.text for c in LLM(provider).stream(llm_request))
        first = answers["generate()"]
        for path, text in answers.items():
            if text != first:
                fail(f"{path} answered {text!r}, generate() answered {first!r}: the paths must agree")

    def test_usage_is_reported_as_declared(self, provider: Any, llm_request: LLMRequest) -> None:
        caps = provider.capabilities
        with LLM(provider).stream(llm_request) as stream:
            list(stream)
        wrapped = stream.response
        assert wrapped is not None
        if wrapped.usage is None:
            fail("the LLM wrapper must always end a stream with usage")
        if caps.usage_in_stream:
            if caps.streaming:
                chunks = list(provider.stream(llm_request))
                usages = [c.usage for c in chunks if c.usage is not None]
                if not usages:
                    fail("capabilities.usage_in_stream is True but no chunk of stream() carried usage")
                _check_usage(usages[-1], "stream()")
                achunks = asyncio.run(_adrain(provider, llm_request))
                ausages = [c.usage for c in achunks if c.usage is not None]
                if not ausages:
                    fail("capabilities.usage_in_stream is True but no chunk of astream() carried usage")
                _check_usage(ausages[-1], "astream()")
            if wrapped.usage.estimated:
                fail("capabilities.usage_in_stream is True but the stream carried no usage (Amsha had to estimate)")
        sync_usage = provider.generate(llm_request).usage
        async_usage = asyncio.run(provider.agenerate(llm_request)).usage
        if caps.usage_in_response:
            for path, usage in (("generate()", sync_usage), ("agenerate()", async_usage)):
                if usage is None:
                    fail(f"capabilities.usage_in_response is True but {path} returned no usage")
                _check_usage(usage, path)
        elif caps.usage_in_stream and (sync_usage is None or async_usage is None):
            fail(
                "stream() reports usage but generate()/agenerate() return none: return the API's usage from "
                "them too and declare capabilities.usage_in_response=True"
            )
        elif sync_usage is not None:
            _check_usage(sync_usage, "generate()")

    def test_inputs_are_not_mutated_and_answers_not_shared(self, provider: Any, llm_request: LLMRequest) -> None:
        request = copy.deepcopy(llm_request)
        before = request.to_dict()
        first = provider.generate(request)
        second = provider.generate(request)
        asyncio.run(provider.agenerate(request))
        list(provider.stream(request))
        asyncio.run(_adrain(provider, request))
        if request.to_dict() != before:
            fail("the provider changed the LLMRequest it was given (requests may be reused: copy, never mutate)")
        if first is second or first.tool_calls is second.tool_calls:
            fail("two generate() calls returned the same object: each answer must be a new object")
        first.tool_calls.append(ToolCall("alias", "alias"))
        first.text += " changed"
        third = provider.generate(request)
        if any(c.id == "alias" for c in third.tool_calls) or third.text.endswith(" changed"):
            fail("changing a returned LLMResponse changed a later answer: the provider hands out shared state")

    def test_closing_a_stream_ends_it(self, provider: Any, llm_request: LLMRequest) -> None:
        if not provider.capabilities.streaming:
            with LLM(provider).stream(llm_request) as stream:
                chunks = list(stream)
            if len(chunks) != 1 or stream.response is None:
                fail("a non-streaming provider's answer must reach LLM.stream as one chunk")
            return
        iterator = provider.stream(llm_request)
        next(iter(iterator))
        close = getattr(iterator, "close", None)
        if close is None:
            fail("stream() must return an iterator with close() (a generator), so cancel can close the connection")
        close()
        if next(iterator, None) is not None:
            fail("after close(), a stream must yield nothing more")

        async def aclose() -> None:
            aiter = provider.astream(llm_request)
            await aiter.__anext__()
            if not hasattr(aiter, "aclose"):
                fail("astream() must return an async iterator with aclose()")
            await aiter.aclose()

        asyncio.run(aclose())

    def test_several_event_loops_and_threads(self, provider: Any, llm_request: LLMRequest) -> None:
        _loops_and_threads(provider, llm_request, "the provider")

    def test_system_message_and_multi_turn(self, provider: Any) -> None:
        request = LLMRequest(messages=conversation())
        for path, response in (
            ("generate()", provider.generate(request)),
            ("agenerate()", asyncio.run(provider.agenerate(request))),
        ):
            if not isinstance(response, LLMResponse) or not (response.text or response.tool_calls):
                fail(f"{path} must answer a conversation with a system message and several turns")

    def test_stop_sequences(self, provider: Any, llm_request: LLMRequest, deterministic: bool | Missing) -> None:
        if not require(deterministic, "checking that stop sequences cut the answer"):
            pytest.skip("the provider is declared not deterministic: its answer cannot be predicted")
        full = provider.generate(llm_request).text
        words = full.split()
        if len(words) < 2:
            fail(f"the stop check needs an answer of two words or more to `llm_request`, got {full!r}")
        stop = words[1]
        request = copy.deepcopy(llm_request)
        request.stop = [stop]
        texts = {
            "generate()": provider.generate(request).text,
            "agenerate()": asyncio.run(provider.agenerate(request)).text,
        }
        if provider.capabilities.streaming:
            texts["stream()"] = _text(list(provider.stream(request)))
        for path, text in texts.items():
            if stop in text:
                fail(f"{path} with stop=[{stop!r}] answered {text!r}: the answer must end before the stop sequence")

    # ---- features ----------------------------------------------------------------------

    def test_tool_calls_in_every_path(self, provider: Any, llm_request: LLMRequest) -> None:
        if not provider.capabilities.tools:
            plain = provider.generate(llm_request)
            if not isinstance(plain, LLMResponse) or plain.tool_calls:
                fail("a provider declaring no tool support must answer plain requests without tool calls")
            pytest.skip("the provider does not declare tools (capabilities.tools is False)")
        _check_magic_call(provider.generate(tool_request()).tool_calls, "generate()")
        _check_magic_call(asyncio.run(provider.agenerate(tool_request())).tool_calls, "agenerate()")
        if provider.capabilities.streaming:
            chunks = list(provider.stream(tool_request()))
            if not any(c.tool_calls for c in chunks):
                fail("stream() returned no tool-call deltas for a request forcing a tool call (tool calls dropped?)")
        with LLM(provider).stream(tool_request()) as stream:
            list(stream)
        assert stream.response is not None
        _check_magic_call(stream.response.tool_calls, "stream() (assembled by the LLM wrapper)")

        async def astream() -> LLMResponse | None:
            s = LLM(provider).astream(tool_request())
            async for _ in s:
                pass
            return s.response

        aresponse = asyncio.run(astream())
        assert aresponse is not None
        _check_magic_call(aresponse.tool_calls, "astream() (assembled by the LLM wrapper)")

    def test_tool_result_history(self, provider: Any) -> None:
        if not provider.capabilities.tools:
            pytest.skip("the provider does not declare tools (capabilities.tools is False)")
        request = LLMRequest(messages=tool_history(), tools=[copy.deepcopy(MAGIC_TOOL)])
        for path, response in (
            ("generate()", provider.generate(request)),
            ("agenerate()", asyncio.run(provider.agenerate(request))),
        ):
            if not isinstance(response, LLMResponse) or not (response.text or response.tool_calls):
                fail(f"{path} must answer a history holding a tool call and its result")

    def test_structured_output(self, provider: Any) -> None:
        if not provider.capabilities.structured_output:
            pytest.skip("the provider does not declare structured_output")
        _check_person(provider.generate(structured_request()).text, "generate()")
        _check_person(asyncio.run(provider.agenerate(structured_request())).text, "agenerate()")
        if provider.capabilities.streaming:
            _check_person(_text(list(provider.stream(structured_request()))), "stream()")

    def test_model_asked_for_is_used(self, provider: Any, llm_request: LLMRequest, other_model: str | Missing) -> None:
        model = require(other_model, "checking that LLMRequest.model is honoured")
        request = copy.deepcopy(llm_request)
        request.model = model
        for path, response in (
            ("generate()", provider.generate(request)),
            ("agenerate()", asyncio.run(provider.agenerate(request))),
        ):
            if not isinstance(response.model, str) or not response.model.startswith(model):
                fail(
                    f"{path} with LLMRequest.model={model!r} answered as model {response.model!r}: use the model "
                    "asked for, and report the model that answered in LLMResponse.model"
                )
        if provider.capabilities.streaming:
            for path, chunks in (
                ("stream()", list(provider.stream(request))),
                ("astream()", asyncio.run(_adrain(provider, request))),
            ):
                named = [c.model for c in chunks if c.model]
                if named and not named[-1].startswith(model):
                    fail(f"{path} with LLMRequest.model={model!r} answered as model {named[-1]!r}")

    # ---- typed errors ------------------------------------------------------------------

    def _failing(self, kind: str, failing_provider: Any, peer_provider: Any, peers: _Peers) -> Callable[[], Any]:
        """A builder of providers failing as ``kind``: the plugin's, or one over a peer."""
        if callable(failing_provider) and failing_provider(kind) is not None:
            return lambda: failing_provider(kind)
        if isinstance(failing_provider, Missing) and isinstance(peer_provider, Missing):
            require(failing_provider, f"checking {kind} errors")
        if isinstance(peer_provider, Missing):
            require(peer_provider, f"producing a {kind} failure (failing_provider returned None)")
        if peer_provider is None:
            require(failing_provider, f"checking {kind} errors of a provider that speaks no HTTP")
            pytest.skip(f"failing_provider cannot simulate {kind} and the provider speaks no HTTP")
        peer = peers.peer()
        if kind == "timeout":
            provider = peers.provider(peer, TIMEOUT_S)
            peer.shape(first_byte_delay_s=TIMEOUT_S * 6)
        elif kind == "connection":
            provider = peers.provider(peer, 5.0)
            peer.stop()
        elif kind == "stream_interrupt":
            provider = peers.provider(peer, 5.0)
            peer.shape(drop_after_chunks=-1)
        else:
            provider = peers.provider(peer, 5.0)
            status = ERROR_KINDS[kind][2]
            assert status is not None
            peer.script(_error_reply(status, f"simulated {kind}"))
        return lambda: provider

    @pytest.mark.parametrize("kind", list(ERROR_KINDS))
    def test_errors_are_typed(
        self, failing_provider: Any, peer_provider: Any, _peers: _Peers, llm_request: LLMRequest, kind: str
    ) -> None:
        make = self._failing(kind, failing_provider, peer_provider, _peers)
        expected, retryable, status = ERROR_KINDS[kind]
        via_peer = bool(_peers.peers)

        def check(path: str, call: Callable[[Any], Any]) -> None:
            try:
                call(make())
            except ProviderError as exc:
                if not isinstance(exc, expected):
                    fail(
                        f"a {kind} failure must raise {expected.__name__} from {path}, got {type(exc).__name__}: {exc}"
                    )
                if exc.retryable is not retryable:
                    fail(f"{type(exc).__name__}.retryable must be {retryable} ({kind}, from {path})")
                if via_peer and kind == "rate_limit" and getattr(exc, "retry_after", None) != 1.0:
                    fail(
                        f"the peer answered 429 with Retry-After: 1, but {path} raised a RateLimitError with "
                        f"retry_after={getattr(exc, 'retry_after', None)!r}"
                    )
                if via_peer and status is not None and exc.status != status:
                    fail(f"{type(exc).__name__}.status must be the HTTP status {status}, got {exc.status!r} ({path})")
                return
            except Exception as exc:
                fail(f"a {kind} failure must raise an amsha ProviderError from {path}, got {type(exc).__name__}: {exc}")
            fail(f"the provider built for a {kind} failure did not fail ({path})")

        check("generate()", lambda p: p.generate(llm_request))
        check("agenerate()", lambda p: asyncio.run(p.agenerate(llm_request)))
        caps = make().capabilities
        if caps.streaming:
            check("stream()", lambda p: list(p.stream(llm_request)))
            check("astream()", lambda p: asyncio.run(_adrain(p, llm_request)))

    def test_interrupted_stream(
        self, failing_provider: Any, peer_provider: Any, _peers: _Peers, llm_request: LLMRequest, provider: Any
    ) -> None:
        if not provider.capabilities.streaming:
            pytest.skip("the provider does not stream (capabilities.streaming is False)")
        make = self._failing("stream_interrupt", failing_provider, peer_provider, _peers)

        def raw(path: str, collect: Callable[[Any, list[LLMChunk]], Any]) -> None:
            got: list[LLMChunk] = []
            try:
                collect(make(), got)
            except ProviderError as exc:
                if not _text(got):
                    fail(f"{path}: the interrupted stream must yield its text before it breaks (none arrived)")
                if isinstance(exc, StreamInterruptedError) and exc.partial_text != _text(got):
                    fail(
                        f"{path}: StreamInterruptedError.partial_text {exc.partial_text!r} must be the text "
                        f"yielded before the break, {_text(got)!r}"
                    )
                return
            except Exception as exc:
                fail(
                    f"a stream broken mid-way must raise an amsha ProviderError from {path}, got {type(exc).__name__}: {exc}"
                )
            fail(f"{path}: a stream broken mid-way ended without an error (the break was swallowed)")

        def sync(p: Any, got: list[LLMChunk]) -> None:
            for chunk in p.stream(llm_request):
                got.append(chunk)

        def asyn(p: Any, got: list[LLMChunk]) -> None:
            async def go() -> None:
                async for chunk in p.astream(llm_request):
                    got.append(chunk)

            asyncio.run(go())

        raw("stream()", sync)
        raw("astream()", asyn)
        parts: list[str] = []
        try:
            for chunk in LLM(make(), retry=RetryConfig(max_retries=0)).stream(llm_request):
                parts.append(chunk.text)
        except StreamInterruptedError as exc:
            if exc.partial_text != "".join(parts):
                fail(f"through the LLM wrapper, partial_text {exc.partial_text!r} must be {''.join(parts)!r}")
        except Exception as exc:
            fail(
                f"through the LLM wrapper, a broken stream must raise StreamInterruptedError, got {type(exc).__name__}"
            )
        else:
            fail("through the LLM wrapper, a stream broken mid-way ended without an error")

    # ---- the transport (an HTTPPeer) ---------------------------------------------------

    def test_closing_a_stream_closes_the_connection(
        self, provider: Any, peer_provider: Any, _peers: _Peers, llm_request: LLMRequest
    ) -> None:
        self._need_peer(peer_provider, "checking that closing a stream closes its HTTP response")
        if not provider.capabilities.streaming:
            pytest.skip("the provider does not stream (capabilities.streaming is False)")
        peer = _peers.peer()
        p = _peers.provider(peer)
        peer.shape(stall_after_chunks=-1, stall_s=10.0)

        def closed(start: int) -> bool:
            return peer.wait_for(lambda pr: any(r.outcome == "client_closed" for r in pr.requests[start:]), 2.0)

        iterator = p.stream(llm_request)
        next(iter(iterator))
        iterator.close()
        if not closed(0):
            fail(
                "after stream().close() the HTTP response stayed open (the peer saw no disconnect within 2 s): "
                "close() must close the response, as a generator's finally does"
            )

        async def aclose() -> None:
            aiter = p.astream(llm_request)
            await aiter.__anext__()
            await aiter.aclose()

        start = len(peer.requests)
        asyncio.run(aclose())
        if not closed(start):
            fail("after astream().aclose() the HTTP response stayed open (the peer saw no disconnect within 2 s)")

    def test_async_methods_do_not_block_the_loop(
        self, peer_provider: Any, _peers: _Peers, llm_request: LLMRequest
    ) -> None:
        self._need_peer(peer_provider, "checking that the async methods do not block the event loop")
        peer = _peers.peer()
        p = _peers.provider(peer)

        async def go() -> None:
            await p.agenerate(llm_request)  # unwatched: building a client on first use may block briefly
            peer.shape(first_byte_delay_s=0.3, chunk_delay_s=0.02)
            _, lag = await with_watchdog(lambda: p.agenerate(llm_request))
            if lag > WATCHDOG_LIMIT_S:
                fail(
                    f"agenerate() held the event loop for {lag:.2f}s while the server was slow: it does "
                    "blocking I/O inside `async def` (use an async client)"
                )
            if p.capabilities.streaming:
                _, lag = await with_watchdog(lambda: _adrain(p, llm_request))
                if lag > WATCHDOG_LIMIT_S:
                    fail(f"astream() held the event loop for {lag:.2f}s: it does blocking I/O inside async code")

        asyncio.run(go())

    def test_several_event_loops_over_http(self, peer_provider: Any, _peers: _Peers, llm_request: LLMRequest) -> None:
        self._need_peer(peer_provider, "checking several event loops against one provider")
        peer = _peers.peer()
        _loops_and_threads(_peers.provider(peer), llm_request, "the provider over HTTP")

    def test_requests_reach_the_wire(
        self, provider: Any, peer_provider: Any, _peers: _Peers, llm_request: LLMRequest, other_model: str | Missing
    ) -> None:
        self._need_peer(peer_provider, "checking what the provider sends")
        peer = _peers.peer()
        p = _peers.provider(peer)
        caps = p.capabilities

        def sent(request: LLMRequest, path: str = "generate") -> PeerRequest:
            start = len(peer.requests)
            if path == "generate":
                p.generate(request)
            elif path == "agenerate":
                asyncio.run(p.agenerate(request))
            elif path == "stream":
                list(p.stream(request))
            else:
                asyncio.run(_adrain(p, request))
            if len(peer.requests) <= start:
                fail(f"{path}() sent nothing to the peer at {peer.url}")
            return peer.requests[-1]

        def in_order(text: str, markers: list[str], what: str) -> None:
            at = -1
            for marker in markers:
                found = text.find(marker, at + 1)
                if found < 0:
                    fail(f"{what}: {marker!r} never reached the wire")
                if found < at:
                    fail(f"{what}: the messages reached the wire out of order")
                at = found

        markers = ["contract-system-marker", "contract-turn-one", "contract-turn-two", "contract-turn-three"]
        for path in ("generate", "agenerate", *(("stream", "astream") if caps.streaming else ())):
            in_order(sent(LLMRequest(messages=conversation()), path).text, markers, f"{path}() of a conversation")
        model = require(other_model, "checking that LLMRequest.model reaches the wire")
        for path in ("generate", "agenerate", *(("stream", "astream") if caps.streaming else ())):
            request = copy.deepcopy(llm_request)
            request.model = model
            if model not in sent(request, path).text:
                fail(f"{path}() with LLMRequest.model={model!r} sent another model (request.model ignored?)")
        stopped = copy.deepcopy(llm_request)
        stopped.stop = ["contract-stop-marker"]
        if "contract-stop-marker" not in sent(stopped).text:
            fail("LLMRequest.stop never reached the wire (stop sequences dropped?)")
        if caps.tools:
            wire = sent(tool_request()).text
            if "magic_function" not in wire or '"input"' not in wire:
                fail("LLMRequest.tools never reached the wire")
            history = LLMRequest(messages=tool_history(), tools=[copy.deepcopy(MAGIC_TOOL)])
            in_order(
                sent(history).text,
                ["call_contract_1", "contract-tool-result-22", "So what was the result?"],
                "a tool-result history",
            )
        if caps.structured_output and "contract_age_years" not in sent(structured_request()).text:
            fail("LLMRequest.response_format (the JSON schema) never reached the wire")

    def test_secret_never_reaches_answers_or_errors(
        self,
        peer_provider: Any,
        _peers: _Peers,
        api_key_env: str | Missing | None,
        llm_request: LLMRequest,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        with registered_secret():  # the canary the provider registers is forgotten afterwards
            self._secret_check(peer_provider, _peers, api_key_env, llm_request, monkeypatch)

    def _secret_check(
        self,
        peer_provider: Any,
        _peers: _Peers,
        api_key_env: str | Missing | None,
        llm_request: LLMRequest,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        env = require(api_key_env, "checking that the API key never leaks")
        if env is None:
            pytest.skip("the provider takes no secret (`api_key_env` is None)")
        self._need_peer(peer_provider, "checking that the API key never leaks")
        secret = canary()
        monkeypatch.setenv(env, secret)
        peer = _peers.peer()
        p = _peers.provider(peer)
        answers: list[Any] = [repr(p), str(p)]
        answers.append(p.generate(llm_request).to_dict())
        if p.capabilities.streaming:
            answers += [repr(c) for c in p.stream(llm_request)]
        if leaks(secret, *answers):
            fail(f"the API key from ${env} appears in what the provider returns")
        if not any(secret in r.text for r in peer.requests):
            fail(f"the provider never sent the key it was given in ${env}: is `api_key_env` the variable it reads?")

        def echo(request: PeerRequest) -> PeerReply:
            # A server that echoes the credentials in its error message, as some do.
            key = request.headers.get("authorization") or request.headers.get("x-api-key") or request.path
            return _error_reply(status, f"invalid credentials {key}")

        for status in (401, 403, 429, 500, 400):
            peer.responder = echo
            calls: list[tuple[str, Callable[[], Any]]] = [
                ("generate()", lambda: p.generate(llm_request)),
                ("agenerate()", lambda: asyncio.run(p.agenerate(llm_request))),
            ]
            if p.capabilities.streaming:
                calls.append(("stream()", lambda: list(p.stream(llm_request))))
            for path, call in calls:
                try:
                    call()
                except Exception as exc:
                    if leaks(secret, *exception_texts(exc)):
                        fail(
                            f"the API key from ${env} appears in the {type(exc).__name__} that {path} raised on HTTP "
                            f"{status}: read keys with amsha.get_secret (it registers them for scrubbing) and never "
                            "put one in a message"
                        )
                else:
                    fail(f"{path} did not fail on HTTP {status}")
        slow = _peers.provider(_peers.peer(), TIMEOUT_S)
        _peers.peers[-1].shape(first_byte_delay_s=TIMEOUT_S * 6)
        gone = _peers.provider(_peers.peer())
        _peers.peers[-1].stop()
        for what, target in (("a timeout", slow), ("a refused connection", gone)):
            try:
                target.generate(llm_request)
            except Exception as exc:
                if leaks(secret, *exception_texts(exc)):
                    fail(f"the API key from ${env} appears in the {type(exc).__name__} raised on {what}")


def _loops_and_threads(provider: Any, request: LLMRequest, who: str) -> None:
    """Call the async twins from several event loops in a row, then from threads at once."""
    for i in range(2):
        try:
            asyncio.run(provider.agenerate(request))
            if provider.capabilities.streaming:
                asyncio.run(_adrain(provider, request))
        except Exception as exc:
            fail(
                f"{who}: asyncio.run() #{i + 1} of agenerate()/astream() raised {type(exc).__name__}: {exc} "
                "(an async client kept from an earlier event loop? keep one per loop)"
            )
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            provider.generate(request)
            asyncio.run(provider.agenerate(request))
            if provider.capabilities.streaming:
                list(provider.stream(request))
                asyncio.run(_adrain(provider, request))
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors:
        first = errors[0]
        fail(
            f"{who}: called from 3 threads at once (each with its own event loop) it raised "
            f"{type(first).__name__}: {first}"
        )
