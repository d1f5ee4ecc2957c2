"""A real HTTP server on 127.0.0.1 that speaks OpenAI's Chat Completions protocol, for tests.

Standard library only (``http.server``), one thread per connection, HTTP/1.1 keep-alive, so
the real ``openai`` SDK (or any client) talks to it exactly as it talks to a real server:
JSON answers, SSE streams sent chunk by chunk (chunked transfer encoding) with delays,
tool-call deltas, the usage chunk of ``stream_options.include_usage``, error statuses with
OpenAI-format bodies and ``Retry-After``, streams cut off mid-way, a slow first byte. Each
test scripts the answers it needs; the server records every request (headers and JSON body)
and every connection, so a test can count attempts and see a cancelled stream's connection
closed::

    with OpenAIServer() as server:
        server.script(Reply.fail(429, "slow down", retry_after=0.1), Reply("Hello there"))
        provider = server.provider()        # an OpenAIProvider pointed at the server
        ...
        assert server.attempts == 2

Unscripted requests are answered by ``server.default`` (an echo of the last user message
unless set). The request log holds what clients sent, including their ``Authorization``
header: it is a test fixture, not something to run in production.
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..provider import OpenAIProvider

__all__ = ["OpenAIServer", "RecordedRequest", "Reply"]

_WORDS = re.compile(r"\S+\s*|\s+")


@dataclass
class Reply:
    """One scripted answer.

    ``text``: the answer (None: echo the last user message). ``chunks``: the exact text
    pieces to stream (default: word by word). ``tool_calls``: ``[{"name", "arguments"
    (str or dict), "id" (optional)}]``; streamed as deltas, their arguments split every
    ``argument_chunk`` characters (``interleave_tools`` sends the calls' pieces interleaved,
    as parallel calls may arrive). ``status`` other than 200 answers with an OpenAI-format
    error body built from ``error`` (``{"message", "type", "code"}``), or ``raw_body`` as
    is. ``headers`` are added to the response (``retry_after`` sets ``Retry-After``).
    ``first_byte_delay_s`` waits before anything is sent; ``chunk_delay_s`` between stream
    chunks. ``cut_after``: close the connection after that many text chunks, mid-body
    (``cut_cleanly``: end the body properly instead, but without finish_reason or
    ``[DONE]``). ``error_event_after``: send an SSE error event (``error``) after that many
    chunks. ``usage`` overrides reported counts (``prompt_tokens``, ``completion_tokens``,
    ``cached_tokens``, ``reasoning_tokens``); ``report_usage=False`` reports none.
    ``match``: answer only requests whose body contains this text. ``times``: how many
    requests this reply answers.

    Faults, for chaos tests: ``raw_body`` with status 200 answers with that body as is
    (``content_type``, default ``text/html``), to a stream request too. ``keepalive_s``:
    before the answer, send only SSE comments (``: keep-alive``) every that many seconds,
    for ``keepalive_for_s`` seconds (None: until the client goes away). ``raw_events``:
    the SSE ``data:`` payloads to send (bytes, as is: malformed JSON, odd events) after the
    role chunk, then end the body. ``reset``: reset the connection (TCP RST) instead of
    answering. ``echo_auth``: an error body that quotes the request's ``Authorization``
    header, as careless servers do. ``drip_s``: send a plain (non-streamed) answer 16 bytes at
    a time, waiting that long between pieces.
    """

    text: str | None = None
    chunks: list[str] | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    status: int = 200
    error: dict[str, Any] | None = None
    raw_body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    first_byte_delay_s: float | None = None
    chunk_delay_s: float | None = None
    cut_after: int | None = None
    cut_cleanly: bool = False
    error_event_after: int | None = None
    argument_chunk: int = 8
    interleave_tools: bool = False
    usage: dict[str, int] = field(default_factory=dict)
    report_usage: bool = True
    model: str | None = None
    match: str | None = None
    times: int = 1
    content_type: str | None = None
    keepalive_s: float | None = None
    keepalive_for_s: float | None = None
    raw_events: list[bytes] | None = None
    reset: bool = False
    echo_auth: bool = False
    drip_s: float | None = None

    @classmethod
    def fail(
        cls,
        status: int,
        message: str = "",
        *,
        type: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        times: int = 1,
        **kw: Any,
    ) -> Reply:
        """An error answer with an OpenAI-format body: ``{"error": {"message", "type", "code", "param"}}``."""
        kind = type or _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body = {"message": message or f"error {status}", "type": kind, "code": code, "param": None}
        return cls(status=status, error=body, retry_after=retry_after, times=times, **kw)


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    409: "conflict",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
}


@dataclass
class RecordedRequest:
    """A request the server received. ``headers`` have lower-case names; ``body`` is the
    parsed JSON (None if it was not JSON); ``connection`` numbers the TCP connection it came
    on (1, 2, ...); ``outcome``: ``completed``, ``error`` (an error status was sent),
    ``client_closed`` (the client went away mid-answer), ``cut`` (the server cut it off)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    connection: int
    received_at: float
    outcome: str = "pending"

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("stream"))


