"""The HTTPPeer does what a test scripts, byte for byte, seen from a plain stdlib client."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from amsha.testing import HTTPPeer, PeerReply, PeerRequest, free_port


def _get(peer: HTTPPeer, path: str = "/x", body: bytes = b"", timeout: float = 5.0) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=timeout)
    conn.request("POST", path, body=body, headers={"Authorization": "Bearer k"})
    return conn.getresponse()


def test_status_headers_and_body_as_scripted(http_peer: HTTPPeer) -> None:
    http_peer.script(PeerReply.json({"error": "slow down"}, status=429, headers={"Retry-After": "1"}))
    reply = _get(http_peer, body=b'{"model": "m"}')
    assert reply.status == 429 and reply.getheader("Retry-After") == "1"
    assert json.loads(reply.read()) == {"error": "slow down"}
    seen = http_peer.requests[-1]
    assert seen.json() == {"model": "m"} and seen.headers["authorization"] == "Bearer k"
    # The server records the outcome once it has sent the last byte: the client may read it first.
    assert http_peer.wait_for(lambda _: seen.outcome == "completed") and "Bearer k" in seen.text


def test_unscripted_requests_go_to_the_responder_else_404(http_peer: HTTPPeer) -> None:
    assert _get(http_peer).status == 404
    http_peer.responder = lambda request: PeerReply.json({"path": request.path})
    assert json.loads(_get(http_peer, "/api/chat").read()) == {"path": "/api/chat"}


def test_match_and_times(http_peer: HTTPPeer) -> None:
    http_peer.responder = lambda request: PeerReply(body=b"default")
    http_peer.script(PeerReply(body=b"two", match="second", times=2))
    assert _get(http_peer, body=b"first").read() == b"default"
    assert _get(http_peer, body=b"second").read() == b"two"
    assert _get(http_peer, body=b"second").read() == b"two"
    assert _get(http_peer, body=b"second").read() == b"default"


def test_chunks_arrive_one_by_one_with_delays(http_peer: HTTPPeer) -> None:
    http_peer.script(PeerReply.lines([{"n": 1}, {"n": 2}, {"n": 3}], chunk_delay_s=0.1))
    started = time.perf_counter()
    reply = _get(http_peer)
    assert reply.getheader("Transfer-Encoding") == "chunked"
    lines = [json.loads(line) for line in reply.read().splitlines()]
    assert lines == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert time.perf_counter() - started >= 0.2


def test_sse_and_first_byte_delay(http_peer: HTTPPeer) -> None:
    http_peer.script(PeerReply.sse([{"a": 1}], first_byte_delay_s=0.2))
    started = time.perf_counter()
    body = _get(http_peer).read()
    assert time.perf_counter() - started >= 0.2
    assert body == b'data: {"a": 1}\n\ndata: [DONE]\n\n'


def test_a_client_timeout_against_a_slow_first_byte(http_peer: HTTPPeer) -> None:
    http_peer.shape(first_byte_delay_s=2.0)
    with pytest.raises(TimeoutError):
        _get(http_peer, timeout=0.2)
    assert http_peer.wait_for(lambda p: p.requests[-1].outcome == "client_closed", 3)


@pytest.mark.parametrize("drop", [{"drop_after_bytes": 7}, {"drop_after_chunks": -1}], ids=["bytes", "chunks"])
def test_dropped_connections(http_peer: HTTPPeer, drop: dict[str, int]) -> None:
    http_peer.script(PeerReply(body=[b"first ", b"second ", b"third"], **drop))
    reply = _get(http_peer)
    with pytest.raises(http.client.IncompleteRead) as err:
        reply.read()
    assert err.value.partial.startswith(b"first ")
    assert b"third" not in err.value.partial
    assert http_peer.requests[-1].outcome == "dropped"


def test_a_whole_body_dropped_after_n_bytes(http_peer: HTTPPeer) -> None:
    http_peer.script(PeerReply(body=b"0123456789", drop_after_bytes=4))
    with pytest.raises(http.client.IncompleteRead) as err:
        _get(http_peer).read()
    assert err.value.partial == b"0123"


def test_a_stall_ends_when_the_client_hangs_up(http_peer: HTTPPeer) -> None:
    http_peer.script(PeerReply(body=[b"a", b"b"], stall_after_chunks=1, stall_s=10))
    conn = http.client.HTTPConnection("127.0.0.1", http_peer.port, timeout=5)
    conn.request("POST", "/x")
    reply = conn.getresponse()
    assert reply.read(1) == b"a"
    conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    conn.close()
    assert http_peer.wait_for(lambda p: p.requests[-1].outcome == "client_closed", 2)


def test_shape_applies_to_every_answer_and_rejects_unknown_fields(http_peer: HTTPPeer) -> None:
    http_peer.responder = lambda request: PeerReply(body=b"ok", headers={"X-A": "1"})
    http_peer.shape(headers={"X-B": "2"})
    reply = _get(http_peer)
    assert (reply.getheader("X-A"), reply.getheader("X-B"), reply.read()) == ("1", "2", b"ok")
    with pytest.raises(TypeError, match="status"):
        http_peer.shape(status=500)


def test_connections_are_counted_and_a_stopped_peer_refuses() -> None:
    peer = HTTPPeer(lambda request: PeerReply(body=b"ok")).start()
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    for _ in range(2):
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok"
    assert peer.connections == 1 and peer.open_connections == 1  # keep-alive: one connection
    conn.close()
    assert peer.wait_for(lambda p: p.open_connections == 0, 2)
    peer.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", peer.port), timeout=1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", free_port()), timeout=1)


def test_peer_request_text_names_everything_sent() -> None:
    request = PeerRequest("POST", "/p", {"a": "b"}, b'{"k": 1}', 1, 0.0)
    assert request.text == 'POST /p\na: b\n\n{"k": 1}' and request.json() == {"k": 1}
    assert PeerRequest("GET", "/", {}, b"not json", 1, 0.0).json() is None
