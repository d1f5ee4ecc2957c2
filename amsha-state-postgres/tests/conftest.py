"""One real PostgreSQL server per test session (started by the fixture itself, installed
with apt-get when missing), a fresh schema per test, and a TCP proxy that can cut a
connection at a chosen protocol message."""

from __future__ import annotations

import select
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from amsha_postgres.store import PostgresStore
from amsha_postgres.testing import PostgresServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.launch()
    except Exception as exc:  # never a skip: the postgres tests need a real server
        pytest.fail(f"cannot start a PostgreSQL server for the tests: {exc}", pytrace=False)
    yield server
    server.close()


@pytest.fixture
def schema(pg_server: PostgresServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    if pg_server.started:
        with pg_server.admin() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def make_store(pg_server: PostgresServer, schema: str) -> Iterator[Callable[..., PostgresStore]]:
    stores: list[PostgresStore] = []

    def make(dsn: str | None = None, **kwargs: Any) -> PostgresStore:
        kwargs.setdefault("schema", schema)
        kwargs.setdefault("retry_budget_s", 10.0)
        store = PostgresStore(dsn or pg_server.dsn(), **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., PostgresStore]) -> PostgresStore:
    return make_store()


class Proxy:
    """A TCP proxy in front of the server. ``cut_after_commit`` / ``cut_before_commit``:
    the next COMMIT a client sends is forwarded (or not) and then both sides of that
    connection are closed, before the server's answer reaches the client.
    ``drop_notifications``: NotificationResponse messages are not passed to clients (as
    a pooler in transaction mode loses them). Use with ``sslmode=disable``.

    Cut "before" drops the chunk that carries the COMMIT: in pipeline mode that is the whole
    transaction; either way nothing of it commits."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut: str | None = None
        self.cuts = 0
        self.drop_notifications = False
        self.dropped = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.target))
        from_server = b""
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [], 0.5)
                if self._closed:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        # COMMIT as a simple query, or as the Parse message of a pipeline
                        # (sent in one chunk with the transaction's other statements).
                        if self.cut is not None and b"COMMIT\x00" in data:
                            mode, self.cut = self.cut, None
                            if mode == "after":
                                server.sendall(data)
                                # Let the server run it before the connection goes away.
                                threading.Event().wait(0.2)
                            self.cuts += 1
                            return
                        server.sendall(data)
                    else:
                        if not self.drop_notifications:
                            client.sendall(data)
                            continue
                        from_server += data
                        out = b""
                        while len(from_server) >= 5:
                            length = int.from_bytes(from_server[1:5], "big")
                            if len(from_server) < 1 + length:
                                break
                            message, from_server = from_server[: 1 + length], from_server[1 + length :]
                            if message[:1] == b"A":
                                self.dropped += 1
                            else:
                                out += message
                        if out:
                            client.sendall(out)
        finally:
            for sock in (client, server):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self.listener.close()


@pytest.fixture
def proxy(pg_server: PostgresServer) -> Iterator[Proxy]:
    p = Proxy(pg_server.port)
    yield p
    p.close()


def proxy_dsn(server: PostgresServer, proxy: Proxy) -> str:
    return server.dsn(port=proxy.port) + "?sslmode=disable"
