"""The execution-aware ``LLM`` wrapper (the spec's LLM factory output).

Every call through an :class:`LLM` gets, from one place (the spec's internal
``@amsha_llm_call``): retry with exponential backoff and full jitter (retryable errors only,
Retry-After honored, never after the first streamed token), timing (latency, time to first
token), token counting (the provider's usage first; an estimate, marked as one, only when it
reports none), stream normalization (a provider that cannot stream still streams, as one
chunk), cancellation and events. It is usable alone, with no session or orchestrator::

    llm = LLM(provider)
    print(llm.generate("Say hi").text)
    with llm.stream("Count to three") as stream:
        for chunk in stream:
            print(chunk.text, end="")
    print(stream.response.usage)
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Generic, NoReturn, Protocol, TypeVar

from . import secrets as _secrets
from .config import RetryConfig
from .errors import (
    AmshaError,
    ProviderError,
    RateLimitError,
    RunCancelledError,
    StreamInterruptedError,
    StructuredOutputError,
)
from .events import RunEventLog
from .provider import (
    ILLMProvider,
    LLMChunk,
    LLMRequest,
    LLMResponse,
    Message,
    ToolCall,
    ToolSpec,
    Usage,
    coerce_messages,
    response_as_chunk,
)
from .secrets import redact

__all__ = ["LLM", "AsyncLLMStream", "CallContext", "CallScope", "LLMStream", "estimate_tokens", "retry_delay", "strip_fences"]

T = TypeVar("T")
_ids = itertools.count(1)


def estimate_tokens(text: str) -> int:
    """An honest, cheap estimate: about four characters a token (at least one if non-empty)."""
    return (len(text) + 3) // 4 if text else 0


def retry_delay(
    error: BaseException, attempt: int, policy: RetryConfig, rng: random.Random | None = None
) -> float | None:
    """Seconds to wait before retry number ``attempt`` (1-based), or None to give up.

    Only :class:`ProviderError` with ``retryable`` set is retried. A Retry-After from the
    server is honored exactly; one longer than ``policy.max_retry_after_s`` is not waited
    for (the error is raised instead).
    """
    if not isinstance(error, ProviderError) or not error.retryable or attempt > policy.max_retries:
        return None
    if isinstance(error, RateLimitError) and error.retry_after is not None:
        if error.retry_after > policy.max_retry_after_s:
            return None
        return max(0.0, error.retry_after)
    ceiling = min(policy.max_backoff_s, policy.initial_backoff_s * 2.0 ** (attempt - 1))
    if policy.jitter:
        return float((rng or random).uniform(0, ceiling))
    return ceiling


class CallContext:
    """Where a call happens: the run's event log, the parent span, task and agent, and the
    run's cancel flag. The session binds one to each LLM it hands to an orchestrator."""

    __slots__ = ("agent", "cancel_event", "counters", "lock", "log", "parent_id", "task")

    def __init__(
        self,
        log: RunEventLog | None = None,
        parent_id: str | None = None,
        *,
        task: str | None = None,
        agent: str | None = None,
        cancel_event: threading.Event | None = None,
        counters: dict[tuple[str | None, str | None], int] | None = None,
    ) -> None:
        self.log = log
        self.parent_id = parent_id
        self.task = task
        self.agent = agent
        self.cancel_event = cancel_event
        self.counters = counters if counters is not None else {}
        self.lock = threading.Lock()

    def child(self, *, parent_id: str | None = None, task: str | None = None, agent: str | None = None) -> CallContext:
        """A context for a nested span sharing this one's log, cancel flag and call counters."""
        ctx = CallContext(
            self.log,
            parent_id or self.parent_id,
            task=task if task is not None else self.task,
            agent=agent if agent is not None else self.agent,
            cancel_event=self.cancel_event,
            counters=self.counters,
        )
        ctx.lock = self.lock
        return ctx

    def next_index(self) -> int:
        with self.lock:
            key = (self.task, self.agent)
            index = self.counters.get(key, 0)
            self.counters[key] = index + 1
            return index


