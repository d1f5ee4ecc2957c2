"""The ``postgres`` state store: states, run records, run events and run control in PostgreSQL.

One store serves every process on every machine that reaches the database, so runs on a
Dask or Ray cluster, or on several web workers, share states, records, events, leases and
cancel requests. psycopg 3 with a ``psycopg_pool`` connection pool per process; the binary
protocol; server-side prepared statements (after a statement's first use on a connection);
no ORM.

Layout (see :mod:`amsha_postgres._migrate`): ``state_versions`` holds one row per version,
a snapshot or a delta of the keys that changed (:mod:`amsha_postgres._codec`, the same
layout as the sqlite store); ``runs`` a row per run (the record's body as JSON, its status,
and the run-control columns on the server's clock); ``events`` a row per event, keyed by
``(run_id, seq)``, append-only.

Concurrency. Writes of one state are serialized by a transaction-level advisory lock on
the state, taken before the latest version is read: the version check, the delta and the
insert see every earlier commit, so optimistic concurrency holds across machines, and
``delete_run`` (which rewrites chains) never races a write. Run-control writes are single
statements (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``) or short transactions with the
run's row locked; fenced writes (``owner=``) check the lease with the row share-locked in
the same transaction as the write. Leases are computed on the server's clock
(``clock_timestamp()``) and converted to the reader's clock (``time.time()``) when read.

Faults. A store call that meets a dropped connection, a server restarting, a statement
timeout, a serialization failure or a deadlock retries itself, with backoff, for at most
``retry_budget_s``; then it raises :class:`~amsha.errors.StateError` naming the operation.
A write whose commit may or may not have happened (the connection dropped during
``COMMIT``) is resolved on the retry without a duplicate or a lost write: every state
version and every batch of events carries a random ``write_id``, so a retry that finds its
own row knows its first attempt committed. Other errors (disk full, permissions, a missing
database) are not retried.

Secrets. The DSN is read from the environment (``dsn_env``); its password is registered
with :mod:`amsha.secrets`, and every message that leaves the store (errors, the pool's log
lines) is scrubbed of the DSN and the password.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from amsha.errors import (
    ConfigError,
    LeaseLostError,
    RunNotFoundError,
    SchemaVersionError,
    StateError,
    StateNotFoundError,
    VersionConflictError,
)
from amsha.plugins import BackendContext
from amsha.secrets import has_secrets, redact, redact_obj, register_secret
from amsha.state import (
    CancelOutcome,
    RunControl,
    RunOwner,
    RunPage,
    RunRecord,
    RunStatus,
    StateSnapshot,
    run_matches,
)
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict

from . import _codec
from ._codec import Tip
from ._migrate import SCHEMA_VERSION, layout_version, migrate

__all__ = ["SCHEMA_VERSION", "PostgresStore", "build"]

log = logging.getLogger("amsha.postgres")
T = TypeVar("T")

_CONTROL_FIELDS = ("owner", "heartbeat_at", "lease_expires_at", "cancel_request")
_TERMINAL = "('SUCCEEDED', 'FAILED', 'CANCELLED', 'LOST')"
# The control columns, with times as seconds from the server's now (converted on read).
_CONTROL_COLS = (
    "status, owner_id, owner_host, owner_pid, "
    "extract(epoch FROM heartbeat_at - clock_timestamp())::float8, "
    "extract(epoch FROM lease_expires_at - clock_timestamp())::float8, "
    "cancel_reason, extract(epoch FROM cancel_at - clock_timestamp())::float8"
)
# A run's status as readers see it: an active run whose lease expired is LOST.
_OBSERVED = (
    "(CASE WHEN status IN ('PENDING', 'RUNNING') AND lease_expires_at IS NOT NULL "
    "AND lease_expires_at <= clock_timestamp() THEN 'LOST' ELSE status END)"
)
_RETRY_SQLSTATES = {
    "40001": "a serialization failure",
    "40P01": "a deadlock",
    "57014": "the statement timeout",
    "55P03": "a lock timeout",
    "53300": "too many connections",
    "57P01": "the server shutting down",
    "57P02": "the server crashing",
    "57P03": "the server starting up",
}

# Connections and pools a forked child inherited: kept referenced and never closed in the
# child, because closing them there would end the parent's sessions on the same sockets.
_INHERITED: list[Any] = []

# Every DSN and password any store of this process was given: scrubbed from log records of
# psycopg and its pool, and from the store's own messages.
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()


def _scrub(text: str) -> str:
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, "***")
    return redact(text)


class _ScrubLogs(logging.Filter):
    """Scrubs the DSN and its password from psycopg's log records (the pool logs the
    errors it meets while connecting)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            record.msg = _scrub(record.getMessage())
            record.args = None
        return True


_LOG_FILTER = _ScrubLogs()
for _name in ("psycopg", "psycopg.pool"):
    logging.getLogger(_name).addFilter(_LOG_FILTER)


def _control_fields(row: Sequence[Any], now: float) -> dict[str, Any]:
    """The control fields of a record from :data:`_CONTROL_COLS` columns (in reader time)."""
    _status, owner_id, host, pid, hb, lease, reason, cancel_at = row
    return {
        "owner": None if owner_id is None else {"id": owner_id, "host": host or "", "pid": int(pid or 0)},
        "heartbeat_at": None if hb is None else now + hb,
        "lease_expires_at": None if lease is None else now + lease,
        "cancel_request": None
        if reason is None
        else {"reason": reason, "at": None if cancel_at is None else now + cancel_at},
    }


def _body(record: RunRecord) -> bytes:
    data = record.to_dict()
    for name in _CONTROL_FIELDS:
        data.pop(name, None)
    return _codec.encode(redact_obj(data))


