"""A reference HTTP provider, written as a third party would from the README: httpx, sync
and async, speaking an Ollama-style ``/api/chat`` protocol (JSON answers, NDJSON streams).

The mutation harness plants one bug at a time in it (``kit/mutants.py``) and checks that
``ProviderContract`` fails each mutant. :func:`responder` teaches an
:class:`~amsha.testing.HTTPPeer` the protocol.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from amsha import (
    LLMChunk,
    LLMRequest,
    LLMResponse,
    ProviderCapabilities,
    ToolCall,
    ToolCallDelta,
    Usage,
    errors,
    get_secret,
)
from amsha.testing import HTTPPeer, PeerReply, PeerRequest

NAME = "reference"
KEY_ENV = "REFERENCE_PROVIDER_KEY"


class ReferenceProvider:
    """The reference provider: ``base_url`` of the server, ``model``, ``timeout_s``."""

    name = NAME
    capabilities = ProviderCapabilities(
        streaming=True,
        tools=True,
        structured_output=True,
        usage_in_stream=True,
        usage_in_response=True,
        native_async=True,
    )

    def __init__(self, base_url: str, model: str = "ref-1", timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        key = get_secret(KEY_ENV, required=False)
        self._headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}
        self._lock = threading.Lock()
        self._ssl = httpx.create_ssl_context()  # built once: building one costs tens of ms
        self._client: httpx.Client | None = None
        self._aclients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    # ---- clients ------------------------------------------------------------------------

    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    base_url=self.base_url, timeout=self.timeout_s, headers=self._headers, verify=self._ssl
                )
            return self._client

    def aclient(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._aclients.get(loop)
            if client is None:
                for dead in [lp for lp in self._aclients if lp.is_closed()]:
                    del self._aclients[dead]
                client = self._aclients[loop] = httpx.AsyncClient(
                    base_url=self.base_url, timeout=self.timeout_s, headers=self._headers, verify=self._ssl
                )
            return client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            self._aclients = {}
        if client is not None:
            client.close()

    # ---- requests -----------------------------------------------------------------------

    def body(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        messages = []
        for m in request.messages:
            item: dict[str, Any] = {"role": m.role, "content": m.content or ""}
            if m.tool_calls:
                item["tool_calls"] = [
                    {"id": c.id, "function": {"name": c.name, "arguments": c.parsed_arguments()}} for c in m.tool_calls
                ]
            if m.tool_call_id:
                item["tool_call_id"] = m.tool_call_id
            messages.append(item)
        body: dict[str, Any] = {"model": request.model or self.model, "messages": messages, "stream": stream}
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
        if request.response_format:
            fmt = request.response_format
            body["format"] = fmt.get("schema", fmt)
        options = {k: v for k, v in (("stop", request.stop), ("temperature", request.temperature)) if v is not None}
        if options:
            body["options"] = options
        return body

    def error(self, exc: BaseException, partial: str | None = None) -> errors.ProviderError:
        return map_error(exc, partial)

    def check(self, reply: httpx.Response) -> None:
        check(reply)

    def response(self, data: dict[str, Any]) -> LLMResponse:
        message = data.get("message") or {}
        calls = [
            ToolCall(c.get("id") or f"call_{i}", c["function"]["name"], json.dumps(c["function"].get("arguments", {})))
            for i, c in enumerate(message.get("tool_calls") or [])
        ]
        return LLMResponse(
            text=message.get("content") or "",
            tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
            usage=usage(data),
            model=data.get("model"),
        )

    def chunk(self, data: dict[str, Any]) -> LLMChunk:
        message = data.get("message") or {}
        deltas = [
            ToolCallDelta(
                i, c.get("id") or f"call_{i}", c["function"]["name"], json.dumps(c["function"].get("arguments", {}))
            )
            for i, c in enumerate(message.get("tool_calls") or [])
        ] or None
        if data.get("done"):
            return LLMChunk(
                text=message.get("content") or "",
                tool_calls=deltas,
                finish_reason="tool_calls" if deltas else "stop",
                usage=usage(data),
                model=data.get("model"),
            )
        return LLMChunk(text=message.get("content") or "", tool_calls=deltas, model=data.get("model"))

    # ---- sync ---------------------------------------------------------------------------

    def generate(self, request: LLMRequest) -> LLMResponse:
        try:
            reply = self.client().post("/api/chat", json=self.body(request, False))
            self.check(reply)
            return self.response(reply.json())
        except errors.ProviderError:
            raise
        except Exception as exc:
            raise self.error(exc) from None

    def stream(self, request: LLMRequest) -> Iterator[LLMChunk]:
        parts: list[str] = []
        try:
            with self.client().stream("POST", "/api/chat", json=self.body(request, True)) as reply:
                if reply.status_code >= 400:
                    reply.read()
                    self.check(reply)
                for line in reply.iter_lines():
                    if line.strip():
                        chunk = self.chunk(json.loads(line))
                        parts.append(chunk.text)
                        yield chunk
        except errors.ProviderError:
            raise
        except Exception as exc:
            raise self.error(exc, "".join(parts)) from None

    # ---- async --------------------------------------------------------------------------

    async def agenerate(self, request: LLMRequest) -> LLMResponse:
        try:
            reply = await self.aclient().post("/api/chat", json=self.body(request, False))
            self.check(reply)
            return self.response(reply.json())
        except errors.ProviderError:
            raise
        except Exception as exc:
            raise self.error(exc) from None

    async def astream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        parts: list[str] = []
        try:
            async with self.aclient().stream("POST", "/api/chat", json=self.body(request, True)) as reply:
                if reply.status_code >= 400:
                    await reply.aread()
                    self.check(reply)
                async for line in reply.aiter_lines():
                    if line.strip():
                        chunk = self.chunk(json.loads(line))
                        parts.append(chunk.text)
                        yield chunk
        except errors.ProviderError:
            raise
        except Exception as exc:
            raise self.error(exc, "".join(parts)) from None


def usage(data: dict[str, Any]) -> Usage | None:
    if "prompt_eval_count" not in data:
        return None
    inp, out = int(data["prompt_eval_count"]), int(data.get("eval_count", 0))
    return Usage(inp, out, inp + out)


STATUS: dict[int, type[errors.ProviderError]] = {
    400: errors.BadRequestError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    408: errors.ProviderTimeoutError,
    409: errors.ConflictError,
    422: errors.BadRequestError,
}


def server_message(reply: httpx.Response) -> str:
    try:
        err = reply.json().get("error")
    except ValueError:
        return reply.text[:200]
    if isinstance(err, dict):
        return str(err.get("message", ""))
    return str(err)


def check(reply: httpx.Response) -> None:
    """Raise the typed error of an error status."""
    status = reply.status_code
    if status < 400:
        return
    message = f"HTTP {status} from {reply.request.url}: {server_message(reply)}"
    if status == 429:
        after = reply.headers.get("retry-after")
        raise errors.RateLimitError(message, retry_after=float(after) if after else None, provider=NAME, status=status)
    if status >= 500:
        raise errors.ServerError(message, provider=NAME, status=status)
    raise STATUS.get(status, errors.ProviderError)(message, provider=NAME, status=status)


def map_error(exc: BaseException, partial: str | None = None) -> errors.ProviderError:
    """httpx's exceptions as Amsha's typed errors."""
    if partial:
        return errors.StreamInterruptedError(f"the stream broke: {exc}", partial_text=partial, provider=NAME)
    if isinstance(exc, httpx.TimeoutException):
        return errors.ProviderTimeoutError(f"timed out: {exc}", provider=NAME)
    if isinstance(exc, httpx.TransportError):
        return errors.ProviderConnectionError(f"connection failed: {exc}", provider=NAME)
    return errors.ProviderError(f"{type(exc).__name__}: {exc}", provider=NAME)


# ---- the peer's side of the protocol --------------------------------------------------

ANSWER = "Hello from the reference peer."
PERSON = {"contract_given_name": "Ada", "contract_age_years": 36}


def responder(request: PeerRequest) -> PeerReply:
    """Answer ``/api/chat`` as the reference server: an answer, a tool call when tools are
    offered, the JSON of the schema when ``format`` is set; stop sequences cut the answer."""
    body = request.json() or {}
    model = body.get("model", "ref-1")
    prompt = sum(len(str(m.get("content") or "").split()) for m in body.get("messages", []))
    calls: list[dict[str, Any]] = []
    if (
        body.get("tools")
        and body["messages"][-1].get("role") == "user"
        and "Call magic_function" in str(body["messages"][-1].get("content"))
    ):
        calls = [{"function": {"name": "magic_function", "arguments": {"input": 3}}}]
        text = ""
    elif body.get("format"):
        text = json.dumps(PERSON)
    else:
        text = ANSWER
    for stop in (body.get("options") or {}).get("stop") or []:
        if stop in text:
            text = text[: text.index(stop)]
    words = text.split(" ")
    pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)] if text else []
    done = {"model": model, "done": True, "prompt_eval_count": prompt, "eval_count": len(pieces) + len(calls)}
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        return PeerReply.json({**done, "message": message})
    lines: list[Any] = [{"model": model, "message": {"role": "assistant", "content": p}, "done": False} for p in pieces]
    if calls:
        lines.append(
            {"model": model, "message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": False}
        )
    lines.append({**done, "message": {"role": "assistant", "content": ""}})
    return PeerReply.lines(lines)


def on_peer(cls: type[ReferenceProvider] = ReferenceProvider) -> Any:
    """The ``peer_provider`` fixture's value for ``cls``."""

    def make(peer: HTTPPeer, timeout_s: float) -> ReferenceProvider:
        peer.responder = responder
        return cls(peer.url, timeout_s=timeout_s)

    return make