class _Call:
    """Book-keeping of one call: timing, text, tool calls, usage, events."""

    __slots__ = (
        "attempt",
        "call_id",
        "ctx",
        "finish_reason",
        "log",
        "model",
        "parts",
        "request",
        "retries",
        "scope",
        "t0",
        "tools",
        "ttft",
        "usage",
        "wrapper",
    )

    def __init__(self, wrapper: LLM, request: LLMRequest) -> None:
        self.wrapper = wrapper
        self.request = request
        ctx = wrapper.context
        self.scope: CallScope | None = None
        if ctx is None and wrapper.scope is not None:
            # A call outside any run: it gets a scope of its own (see amsha.standalone).
            self.scope = wrapper.scope
            ctx = self.scope.open(wrapper, request)
        self.ctx = ctx
        self.log = ctx.log if ctx is not None else None
        # The random part from ``random`` (reseeded in a forked child), not uuid4: an id
        # needs no cryptographic randomness, and os.urandom costs microseconds here.
        self.call_id = f"llm-{next(_ids)}-{random.getrandbits(32):08x}" if self.log is not None else ""
        self.parts: list[str] = []
        self.tools: dict[int, list[Any]] = {}
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.model: str | None = request.model
        self.retries = 0
        self.attempt = 0
        self.ttft: float | None = None
        self.t0 = time.perf_counter()
        if self.log is not None:
            assert ctx is not None
            fingerprint = {
                "task": ctx.task,
                "agent": ctx.agent,
                "index": ctx.next_index(),
                "request_hash": request.fingerprint(),
            }
            self._emit(
                "llm.started",
                {
                    "llm": wrapper.name,
                    "provider": wrapper.provider_name,
                    "capabilities": wrapper.provider.capabilities.to_dict(),
                    "model": request.model,
                    "request": request.to_dict(),
                    "fingerprint": fingerprint,
                },
            )

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        """An event about this call, under its parent span, task and agent."""
        ctx = self.ctx
        assert ctx is not None and self.log is not None
        self.log.emit(kind, self.call_id, ctx.parent_id, task=ctx.task, agent=ctx.agent, data=data)

    def check_cancel(self) -> None:
        ctx = self.ctx
        if ctx is not None and ctx.cancel_event is not None and ctx.cancel_event.is_set():
            raise RunCancelledError(ctx.log.run_id if ctx.log else None, "cancelled during an LLM call")

    @property
    def started(self) -> bool:
        return bool(self.parts) or bool(self.tools)

    def on_chunk(self, chunk: LLMChunk) -> None:
        text = chunk.text
        if text:
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.t0
            self.parts.append(text)
            log = self.log
            if log is not None:
                ctx = self.ctx
                assert ctx is not None
                log.emit("llm.token", self.call_id, ctx.parent_id, task=ctx.task, agent=ctx.agent, data={"text": text})
        if chunk.tool_calls:
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.t0
            for delta in chunk.tool_calls:
                slot = self.tools.setdefault(delta.index, [None, None, []])
                if delta.id:
                    slot[0] = delta.id
                if delta.name:
                    slot[1] = delta.name if slot[1] is None else slot[1] + delta.name
                if delta.arguments:
                    slot[2].append(delta.arguments)
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
        if chunk.model:
            self.model = chunk.model

    def retry_or_raise(self, exc: Exception) -> float:
        """After a failed attempt: the seconds to wait before the next one, or the error
        (typed, recorded as ``llm.failed``) raised. Never retried once output has started."""
        err = _as_provider_error(exc, self.wrapper.provider_name)
        self.attempt += 1
        delay = None if self.started else self.retry_wait(err, self.attempt)
        if delay is None:
            _raise(self.fail(err), exc)
        return delay

    def complete(self, answer: LLMResponse) -> LLMResponse:
        """A complete answer, completed in place as the wrapper's response: timing, retries,
        the finish reason and model when the provider left them out, usage (estimated, and
        marked so, when it reported none). A provider returns a fresh response per call."""
        latency = time.perf_counter() - self.t0
        usage = answer.usage
        if usage is None:
            answer.usage = self._estimate(answer.text)
        elif not usage.total_tokens:
            usage.total_tokens = usage.input_tokens + usage.output_tokens
        calls = answer.tool_calls
        if calls:
            for i, call in enumerate(calls):  # as a streamed answer's are: an id, JSON arguments
                if not call.id:
                    call.id = f"call_{i}"
                if not call.arguments:
                    call.arguments = "{}"
        if not answer.finish_reason:
            answer.finish_reason = "tool_calls" if calls else "stop"
        if not answer.model:
            answer.model = self.model
        answer.ttft_s = latency if self.ttft is None else self.ttft
        answer.latency_s = latency
        answer.retries = self.retries
        if self.log is not None:
            self._finished(answer, False)
        elif self.scope is not None:
            self.scope.close(None, None, answer)
        return answer

    def retry_wait(self, error: BaseException, attempt: int) -> float | None:
        delay = retry_delay(error, attempt, self.wrapper.retry)
        if delay is None:
            return None
        self.retries += 1
        if self.log is not None:
            self._emit("llm.retry", {"attempt": attempt, "wait_s": round(delay, 6), "error": _error_dict(error)})
        return delay

    def _usage(self, text: str) -> Usage:
        usage = self.usage
        if usage is not None:
            if not usage.total_tokens:
                usage.total_tokens = usage.input_tokens + usage.output_tokens
            return usage
        return self._estimate(text)

    def _estimate(self, text: str) -> Usage:
        prompt = "".join((m.content or "") for m in self.request.messages)
        inp, out = estimate_tokens(prompt), estimate_tokens(text)
        return Usage(inp, out, inp + out, estimated=True)

    def response(self) -> LLMResponse:
        parts = self.parts
        text = parts[0] if len(parts) == 1 else "".join(parts)
        calls = (
            [
                ToolCall(id=slot[0] or f"call_{i}", name=slot[1] or "", arguments="".join(slot[2]) or "{}")
                for i, slot in sorted(self.tools.items())
            ]
            if self.tools
            else []
        )
        return LLMResponse(
            text,
            calls,
            self.finish_reason or ("tool_calls" if calls else "stop"),
            self._usage(text),
            self.model,
            None,
            self.ttft,
            time.perf_counter() - self.t0,
            self.retries,
        )

    def finish(self, *, cancelled: bool = False) -> LLMResponse:
        response = self.response()
        if self.log is not None:
            self._finished(response, cancelled)
        elif self.scope is not None:
            self.scope.close(None, "cancelled" if cancelled else None, response)
        return response

    def _finished(self, response: LLMResponse, cancelled: bool) -> None:
        self._emit(
            "llm.finished",
            {
                "response": response.to_dict(),
                "usage": response.usage.to_dict() if response.usage else None,
                "latency_s": response.latency_s,
                "ttft_s": response.ttft_s,
                "retries": self.retries,
                "cancelled": cancelled,
            },
        )
        if self.scope is not None:
            self.scope.close(self.ctx, "cancelled" if cancelled else None, response)

    def fail(self, error: BaseException) -> BaseException:
        if isinstance(error, RunCancelledError):
            self.finish(cancelled=True)
            return error
        if self.started and isinstance(error, ProviderError) and not isinstance(error, StreamInterruptedError):
            interrupted = StreamInterruptedError(
                f"the stream broke after output had started: {error}",
                partial_text="".join(self.parts),
                provider=error.provider,
                status=error.status,
            )
            interrupted.__cause__ = error
            error = interrupted
        if self.log is not None:
            text = "".join(self.parts)
            self._emit(
                "llm.failed",
                {
                    "error": _error_dict(error),
                    "partial_text": text,
                    "usage": self._usage(text).to_dict(),
                    "latency_s": time.perf_counter() - self.t0,
                    "ttft_s": self.ttft,
                    "retries": self.retries,
                },
            )
        if self.scope is not None:
            self.scope.close(self.ctx, error, self.response())
        return error