class _ClientGone(Exception):
    """The client closed the connection while the server was answering."""


class OpenAIServer:
    """A local Chat Completions server (see the module docstring).

    ``models``: the model names it knows (others get a 404 ``model_not_found``; None: any
    name). ``api_key``: when set, requests must carry ``Authorization: Bearer <api_key>``
    (else 401). ``latency_s``: a first-byte delay for every answer that sets none;
    ``chunk_delay_s``: the same between stream chunks. ``keep_alive=False`` closes each
    connection after its answer (``Connection: close``), so no client can reuse one.
    ``host``/``port``: where to listen (port 0: a free one).
    """

    def __init__(
        self,
        *,
        models: Iterable[str] | None = None,
        api_key: str | None = None,
        latency_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        keep_alive: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.models = set(models) if models is not None else None
        self.api_key = api_key
        self.latency_s = latency_s
        self.chunk_delay_s = chunk_delay_s
        self.keep_alive = keep_alive
        self.default = Reply()
        self.requests: list[RecordedRequest] = []
        self.connections = 0
        self.open_connections = 0
        self._script: list[Reply] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._host = host
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.app = self
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API root to give a client: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    def start(self) -> OpenAIServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-test-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection still open."""
        self._stopping.set()
        with self._cond:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- scripting ----------------------------------------------------------------------------

    def script(self, *replies: Reply | str) -> OpenAIServer:
        """Queue answers for the next requests, in order (a string is ``Reply(text)``)."""
        with self._cond:
            self._script.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)
        return self

    def reset(self) -> None:
        """Forget the script, the request log and the connection counts (open ones stay counted)."""
        with self._cond:
            self._script.clear()
            self.requests.clear()
            self.connections = 0

    def _pick(self, raw: str) -> Reply:
        with self._cond:
            for i, reply in enumerate(self._script):
                if reply.match is None or reply.match in raw:
                    reply.times -= 1
                    if reply.times <= 0:
                        del self._script[i]
                    return reply
        return self.default

    # ---- observing ----------------------------------------------------------------------------

    @property
    def attempts(self) -> int:
        """How many chat completion requests arrived."""
        return sum(1 for r in self.requests if r.path.endswith("/chat/completions"))

    def wait_for(self, predicate: Callable[[OpenAIServer], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(server)`` holds (checked at every request, connection and
        outcome change); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ---- clients ------------------------------------------------------------------------------

    def provider_config(self, model: str = "test-model", **options: Any) -> dict[str, Any]:
        """The ``provider:`` config section selecting ``openai`` on this server."""
        return {"name": "openai", "model": model, "options": {"base_url": self.base_url, **options}}

    def provider(self, model: str = "test-model", **options: Any) -> OpenAIProvider:
        """An :class:`~amsha_openai.OpenAIProvider` pointed at this server (imports the SDK)."""
        from ..provider import OpenAIProvider

        options.setdefault("api_key_env", "AMSHA_OPENAI_TEST_SERVER_KEY")
        return OpenAIProvider({"base_url": self.base_url, **options}, model=model)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # many concurrent clients connect at once in load tests
    app: OpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return  # a client that went away is part of the tests, not a server failure
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "amsha-openai-test-server/1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read the request log instead

    # ---- connections --------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        # Small writes (SSE chunks) go out at once instead of waiting for the client's ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        app = self.server.app
        with app._cond:
            app.connections += 1
            app.open_connections += 1
            app._sockets.add(self.connection)
            self.connection_id = app.connections
            app._cond.notify_all()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        app = self.server.app
        with app._cond:
            app.open_connections -= 1
            app._sockets.discard(self.connection)
            app._cond.notify_all()

    # ---- routing ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        record = self._record(None)
        if self.path.rstrip("/").endswith("/models"):
            models = sorted(self.server.app.models or ["test-model"])
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "amsha-test"} for m in models]
            self._outcome(record, "completed")
            self._json(200, {"object": "list", "data": data})
        else:
            self._error(record, 404, f"unknown path {self.path}", "invalid_request_error", "not_found")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = self._record(body)
        app = self.server.app
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._error(record, 404, f"unknown path {self.path}", "invalid_request_error", "not_found")
            return
        if app.api_key is not None and self.headers.get("authorization") != f"Bearer {app.api_key}":
            given = (self.headers.get("authorization") or "").removeprefix("Bearer ")
            # As OpenAI masks it: the first 8 and the last 4 characters.
            masked = f"{given[:8]}{'*' * max(4, len(given) - 12)}{given[-4:]}" if len(given) > 12 else "***"
            self._error(
                record, 401, f"Incorrect API key provided: {masked}.", "invalid_request_error", "invalid_api_key"
            )
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            self._error(record, 400, "the body must be JSON with 'model' and 'messages'", "invalid_request_error", None)
            return
        model = str(body["model"])
        if app.models is not None and model not in app.models:
            self._error(
                record,
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
            return
        reply = app._pick(raw)
        try:
            self._wait(reply.first_byte_delay_s if reply.first_byte_delay_s is not None else app.latency_s)
            if reply.reset:
                self._reset(record)
            elif reply.status != 200:
                self._scripted_error(record, reply)
            elif reply.raw_body is not None:
                self._outcome(record, "completed")
                self._send_head(200, reply.content_type or "text/html", len(reply.raw_body), reply.headers)
                self.wfile.write(reply.raw_body)
                self.wfile.flush()
            elif body.get("stream"):
                self._stream(record, reply, body)
            else:
                self._complete(record, reply, body)
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self._outcome(record, "client_closed")

    # ---- helpers ------------------------------------------------------------------------------

    def _record(self, body: Any) -> RecordedRequest:
        app = self.server.app
        record = RecordedRequest(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            self.connection_id,
            time.time(),
        )
        with app._cond:
            app.requests.append(record)
            app._cond.notify_all()
        return record

    def _outcome(self, record: RecordedRequest, outcome: str) -> None:
        with self.server.app._cond:
            record.outcome = outcome
            self.server.app._cond.notify_all()

    def _wait(self, seconds: float) -> None:
        """Sleep, but notice at once when the client closes the connection."""
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        while True:
            if self.server.app._stopping.is_set():
                raise _ClientGone()  # the server is stopping: abandon the answer
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.25))
            if readable:
                try:
                    peeked = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    raise _ClientGone() from None
                if not peeked:
                    raise _ClientGone()
                time.sleep(min(left, 0.01))  # data from the client (not expected): keep waiting

    def _send_head(self, status: int, content_type: str, length: int | None, extra: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache")
        else:
            self.send_header("Content-Length", str(length))
        for name, value in extra.items():
            self.send_header(name, value)
        if not self.server.app.keep_alive:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def _json(self, status: int, payload: Any, extra: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._send_head(status, "application/json", len(data), extra or {})
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, record: RecordedRequest, status: int, message: str, kind: str, code: str | None) -> None:
        self._outcome(record, "error")
        self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})

    def _scripted_error(self, record: RecordedRequest, reply: Reply) -> None:
        headers = dict(reply.headers)
        if reply.retry_after is not None:
            headers["Retry-After"] = f"{reply.retry_after:g}"
        self._outcome(record, "error")
        if reply.raw_body is not None:
            self._send_head(reply.status, reply.content_type or "text/html", len(reply.raw_body), headers)
            self.wfile.write(reply.raw_body)
            self.wfile.flush()
        else:
            error = dict(reply.error or {"message": f"error {reply.status}"})
            if reply.echo_auth:
                error["message"] = f"{error.get('message', '')} (Authorization: {self.headers.get('authorization')})"
            self._json(reply.status, {"error": error}, headers)

    def _reset(self, record: RecordedRequest) -> None:
        """Reset the connection: SO_LINGER 0 makes close() send a TCP RST."""
        import struct

        self._outcome(record, "reset")
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        raise _ClientGone()

    def _keepalive(self, reply: Reply) -> None:
        """Only SSE comments, every ``keepalive_s``, for ``keepalive_for_s`` (None: until the client leaves)."""
        assert reply.keepalive_s is not None
        end = None if reply.keepalive_for_s is None else time.monotonic() + reply.keepalive_for_s
        while end is None or time.monotonic() < end:
            self._chunk(b": keep-alive\n\n")
            self._wait(reply.keepalive_s)

    def _answer_text(self, reply: Reply, body: dict[str, Any]) -> str:
        return _cut_at_stop(self._full_text(reply, body), body.get("stop"))

    def _full_text(self, reply: Reply, body: dict[str, Any]) -> str:
        if reply.text is not None:
            return reply.text
        if reply.chunks is not None:
            return "".join(reply.chunks)
        if reply.tool_calls:
            return ""
        last: dict[str, Any] = next((m for m in reversed(body["messages"]) if m.get("role") == "user"), {})
        return f"echo: {_content_text(last.get('content'))}"

    def _usage(self, reply: Reply, body: dict[str, Any], completion: int) -> dict[str, Any]:
        prompt = sum(len(_WORDS.findall(_content_text(m.get("content")))) for m in body["messages"])
        u = reply.usage
        prompt = u.get("prompt_tokens", prompt)
        completion = u.get("completion_tokens", completion)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": u.get("total_tokens", prompt + completion),
        }
        if "cached_tokens" in u:
            usage["prompt_tokens_details"] = {"cached_tokens": u["cached_tokens"], "audio_tokens": 0}
        if "reasoning_tokens" in u:
            usage["completion_tokens_details"] = {"reasoning_tokens": u["reasoning_tokens"], "audio_tokens": 0}
        return usage

    @staticmethod
    def _tool_calls(reply: Reply) -> list[tuple[str, str, str]]:
        calls = []
        for i, call in enumerate(reply.tool_calls):
            arguments = call.get("arguments", {})
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            calls.append((str(call.get("id") or f"call_{i}_{uuid.uuid4().hex[:8]}"), str(call["name"]), arguments))
        return calls

    def _complete(self, record: RecordedRequest, reply: Reply, body: dict[str, Any]) -> None:
        text = self._answer_text(reply, body)
        calls = self._tool_calls(reply)
        message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
        if calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in calls
            ]
        completion = len(_WORDS.findall(text)) + sum(len(args) // 4 + 1 for _, _, args in calls)
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or body["model"],
            "system_fingerprint": "fp_amsha_test",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": reply.finish_reason or ("tool_calls" if calls else "stop"),
                }
            ],
        }
        if reply.report_usage:
            payload["usage"] = self._usage(reply, body, completion)
        self._outcome(record, "completed")
        if reply.drip_s is None:
            self._json(200, payload, reply.headers)
            return
        data = json.dumps(payload).encode()
        self._send_head(200, "application/json", len(data), reply.headers)
        for i in range(0, len(data), 16):
            if i:
                self._wait(reply.drip_s)
            self.wfile.write(data[i : i + 16])
            self.wfile.flush()

    # ---- streaming ----------------------------------------------------------------------------

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, payload: Any) -> None:
        self._chunk(b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n")

    def _stream(self, record: RecordedRequest, reply: Reply, body: dict[str, Any]) -> None:
        app = self.server.app
        delay = reply.chunk_delay_s if reply.chunk_delay_s is not None else app.chunk_delay_s
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        text = self._answer_text(reply, body)
        whole = reply.chunks is not None and "".join(reply.chunks) == text
        pieces = reply.chunks if whole and reply.chunks is not None else _WORDS.findall(text)
        calls = self._tool_calls(reply)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": reply.model or body["model"],
            "system_fingerprint": "fp_amsha_test",
        }
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        self._send_head(200, reply.content_type or "text/event-stream", None, reply.headers)
        if reply.keepalive_s is not None:
            self._keepalive(reply)
        self._event(chunk({"role": "assistant", "content": ""}))
        if reply.raw_events is not None:
            for payload in reply.raw_events:
                self._event(payload)
            self._outcome(record, "completed")
            self._chunk(b"")
            return
        sent = 0
        for piece in pieces:
            if reply.cut_after is not None and sent >= reply.cut_after:
                self._cut(record, reply)
                return
            if reply.error_event_after is not None and sent >= reply.error_event_after:
                self._error_event(record, reply)
                return
            if sent:
                self._wait(delay)
            self._event(chunk({"content": piece}))
            sent += 1
        tool_events = self._tool_events(calls, reply)
        for delta in tool_events:
            if reply.cut_after is not None and sent >= reply.cut_after:
                self._cut(record, reply)
                return
            if sent:
                self._wait(delay)
            self._event(chunk({"tool_calls": [delta]}))
            sent += 1
        if reply.cut_after is not None and sent >= reply.cut_after:
            self._cut(record, reply)
            return
        if reply.error_event_after is not None:
            self._error_event(record, reply)
            return
        self._event(chunk({}, reply.finish_reason or ("tool_calls" if calls else "stop")))
        if include_usage and reply.report_usage:
            usage = self._usage(reply, body, len(pieces) + len(tool_events))
            self._event({**base, "choices": [], "usage": usage})
        self._outcome(record, "completed")
        self._event(b"[DONE]")
        self._chunk(b"")

    @staticmethod
    def _tool_events(calls: list[tuple[str, str, str]], reply: Reply) -> list[dict[str, Any]]:
        step = max(1, reply.argument_chunk)
        per_call: list[list[dict[str, Any]]] = []
        for index, (cid, name, args) in enumerate(calls):
            events: list[dict[str, Any]] = [
                {"index": index, "id": cid, "type": "function", "function": {"name": name, "arguments": ""}}
            ]
            events += [
                {"index": index, "function": {"arguments": args[i : i + step]}} for i in range(0, len(args), step)
            ]
            per_call.append(events)
        if not reply.interleave_tools:
            return [e for events in per_call for e in events]
        out: list[dict[str, Any]] = []
        for i in range(max((len(e) for e in per_call), default=0)):
            out += [events[i] for events in per_call if i < len(events)]
        return out

    def _cut(self, record: RecordedRequest, reply: Reply) -> None:
        self._outcome(record, "cut")
        if reply.cut_cleanly:
            self._chunk(b"")  # the body ends properly, but without finish_reason or [DONE]
        else:
            self.wfile.flush()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.close_connection = True

    def _error_event(self, record: RecordedRequest, reply: Reply) -> None:
        error = reply.error or {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
        }
        self._outcome(record, "error")
        self._event({"error": error})
        self._chunk(b"")


def _cut_at_stop(text: str, stop: Any) -> str:
    """``text`` ending before the first of the request's stop sequences, as the API does."""
    for sequence in [stop] if isinstance(stop, str) else stop or []:
        if sequence and sequence in text:
            text = text[: text.index(sequence)]
    return text


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""
