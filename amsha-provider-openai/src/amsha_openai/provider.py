"""Provider ``openai``: the official ``openai`` SDK speaking Chat Completions to OpenAI or to any
compatible server (vLLM, Ollama, llama.cpp's server, LM Studio, gateways), chosen by ``base_url``.

One sync client per provider instance (thread-safe, connections reused), and one async client
per event loop it is used on (an HTTP connection belongs to the loop that opened it), all
created on first use and closed by :meth:`OpenAIProvider.close`. The SDK's own retries are off
(``max_retries=0``): Amsha's ``LLM`` wrapper owns retry, so there is one policy, seen in
events. Streams ask for usage (``stream_options.include_usage``) and release their HTTP
connection the moment they are closed, which is how cancel works.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import openai
from amsha import (
    BackendContext,
    LLMChunk,
    LLMRequest,
    LLMResponse,
    Message,
    ProviderCapabilities,
    RetryConfig,
    ToolCall,
    ToolCallDelta,
    Usage,
    errors,
    get_secret,
)
from amsha.secrets import redact
from pydantic import SecretStr, ValidationError

from ._errors import PROVIDER, ErrorContext, map_error
from .options import OPENAI_BASE_URL, OpenAIOptions

__all__ = ["OpenAIProvider", "build"]

#: Sent as the API key when ``base_url`` points at a server that needs none and the key's
#: environment variable is unset (the SDK refuses to build a client without a key).
PLACEHOLDER_KEY = "amsha-no-key"
_NAME = re.compile(r"[^a-zA-Z0-9_-]")


class OpenAIProvider:
    """Amsha provider for the Chat Completions protocol, on the official ``openai`` SDK.

    ``options``: :class:`OpenAIOptions` (or a mapping validated into one). ``model``: the
    default model (``provider.model`` in config); it wins over ``options.model``. ``retry``:
    the policy :attr:`retry_config` reports when ``options.max_retries`` is set (the session
    passes the config's ``retry`` section); ``key``: where the options sit in config, for
    error messages.
    """

    name = PROVIDER

    def __init__(
        self,
        options: OpenAIOptions | Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        retry: RetryConfig | None = None,
        key: str = "provider",
    ) -> None:
        if not isinstance(options, OpenAIOptions):
            try:
                options = OpenAIOptions.model_validate(dict(options or {}))
            except ValidationError as err:
                from amsha.config import format_validation_error

                raise errors.ConfigError(format_validation_error(err, prefix=f"{key}.options")) from None
        self.options = options
        resolved = model or options.model
        if not resolved:
            raise errors.ConfigError(
                [(f"{key}.model", "provider 'openai' needs a model: set it (or options.model), e.g. gpt-4o-mini")]
            )
        self.model: str = resolved
        self.base_url = options.base_url or OPENAI_BASE_URL
        self._api_key = get_secret(options.api_key_env, required=False)
        if self._api_key is None and options.base_url is None:
            raise errors.ConfigError(
                [
                    (
                        f"{key}.options.api_key_env",
                        f"environment variable {options.api_key_env!r} is not set; it must hold the OpenAI API key "
                        "(a server that needs no key is selected with base_url, and then the variable may be unset)",
                    )
                ]
            )
        self._secret_headers: dict[str, SecretStr] = {}
        for header, env in options.extra_headers_env.items():
            secret = get_secret(env, key=f"{key}.options.extra_headers_env.{header}")
            assert secret is not None
            self._secret_headers[header] = secret
        self.capabilities = ProviderCapabilities(
            streaming=True,
            tools=True,
            structured_output=True,
            usage_in_stream=options.include_usage,
            usage_in_response=True,
            native_async=True,
        )
        if options.max_retries is not None:
            base = retry or RetryConfig()
            self.retry_config: RetryConfig | None = base.model_copy(update={"max_retries": options.max_retries})
        else:
            self.retry_config = None
        self._errors = ErrorContext(self.model, self.base_url, options.api_key_env)
        self._defaults = {
            k: v
            for k, v in (
                ("temperature", options.temperature),
                ("max_tokens", options.max_tokens),
                ("stop", options.stop),
                ("seed", options.seed),
            )
            if v is not None
        }
        self._lock = threading.Lock()
        self._client: openai.OpenAI | None = None
        self._aclients: dict[asyncio.AbstractEventLoop, openai.AsyncOpenAI] = {}

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={self.base_url!r})"

    # ---- clients ----------------------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        headers = dict(self.options.extra_headers)
        headers.update({name: value.get_secret_value() for name, value in self._secret_headers.items()})
        return {
            "api_key": self._api_key.get_secret_value() if self._api_key is not None else PLACEHOLDER_KEY,
            "organization": self.options.organization,
            "project": self.options.project,
            "base_url": self.base_url,
            "timeout": self.options.timeout_s,
            "max_retries": 0,  # Amsha's LLM wrapper owns retry
            "default_headers": headers or None,
        }

    @property
    def client(self) -> openai.OpenAI:
        """The sync SDK client, created on first use."""
        client = self._client
        if client is None:
            with self._lock:
                client = self._client
                if client is None:
                    client = self._client = openai.OpenAI(**self._client_kwargs())
        return client

    def _aclient(self) -> openai.AsyncOpenAI:
        """The async SDK client of the running event loop, created on first use there."""
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            with self._lock:
                client = self._aclients.get(loop)
                if client is None:
                    # Clients of loops that are gone cannot be closed any more; forget them.
                    for dead in [lp for lp in self._aclients if lp.is_closed()]:
                        del self._aclients[dead]
                    client = self._aclients[loop] = openai.AsyncOpenAI(**self._client_kwargs())
        return client

    def close(self) -> None:
        """Close every client (and so every pooled connection). The provider may be used
        again afterwards: clients are created anew on demand."""
        with self._lock:
            client, self._client = self._client, None
            aclients, self._aclients = self._aclients, {}
        if client is not None:
            client.close()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, aclient in aclients.items():
            if loop.is_closed():
                continue
            if loop is running:
                # Called synchronously from inside that loop: it cannot be waited for here.
                loop.create_task(aclient.close())
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(aclient.close(), loop)
                try:
                    future.result(timeout=5)
                except Exception:
                    future.cancel()
            else:
                loop.run_until_complete(aclient.close())

    async def aclose(self) -> None:
        """Async twin of :meth:`close` for the running loop's client (and the sync client)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            aclient = self._aclients.pop(loop, None)
        if aclient is not None:
            await aclient.close()
        self.close()

    def __enter__(self) -> OpenAIProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests ---------------------------------------------------------------------------

    def params(self, request: LLMRequest, *, stream: bool) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for ``request``."""
        messages = request.messages
        params: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": (
                [_message(messages[0], 0)] if len(messages) == 1 else [_message(m, i) for i, m in enumerate(messages)]
            ),
        }
        defaults = self._defaults
        if (
            defaults
            or request.temperature is not None
            or request.max_tokens is not None
            or request.stop is not None
            or request.seed is not None
        ):
            for name in ("temperature", "max_tokens", "stop", "seed"):
                value = getattr(request, name)
                if value is None:
                    value = defaults.get(name)
                if value is not None:
                    params[self.options.max_tokens_field if name == "max_tokens" else name] = value
        if request.timeout_s is not None:
            params["timeout"] = request.timeout_s  # this request's own, over the client's
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
        if request.tool_choice is not None:
            params["tool_choice"] = _tool_choice(request.tool_choice)
        if request.response_format is not None:
            params["response_format"] = _response_format(request.response_format)
        if stream:
            params["stream"] = True
            if self.options.include_usage:
                params["stream_options"] = {"include_usage": True}
        if request.extra:
            # Anything else (top_p, a server's own parameters such as vLLM's top_k) goes into
            # the JSON body as given.
            params["extra_body"] = dict(request.extra)
        return params

    def _error(self, exc: BaseException, model: str, stream: _StreamState | None = None) -> errors.ProviderError:
        ctx = self._errors if model == self.model else ErrorContext(model, self.base_url, self.options.api_key_env)
        error = map_error(exc, ctx)
        if stream is not None and stream.started and not isinstance(error, errors.StreamInterruptedError):
            return errors.StreamInterruptedError(
                f"the stream broke after output had started: {error}",
                partial_text="".join(stream.parts),
                provider=PROVIDER,
                status=error.status,
            )
        return error

    def _deadlines(self, start: float, *, events: bool = True) -> _Deadlines:
        options = self.options
        idle = options.idle_timeout_s if options.idle_timeout_s is not None else options.timeout_s
        total = None if options.total_timeout_s is None else start + options.total_timeout_s
        return _Deadlines(idle, total, options.total_timeout_s, self.base_url, events)

    def _check_event_stream(self, response: Any, model: str) -> None:
        """Refuse (not retryable) a stream request answered with something other than an
        event stream (an HTML login page of a proxy, JSON from a server that ignores
        ``stream``): say what came back, and where."""
        content_type = response.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() == "text/event-stream":
            return
        try:
            head = next(response.iter_bytes(), b"")[:200]
        except Exception:
            head = b""
        shown = redact(head.decode("utf-8", "replace"))
        raise errors.ProviderError(
            f"the server at {self.base_url} answered a stream request for model {model!r} with HTTP "
            f"{response.status_code} {content_type or '(no content type)'}, not an event stream; it began "
            f"{shown!r}. Check that base_url is the API root of a Chat Completions server (it usually ends in /v1)",
            provider=PROVIDER,
            status=response.status_code,
            retryable=False,
        )

    # ---- sync -------------------------------------------------------------------------------

    def generate(self, request: LLMRequest) -> LLMResponse:
        """One complete answer (a JSON response)."""
        params = self.params(request, stream=False)
        if self.options.total_timeout_s is not None:
            return self._generate_within(params)
        try:
            completion = self.client.chat.completions.create(**params)
        except Exception as exc:
            failure = self._error(exc, params["model"])
        else:
            return self._response(completion, params["model"])
        # Raised outside the except block: the SDK's exception (its request carries the key)
        # is neither the cause nor the context of Amsha's.
        raise failure

    def _generate_within(self, params: dict[str, Any]) -> LLMResponse:
        """:meth:`generate` under ``total_timeout_s``: the body is read through the deadline
        check, so a server dripping its answer cannot outlast it."""
        start = time.monotonic()
        model = params["model"]
        failure: errors.ProviderError | None = None
        try:
            create = self.client.chat.completions.with_streaming_response.create
            with create(**params, timeout=self._first_byte_timeout()) as raw:
                _reuse_connection(raw.http_response, self._deadlines(start, events=False))
                completion = raw.parse()
        except Exception as exc:
            failure = self._error(exc, model)
        if failure is not None:
            raise failure
        return self._response(completion, model)

    async def _agenerate_within(self, params: dict[str, Any]) -> LLMResponse:
        """Async twin of :meth:`_generate_within`."""
        start = time.monotonic()
        model = params["model"]
        failure: errors.ProviderError | None = None
        try:
            create = self._aclient().chat.completions.with_streaming_response.create
            async with create(**params, timeout=self._first_byte_timeout()) as raw:
                _areuse_connection(raw.http_response, self._deadlines(start, events=False))
                completion = await raw.parse()
        except Exception as exc:
            failure = self._error(exc, model)
        if failure is not None:
            raise failure
        return self._response(completion, model)

    def _first_byte_timeout(self) -> float:
        total = self.options.total_timeout_s
        return self.options.timeout_s if total is None else min(self.options.timeout_s, total)

    def stream(self, request: LLMRequest) -> Iterator[LLMChunk]:
        """The answer as it arrives (SSE). Closing the generator closes the HTTP response."""
        params = self.params(request, stream=True)
        model = params["model"]
        start = time.monotonic()
        failure: errors.ProviderError | None = None
        if self.options.total_timeout_s is not None:
            params["timeout"] = self._first_byte_timeout()
        try:
            sdk_stream = self.client.chat.completions.create(**params)
        except Exception as exc:
            failure = self._error(exc, model)
        if failure is not None:
            raise failure
        try:
            self._check_event_stream(sdk_stream.response, model)
        except errors.ProviderError:
            sdk_stream.close()
            raise
        _reuse_connection(sdk_stream.response, self._deadlines(start))
        state = _StreamState()
        convert = state.convert
        try:
            for raw in sdk_stream:
                chunk = convert(raw)
                if chunk is not None:
                    yield chunk
            state.check_complete(self.base_url)
        except Exception as exc:
            failure = self._error(exc, model, state)
        finally:
            sdk_stream.close()
        if failure is not None:
            raise failure

    # ---- async ------------------------------------------------------------------------------

    async def agenerate(self, request: LLMRequest) -> LLMResponse:
        """Async twin of :meth:`generate`."""
        params = self.params(request, stream=False)
        if self.options.total_timeout_s is not None:
            return await self._agenerate_within(params)
        try:
            completion = await self._aclient().chat.completions.create(**params)
        except Exception as exc:
            failure = self._error(exc, params["model"])
        else:
            return self._response(completion, params["model"])
        raise failure

    async def astream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        """Async twin of :meth:`stream`; ``aclose()`` or cancelling the consumer closes the
        HTTP response at once."""
        params = self.params(request, stream=True)
        model = params["model"]
        start = time.monotonic()
        failure: errors.ProviderError | None = None
        if self.options.total_timeout_s is not None:
            params["timeout"] = self._first_byte_timeout()
        try:
            sdk_stream = await self._aclient().chat.completions.create(**params)
        except Exception as exc:
            failure = self._error(exc, model)
        if failure is not None:
            raise failure
        try:
            self._check_event_stream(sdk_stream.response, model)
        except errors.ProviderError:
            await sdk_stream.close()
            raise
        _areuse_connection(sdk_stream.response, self._deadlines(start))
        state = _StreamState()
        convert = state.convert
        try:
            async for raw in sdk_stream:
                chunk = convert(raw)
                if chunk is not None:
                    yield chunk
            state.check_complete(self.base_url)
        except Exception as exc:
            failure = self._error(exc, model, state)
        finally:
            await sdk_stream.close()
        if failure is not None:
            raise failure

    # ---- responses --------------------------------------------------------------------------

    def _response(self, completion: Any, model: str) -> LLMResponse:
        choices = getattr(completion, "choices", None)
        if not choices:
            if isinstance(completion, str | bytes):
                text = completion.decode("utf-8", "replace") if isinstance(completion, bytes) else completion
                raise errors.ProviderError(
                    f"the server at {self.base_url} answered model {model!r} with text that is not a Chat "
                    f"Completions response; it began {redact(text[:200])!r}. Check that base_url is the API root "
                    "of a Chat Completions server (it usually ends in /v1)",
                    provider=PROVIDER,
                    retryable=False,
                )
            raise errors.ProviderError(
                f"the server at {self.base_url} answered model {model!r} with no choices", provider=PROVIDER
            )
        choice = choices[0]
        message = choice.message
        tool_calls = message.tool_calls
        calls = (
            [
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "{}")
                for c in tool_calls
                if getattr(c, "function", None) is not None
            ]
            if tool_calls
            else []
        )
        usage = completion.usage
        return LLMResponse(
            message.content or "",
            calls,
            choice.finish_reason,
            _usage(usage) if usage is not None else None,
            completion.model,
        )


class _StreamState:
    """What one stream has produced so far (for the partial text of a broken stream)."""

    __slots__ = ("finish_reason", "held", "parts", "started")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.started = False
        self.finish_reason: str | None = None
        self.held = ""
        """A high surrogate that ended the last piece: its pair comes in the next one."""

    def _whole(self, text: str) -> str:
        """``text`` with no character split: a surrogate pair sent in two events (JSON
        ``\\ud83d`` then ``\\ude00``) is joined into its character."""
        if self.held:
            text, self.held = self.held + text, ""
        if "\ud800" <= text[-1] <= "\udbff":
            text, self.held = text[:-1], text[-1]
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")

    def convert(self, raw: Any) -> LLMChunk | None:
        choices = raw.choices
        usage = raw.usage
        if not choices:
            # The last chunk when include_usage is on: no choices, only usage.
            return None if usage is None else LLMChunk("", None, None, _usage(usage), raw.model)
        choice = choices[0]
        delta = choice.delta
        text = delta.content
        tool_calls = delta.tool_calls
        finish = choice.finish_reason
        if tool_calls is None and finish is None and usage is None:
            # The common cases, cheaply: a chunk of text and nothing else, or one with
            # nothing to pass on (the first chunk carries only the role).
            if not text:
                return None
            if self.held or "\ud800" <= text[-1] <= "\udfff":
                text = self._whole(text)  # a surrogate pair split across two events
                if not text:
                    return None
            self.parts.append(text)
            self.started = True
            return LLMChunk(text)
        tools = None
        if tool_calls:
            tools = [
                ToolCallDelta(
                    index=t.index,
                    id=t.id,
                    name=t.function.name if t.function is not None else None,
                    arguments=(t.function.arguments or "") if t.function is not None else "",
                )
                for t in tool_calls
            ]
        if text and (self.held or "\ud800" <= text[-1] <= "\udfff"):
            text = self._whole(text)
        if self.held and (finish or tools):
            text, self.held = (text or "") + self.held, ""  # a lone high surrogate: the stream ends with it
        if not (text or tools or finish or usage):
            return None
        if text:
            self.parts.append(text)
            self.started = True
        elif tools:
            self.started = True
        elif not (finish or usage):
            return None
        if finish:
            self.finish_reason = finish
        return LLMChunk(text or "", tools, finish, _usage(usage) if usage is not None else None, raw.model)

    def check_complete(self, base_url: str) -> None:
        if self.finish_reason is None:
            # The body ended cleanly but the answer did not: a server or proxy cut it short.
            raise errors.ProviderConnectionError(
                f"the stream from {base_url} ended before the answer was finished (no finish_reason)",
                provider=PROVIDER,
            )


_DONE = b"data: [DONE]"


class StreamDeadlineError(Exception):
    """A stream went past its idle or total deadline (mapped to ProviderTimeoutError)."""


class _Deadlines:
    """The idle and total deadlines of one streamed attempt, checked as bytes arrive."""

    __slots__ = ("base_url", "events", "idle_s", "total_at", "total_s")

    def __init__(
        self, idle_s: float, total_at: float | None, total_s: float | None, base_url: str, events: bool = True
    ) -> None:
        self.idle_s = idle_s
        self.total_at = total_at
        self.total_s = total_s
        self.base_url = base_url
        self.events = events
        """True for an event stream (only ``data:`` lines count as activity), False for a body."""

    def check(self, data: bytes, last_event: float) -> float:
        """The time of the last event, after ``data`` arrived; raises past a deadline."""
        now = time.monotonic()
        if not self.events or b"data:" in data:
            last_event = now
        elif now - last_event > self.idle_s:
            raise StreamDeadlineError(
                f"the stream from {self.base_url} sent no event for {self.idle_s:g}s, only keep-alive comments "
                "(idle_timeout_s)"
            )
        if self.total_at is not None and now > self.total_at:
            what = "the stream" if self.events else "the answer"
            raise StreamDeadlineError(
                f"{what} from {self.base_url} took longer than {self.total_s:g}s (total_timeout_s)"
            )
        return last_event


def _reuse_connection(response: Any, deadlines: _Deadlines) -> None:
    """Let a finished stream's connection go back to the pool, and keep the stream's
    deadlines.

    The SDK stops reading at ``data: [DONE]`` and closes the response before the body's end
    marker is read, and an HTTP/1.1 connection with an unread body is closed, not reused:
    every stream would open a new connection (a new TLS handshake). So the body is read to
    its end as soon as the bytes holding ``[DONE]`` arrive. A stream closed before then (a
    cancel) still closes its connection at once. The SDK skips SSE comments without
    returning control, so the deadlines are checked here, as bytes arrive.
    """
    original = response.iter_bytes

    def iter_bytes(*args: Any, **kwargs: Any) -> Iterator[bytes]:
        iterator = original(*args, **kwargs)
        check = deadlines.check
        last = time.monotonic()
        for data in iterator:
            last = check(data, last)
            if _DONE in data:
                for _rest in iterator:
                    pass
            yield data

    response.iter_bytes = iter_bytes


def _areuse_connection(response: Any, deadlines: _Deadlines) -> None:
    """Async twin of :func:`_reuse_connection`."""
    original = response.aiter_bytes

    async def aiter_bytes(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        iterator = original(*args, **kwargs)
        check = deadlines.check
        last = time.monotonic()
        async for data in iterator:
            last = check(data, last)
            if _DONE in data:
                async for _rest in iterator:
                    pass
            yield data

    response.aiter_bytes = aiter_bytes


def _usage(usage: Any) -> Usage:
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    return Usage(
        usage.prompt_tokens or 0,
        usage.completion_tokens or 0,
        usage.total_tokens or 0,
        getattr(prompt_details, "cached_tokens", None) if prompt_details is not None else None,
        getattr(completion_details, "reasoning_tokens", None) if completion_details is not None else None,
    )


def _message(message: Message, index: int) -> dict[str, Any]:
    if message.role == "tool":
        if not message.tool_call_id:
            raise errors.BadRequestError(
                f"messages[{index}]: a tool result message needs the tool_call_id of the call it answers",
                provider=PROVIDER,
            )
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content or ""}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
            for c in message.tool_calls
        ]
    elif message.content is None:
        out["content"] = ""
    if message.name:
        out["name"] = message.name
    return out


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, dict) or choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _response_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """Amsha's ``{"name", "schema"[, "strict"]}`` (or a bare JSON schema) as OpenAI's
    ``json_schema`` response format; one already in OpenAI's form passes through."""
    if fmt.get("type") in ("json_schema", "json_object", "text"):
        return fmt
    if isinstance(fmt.get("schema"), dict):
        name, schema, strict = fmt.get("name") or "output", fmt["schema"], fmt.get("strict")
    else:
        name, schema, strict = "output", fmt, None
    spec: dict[str, Any] = {"name": _NAME.sub("_", str(name))[:64] or "output", "schema": schema}
    if strict is not None:
        spec["strict"] = bool(strict)
    return {"type": "json_schema", "json_schema": spec}


def build(ctx: BackendContext) -> OpenAIProvider:
    """Factory registered as provider ``openai``: ``ctx.options`` is a validated
    :class:`OpenAIOptions`, ``ctx.model`` the configured model."""
    return OpenAIProvider(ctx.options, model=ctx.model, retry=ctx.config.retry, key=ctx.key or "provider")