def _error_dict(error: BaseException) -> dict[str, Any]:
    if isinstance(error, AmshaError):
        return error.to_dict()
    return {"type": type(error).__name__, "message": str(error)}


def _raise(failure: BaseException, exc: BaseException) -> NoReturn:
    """Raise ``failure`` chained to ``exc``, the error the provider raised; never as its own
    cause (code walking ``__cause__`` would loop forever) when the provider already raised
    an Amsha error."""
    if failure is exc:
        raise failure
    raise failure from exc


def _as_provider_error(error: Exception, provider: str) -> Exception:
    if isinstance(error, AmshaError):
        return error
    wrapped = ProviderError(f"provider {provider!r} raised {type(error).__name__}: {error}", provider=provider)
    if _secrets.ACTIVE:
        # The provider's own exception stays chained (its traceback helps), scrubbed: a
        # plugin that put a key in its message must not leak it through the chain.
        try:
            error.args = tuple(redact(a) if isinstance(a, str) else a for a in error.args)
        except Exception:  # an exception type whose args cannot be set
            pass
    wrapped.__cause__ = error
    return wrapped


class LLMStream(Generic[T]):
    """A streamed call: iterate it for :class:`LLMChunk`; ``response`` is set at the end.

    Closing it early (``close()``, leaving a ``with`` block, ``break`` then garbage collection)
    closes the provider stream at once.
    """

    def __init__(self, generator: Iterator[LLMChunk], holder: list[LLMResponse]) -> None:
        self._gen = generator
        self._holder = holder

    def __iter__(self) -> Iterator[LLMChunk]:
        return self._gen

    def __next__(self) -> LLMChunk:
        return next(self._gen)

    def __enter__(self) -> LLMStream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()

    @property
    def response(self) -> LLMResponse | None:
        """The whole response, once the stream has ended (None before)."""
        return self._holder[0] if self._holder else None


