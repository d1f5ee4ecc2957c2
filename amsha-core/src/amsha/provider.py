"""The provider protocol (``ILLMProvider``) and the request/response model it speaks.

A provider turns an :class:`LLMRequest` into an :class:`LLMResponse` (``generate``) or an
iterator of :class:`LLMChunk` (``stream``), with async twins. It declares what it can do in
:class:`ProviderCapabilities`; the :class:`~amsha.LLM` wrapper degrades gracefully around what
it cannot (a provider that cannot stream still serves ``stream()``, as one chunk).

The types here are plain dataclasses with slots: they sit on the per-token hot path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "BaseProvider",
    "ILLMProvider",
    "LLMChunk",
    "LLMRequest",
    "LLMResponse",
    "Message",
    "ProviderCapabilities",
    "ToolCall",
    "ToolCallDelta",
    "ToolSpec",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(slots=True)
class ToolCall:
    """A tool call the model asked for. ``arguments`` is the raw JSON text the model wrote."""

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        """The arguments decoded from JSON."""
        return json.loads(self.arguments or "{}")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: ``index`` says which call; any field may be partial."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Message:
    """One chat message. ``tool_calls`` on assistant messages; ``tool_call_id`` on tool results."""

    role: Role
    content: str | None = ""
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [t.to_dict() for t in self.tool_calls]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            data["name"] = self.name
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        calls = data.get("tool_calls")
        return cls(
            role=data["role"],
            content=data.get("content"),
            tool_calls=[ToolCall(**c) for c in calls] if calls else None,
            tool_call_id=data.get("tool_call_id"),
            name=data.get("name"),
        )


@dataclass(slots=True)
class ToolSpec:
    """A tool the model may call: name, description and a JSON schema of its parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass(slots=True)
class Usage:
    """Token usage of one call. ``estimated`` is True when the provider reported none and
    Amsha counted (about four characters a token) instead."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    estimated: bool = False

    def to_dict(self) -> dict[str, Any]:
        # Spelled out: it is on every call's event path (fields() is slower).
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "estimated": self.estimated,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        return cls(**{k: v for k, v in data.items() if k in _USAGE_FIELDS})


_USAGE_FIELDS = {f.name for f in fields(Usage)}


@dataclass(slots=True)
class LLMRequest:
    """What to ask the model. ``response_format`` is a JSON schema for structured output
    (``{"name", "schema"}``, or ``{"type": "json_object"}`` for any JSON object).

    ``extra`` carries provider-specific parameters, passed through untouched.
    ``timeout_s``: how long a provider that talks to a server may wait for this request
    (None: its configured timeout); it does not change the answer, so it is left out of
    :meth:`fingerprint`.
    """

    messages: list[Message]
    model: str | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = self._answer_dict()
        if self.timeout_s is not None:
            data["timeout_s"] = self.timeout_s
        return data

    def _answer_dict(self) -> dict[str, Any]:
        """What decides the answer (every field but ``timeout_s``)."""
        return {
            "messages": [m.to_dict() for m in self.messages],
            "model": self.model,
            "tools": [t.to_dict() for t in self.tools] if self.tools else None,
            "tool_choice": self.tool_choice,
            "response_format": self.response_format,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "seed": self.seed,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLMRequest:
        tools = data.get("tools")
        return cls(
            messages=[Message.from_dict(m) for m in data["messages"]],
            model=data.get("model"),
            tools=[ToolSpec(**t) for t in tools] if tools else None,
            tool_choice=data.get("tool_choice"),
            response_format=data.get("response_format"),
            temperature=data.get("temperature"),
            max_tokens=data.get("max_tokens"),
            stop=data.get("stop"),
            seed=data.get("seed"),
            extra=dict(data.get("extra") or {}),
            timeout_s=data.get("timeout_s"),
        )

    def fingerprint(self) -> str:
        """A stable hash of the request (messages, tools, schema, parameters), for replay."""
        blob = json.dumps(self._answer_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(slots=True)
class LLMResponse:
    """A complete answer. ``parsed`` holds the validated object when a response model was given."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    parsed: Any = None
    ttft_s: float | None = None
    latency_s: float | None = None
    retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tool_calls": [t.to_dict() for t in self.tool_calls],
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_dict() if self.usage else None,
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLMResponse:
        usage = data.get("usage")
        return cls(
            text=data.get("text") or "",
            tool_calls=[ToolCall(**c) for c in data.get("tool_calls") or []],
            finish_reason=data.get("finish_reason"),
            usage=Usage.from_dict(usage) if usage else None,
            model=data.get("model"),
        )


