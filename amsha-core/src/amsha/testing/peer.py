"""A controllable HTTP peer on 127.0.0.1 for provider tests: the server side a test scripts.

Standard library only (``http.server``, one thread per connection, HTTP/1.1 keep-alive), so
any client (httpx, requests, an SDK) talks to it as it talks to a real API. A test scripts
what the server does, byte by byte if it must: the status, the headers, the body (one piece
with ``Content-Length``, or a list of pieces sent as HTTP chunks), a delay before the first
byte, delays between chunks, a stall (holding the answer open while watching for the client
to hang up), a connection dropped after N bytes or N chunks. It records every request and
every connection, and notices when a client closes its connection mid-answer, so a test can
prove that closing a stream released it at the transport::

    with HTTPPeer(responder=my_protocol) as peer:      # my_protocol(request) -> PeerReply
        peer.script(PeerReply.json({"error": "slow down"}, status=429, headers={"Retry-After": "1"}))
        provider = MyProvider(base_url=peer.url, timeout_s=1)
        ...
        assert peer.requests[-1].json()["model"] == "m2"

``responder`` answers every request the script does not: it is where a plugin teaches the
peer its wire protocol (build :meth:`PeerReply.json`, :meth:`PeerReply.sse` or
:meth:`PeerReply.lines` from the request). :meth:`HTTPPeer.shape` changes how every later
answer is sent (delays, stalls, drops) without touching what it says, which is how the
provider contract produces timeouts, interrupted streams and slow answers for any protocol.

The request log keeps what clients sent, ``Authorization`` headers included: it is a test
fixture, never something to run in production.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["HTTPPeer", "PeerReply", "PeerRequest", "free_port"]


@dataclass
class PeerReply:
    """One scripted answer.

    ``body``: bytes or str sent whole with ``Content-Length``, or a sequence of pieces sent
    as HTTP chunks (``Transfer-Encoding: chunked``), one chunk per piece.
    ``first_byte_delay_s``: wait before the status line. ``chunk_delay_s``: wait between
    chunks. ``stall_after_chunks``: after sending that many chunks (negative: all but that
    many), hold the answer for ``stall_s`` seconds, ending early when the client hangs up.
    ``drop_after_chunks`` / ``drop_after_bytes``: close the TCP connection abruptly after that
    many chunks (negative: all but that many) or body bytes. ``match``: answer only requests
    whose path or body contains this text. ``times``: how many requests this answers.
    """

    status: int = 200
    body: bytes | str | Sequence[bytes | str] = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    first_byte_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    stall_after_chunks: int | None = None
    stall_s: float = 10.0
    drop_after_chunks: int | None = None
    drop_after_bytes: int | None = None
    match: str | None = None
    times: int = 1

    @classmethod
    def json(cls, payload: Any, *, status: int = 200, **kw: Any) -> PeerReply:
        """A JSON answer sent whole."""
        return cls(status=status, body=json.dumps(payload).encode(), **kw)

    @classmethod
    def sse(cls, events: Iterable[Any], *, done: str | None = "[DONE]", **kw: Any) -> PeerReply:
        """A server-sent-events stream: one ``data:`` event per item (JSON-encoded unless
        bytes or str), one HTTP chunk each, then ``data: <done>`` if ``done`` is set."""
        pieces = [b"data: " + _encode(e) + b"\n\n" for e in events]
        if done is not None:
            pieces.append(b"data: " + done.encode() + b"\n\n")
        kw.setdefault("content_type", "text/event-stream")
        return cls(body=pieces, **kw)

    @classmethod
    def lines(cls, items: Iterable[Any], **kw: Any) -> PeerReply:
        """A newline-delimited JSON stream (as Ollama's ``/api/chat`` sends): one line per
        item, one HTTP chunk each."""
        kw.setdefault("content_type", "application/x-ndjson")
        return cls(body=[_encode(i) + b"\n" for i in items], **kw)

    def pieces(self) -> list[bytes] | None:
        """The body's chunks, or None when it is sent whole."""
        if isinstance(self.body, bytes | str):
            return None
        return [p.encode() if isinstance(p, str) else bytes(p) for p in self.body]


def _encode(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return json.dumps(item).encode()


@dataclass
class PeerRequest:
    """A request the peer received. ``headers`` have lower-case names; ``body`` is the raw
    bytes. ``connection`` numbers the TCP connection it came on (1, 2, ...). ``outcome``:
    ``pending``, ``completed``, ``client_closed`` (the client hung up mid-answer, or during a
    delay or stall), ``dropped`` (the peer cut the connection as scripted)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int
    received_at: float
    outcome: str = "pending"

    def json(self) -> Any:
        """The body decoded as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    @property
    def text(self) -> str:
        """Path, headers and body as one text, for "did X reach the wire" checks."""
        head = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.path}\n{head}\n\n{self.body.decode('utf-8', 'replace')}"


class _ClientGone(Exception):
    """The client closed the connection while the peer was answering."""


class HTTPPeer:
    """A scriptable HTTP server on 127.0.0.1 (see the module docstring).

    ``responder(request) -> PeerReply`` answers requests the script does not (default: 404).
    Attributes a test reads: ``requests``, ``connections`` (opened so far),
    ``open_connections`` (open now), ``url``.
    """

    def __init__(
        self,
        responder: Callable[[PeerRequest], PeerReply] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.responder = responder
        self.requests: list[PeerRequest] = []
        self.connections = 0
        self.open_connections = 0
        self._shape: dict[str, Any] = {}
        self._script: list[PeerReply] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._host = host
        self._httpd = _Server((host, port), _Handler)
        self._httpd.peer = self
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self._host}:{self.port}"

    def start(self) -> HTTPPeer:
        """Start serving on a thread of its own."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="amsha-http-peer", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection; the port then refuses connections."""
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

    def __enter__(self) -> HTTPPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- scripting ----------------------------------------------------------------------

    def script(self, *replies: PeerReply) -> HTTPPeer:
        """Queue answers for the next requests, in order (each for ``times`` requests)."""
        with self._cond:
            self._script.extend(replies)
        return self

    def shape(self, **overrides: Any) -> HTTPPeer:
        """Send every later answer (scripted or from the responder) with these
        :class:`PeerReply` fields replaced: ``first_byte_delay_s``, ``chunk_delay_s``,
        ``stall_after_chunks``, ``stall_s``, ``drop_after_chunks``, ``drop_after_bytes``,
        ``headers``. Called with no arguments, it clears the overrides."""
        allowed = {
            "first_byte_delay_s",
            "chunk_delay_s",
            "stall_after_chunks",
            "stall_s",
            "drop_after_chunks",
            "drop_after_bytes",
            "headers",
        }
        unknown = set(overrides) - allowed
        if unknown:
            raise TypeError(f"HTTPPeer.shape(): unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        with self._cond:
            self._shape = dict(overrides)
        return self

    def reset(self) -> None:
        """Forget the script, the shape, the request log and the connection count."""
        with self._cond:
            self._script.clear()
            self._shape = {}
            self.requests.clear()
            self.connections = 0

    def _pick(self, request: PeerRequest) -> PeerReply:
        haystack = request.path + "\n" + request.body.decode("utf-8", "replace")
        with self._cond:
            reply: PeerReply | None = None
            for i, candidate in enumerate(self._script):
                if candidate.match is None or candidate.match in haystack:
                    candidate.times -= 1
                    if candidate.times <= 0:
                        del self._script[i]
                    reply = candidate
                    break
            shape = dict(self._shape)
        if reply is None:
            if self.responder is None:
                reply = PeerReply.json({"error": f"no answer scripted for {request.method} {request.path}"}, status=404)
            else:
                reply = self.responder(request)
        if shape:
            headers = {**reply.headers, **shape.pop("headers", {})}
            reply = replace(reply, headers=headers, **shape)
        return reply

    # ---- observing ----------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[HTTPPeer], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(peer)`` holds (checked at every request, connection and
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


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` where nothing listens now (connections to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    peer: HTTPPeer

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError | _ClientGone | OSError):
            return  # a client that goes away is what the tests are about
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "amsha-http-peer/1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read the request log instead

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = self.server.peer
        with peer._cond:
            peer.connections += 1
            peer.open_connections += 1
            peer._sockets.add(self.connection)
            self.connection_id = peer.connections
            peer._cond.notify_all()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        peer = self.server.peer
        with peer._cond:
            peer.open_connections -= 1
            peer._sockets.discard(self.connection)
            peer._cond.notify_all()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        peer = self.server.peer
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        request = PeerRequest(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            self.connection_id,
            time.time(),
        )
        with peer._cond:
            peer.requests.append(request)
            peer._cond.notify_all()
        try:
            reply = peer._pick(request)
            self._send(request, reply)
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self._outcome(request, "client_closed")

    def _outcome(self, request: PeerRequest, outcome: str) -> None:
        peer = self.server.peer
        with peer._cond:
            request.outcome = outcome
            peer._cond.notify_all()

    def _wait(self, seconds: float) -> None:
        """Sleep, but notice at once when the client hangs up."""
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        while True:
            if self.server.peer._stopping.is_set():
                raise _ClientGone()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if readable:
                try:
                    peeked = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    raise _ClientGone() from None
                if not peeked:
                    raise _ClientGone()
                time.sleep(min(left, 0.01))

    def _drop(self, request: PeerRequest) -> None:
        self._outcome(request, "dropped")
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def _send(self, request: PeerRequest, reply: PeerReply) -> None:
        self._wait(reply.first_byte_delay_s)
        pieces = reply.pieces()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        if pieces is None:
            whole = reply.body.encode() if isinstance(reply.body, str) else bytes(reply.body)  # type: ignore[arg-type]
            self.send_header("Content-Length", str(len(whole)))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if pieces is None:
            if reply.drop_after_bytes is not None and reply.drop_after_bytes < len(whole):
                self.wfile.write(whole[: reply.drop_after_bytes])
                self._drop(request)
                return
            self.wfile.write(whole)
            self.wfile.flush()
            self._outcome(request, "completed")
            return
        self.wfile.flush()
        n = len(pieces)
        stall_at = _index(reply.stall_after_chunks, n)
        drop_at = _index(reply.drop_after_chunks, n)
        sent_bytes = 0
        for i, piece in enumerate(pieces):
            if drop_at is not None and i >= drop_at:
                self._drop(request)
                return
            if stall_at is not None and i == stall_at:
                self._wait(reply.stall_s)
            elif i:
                self._wait(reply.chunk_delay_s)
            if reply.drop_after_bytes is not None and sent_bytes + len(piece) > reply.drop_after_bytes:
                keep = reply.drop_after_bytes - sent_bytes
                if keep > 0:
                    self.wfile.write(b"%x\r\n%s" % (len(piece), piece[:keep]))
                self._drop(request)
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            sent_bytes += len(piece)
        if drop_at is not None and drop_at >= n:
            self._drop(request)
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self._outcome(request, "completed")


def _index(count: int | None, n: int) -> int | None:
    if count is None:
        return None
    return max(0, n + count) if count < 0 else count