class AsyncLLMStream(Generic[T]):
    """The async twin of :class:`LLMStream`: ``async for chunk in stream``; ``aclose()``."""

    def __init__(self, generator: AsyncIterator[LLMChunk], holder: list[LLMResponse]) -> None:
        self._gen = generator
        self._holder = holder

    def __aiter__(self) -> AsyncIterator[LLMChunk]:
        return self._gen

    async def __anext__(self) -> LLMChunk:
        return await self._gen.__anext__()

    async def __aenter__(self) -> AsyncLLMStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        aclose = getattr(self._gen, "aclose", None)
        if aclose is not None:
            await aclose()

    @property
    def response(self) -> LLMResponse | None:
        return self._holder[0] if self._holder else None


class CallScope(Protocol):
    """Where the calls of an LLM used outside any run go: each such call gets a context of
    its own from :meth:`open` (or None: the call emits no events, and is only counted) and
    hands it back to :meth:`close` at its end, with ``outcome`` (None when it finished,
    ``"cancelled"``, or the error it raised) and what it produced (the response, partial
    for a failure). The session's is :class:`amsha.standalone.StandaloneScope`."""

    def open(self, llm: LLM, request: LLMRequest) -> CallContext | None: ...

    def close(
        self, ctx: CallContext | None, outcome: BaseException | str | None, response: LLMResponse
    ) -> None: ...


_PARAMS = ("temperature", "max_tokens", "stop", "seed", "tool_choice", "timeout_s")
"""Call parameters that are fields of :class:`LLMRequest` (the rest go to ``extra``)."""