@dataclass(slots=True)
class LLMChunk:
    """A piece of a streamed answer: text, tool-call deltas, and on the last chunks the
    finish reason and usage."""

    text: str = ""
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderCapabilities:
    """What a provider can do; the wrapper works around what it cannot.

    ``streaming``: ``stream``/``astream`` yield the answer as it arrives (False: the wrapper
    serves a stream as one chunk). ``tools``: the provider passes ``LLMRequest.tools`` and
    ``tool_choice`` to the model and returns its tool calls. ``structured_output``: it passes
    ``response_format`` (a JSON schema) so the answer is JSON of that schema (False: the
    wrapper asks for JSON in the prompt and validates). ``usage_in_stream``: the last chunk
    of a stream carries the usage the API reported. ``usage_in_response``: ``generate`` and
    ``agenerate`` return the usage the API reported. Without either, Amsha estimates (and
    says so: ``Usage.estimated``). ``native_async``: the async twins are real async code,
    not the sync ones run in a worker thread.
    """

    streaming: bool = True
    tools: bool = False
    structured_output: bool = False
    usage_in_stream: bool = False
    native_async: bool = False
    usage_in_response: bool = False

    def to_dict(self) -> dict[str, bool]:
        return {
            "streaming": self.streaming,
            "tools": self.tools,
            "structured_output": self.structured_output,
            "usage_in_stream": self.usage_in_stream,
            "usage_in_response": self.usage_in_response,
            "native_async": self.native_async,
        }


@runtime_checkable
class ILLMProvider(Protocol):
    """What a provider backend implements. No framework imports here.

    ``generate``/``stream`` and ``agenerate``/``astream``: the async twins must not block
    the event loop. ``stream`` returns an iterator whose ``close()`` (or, for ``astream``,
    ``aclose()``) must release the underlying connection at once: that is how cancel works.
    Errors must be :class:`~amsha.errors.ProviderError` subclasses, with ``retryable`` set
    right, so the wrapper's single retry policy can act on them. ``generate`` returns a fresh
    :class:`LLMResponse` each call: the wrapper completes it in place (timing, retries).

    Optional: a ``retry_config`` attribute (a :class:`~amsha.RetryConfig`, or None) is the
    provider's own default retry policy, used by the wrapper when the config's ``retry``
    section for that LLM (``provider.retry``, ``llms.X.retry``) is not set; a provider whose
    options offer ``max_retries`` reports it there.
    """

    name: str
    capabilities: ProviderCapabilities

    def generate(self, request: LLMRequest) -> LLMResponse: ...

    def stream(self, request: LLMRequest) -> Iterator[LLMChunk]: ...

    async def agenerate(self, request: LLMRequest) -> LLMResponse: ...

    def astream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]: ...

    def close(self) -> None: ...


class BaseProvider:
    """A convenient base: implement ``generate`` (and ``stream`` if you can stream); the
    async twins default to running the sync ones in a worker thread.

    Override ``agenerate``/``astream`` with native async code when the SDK has it, and set
    ``capabilities.native_async``.
    """

    name: str = "provider"
    capabilities: ProviderCapabilities = ProviderCapabilities(streaming=False)

    def generate(self, request: LLMRequest) -> LLMResponse:
        raise NotImplementedError(f"{type(self).__name__}.generate")

    def stream(self, request: LLMRequest) -> Iterator[LLMChunk]:
        response = self.generate(request)
        yield response_as_chunk(response)

    async def agenerate(self, request: LLMRequest) -> LLMResponse:
        return await asyncio.to_thread(self.generate, request)

    async def astream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        iterator = self.stream(request)
        sentinel = object()
        try:
            while True:
                chunk = await asyncio.to_thread(next, iterator, sentinel)
                if chunk is sentinel:
                    return
                assert isinstance(chunk, LLMChunk)
                yield chunk
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        """Release connections; called when the owning session closes."""


def response_as_chunk(response: LLMResponse) -> LLMChunk:
    """A whole response as one stream chunk (graceful degradation of streaming)."""
    deltas = [
        ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.arguments) for i, c in enumerate(response.tool_calls)
    ]
    return LLMChunk(
        text=response.text,
        tool_calls=deltas or None,
        finish_reason=response.finish_reason,
        usage=response.usage,
        model=response.model,
    )


def coerce_messages(messages: str | Sequence[Message | dict[str, Any]] | LLMRequest) -> list[Message]:
    """Accept a prompt string, ``Message`` objects or OpenAI-style dicts."""
    if isinstance(messages, str):
        return [Message("user", messages)]
    if isinstance(messages, LLMRequest):
        return list(messages.messages)
    out: list[Message] = []
    for m in messages:
        out.append(m if isinstance(m, Message) else Message.from_dict(m))
    return out