class PostgresStore:
    """A :class:`~amsha.RunControlStore` in a PostgreSQL schema (see the module docs).

    Give the DSN itself (``dsn``, for code and tests) or the name of the environment variable
    holding it (``dsn_env``, what config does). ``tls`` holds libpq's TLS settings
    (``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``), passed through. Raises
    :class:`~amsha.errors.StateError` at once if the server cannot be reached or the schema
    cannot be created, and :class:`~amsha.errors.SchemaVersionError` if a newer release
    wrote it.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        dsn_env: str | None = None,
        schema: str = "amsha",
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        statement_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        retry_budget_s: float = 15.0,
        notifications: str = "auto",
        poll_interval_s: float = 0.5,
        prepared_statements: bool = True,
        tls: Mapping[str, str] | None = None,
        application_name: str = "amsha",
    ) -> None:
        from .plugin import PostgresStoreOptions  # the one place names and values are checked

        try:
            PostgresStoreOptions.model_validate(
                {
                    "dsn_env": dsn_env or "AMSHA_POSTGRES_DSN",
                    "schema": schema,
                    "pool_min_size": pool_min_size,
                    "pool_max_size": pool_max_size,
                    "statement_timeout_s": statement_timeout_s,
                    "connect_timeout_s": connect_timeout_s,
                    "retry_budget_s": retry_budget_s,
                    "notifications": notifications,
                    "poll_interval_s": poll_interval_s,
                    **dict(tls or {}),
                }
            )
        except Exception as exc:
            raise StateError(f"postgres store: invalid options: {_scrub(str(exc))}") from None
        self._given_dsn = dsn
        self.dsn_env = dsn_env
        if dsn is None:
            if dsn_env is None:
                raise StateError("postgres store: give a DSN or the name of the environment variable holding it")
            dsn = os.environ.get(dsn_env)
            if not dsn:
                raise ConfigError(
                    [("state.options.dsn_env", f"environment variable {dsn_env!r} is not set (it should hold the DSN)")]
                )
        self._dsn = dsn
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            # psycopg's message quotes the DSN: not shown.
            where = f"environment variable {dsn_env!r}" if dsn_env else "the DSN given"
            raise ConfigError([("state.options.dsn_env", f"{where} does not hold a valid PostgreSQL DSN")]) from None
        password = str(params.get("password") or "")
        with _SECRETS_LOCK:
            _SECRETS.add(dsn)
            if password:
                _SECRETS.add(password)
        if password:
            register_secret(password)  # the DSN holds it: scrubbing it scrubs the DSN's secret part
        self.schema = schema
        self.where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/{params.get('dbname') or ''}"
        self.pool_min_size = int(pool_min_size)
        self.pool_max_size = int(pool_max_size)
        self.statement_timeout_s = float(statement_timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.retry_budget_s = float(retry_budget_s)
        self.notifications = notifications
        self.poll_interval_s = float(poll_interval_s)
        self.prepared_statements = bool(prepared_statements)
        self.tls = {k: v for k, v in dict(tls or {}).items() if v is not None}
        self.application_name = application_name
        self.channel = f"{schema}.events"
        self._q = _Queries(schema)
        self._setup_process()
        try:
            self._init_schema()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r}, schema={self.schema!r})"

    # ---- connections ------------------------------------------------------------------------

    def _setup_process(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._local = threading.local()
        self._listeners: list[tuple[threading.Thread, psycopg.Connection[Any]]] = []
        self._suspect = False  # a connection failed since the last call that went through
        self._notify_ok: bool | None = None if self.notifications == "auto" else self.notifications == "on"
        # state_id -> the latest version this instance wrote or read of it, used only while
        # the database's row for that version is the same row (same write_id).
        self._tips: dict[str, Tip] = {}
        self._tips_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        # A store built from config carries only the variable's name: the worker reads its
        # own environment.
        return {
            "dsn": self._given_dsn,
            "dsn_env": self.dsn_env,
            "schema": self.schema,
            "pool_min_size": self.pool_min_size,
            "pool_max_size": self.pool_max_size,
            "statement_timeout_s": self.statement_timeout_s,
            "connect_timeout_s": self.connect_timeout_s,
            "retry_budget_s": self.retry_budget_s,
            "notifications": self.notifications,
            "poll_interval_s": self.poll_interval_s,
            "prepared_statements": self.prepared_statements,
            "tls": self.tls,
            "application_name": self.application_name,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.__init__(state.pop("dsn"), **state)  # type: ignore[misc]

    def _kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "prepare_threshold": 0 if self.prepared_statements else None,
            # libpq takes whole seconds, and treats 1 as 2.
            "connect_timeout": max(2, round(self.connect_timeout_s)),
            "application_name": self.application_name,
            **self.tls,
        }

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(self.statement_timeout_s * 1000)}",))

    def _get_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        if os.getpid() != self._pid:
            # A forked child: leave the parent's pool and connections alone, open its own.
            _INHERITED.extend([self._pool, *(c for _, c in self._listeners)])
            self._setup_process()
        pool = self._pool
        if pool is None:
            with self._lock:
                pool = self._pool
                if pool is None:
                    pool = psycopg_pool.ConnectionPool(
                        self._dsn,
                        kwargs=self._kwargs(),
                        min_size=self.pool_min_size,
                        max_size=self.pool_max_size,
                        configure=self._configure,
                        timeout=self.connect_timeout_s,
                        name=f"amsha-{self.schema}",
                        open=False,
                    )
                    pool.open(wait=False)
                    self._pool = pool
        return pool

    def close(self) -> None:
        """Close this process's pool and listening connections (the store reopens on next use)."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            pool, self._pool = self._pool, None
            listeners, self._listeners = self._listeners, []
            self._tips.clear()
            self._tips_bytes = 0
            self._local = threading.local()
        for _, conn in listeners:
            try:
                conn.close()
            except Exception:
                pass
        if pool is not None:
            try:
                pool.close(timeout=5)
            except Exception:
                pass

    # ---- calls, retries and errors ----------------------------------------------------------

    def _call(self, op: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` on a pooled connection, retried as :meth:`_retry` says."""

        def attempt(deadline: float) -> T:
            timeout = max(0.05, min(self.connect_timeout_s, deadline - time.monotonic()))
            if self._suspect:
                self._renew_failing_pool()
            with self._get_pool().connection(timeout=timeout) as conn:
                result = fn(conn)
            self._suspect = False
            return result

        return self._retry(op, attempt)

    def _retry(self, op: str, attempt: Callable[[float], T]) -> T:
        """Call ``attempt(deadline)``, retrying what may pass (see the module docs) until the
        ``retry_budget_s`` deadline; any other failure becomes a :class:`StateError`."""
        deadline = time.monotonic() + self.retry_budget_s
        delay = 0.02
        attempts = 0
        while True:
            attempts += 1
            try:
                return attempt(deadline)
            except psycopg.Error as exc:
                why = self._retryable(exc)
                if why is None or time.monotonic() + delay > deadline:
                    raise self._error(op, exc, attempts, why) from None
                if why == "connection":
                    self._drop_stale(exc)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    @staticmethod
    def _retryable(exc: psycopg.Error) -> str | None:
        """Why ``exc`` may pass on a retry (``"connection"`` for a lost or refused
        connection), or None when it will not."""
        state = _sqlstate(exc)
        if state in _RETRY_SQLSTATES:
            return "connection" if state.startswith("57P") else _RETRY_SQLSTATES[state]
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return "connection"
        if state is not None and state.startswith("08"):
            return "connection"
        if state is None and isinstance(exc, psycopg.OperationalError):
            return "connection"  # libpq's own: the server closed the connection, refused, ...
        return None

    def _drop_stale(self, exc: BaseException) -> None:
        """After a lost connection: test the idle connections, so retries do not take the
        other broken ones one by one (after a server restart all of them are); after the pool
        timed out (it found no server to connect to), start a new pool."""
        self._suspect = True
        if isinstance(exc, psycopg_pool.PoolTimeout):
            self._replace_pool()
            return
        pool = self._pool
        try:
            if pool is not None:
                pool.check()
        except Exception:
            pass

    def _renew_failing_pool(self) -> None:
        """Since the last failure: a pool whose own connection attempts failed and that has
        none to give is replaced. Its reconnection backs off for seconds; a new pool tries at
        once, so a server that came back is used at once."""
        pool = self._pool
        if pool is not None:
            stats = pool.get_stats()
            if stats.get("connections_errors", 0) and not stats.get("pool_available", 0):
                self._replace_pool()

    def _replace_pool(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                pool.close(timeout=0)
            except Exception:
                pass

    def _error(self, op: str, exc: BaseException, attempts: int = 1, why: str | None = None) -> StateError:
        text = str(exc).strip()
        msg = _scrub(text.splitlines()[0] if text else type(exc).__name__)
        state = _sqlstate(exc)
        where = f"postgres store {self.where} (schema {self.schema})"
        tried = f" after {attempts} attempts over {self.retry_budget_s:g} s" if attempts > 1 else ""
        if why == "connection":
            return StateError(
                f"{where}: {op}: cannot reach the server{tried} ({msg}); nothing more was written. "
                f"Check that the server is running and that the DSN in {self.dsn_env or 'the store'} is right"
            )
        if state == "57014":
            return StateError(
                f"{where}: {op}: a statement ran longer than statement_timeout_s ({self.statement_timeout_s:g} s)"
                f"{tried}, so nothing was written; raise state.options.statement_timeout_s or find the "
                f"transaction holding a lock"
            )
        if why is not None:
            return StateError(f"{where}: {op}: {why} persisted{tried} ({msg}); nothing was written")
        if state == "53100":
            return StateError(f"{where}: {op}: the server is out of disk space ({msg}); nothing was written")
        if state in ("28P01", "28000"):
            return StateError(f"{where}: {op}: the server refused the credentials ({msg})")
        if state == "3D000":
            return StateError(f"{where}: {op}: the database does not exist ({msg})")
        if state == "42501":
            return StateError(
                f"{where}: {op}: permission denied ({msg}); the role needs to create the schema "
                f"{self.schema!r} and its tables, or have them created by one that can"
            )
        return StateError(f"{where}: {op}: {msg}" + (f" (SQLSTATE {state})" if state else ""))

    # ---- schema -----------------------------------------------------------------------------

    def _init_schema(self) -> None:
        schema = self.schema

        def check(conn: psycopg.Connection[Any]) -> int:
            found = layout_version(conn, schema)
            if found > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"postgres store {self.where}: schema {schema!r} has layout version {found}, written by a "
                    f"newer amsha-state-postgres; this release reads layout {SCHEMA_VERSION} and older: upgrade "
                    f"amsha-state-postgres, or point state.options.schema at another schema"
                )
            if found == SCHEMA_VERSION:
                return found
            with conn.transaction():
                conn.execute("SET LOCAL statement_timeout = 0")
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"amsha-schema/{schema}",))
                found = layout_version(conn, schema)  # another process may have done it meanwhile
                if found < SCHEMA_VERSION:
                    try:
                        with conn.transaction():
                            found = migrate(conn, schema, found, SCHEMA_VERSION)
                    except psycopg.Error as exc:
                        raise StateError(
                            f"postgres store {self.where}: migrating schema {schema!r} to layout "
                            f"{SCHEMA_VERSION} failed ({_scrub(str(exc).strip())}); it is left as it was"
                        ) from None
            return found

        def attempt(deadline: float) -> int:
            # The first connection is opened here, not by the pool, so that a wrong password
            # or a missing database is reported as such at once (the pool would only time out).
            with psycopg.connect(self._dsn, **self._kwargs()) as conn:
                self._configure(conn)
                return check(conn)

        self._retry("open", attempt)

    def schema_version(self) -> int:
        """The layout version of the store's schema (0 when it has no tables yet)."""
        return self._call("schema_version", lambda conn: layout_version(conn, self.schema))

    # ---- fencing ----------------------------------------------------------------------------

    def _fence(self, conn: psycopg.Connection[Any], run_id: str | None, owner: str) -> None:
        """Inside a transaction: raise :class:`LeaseLostError` unless ``owner`` holds an
        unexpired lease on ``run_id``; the run's row stays share-locked until the end."""
        if run_id is None:
            raise LeaseLostError("?", f"owner {owner[:8]} wrote without naming its run; the write was refused")
        self._check_fence(conn.execute(self._q.fence, (owner, run_id)).fetchone(), run_id, owner)

    @staticmethod
    def _check_fence(row: Sequence[Any] | None, run_id: str | None, owner: str) -> None:
        """Raise :class:`LeaseLostError` unless the ``fence`` query's ``row`` says ``owner``
        holds the lease."""
        if row is None:
            raise LeaseLostError(str(run_id), "no such run in the store; the write was refused")
        holds, holder = row
        if not holds:
            who = (
                "its lease expired"
                if holder == owner
                else ("the lease is held by another owner" if holder else "no owner holds a lease")
            )
            raise LeaseLostError(
                str(run_id), f"owner {owner[:8]} no longer holds the lease ({who}); the write was refused"
            )

    # ---- states -----------------------------------------------------------------------------

    def put_state(
        self,
        state_id: str,
        data: dict[str, Any],
        *,
        expected_version: int,
        run_id: str | None = None,
        reason: str = "",
        owner: str | None = None,
    ) -> int:
        """Store ``data`` as version ``expected_version + 1`` of ``state_id``, writing only the
        keys whose value changed since the latest version (or a snapshot). Raises
        :class:`~amsha.errors.VersionConflictError` (naming both versions) when the latest
        stored version is not ``expected_version``; with ``owner``, :class:`LeaseLostError`
        unless that owner holds the lease on ``run_id``."""
        if not isinstance(data, dict):
            raise StateError(f"state {state_id!r}: data must be a dict of JSON values, got {type(data).__name__}")
        values = _encode_scrubbed(state_id, data)
        total = _codec.size(values)
        write_id = uuid.uuid4().bytes
        q = self._q

        if owner is not None and run_id is None:
            raise LeaseLostError("?", f"owner {owner[:8]} wrote a state without naming its run; the write was refused")

        def write(conn: psycopg.Connection[Any]) -> tuple[int, Tip | None]:
            # The common case in one round trip (pipeline mode): when this instance holds the
            # version the caller names, the delta on it is planned here and inserted only if
            # that row is still the latest, after the state's lock, in one statement.
            cached = self._tips.get(state_id)
            if cached is not None and cached.version != expected_version:
                cached = None
            guess = _codec.plan(expected_version + 1, cached, values, total) if cached or not expected_version else None
            version = expected_version + 1
            with conn.pipeline(), conn.transaction():
                fence = conn.execute(q.fence, (owner, run_id)) if owner is not None else None
                conn.execute(q.lock, (f"{self.schema}/{state_id}",))
                fast = None
                if guess is not None:
                    params = (state_id, version, time.time(), run_id, reason or "", write_id, *guess)
                    if cached is None:
                        fast = conn.execute(q.insert_first, (*params, state_id), binary=True)
                    else:
                        where = (state_id, expected_version, cached.write_id, state_id, expected_version)
                        fast = conn.execute(q.insert_after, (*params, *where), binary=True)
                if fence is not None and owner is not None:
                    self._check_fence(fence.fetchone(), run_id, owner)
                if fast is not None and fast.fetchone() is not None:
                    assert guess is not None
                    return version, Tip(version, write_id, guess.base, guess.depth, guess.chain, values, total)
                # Otherwise: read the latest version (under the lock) and plan on it.
                row = conn.execute(q.latest_meta, (state_id,), binary=True).fetchone()
                latest = row[0] if row else 0
                if latest != expected_version:
                    if row is not None and latest == expected_version + 1 and bytes(row[1]) == write_id:
                        return latest, None  # an earlier attempt of this call committed
                    raise VersionConflictError(state_id, expected_version, latest)
                prev = self._tip(conn, state_id, row) if row else None
                planned = _codec.plan(version, prev, values, total)
                conn.execute(
                    q.insert_version,
                    (state_id, version, time.time(), run_id, reason or "", write_id, *planned),
                    binary=True,
                )
            return version, Tip(version, write_id, planned.base, planned.depth, planned.chain, values, total)

        def write_or_conflict(conn: psycopg.Connection[Any]) -> tuple[int, Tip | None]:
            try:
                return write(conn)
            except pgerrors.UniqueViolation:
                # Only a writer that skipped the lock (an older release) could get here.
                top = _scalar(conn.execute(q.max_version, (state_id,))) or 0
                raise VersionConflictError(state_id, expected_version, top) from None

        version, tip = self._call(f"put_state({state_id!r})", write_or_conflict)
        if tip is not None:
            self._remember(state_id, tip)
        return version

    def _tip(self, conn: psycopg.Connection[Any], state_id: str, row: Sequence[Any]) -> Tip:
        """The stored version ``row`` (a ``latest_meta`` row) with its values: from this
        instance's cache when it holds that very row, else rebuilt from the database."""
        version, write_id, base, depth, chain = row[0], bytes(row[1]), row[2], row[3], row[4]
        cached = self._tips.get(state_id)
        if cached is not None and cached.version == version and cached.write_id == write_id:
            return cached
        rows = conn.execute(self._q.chain, (state_id, base, version), binary=True).fetchall()
        state = _rebuild(state_id, version, base, rows)
        values = _codec.encode_all(state_id, state)
        return Tip(version, write_id, base, depth, chain, values, _codec.size(values))

    def _remember(self, state_id: str, tip: Tip) -> None:
        with self._lock:
            old = self._tips.pop(state_id, None)
            self._tips_bytes += tip.size - (old.size if old else 0)
            self._tips[state_id] = tip
            # Bounded by count and bytes; the oldest entries go first.
            while self._tips and (len(self._tips) > 256 or self._tips_bytes > 64_000_000):
                evicted = self._tips.pop(next(iter(self._tips)))
                self._tips_bytes -= evicted.size

    def get_state(self, state_id: str, version: int | None = None) -> StateSnapshot:
        """The latest (or the given) version of ``state_id``, exactly as it was written."""
        q = self._q

        def read(conn: psycopg.Connection[Any]) -> StateSnapshot:
            # One statement first: when it names the row this instance holds, that is the answer.
            if version is None:
                row = conn.execute(q.latest_row, (state_id,), binary=True).fetchone()
            else:
                row = conn.execute(q.version_row, (state_id, version), binary=True).fetchone()
            if row is not None:
                found, created_at, run_id, reason, write_id = row[0], row[1], row[2], row[3], bytes(row[4])
                cached = self._tips.get(state_id)
                if cached is not None and cached.version == found and cached.write_id == write_id:
                    return StateSnapshot(state_id, found, _codec.decode_all(cached.values), created_at, run_id, reason)
            # The version and its chain in one statement: one snapshot of the table.
            if version is None:
                rows = conn.execute(q.latest_chain, (state_id, state_id), binary=True).fetchall()
            else:
                rows = conn.execute(q.version_chain, (state_id, version, state_id), binary=True).fetchall()
            if not rows:
                top = _scalar(conn.execute(q.max_version, (state_id,)))
                if top is None:
                    raise StateNotFoundError(f"no state {state_id!r} in {self!r}")
                raise StateNotFoundError(f"state {state_id!r} has no version {version} (latest is {top})")
            found, created_at, run_id, reason, write_id, base, depth, chain = rows[0][:8]
            data = _rebuild(state_id, found, base, [r[8:] for r in rows])
            if version is None:
                # Kept encoded (the caller's copy stays the caller's) for the next write or read.
                values = _codec.encode_all(state_id, data)
                self._remember(state_id, Tip(found, bytes(write_id), base, depth, chain, values, _codec.size(values)))
            return StateSnapshot(state_id, found, data, created_at, run_id, reason)

        return self._call(f"get_state({state_id!r})", read)

    def list_versions(self, state_id: str) -> list[StateSnapshot]:
        """Every stored version of ``state_id``, oldest first, without their data."""
        rows = self._call(
            f"list_versions({state_id!r})", lambda conn: conn.execute(self._q.versions, (state_id,)).fetchall()
        )
        return [StateSnapshot(state_id, v, {}, created_at, run_id, reason) for v, created_at, run_id, reason in rows]

    # ---- runs -------------------------------------------------------------------------------

    def put_run(self, record: RunRecord, *, owner: str | None = None) -> None:
        """Create or replace the record of ``record.run_id``, keeping the stored control fields
        (owner, heartbeat, lease, cancel request). With ``owner``, only while that owner holds
        the lease (:class:`LeaseLostError` otherwise, and nothing is written)."""
        params = (record.run_id, float(record.created_at), record.status, _body(record))

        def write(conn: psycopg.Connection[Any]) -> None:
            if owner is None:
                conn.execute(self._q.upsert_run, params, binary=True)
                return
            with conn.transaction():
                self._fence(conn, record.run_id, owner)
                conn.execute(self._q.upsert_run, params, binary=True)

        self._call(f"put_run({record.run_id!r})", write)

    def _record(self, row: Sequence[Any], now: float) -> RunRecord:
        body, control = row[0], row[1:9]
        data = _codec.decode(bytes(body))
        data["status"] = control[0]
        data.update(_control_fields(control, now))
        return RunRecord.from_dict(data)

    def get_run(self, run_id: str) -> RunRecord:
        """The record of ``run_id`` (control fields in this process's clock);
        :class:`~amsha.errors.RunNotFoundError` if absent."""
        row = self._call(
            f"get_run({run_id!r})", lambda conn: conn.execute(self._q.get_run, (run_id,), binary=True).fetchone()
        )
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self!r}")
        return self._record(row, time.time())

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """The most recent runs, newest first."""
        rows = self._call(
            "list_runs", lambda conn: conn.execute(self._q.list_runs, (int(limit),), binary=True).fetchall()
        )
        now = time.time()
        return [self._record(row, now) for row in rows]

    def list_runs_page(
        self, limit: int, *, before: str | None = None, status: str | None = None, text: str | None = None
    ) -> RunPage:
        """At most ``limit`` runs, newest first (``created_at``, then the run id, descending),
        older than the cursor ``before``, as readers see them (an expired lease reads LOST).
        ``status`` is matched in SQL on the observed status; ``text`` (see
        :func:`amsha.state.run_search_text`) on the records, read a chunk at a time."""
        if limit < 1:
            raise StateError(f"list_runs_page: limit must be at least 1, got {limit}")
        key: tuple[float, str] | None = None
        if before:
            at, _, last_id = before.partition("|")
            try:
                key = (float(at), last_id)
            except ValueError:
                raise StateError(f"list_runs_page: {before!r} is not a cursor this store returned") from None
        chunk = max(limit + 1, 100) if text else limit + 1
        out: list[RunRecord] = []
        while True:
            where, params = [], []
            if key is not None:
                where.append('(created_at, run_id COLLATE "C") < (%s::float8, %s::text)')
                params += [key[0], key[1]]
            if status:
                where.append(f"{_OBSERVED} = %s")
                params.append(status)
            sql = self._q.page.format(where=("WHERE " + " AND ".join(where)) if where else "")
            rows = self._call("list_runs_page", _fetch_all(sql, (*params, chunk)))
            now = time.time()
            for row in rows:
                record = self._record(row, now).observed(now)
                key = (float(row[-1]), record.run_id)
                if not run_matches(record, None, text):
                    continue
                if len(out) == limit:
                    return RunPage(out, f"{float(out[-1].created_at)!r}|{out[-1].run_id}")
                out.append(record)
            if len(rows) < chunk:
                return RunPage(out, None)

    # ---- run control ------------------------------------------------------------------------

    def _control(self, run_id: str, row: Sequence[Any]) -> RunControl:
        fields = _control_fields(row, time.time())
        return RunControl(run_id, row[0], **fields)

    def _why_not(self, conn: psycopg.Connection[Any], run_id: str, owner_id: str, verb: str) -> StateError:
        row = conn.execute(self._q.why_not, (run_id,)).fetchone()
        if row is None:
            return RunNotFoundError(f"no run {run_id!r} in {self!r}")
        status, holder, expired = row
        if status in RunStatus.TERMINAL:
            return LeaseLostError(run_id, f"cannot {verb}: the run has ended ({status})")
        if expired:
            return LeaseLostError(run_id, f"cannot {verb}: its lease expired (the run is LOST)")
        if holder != owner_id:
            held = f"owner {holder[:8]}" if holder else "no owner"
            return LeaseLostError(run_id, f"cannot {verb}: the lease is held by {held}, not {owner_id[:8]}")
        return LeaseLostError(run_id, f"cannot {verb}")  # pragma: no cover - a race that just ended

    def claim_run(self, record: RunRecord, owner: RunOwner, lease_s: float) -> RunControl:
        """Write ``record`` and give ``owner`` the lease on it, expiring ``lease_s`` seconds
        from now on the server's clock, in one statement (see :class:`amsha.RunControlStore`)."""
        params = {
            "run_id": record.run_id,
            "created_at": float(record.created_at),
            "status": record.status,
            "body": _body(record),
            "oid": owner.id,
            "host": owner.host,
            "pid": int(owner.pid),
            "lease": float(lease_s),
        }

        def claim(conn: psycopg.Connection[Any]) -> RunControl:
            row = conn.execute(self._q.claim, params, binary=True).fetchone()
            if row is None:
                raise self._why_not(conn, record.run_id, owner.id, "claim it")
            return self._control(record.run_id, row)

        return self._call(f"claim_run({record.run_id!r})", claim)

    def renew_lease(self, run_id: str, owner_id: str, lease_s: float) -> RunControl:
        """Extend ``owner_id``'s lease to ``lease_s`` seconds from now and set the heartbeat."""

        def renew(conn: psycopg.Connection[Any]) -> RunControl:
            row = conn.execute(self._q.renew, (float(lease_s), run_id, owner_id)).fetchone()
            if row is None:
                raise self._why_not(conn, run_id, owner_id, "renew its lease")
            return self._control(run_id, row)

        return self._call(f"renew_lease({run_id!r})", renew)

    def read_control(self, run_id: str) -> RunControl:
        """The run's status and control fields (one indexed read; the body is not decoded)."""
        row = self._call(f"read_control({run_id!r})", lambda conn: conn.execute(self._q.control, (run_id,)).fetchone())
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self!r}")
        return self._control(run_id, row)

    def request_cancel(self, run_id: str, reason: str) -> str:
        """Ask the run to stop; returns a :class:`~amsha.CancelOutcome` value."""
        reason = redact(str(reason))
        cancel_id = uuid.uuid4().bytes
        q = self._q

        def cancel(conn: psycopg.Connection[Any]) -> str:
            with conn.transaction():
                row = conn.execute(q.cancel_lock, (run_id,), binary=True).fetchone()
                if row is None:
                    raise RunNotFoundError(f"no run {run_id!r} in {self!r}")
                status, owner_id, expired, body, stored_id = row
                if stored_id is not None and bytes(stored_id) == cancel_id:
                    # An earlier attempt of this call committed.
                    return CancelOutcome.CANCELLED if status == RunStatus.CANCELLED else CancelOutcome.REQUESTED
                if status in RunStatus.TERMINAL:
                    return CancelOutcome.ENDED
                if expired:
                    return CancelOutcome.LOST
                if status == RunStatus.PENDING and owner_id is None:
                    data = _codec.decode(bytes(body))
                    data.update(
                        status=RunStatus.CANCELLED,
                        error={"type": "RunCancelledError", "message": reason},
                        finished_at=time.time(),
                    )
                    conn.execute(q.cancel_pending, (_codec.encode(data), reason, cancel_id, run_id), binary=True)
                    return CancelOutcome.CANCELLED
                conn.execute(q.cancel_request, (reason, cancel_id, run_id))
                return CancelOutcome.REQUESTED

        return self._call(f"request_cancel({run_id!r})", cancel)

    # ---- events -----------------------------------------------------------------------------

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]], *, owner: str | None = None) -> None:
        """Append events to a run's log in one transaction and notify waiting readers
        (LISTEN/NOTIFY, delivered at commit). Events are never overwritten: a ``seq`` already
        stored for the run raises :class:`~amsha.errors.StateError` and nothing of the batch
        is written. With ``owner``, only while that owner holds the lease."""
        if not events:
            return
        seqs: list[int] = []
        bodies: list[bytes] = []
        for event in events:
            seq = event.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool):
                raise StateError(f"run {run_id!r}: an event without an integer 'seq' cannot be stored: {event!r:.200}")
            seqs.append(seq)
            bodies.append(_codec.encode(redact_obj(event)))
        if len(set(seqs)) != len(seqs):
            raise StateError(f"run {run_id!r}: a batch of events repeats a seq; nothing of it was written")
        write_id = uuid.uuid4().bytes
        q = self._q

        def write(conn: psycopg.Connection[Any]) -> None:
            try:
                # One round trip (pipeline mode) without a fence, two with one.
                with conn.pipeline(), conn.transaction():
                    fence = conn.execute(q.fence, (owner, run_id)) if owner is not None else None
                    conn.execute(q.insert_events, (run_id, write_id, seqs, bodies), binary=True)
                    conn.execute(q.notify, (self.channel, run_id))
                    if fence is not None and owner is not None:
                        self._check_fence(fence.fetchone(), run_id, owner)
            except pgerrors.UniqueViolation:
                mine = _scalar(conn.execute(q.events_written, (run_id, seqs, write_id)))
                if mine == len(seqs):
                    return  # an earlier attempt of this call committed
                raise StateError(
                    f"run {run_id!r}: events {seqs[0]}..{seqs[-1]} overlap events already stored; "
                    f"events are append-only, nothing of this batch was written"
                ) from None

        self._call(f"append_events({run_id!r})", write)

    def append_events_batch(
        self, batches: Sequence[tuple[str, Sequence[dict[str, Any]], str | None]]
    ) -> dict[str, LeaseLostError]:
        """Append the events of several runs (``(run_id, events, owner)``) in one transaction
        (one insert, a notification per run), each run fenced by its owner as
        :meth:`append_events` does. Returns the runs whose owner no longer holds the lease
        (their events are not written, the others' are); an overlap with stored events raises
        :class:`~amsha.errors.StateError` and nothing of the batch is written."""
        prepared: list[tuple[str, list[int], list[bytes], str | None]] = []
        for run_id, events, owner in batches:
            seqs, bodies = [], []
            for event in events:
                seq = event.get("seq")
                if not isinstance(seq, int) or isinstance(seq, bool):
                    raise StateError(f"run {run_id!r}: an event without an integer 'seq' cannot be stored")
                seqs.append(seq)
                bodies.append(_codec.encode(redact_obj(event)))
            if len(set(seqs)) != len(seqs):
                raise StateError(f"run {run_id!r}: a batch of events repeats a seq; nothing of it was written")
            prepared.append((run_id, seqs, bodies, owner))
        if not any(seqs for _, seqs, _, _ in prepared):
            return {}
        write_id = uuid.uuid4().bytes
        q = self._q

        def write(conn: psycopg.Connection[Any]) -> dict[str, LeaseLostError]:
            refused: dict[str, LeaseLostError] = {}
            run_ids: list[str] = []
            seqs: list[int] = []
            bodies: list[bytes] = []
            try:
                with conn.pipeline(), conn.transaction():
                    fences = [
                        (run_id, owner, conn.execute(q.fence, (owner, run_id)))
                        for run_id, _, _, owner in prepared
                        if owner is not None
                    ]
                    for run_id, owner, cur in fences:
                        try:
                            self._check_fence(cur.fetchone(), run_id, owner)
                        except LeaseLostError as exc:
                            refused[run_id] = exc
                    for run_id, run_seqs, run_bodies, _ in prepared:
                        if run_id not in refused:
                            run_ids += [run_id] * len(run_seqs)
                            seqs += run_seqs
                            bodies += run_bodies
                    if seqs:
                        conn.execute(q.insert_events_of_runs, (write_id, run_ids, seqs, bodies), binary=True)
                        conn.execute(q.notify_runs, (self.channel, sorted(set(run_ids))))
            except pgerrors.UniqueViolation:
                mine = _scalar(conn.execute(q.events_of_runs_written, (run_ids, seqs, write_id)))
                if mine == len(seqs):
                    return refused  # an earlier attempt of this call committed
                raise StateError(
                    f"append_events_batch: events of {len(set(run_ids))} runs overlap events already stored; "
                    f"events are append-only, nothing of this batch was written"
                ) from None
            return refused

        return self._call(f"append_events_batch({len(prepared)} runs)", write)

    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        """The run's events with ``seq >= from_seq``, in order."""
        rows = self._call(
            f"read_events({run_id!r})",
            lambda conn: conn.execute(self._q.read_events, (run_id, int(from_seq)), binary=True).fetchall(),
        )
        decode = _codec.decode
        return [decode(bytes(body)) for (body,) in rows]

    def wait_for_events(self, run_id: str, from_seq: int = 0, timeout_s: float = 1.0) -> list[dict[str, Any]]:
        """Block until the run has events with ``seq >= from_seq`` (returning them) or
        ``timeout_s`` passes (returning ``[]``).

        Woken by LISTEN/NOTIFY on a connection of this thread's own: no polling while
        notifications arrive. When they do not (``notifications: off``, or ``auto`` found
        that a notification sent did not come back, as behind PgBouncer in transaction
        mode), it polls, a few milliseconds apart at first, backing off to ``poll_interval_s``.
        """
        deadline = time.monotonic() + max(0.0, float(timeout_s))
        listener = self._listener() if self._notify_ok is not False else None
        if listener is None:
            return self._poll_events(run_id, from_seq, deadline)
        while True:
            # LISTEN is in place before this read: a commit after it wakes the wait below.
            events = self.read_events(run_id, from_seq)
            if events:
                return events
            try:
                while (remaining := deadline - time.monotonic()) > 0:
                    if any(n.payload == run_id for n in listener.notifies(timeout=remaining, stop_after=1)):
                        break
                else:
                    return []
            except psycopg.Error:
                # The listening connection broke (a server restart): open another, read again.
                self._drop_listener(listener)
                if time.monotonic() >= deadline:
                    return self.read_events(run_id, from_seq)
                listener = self._listener()
                if listener is None:
                    return self._poll_events(run_id, from_seq, deadline)

    def _poll_events(self, run_id: str, from_seq: int, deadline: float) -> list[dict[str, Any]]:
        pause = 0.005
        while True:
            events = self.read_events(run_id, from_seq)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                return events
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, self.poll_interval_s)

    def _listener(self) -> psycopg.Connection[Any] | None:
        """This thread's listening connection (None when notifications are not used)."""
        if os.getpid() != self._pid:
            self._get_pool()  # resets the per-process state
        conn: psycopg.Connection[Any] | None = getattr(self._local, "listener", None)
        if conn is not None and not conn.closed:
            return conn

        def connect(deadline: float) -> psycopg.Connection[Any]:
            kwargs = self._kwargs()
            kwargs["prepare_threshold"] = None
            listener = psycopg.connect(self._dsn, **kwargs)
            try:
                listener.execute(f'LISTEN "{self.channel}"')
            except BaseException:
                listener.close()
                raise
            return listener

        conn = self._retry("wait_for_events (LISTEN)", connect)
        thread = threading.current_thread()
        with self._lock:
            # Listening connections of threads that have ended are closed here, so a store
            # tailed from short-lived threads does not accumulate them.
            ended = [c for t, c in self._listeners if not t.is_alive()]
            self._listeners = [(t, c) for t, c in self._listeners if t.is_alive()]
            self._listeners.append((thread, conn))
        for old in ended:
            try:
                old.close()
            except Exception:
                pass
        self._local.listener = conn
        if self._notify_ok is None:
            self._notify_ok = self._probe(conn)
            if not self._notify_ok:
                self._drop_listener(conn)
                log.warning(
                    "amsha: postgres store %s: a notification sent did not come back (a pooler such as PgBouncer "
                    "in transaction mode drops LISTEN); waiting for events polls every %g s at most",
                    self.where,
                    self.poll_interval_s,
                )
                return None
        return conn if self._notify_ok else None

    def _probe(self, listener: psycopg.Connection[Any]) -> bool:
        """Send a notification through the pool and see whether the listener receives it."""
        token = f"amsha-probe:{uuid.uuid4().hex}"
        self._call("wait_for_events (probe)", lambda conn: conn.execute(self._q.notify, (self.channel, token)))
        deadline = time.monotonic() + 2.0
        while (remaining := deadline - time.monotonic()) > 0:
            if any(n.payload == token for n in listener.notifies(timeout=remaining, stop_after=1)):
                return True
        return False

    def _drop_listener(self, conn: psycopg.Connection[Any]) -> None:
        self._local.listener = None
        with self._lock:
            self._listeners = [(t, c) for t, c in self._listeners if c is not conn]
        try:
            conn.close()
        except Exception:
            pass

    # ---- retention --------------------------------------------------------------------------

    def delete_run(self, run_id: str) -> None:
        """Delete a run's record, its events and the state versions it wrote, in one
        transaction. Later versions of the same states still read back exactly: those that
        built on a deleted row are rewritten on the versions that remain."""
        q = self._q

        def delete(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                # The run's row first (then the states' locks), the order fenced writes take them.
                conn.execute(q.delete_run, (run_id,))
                conn.execute(q.delete_events, (run_id,))
                states = [r[0] for r in conn.execute(q.states_of_run, (run_id,)).fetchall()]
                for state_id in states:  # sorted: two deletions never wait on each other in a cycle
                    conn.execute(q.lock, (f"{self.schema}/{state_id}",))
                for state_id in states:
                    doomed = {r[0] for r in conn.execute(q.doomed, (state_id, run_id)).fetchall()}
                    if doomed:
                        self._delete_versions(conn, state_id, doomed)

        self._call(f"delete_run({run_id!r})", delete)
        with self._lock:
            self._tips.clear()
            self._tips_bytes = 0

    def _delete_versions(self, conn: psycopg.Connection[Any], state_id: str, doomed: set[int]) -> None:
        """Delete the ``doomed`` versions of ``state_id`` and rewrite every kept version whose
        chain (its base snapshot up to it) held one of them, on the kept versions before it."""
        q = self._q
        first = min(doomed)
        start = _scalar(conn.execute(q.base_of, (state_id, first)))
        chains = conn.execute(q.chain_meta, (state_id, start)).fetchall()
        affected = {v for v, base, *_ in chains if v not in doomed and any(base <= d < v for d in doomed)}
        rewritten: list[tuple[Any, ...]] = []
        if affected:
            last = max(affected)
            state: dict[str, Any] | None = None
            prev: Tip | None = None  # the latest kept version walked, as rewritten
            rows = conn.execute(q.chain, (state_id, start, last), binary=True).fetchall()
            for (v, old_base, old_depth, old_chain), (_v, removed, ord_, data) in zip(
                (c for c in chains if c[0] <= last), rows, strict=True
            ):
                state = _codec.apply(None if v == old_base else state, _b(removed), _b(ord_), bytes(data))
                if v in doomed:
                    continue
                values = _codec.encode_all(state_id, state)
                total = _codec.size(values)
                if v in affected:
                    planned = _codec.plan(v, prev, values, total)
                    write_id = uuid.uuid4().bytes  # another row now: cached copies of it are stale
                    rewritten.append((*planned, write_id, state_id, v))
                    prev = Tip(v, write_id, planned.base, planned.depth, planned.chain, values, total)
                else:
                    prev = Tip(v, b"", old_base, old_depth, old_chain, values, total)
        conn.execute(q.delete_versions, (state_id, sorted(doomed)))
        if rewritten:
            with conn.cursor(binary=True) as cur:
                cur.executemany(q.rewrite_version, rewritten)

    def vacuum(self) -> None:
        """``VACUUM`` the store's tables, so space freed by deletions is reused (PostgreSQL's
        autovacuum does this too, on its own schedule)."""

        def run(conn: psycopg.Connection[Any]) -> None:
            for table in ("state_versions", "runs", "events"):
                conn.execute(f'VACUUM "{self.schema}".{table}')

        self._call("vacuum", run)

    def size_bytes(self) -> int:
        """The bytes the store's tables take on the server, with their indexes and TOAST."""
        return int(self._call("size_bytes", lambda conn: _scalar(conn.execute(self._q.size, (self.schema,)))))


# libpq's connection failures carry no SQLSTATE: the ones a retry cannot fix, by their text.
_CONNECT_FAILURES = (
    ("password authentication failed", "28P01"),
    ("no pg_hba.conf entry", "28000"),
    ('role "', "28000"),
    ('database "', "3D000"),
)


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    if state is None and isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg_pool.PoolTimeout):
        text = str(exc)
        for needle, code in _CONNECT_FAILURES:
            if needle in text and ("does not exist" in text or code.startswith("28P") or "pg_hba" in text):
                return code
    return state


def _encode_scrubbed(state_id: str, data: Mapping[str, Any]) -> dict[str, bytes]:
    """:func:`_codec.encode_all` of ``data`` with every registered secret scrubbed, as
    ``encode_all(redact_obj(data))`` gives, at the cost of a substring search per value
    instead of a walk of every string in the state (20 ms for a 1 MB state with two
    secrets registered). A value's JSON holds each of its strings literally unless one
    needed an escape (a backslash in the JSON): such a value, or one whose JSON contains a
    secret, is scrubbed with ``redact_obj`` and encoded again; the others are as encoded."""
    values = _codec.encode_all(state_id, data)
    if not has_secrets():
        return values
    out: dict[str, bytes] = {}
    for key, blob in values.items():
        text = blob.decode("utf-8", "surrogatepass")
        scrubbed = _codec.encode(redact_obj(data[key]), key) if b"\\" in blob or redact(text) != text else blob
        out[redact(key)] = scrubbed
    return out


def _fetch_all(sql: str, args: Sequence[Any]) -> Callable[[psycopg.Connection[Any]], list[Any]]:
    """A :meth:`PostgresStore._call` body running one query (binary) and fetching its rows."""

    def run(conn: psycopg.Connection[Any]) -> list[Any]:
        return conn.execute(sql, args, binary=True).fetchall()

    return run


def _scalar(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of the one row an aggregate or key lookup returns."""
    row = cursor.fetchone()
    if row is None:  # pragma: no cover - aggregates always return a row
        raise StateError("postgres store: a query returned no row")
    return row[0]


def _b(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _rebuild(state_id: str, version: int, base: int, rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The data of ``version`` from its chain's rows ``(version, removed, ord, data)``."""
    state: dict[str, Any] | None = None
    for v, removed, ord_, data in rows:
        state = _codec.apply(None if v == base else state, _b(removed), _b(ord_), bytes(data))
    if state is None or not rows or rows[0][0] != base:  # pragma: no cover - bases are rewritten, never lost
        raise StateError(f"state {state_id!r}: version {version} builds on version {base}, which is missing")
    return state


class _Queries:
    """The store's SQL, with its schema's name in place (built once per store)."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        sv = f"{s}.state_versions"
        meta = "version, write_id, base, depth, chain"
        self.lock = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
        self.latest_meta = f"SELECT {meta} FROM {sv} WHERE state_id = %s ORDER BY version DESC LIMIT 1"
        self.insert_version = (
            f"INSERT INTO {sv} (state_id, version, created_at, run_id, reason, write_id, base, depth, chain, "
            "removed, ord, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        cols = "(state_id, version, created_at, run_id, reason, write_id, base, depth, chain, removed, ord, data)"
        typed = "%s::text, %s::int, %s::float8, %s::text, %s::text, %s::bytea, %s::int, %s::int, %s::bigint, %s::bytea, %s::bytea, %s::bytea"
        self.insert_first = (
            f"INSERT INTO {sv} {cols} SELECT {typed} WHERE NOT EXISTS (SELECT 1 FROM {sv} WHERE state_id = %s) "
            "RETURNING 1"
        )
        self.insert_after = (
            f"INSERT INTO {sv} {cols} SELECT {typed} WHERE EXISTS (SELECT 1 FROM {sv} WHERE state_id = %s AND "
            f"version = %s AND write_id = %s) AND NOT EXISTS (SELECT 1 FROM {sv} WHERE state_id = %s AND version > %s) "
            "RETURNING 1"
        )
        self.chain = (
            f"SELECT version, removed, ord, data FROM {sv} WHERE state_id = %s AND version BETWEEN %s AND %s "
            "ORDER BY version"
        )
        row = "version, created_at, run_id, reason, write_id"
        self.latest_row = f"SELECT {row} FROM {sv} WHERE state_id = %s ORDER BY version DESC LIMIT 1"
        self.version_row = f"SELECT {row} FROM {sv} WHERE state_id = %s AND version = %s"
        full = "t.version, t.created_at, t.run_id, t.reason, t.write_id, t.base, t.depth, t.chain"
        rows = "r.version, r.removed, r.ord, r.data"
        tip = f"SELECT {row}, base, depth, chain FROM {sv}"
        self.latest_chain = (
            f"SELECT {full}, {rows} FROM ({tip} WHERE state_id = %s ORDER BY version DESC LIMIT 1) t "
            f"JOIN {sv} r ON r.state_id = %s AND r.version BETWEEN t.base AND t.version ORDER BY r.version"
        )
        self.version_chain = (
            f"SELECT {full}, {rows} FROM ({tip} WHERE state_id = %s AND version = %s) t "
            f"JOIN {sv} r ON r.state_id = %s AND r.version BETWEEN t.base AND t.version ORDER BY r.version"
        )
        self.max_version = f"SELECT max(version) FROM {sv} WHERE state_id = %s"
        self.versions = f"SELECT version, created_at, run_id, reason FROM {sv} WHERE state_id = %s ORDER BY version"
        runs = f"{s}.runs"
        self.upsert_run = (
            f"INSERT INTO {runs} (run_id, created_at, status, body) VALUES (%s, %s, %s, %s) ON CONFLICT (run_id) "
            "DO UPDATE SET created_at = excluded.created_at, status = excluded.status, body = excluded.body"
        )
        self.get_run = f"SELECT body, {_CONTROL_COLS} FROM {runs} WHERE run_id = %s"
        self.list_runs = f"SELECT body, {_CONTROL_COLS} FROM {runs} ORDER BY created_at DESC, ord DESC LIMIT %s"
        self.control = f"SELECT {_CONTROL_COLS} FROM {runs} WHERE run_id = %s"
        # {where} is filled per call; the last column is the row's created_at (the cursor).
        self.page = (
            f"SELECT body, {_CONTROL_COLS}, created_at FROM {runs} {{where}} "
            'ORDER BY created_at DESC, run_id COLLATE "C" DESC LIMIT %s'
        )
        self.fence = (
            f"SELECT owner_id IS NOT DISTINCT FROM %s AND lease_expires_at > clock_timestamp(), owner_id "
            f"FROM {runs} WHERE run_id = %s FOR SHARE"
        )
        self.why_not = (
            f"SELECT status, owner_id, lease_expires_at IS NOT NULL AND lease_expires_at <= clock_timestamp() "
            f"FROM {runs} WHERE run_id = %s"
        )
        lease = "clock_timestamp() + make_interval(secs => %(lease)s)"
        self.claim = (
            f"INSERT INTO {runs} AS r (run_id, created_at, status, body, owner_id, owner_host, owner_pid, "
            f"heartbeat_at, lease_expires_at) VALUES (%(run_id)s, %(created_at)s, %(status)s, %(body)s, %(oid)s, "
            f"%(host)s, %(pid)s, clock_timestamp(), {lease}) ON CONFLICT (run_id) DO UPDATE SET "
            "created_at = excluded.created_at, status = excluded.status, body = excluded.body, "
            "owner_id = excluded.owner_id, owner_host = excluded.owner_host, owner_pid = excluded.owner_pid, "
            "heartbeat_at = excluded.heartbeat_at, lease_expires_at = excluded.lease_expires_at "
            f"WHERE r.status NOT IN {_TERMINAL} AND (r.lease_expires_at IS NULL OR "
            "(r.owner_id = excluded.owner_id AND r.lease_expires_at > clock_timestamp())) "
            f"RETURNING {_CONTROL_COLS}"
        )
        self.renew = (
            f"UPDATE {runs} SET heartbeat_at = clock_timestamp(), lease_expires_at = clock_timestamp() + "
            "make_interval(secs => %s) WHERE run_id = %s AND owner_id = %s AND lease_expires_at > clock_timestamp() "
            f"AND status NOT IN {_TERMINAL} RETURNING {_CONTROL_COLS}"
        )
        self.cancel_lock = (
            "SELECT status, owner_id, lease_expires_at IS NOT NULL AND lease_expires_at <= clock_timestamp(), "
            f"body, cancel_id FROM {runs} WHERE run_id = %s FOR UPDATE"
        )
        self.cancel_pending = (
            f"UPDATE {runs} SET status = 'CANCELLED', body = %s, cancel_reason = %s, cancel_at = clock_timestamp(), "
            "cancel_id = %s WHERE run_id = %s"
        )
        self.cancel_request = (
            f"UPDATE {runs} SET cancel_reason = %s, cancel_at = clock_timestamp(), cancel_id = %s "
            "WHERE run_id = %s AND cancel_reason IS NULL"
        )
        ev = f"{s}.events"
        self.insert_events = (
            f"INSERT INTO {ev} (run_id, seq, write_id, body) SELECT %s, t.seq, %s, t.body "
            "FROM unnest(%s::bigint[], %s::bytea[]) AS t(seq, body)"
        )
        self.notify = "SELECT pg_notify(%s, %s)"
        self.notify_runs = "SELECT pg_notify(%s, r) FROM unnest(%s::text[]) AS r"
        self.insert_events_of_runs = (
            f"INSERT INTO {ev} (run_id, seq, write_id, body) SELECT t.run_id, t.seq, %s, t.body "
            "FROM unnest(%s::text[], %s::bigint[], %s::bytea[]) AS t(run_id, seq, body)"
        )
        self.events_of_runs_written = (
            f"SELECT count(*) FROM {ev} WHERE (run_id, seq) IN (SELECT * FROM unnest(%s::text[], %s::bigint[])) "
            "AND write_id = %s"
        )
        self.events_written = (
            f"SELECT count(*) FROM {ev} WHERE run_id = %s AND seq = ANY(%s::bigint[]) AND write_id = %s"
        )
        self.read_events = f"SELECT body FROM {ev} WHERE run_id = %s AND seq >= %s ORDER BY seq"
        self.delete_run = f"DELETE FROM {runs} WHERE run_id = %s"
        self.delete_events = f"DELETE FROM {ev} WHERE run_id = %s"
        self.states_of_run = f"SELECT DISTINCT state_id FROM {sv} WHERE run_id = %s ORDER BY state_id"
        self.doomed = f"SELECT version FROM {sv} WHERE state_id = %s AND run_id = %s"
        self.base_of = f"SELECT base FROM {sv} WHERE state_id = %s AND version = %s"
        self.chain_meta = (
            f"SELECT version, base, depth, chain FROM {sv} WHERE state_id = %s AND version >= %s ORDER BY version"
        )
        self.delete_versions = f"DELETE FROM {sv} WHERE state_id = %s AND version = ANY(%s::int[])"
        self.rewrite_version = (
            f"UPDATE {sv} SET base = %s, depth = %s, chain = %s, removed = %s, ord = %s, data = %s, write_id = %s "
            "WHERE state_id = %s AND version = %s"
        )
        self.size = (
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'"
        )


def build(ctx: BackendContext) -> PostgresStore:
    """The factory registered as state store ``postgres``."""
    opts = ctx.options
    tls = {k: getattr(opts, k) for k in ("sslmode", "sslrootcert", "sslcert", "sslkey") if getattr(opts, k) is not None}
    for key in ("sslrootcert", "sslcert", "sslkey"):
        if key in tls and not os.path.isabs(tls[key]):
            tls[key] = str(ctx.base_dir / tls[key])
    return PostgresStore(
        dsn_env=opts.dsn_env,
        schema=opts.schema_name,
        pool_min_size=opts.pool_min_size,
        pool_max_size=opts.pool_max_size,
        statement_timeout_s=opts.statement_timeout_s,
        connect_timeout_s=opts.connect_timeout_s,
        retry_budget_s=opts.retry_budget_s,
        notifications=opts.notifications,
        poll_interval_s=opts.poll_interval_s,
        prepared_statements=opts.prepared_statements,
        tls=tls,
        application_name=opts.application_name,
    )