class LLM:
    """An execution-aware LLM. Built by the session (``session.llm(name)``) or directly from
    a provider. ``bind(context)`` gives a copy that emits its events into a run; ``scope``
    is where calls made outside any run send theirs (the session sets it)."""

    def __init__(
        self,
        provider: ILLMProvider,
        *,
        model: str | None = None,
        retry: RetryConfig | None = None,
        name: str = "default",
        defaults: dict[str, Any] | None = None,
        context: CallContext | None = None,
        scope: CallScope | None = None,
    ) -> None:
        self.provider = provider
        self.provider_name = getattr(provider, "name", type(provider).__name__)
        self.model = model
        # A provider may declare its own default policy (e.g. from a ``max_retries`` option).
        self.retry = retry or getattr(provider, "retry_config", None) or RetryConfig()
        self.name = name
        self.defaults = dict(defaults or {})
        self.context = context
        self.scope = scope

    def __repr__(self) -> str:
        return f"LLM(name={self.name!r}, provider={self.provider_name!r}, model={self.model!r})"

    @property
    def capabilities(self) -> Any:
        return self.provider.capabilities

    def bind(self, context: CallContext | None) -> LLM:
        """A copy of this LLM whose calls emit events into ``context`` (a run, a task)."""
        return LLM(
            self.provider,
            model=self.model,
            retry=self.retry,
            name=self.name,
            defaults=self.defaults,
            context=context,
            scope=self.scope,
        )

    def with_retry(self, **changes: Any) -> LLM:
        """A copy of this LLM with its retry policy changed (``max_retries=0``, say)."""
        copy = self.bind(self.context)
        copy.retry = self.retry.model_copy(update=changes)
        return copy

    def request(
        self,
        messages: str | Sequence[Message | dict[str, Any]] | LLMRequest,
        *,
        tools: Sequence[ToolSpec] | None = None,
        response_format: dict[str, Any] | None = None,
        response_model: type[Any] | None = None,
        **params: Any,
    ) -> LLMRequest:
        """Build the :class:`LLMRequest` a call would send (defaults and model applied)."""
        if type(messages) is str and not (params or tools or response_format or response_model or self.defaults):
            return LLMRequest([Message("user", messages)], self.model)  # the common case, cheaply
        if response_model is not None and response_format is None:
            schema = response_model.model_json_schema()
            response_format = {"name": getattr(response_model, "__name__", "output"), "schema": schema}
        if isinstance(messages, LLMRequest):
            # A copy: the caller's request is never changed; explicit arguments win over it.
            given = dict(params)
            fields = {k: given.pop(k) for k in _PARAMS if k in given}
            return dataclasses.replace(
                messages,
                model=given.pop("model", None) or messages.model or self.model,
                tools=list(tools) if tools else messages.tools,
                response_format=response_format if response_format is not None else messages.response_format,
                extra={**messages.extra, **given},
                **fields,
            )
        merged = {**self.defaults, **params} if self.defaults else dict(params)
        known = {k: merged.pop(k) for k in _PARAMS if k in merged} if merged else {}
        msgs = coerce_messages(messages)
        if response_format is not None and not self.provider.capabilities.structured_output:
            # Graceful degradation: ask for the schema in words when the API cannot enforce it.
            if response_format.get("type") == "json_object":
                instruction = "Reply with only a JSON object."
            else:
                schema_text = json.dumps(response_format.get("schema", response_format))
                instruction = "Reply with only a JSON value matching this JSON schema:\n" + schema_text
            msgs = [Message("system", instruction), *msgs]
        return LLMRequest(
            messages=msgs,
            model=merged.pop("model", None) or self.model,
            tools=list(tools) if tools else None,
            response_format=response_format,
            extra=merged,
            **known,
        )

    # The sync and async twins below are shells of the same few steps: every decision
    # (retry or raise, typed errors, timing, usage, events, the standalone scope) is made
    # in one place, :class:`_Call`; a twin only calls the provider and waits its own way.

    # ---- sync -------------------------------------------------------------------------

    def generate(
        self,
        messages: str | Sequence[Message | dict[str, Any]] | LLMRequest,
        *,
        response_model: type[Any] | None = None,
        **params: Any,
    ) -> LLMResponse:
        """One complete answer. With ``response_model`` (a pydantic model) the JSON answer is
        validated into ``response.parsed`` or :class:`StructuredOutputError` is raised."""
        request = self.request(messages, response_model=response_model, **params)
        call = _Call(self, request)
        generate = self.provider.generate
        while True:
            try:
                call.check_cancel()
                answer = generate(request)
                break
            except Exception as exc:
                self._sleep(call.retry_or_raise(exc))
        response = call.complete(answer)
        return response if request.response_format is None else self._parse(response, request, response_model)

    def stream(self, messages: str | Sequence[Message | dict[str, Any]] | LLMRequest, **params: Any) -> LLMStream[Any]:
        """Stream an answer chunk by chunk; retried only until the first token arrives."""
        request = self.request(messages, **params)
        holder: list[LLMResponse] = []
        return LLMStream(self._stream(request, holder), holder)

    def _stream(self, request: LLMRequest, holder: list[LLMResponse]) -> Iterator[LLMChunk]:
        call = _Call(self, request)
        provider = self.provider
        cancel = call.ctx.cancel_event if call.ctx is not None else None
        on_chunk = call.on_chunk
        while True:
            iterator: Iterator[LLMChunk] | None = None
            try:
                if cancel is not None:
                    call.check_cancel()
                if provider.capabilities.streaming:
                    iterator = provider.stream(request)
                else:
                    iterator = iter((response_as_chunk(provider.generate(request)),))
                for chunk in iterator:
                    if cancel is not None and cancel.is_set():
                        call.check_cancel()
                    on_chunk(chunk)
                    yield chunk
                break
            except GeneratorExit:
                _close(iterator)
                call.finish(cancelled=True)
                raise
            except Exception as exc:
                _close(iterator)
                self._sleep(call.retry_or_raise(exc))
        holder.append(call.finish())

    def _sleep(self, delay: float) -> None:
        ctx = self.context
        if ctx is not None and ctx.cancel_event is not None:
            if ctx.cancel_event.wait(delay):
                raise RunCancelledError(ctx.log.run_id if ctx.log else None, "cancelled while waiting to retry")
        else:
            time.sleep(delay)

    # ---- async ------------------------------------------------------------------------

    async def agenerate(
        self,
        messages: str | Sequence[Message | dict[str, Any]] | LLMRequest,
        *,
        response_model: type[Any] | None = None,
        **params: Any,
    ) -> LLMResponse:
        """Async twin of :meth:`generate`."""
        request = self.request(messages, response_model=response_model, **params)
        call = _Call(self, request)
        agenerate = self.provider.agenerate
        while True:
            try:
                call.check_cancel()
                answer = await agenerate(request)
                break
            except asyncio.CancelledError:
                call.finish(cancelled=True)
                raise
            except Exception as exc:
                await asyncio.sleep(call.retry_or_raise(exc))
        response = call.complete(answer)
        return response if request.response_format is None else self._parse(response, request, response_model)

    def astream(
        self, messages: str | Sequence[Message | dict[str, Any]] | LLMRequest, **params: Any
    ) -> AsyncLLMStream[Any]:
        """Async twin of :meth:`stream`. Cancelling the consuming task closes the provider stream."""
        request = self.request(messages, **params)
        holder: list[LLMResponse] = []
        return AsyncLLMStream(self._astream(request, holder), holder)

    async def _astream(self, request: LLMRequest, holder: list[LLMResponse]) -> AsyncIterator[LLMChunk]:
        call = _Call(self, request)
        provider = self.provider
        cancel = call.ctx.cancel_event if call.ctx is not None else None
        on_chunk = call.on_chunk
        while True:
            iterator: AsyncIterator[LLMChunk] | None = None
            try:
                if cancel is not None:
                    call.check_cancel()
                if provider.capabilities.streaming:
                    iterator = provider.astream(request)
                else:
                    iterator = _one(response_as_chunk(await provider.agenerate(request)))
                async for chunk in iterator:
                    if cancel is not None and cancel.is_set():
                        call.check_cancel()
                    on_chunk(chunk)
                    yield chunk
                break
            except (GeneratorExit, asyncio.CancelledError):
                await _aclose(iterator)
                call.finish(cancelled=True)
                raise
            except Exception as exc:
                await _aclose(iterator)
                await asyncio.sleep(call.retry_or_raise(exc))
        holder.append(call.finish())

    # ---- helpers ----------------------------------------------------------------------

    def _parse(self, response: LLMResponse, request: LLMRequest, response_model: type[Any] | None) -> LLMResponse:
        if request.response_format is None:
            return response
        text = strip_fences(response.text)
        try:
            if response_model is not None:
                response.parsed = response_model.model_validate_json(text)
            else:
                response.parsed = json.loads(text)
        except Exception as exc:
            name = getattr(response_model, "__name__", "the requested schema")
            raise StructuredOutputError(
                f"the model's output does not match {name}: {exc}", text=response.text, provider=self.provider_name
            ) from exc
        return response


def strip_fences(text: str) -> str:
    """``text`` without a Markdown code fence around it (```` ```json ... ``` ````), as models
    often wrap the JSON they were asked for."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        stripped = stripped.strip("`")
        if stripped.startswith("json"):
            stripped = stripped[4:]
    return stripped.strip()


async def _one(chunk: LLMChunk) -> AsyncIterator[LLMChunk]:
    yield chunk


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass


async def _aclose(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            pass
