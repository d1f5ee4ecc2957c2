"""The ``sqlite`` state store: states, run records and run events in one SQLite file.

Layout (schema 4, see :data:`SCHEMA_VERSION`):

* ``state_versions``: one row per version of a state, appended, keyed by
  ``(state_id, version)``. A row is either a *snapshot* (``data`` is the whole state as one
  JSON object) or a *delta* on the version before it (``data`` holds only the keys whose value
  changed or that were added, ``removed`` the keys that were dropped, ``ord`` the key order
  when it is not the one applying the delta gives). ``base`` is the snapshot the row builds
  on (its own version for a snapshot), ``depth`` how many deltas lead from it, ``chain`` their
  bytes. A version reads back as its base snapshot plus the deltas after it, in order.
  A snapshot is written for the first version, when the delta would be more than half the
  state, when the deltas since the last snapshot would add up to more than the state, or
  after :data:`MAX_DEPTH` deltas; so a read decodes at most about twice the state's size in
  at most ``MAX_DEPTH + 1`` rows, and a version in which one key of a large state changed
  adds one small row.
* ``runs(run_id, created_at, status, body)`` and ``events(run_id, seq, body)``.
* ``run_control(run_id, owner_id, owner, heartbeat_at, lease_expires_at, cancel_request)``:
  run control (plugin API 1.1): the owner's lease and a cancel request, written only by
  ``claim_run``, ``renew_lease`` and ``request_cancel``; fenced writes (``owner=``) check it
  inside their own ``BEGIN IMMEDIATE`` transaction.
* ``amsha_schema(version)``: the layout's version; older files are migrated forward when
  opened (see :mod:`amsha_sqlite._migrate`), a newer file is refused with
  :class:`~amsha.errors.SchemaVersionError`.

Each store instance keeps the latest version it wrote or read of each state (its values as
encoded JSON, not the caller's objects). A write compares the new values with it byte for
byte to find the changed keys (no hashing, no read of the previous version); a read of the
latest version is served from it after one indexed ``SELECT`` confirms that it is still the
latest row (same version and timestamp), so another process's writes are always seen.

Every write is one ``BEGIN IMMEDIATE`` transaction: the write lock is taken first, so two
writers queue on SQLite's busy timeout (``timeout_s``) instead of failing half way, and the
version check and the insert happen under the same lock (optimistic concurrency holds across
processes). Reads run in short deferred transactions (one consistent snapshot, everything
fetched before it ends, no read held open while the caller iterates), or as one statement.
The journal is WAL, so readers never block the writer; ``synchronous`` is NORMAL by default
(a committed write survives the process being killed; a power loss may undo the last commits,
never corrupt the file) or FULL. The WAL is kept under ``wal_limit_mb`` by the writers
themselves (see :meth:`SqliteStore._bound_wal`).

Each thread gets its own connection, and a process that inherited the store through ``fork``
opens its own (the parent's connections are left untouched); pickling the store (for spawned
workers) carries only the path and options.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from amsha.delta import MAX_DEPTH
from amsha.delta import apply as _apply
from amsha.delta import decode as _decode
from amsha.delta import decode_all as _decode_all
from amsha.delta import encode as _encode
from amsha.delta import encode_all as _encode_all
from amsha.delta import plan as _plan
from amsha.delta import size as _size
from amsha.errors import (
    LeaseLostError,
    RunNotFoundError,
    SchemaVersionError,
    StateError,
    StateNotFoundError,
    VersionConflictError,
)
from amsha.plugins import BackendContext
from amsha.runcontrol import ENDED, cancel_outcome, cancelled_before_start, check_claim, check_fence, record_body
from amsha.secrets import redact_obj
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

__all__ = ["MAX_DEPTH", "SCHEMA_VERSION", "WAL_LIMIT_MB", "SqliteStore", "build"]

WAL_LIMIT_MB = 64.0
"""The default ``wal_limit_mb``: past it, a writer checkpoints and truncates the WAL."""
WAL_CHECK_EVERY = 32
"""A connection looks at the WAL's size after every this many write transactions."""

SCHEMA_VERSION = 4
"""The layout this release writes. 1: a whole JSON document per state version. 2: values
content-addressed by SHA-256 and a row per changed key. 3: a snapshot or a delta row per
version. 4: ``run_control`` (leases and cancel requests)."""


_FILE_LOCKS: dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _forget_file_locks() -> None:
    # A forked child must not inherit a lock another thread of the parent held at the fork.
    global _FILE_LOCKS_GUARD
    _FILE_LOCKS.clear()
    _FILE_LOCKS_GUARD = threading.Lock()


os.register_at_fork(after_in_child=_forget_file_locks)


def _file_lock(key: str) -> threading.Lock:
    """The lock that this process's writers of one database file queue on."""
    lock = _FILE_LOCKS.get(key)
    if lock is None:
        with _FILE_LOCKS_GUARD:
            lock = _FILE_LOCKS.setdefault(key, threading.Lock())
    return lock


# Connections a forked child inherited: kept referenced and never closed in the child, because
# closing them there could release or disturb locks that belong to the parent.
_INHERITED: list[sqlite3.Connection] = []

# The bulky column comes last in the row, so reading the others never touches its pages.
_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS state_versions (
    state_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    run_id TEXT,
    reason TEXT NOT NULL DEFAULT '',
    base INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    chain INTEGER NOT NULL,
    removed BLOB,
    ord BLOB,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS state_versions_by_id ON state_versions (state_id, version);
CREATE INDEX IF NOT EXISTS state_versions_by_run ON state_versions (run_id) WHERE run_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"""

_RUN_CONTROL = """
CREATE TABLE IF NOT EXISTS run_control (
    run_id TEXT PRIMARY KEY,
    owner_id TEXT,
    owner BLOB,
    heartbeat_at REAL,
    lease_expires_at REAL,
    cancel_request BLOB
) WITHOUT ROWID;
"""
_SCHEMA_V4 = _SCHEMA_V3 + _RUN_CONTROL
_RUN_SQL = (
    "SELECT r.body, c.owner, c.heartbeat_at, c.lease_expires_at, c.cancel_request FROM runs r "
    "LEFT JOIN run_control c ON c.run_id = r.run_id"
)
_READ_CONTROL_SQL = (
    "SELECT r.status, c.owner, c.heartbeat_at, c.lease_expires_at, c.cancel_request FROM runs r "
    "LEFT JOIN run_control c ON c.run_id = r.run_id WHERE r.run_id = ?"
)
_CONTROL_SQL = "SELECT owner, heartbeat_at, lease_expires_at, cancel_request FROM run_control WHERE run_id = ?"

_LATEST_SQL = (
    "SELECT version, created_at, run_id, reason, base, depth, chain FROM state_versions "
    "WHERE state_id = ? ORDER BY version DESC LIMIT 1"
)
_VERSION_SQL = (
    "SELECT version, created_at, run_id, reason, base, depth, chain FROM state_versions "
    "WHERE state_id = ? AND version = ?"
)
_INSERT_SQL = (
    "INSERT INTO state_versions (state_id, version, created_at, run_id, reason, base, depth, chain, removed, ord, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class _Tip(NamedTuple):
    """A stored version as a write needs it: its chain position and its values, encoded."""

    version: int
    created_at: float
    base: int
    depth: int
    chain: int
    values: Mapping[str, bytes]  # key -> encoded JSON value, in the state's key order
    size: int  # bytes of the encoded values and keys


class SqliteStore:
    """A :class:`~amsha.StateStore` in one SQLite file (see the module docs for the layout).

    ``path`` is created (with its folder) on first use. ``timeout_s`` is how long a write waits
    for another writer; ``synchronous`` is ``"NORMAL"`` or ``"FULL"``. Raises
    :class:`~amsha.errors.StateError` at once if the file cannot be opened or is not a usable
    SQLite database, and :class:`~amsha.errors.SchemaVersionError` if a newer release wrote it.
    """

    cheap_control_reads = True
    """``read_control`` is one indexed read of a local file that a writer never blocks (WAL):
    a run's owner polls it from its event loop without a thread hop."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout_s: float = 30.0,
        synchronous: str = "NORMAL",
        wal_limit_mb: float = WAL_LIMIT_MB,
    ) -> None:
        self.path = Path(path)
        self.wal_limit_bytes = int(wal_limit_mb * 1_000_000)
        self._wal_path = f"{self.path}-wal"
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise StateError(
                f"sqlite store: path {str(path)!r} is not a file path; for an in-process store use 'memory'"
            )
        synchronous = synchronous.upper()
        if synchronous not in ("NORMAL", "FULL"):
            raise StateError(f"sqlite store: synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.timeout_s = float(timeout_s)
        self.synchronous = synchronous
        self._key = os.path.realpath(self.path)
        self._setup_process()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"sqlite store: cannot create the folder {self.path.parent}: {exc.strerror}") from None
        if self.path.is_dir():
            raise StateError(f"sqlite store: {self.path} is a folder; state.options.path must name a file")
        try:
            self._init_schema()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # ---- connections ------------------------------------------------------------------------

    def _setup_process(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: dict[int, tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = {}
        self._generation = 0
        # state_id -> the latest version this instance wrote or read of it. Used only while the
        # file's row for that version is the same row: a version deleted and written again (by
        # any process) has another timestamp.
        self._tips: dict[str, _Tip] = {}
        self._tips_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "timeout_s": self.timeout_s,
            "synchronous": self.synchronous,
            "wal_limit_mb": self.wal_limit_bytes / 1_000_000,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"],
            timeout_s=state["timeout_s"],
            synchronous=state["synchronous"],
            wal_limit_mb=state.get("wal_limit_mb", WAL_LIMIT_MB),
        )

    def _conn(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:
            # A forked child: leave the parent's connections alone and open its own.
            _INHERITED.extend(conn for _, conn in self._conns.values())
            self._setup_process()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "generation", 0) != self._generation:
            # close() left this thread's connection to this thread: close it here, where no
            # other thread can be using it.
            self._local.conn = None
            conn.close()
            conn = None
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            self._local.generation = self._generation
            thread = threading.current_thread()
            with self._lock:
                # Connections of threads that have ended are closed here, so a long-lived store
                # used from short-lived worker threads does not accumulate them.
                for ident, (ref, old) in list(self._conns.items()):
                    alive = ref()
                    if alive is None or not alive.is_alive():
                        del self._conns[ident]
                        old.close()
                self._conns[threading.get_ident()] = (weakref.ref(thread), conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit transactions; every transaction is explicit.
            # check_same_thread=False only so that close() can close it from another thread;
            # each connection is used by the thread that opened it.
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error("open", exc) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # A WAL reset by a checkpoint is cut back to this size (SQLite otherwise keeps it).
            conn.execute(f"PRAGMA journal_size_limit = {self.wal_limit_bytes}")
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("open", exc) from None
        return conn

    def close(self) -> None:
        """Close this process's connections (the store reopens on next use).

        A connection is closed only where no thread can be using it: the calling thread's and
        those of threads that have ended at once; another live thread's (a worker thread that
        may be in the middle of a statement) by that thread itself, the next time it uses the
        store. Closing the store under a running write is therefore safe."""
        if os.getpid() != self._pid:
            return
        me = threading.get_ident()
        with self._lock:
            self._generation += 1
            closable = []
            for ident, (ref, conn) in list(self._conns.items()):
                alive = ref()
                if ident == me or alive is None or not alive.is_alive():
                    closable.append(conn)
                    del self._conns[ident]
            self._tips.clear()
            self._tips_bytes = 0
        for conn in closable:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        if getattr(self._local, "conn", None) in closable:
            self._local.conn = None

    # ---- transactions and errors ------------------------------------------------------------

    def _error(self, op: str, exc: BaseException) -> StateError:
        msg = str(exc)
        low = msg.lower()
        where = f"sqlite store {self.path}"
        if "locked" in low or "busy" in low:
            return StateError(
                f"{where}: {op}: the database stayed locked by another connection for more than "
                f"{self.timeout_s:g} s, so nothing was written; raise state.options.timeout_s or stop "
                f"the process holding a long transaction"
            )
        if "not a database" in low or "malformed" in low or "corrupt" in low:
            return StateError(
                f"sqlite store: {self.path} is not an SQLite database or is damaged ({msg}); "
                f"point state.options.path at another file, or move this one away"
            )
        if "unable to open" in low:
            return StateError(
                f"sqlite store: cannot open {self.path} ({msg}); check that its folder exists and is "
                f"writable: the store writes the file and, in WAL mode, {self.path.name}-wal and "
                f"{self.path.name}-shm beside it"
            )
        if "readonly" in low or "read-only" in low:
            return StateError(
                f"sqlite store: {self.path} is read-only ({msg}); the store needs write access to the "
                f"file and its folder ({self.path.parent})"
            )
        return StateError(f"{where}: {op}: {msg}")

    @contextmanager
    def _write(self, op: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; the write lock is taken up front (BEGIN IMMEDIATE).

        Writers of this process queue on one lock per file first: SQLite's own busy handler
        waits for a locked file by sleeping 1, 2, 5, 10... ms, which many threads of one
        process (a worker running dozens of runs) would spend mostly asleep; a lock hands over
        at once. Other processes still queue on SQLite's lock."""
        conn = self._conn()
        with _file_lock(self._key):
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(op, exc) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(exc, sqlite3.Error):
                    raise self._error(op, exc) from None
                raise
        local = self._local
        local.writes = writes = getattr(local, "writes", 0) + 1
        if writes % WAL_CHECK_EVERY == 0:
            self._bound_wal(conn)

    def _bound_wal(self, conn: sqlite3.Connection) -> None:
        """The WAL checkpoint policy: when the ``-wal`` file has grown past ``wal_limit_mb``,
        copy it all into the database and truncate it (``wal_checkpoint(TRUNCATE)``, which
        waits up to ``timeout_s`` for readers to finish). SQLite's own automatic checkpoint is
        passive: under sustained writes from several processes it never catches up and the
        WAL grows without bound. Another connection's checkpoint holds the checkpoint lock for
        a moment, so a busy attempt is tried again shortly, for up to a second; one that still
        cannot run is tried again after later writes."""
        try:
            if os.path.getsize(self._wal_path) <= self.wal_limit_bytes:
                return
            deadline = time.monotonic() + min(1.0, self.timeout_s)
            pause = 0.001
            while True:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy or time.monotonic() > deadline:
                    return
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
                if os.path.getsize(self._wal_path) <= self.wal_limit_bytes:
                    return  # another connection did it
        except (OSError, sqlite3.Error):
            pass

    @contextmanager
    def _read(self, op: str) -> Iterator[sqlite3.Connection]:
        """One read transaction: every statement in it sees the same snapshot."""
        conn = self._conn()
        try:
            conn.execute("BEGIN")
            yield conn
        except sqlite3.Error as exc:
            raise self._error(op, exc) from None
        finally:
            if conn.in_transaction:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error:
                    pass

    # ---- schema -----------------------------------------------------------------------------

    def _init_schema(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self._init_schema_once()
                return
            except StateError as exc:
                # Several processes opening a new file at once may briefly find it locked
                # while one of them switches it to WAL; the busy timeout covers most of it.
                if "stayed locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def schema_version(self) -> int:
        """The layout version of the file (0 for a file without Amsha's tables yet)."""
        with self._read("schema_version") as conn:
            return self._file_version(conn)

    @staticmethod
    def _file_version(conn: sqlite3.Connection) -> int:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'amsha_schema'").fetchone()
        if not exists:
            return 0
        row = conn.execute("SELECT max(version) FROM amsha_schema").fetchone()
        return int(row[0] or 0)

    def _init_schema_once(self) -> None:
        conn = self._conn()
        with self._read("open") as rconn:
            found = self._file_version(rconn)
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"sqlite store: {self.path} has schema version {found}, written by a newer "
                f"amsha-state-sqlite; this release reads schema {SCHEMA_VERSION} and older: upgrade it"
            )
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.Error as exc:
            raise self._error("open", exc) from None
        self.journal_mode = str(mode).lower()
        if found == SCHEMA_VERSION:
            return
        with self._write("create or migrate the schema") as wconn:
            found = self._file_version(wconn)  # another process may have done it meanwhile
            if found == 0:
                for statement in _statements(_SCHEMA_V4):
                    wconn.execute(statement)
                wconn.execute("CREATE TABLE amsha_schema (version INTEGER NOT NULL)")
                wconn.execute("INSERT INTO amsha_schema (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            from amsha_sqlite._migrate import MIGRATIONS

            while found < SCHEMA_VERSION:
                try:
                    MIGRATIONS[found](wconn)
                except Exception as exc:  # the transaction rolls back: the file stays as it was
                    raise StateError(
                        f"sqlite store: migrating {self.path} from schema {found} to {found + 1} failed "
                        f"({type(exc).__name__}: {exc}); the file is left at schema {found}"
                    ) from exc
                found += 1
                wconn.execute("UPDATE amsha_schema SET version = ?", (found,))

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
        """Store ``data`` as version ``expected_version + 1`` of ``state_id``, writing only
        the keys whose value changed since the latest version (or a snapshot, see the module
        docs). Raises :class:`~amsha.errors.VersionConflictError` (naming both versions) when
        the latest stored version is not ``expected_version``."""
        if not isinstance(data, dict):
            raise StateError(f"state {state_id!r}: data must be a dict of JSON values, got {type(data).__name__}")
        # Encoding happens before the write lock is taken.
        values = _encode_all(state_id, redact_obj(data))
        size = _size(values)
        with self._write(f"put_state({state_id!r})") as conn:
            if owner is not None and run_id is not None:
                self._fence(conn, run_id, owner)
            row = conn.execute(_LATEST_SQL, (state_id,)).fetchone()
            latest = row[0] if row else 0
            if latest != expected_version:
                raise VersionConflictError(state_id, expected_version, latest)
            prev = self._tip(conn, state_id, row) if row else None
            version = latest + 1
            created_at = time.time()
            planned = _plan(version, prev, values, size)
            conn.execute(_INSERT_SQL, (state_id, version, created_at, run_id, reason or "", *planned))
        self._remember(state_id, _Tip(version, created_at, planned.base, planned.depth, planned.chain, values, size))
        return version

    def _tip(self, conn: sqlite3.Connection, state_id: str, row: Sequence[Any]) -> _Tip:
        """The stored version ``row`` (a :data:`_LATEST_SQL` row) with its values: from this
        instance's cache when it holds that very row, else read from the file."""
        version, created_at, _run_id, _reason, base, depth, chain = row
        cached = self._tips.get(state_id)
        if cached is not None and cached.version == version and cached.created_at == created_at:
            return cached
        state = self._rebuild(conn, state_id, version, base)
        values = _encode_all(state_id, state)
        return _Tip(version, created_at, base, depth, chain, values, _size(values))

    def _remember(self, state_id: str, tip: _Tip) -> None:
        with self._lock:
            old = self._tips.pop(state_id, None)
            self._tips_bytes += tip.size - (old.size if old else 0)
            self._tips[state_id] = tip
            # Bounded by count and bytes; the oldest entries go first.
            while self._tips and (len(self._tips) > 256 or self._tips_bytes > 64_000_000):
                evicted = self._tips.pop(next(iter(self._tips)))
                self._tips_bytes -= evicted.size

    @staticmethod
    def _rebuild(conn: sqlite3.Connection, state_id: str, version: int, base: int) -> dict[str, Any]:
        """The data of ``version``: its base snapshot and the deltas after it."""
        state: dict[str, Any] | None = None
        for v, removed, ord_, data in conn.execute(
            "SELECT version, removed, ord, data FROM state_versions WHERE state_id = ? AND version BETWEEN ? AND ? "
            "ORDER BY version",
            (state_id, base, version),
        ):
            state = _apply(None if v == base else state, removed, ord_, data)
        if state is None:  # pragma: no cover - a base is never deleted without rewriting its chain
            raise StateError(f"state {state_id!r}: version {version} builds on version {base}, which is missing")
        return state

    def get_state(self, state_id: str, version: int | None = None) -> StateSnapshot:
        """The latest (or the given) version of ``state_id``, exactly as it was written."""
        op = f"get_state({state_id!r})"
        conn = self._conn()
        # One statement first: when it names the version this instance holds, that is the answer.
        try:
            if version is None:
                row = conn.execute(_LATEST_SQL, (state_id,)).fetchone()
            else:
                row = conn.execute(_VERSION_SQL, (state_id, version)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(op, exc) from None
        if row is not None:
            cached = self._tips.get(state_id)
            if cached is not None and cached.version == row[0] and cached.created_at == row[1]:
                data = _decode_all(cached.values)
                return StateSnapshot(state_id, row[0], data, row[1], row[2], row[3])
        with self._read(op) as conn:
            row = conn.execute(
                *((_LATEST_SQL, (state_id,)) if version is None else (_VERSION_SQL, (state_id, version)))
            )
            row = row.fetchone()
            if row is None:
                top = conn.execute("SELECT max(version) FROM state_versions WHERE state_id = ?", (state_id,))
                top = top.fetchone()[0]
                if top is None:
                    raise StateNotFoundError(f"no state {state_id!r} in {self.path}")
                raise StateNotFoundError(f"state {state_id!r} has no version {version} (latest is {top})")
            found, created_at, run_id, reason, base, depth, chain = row
            data = self._rebuild(conn, state_id, found, base)
        if version is None:
            # Keep it (encoded: the caller's copy stays the caller's) for the next write or read.
            values = _encode_all(state_id, data)
            self._remember(state_id, _Tip(found, created_at, base, depth, chain, values, _size(values)))
        return StateSnapshot(state_id, found, data, created_at, run_id, reason)

    def list_versions(self, state_id: str) -> list[StateSnapshot]:
        """Every stored version of ``state_id``, oldest first, without their data."""
        with self._read(f"list_versions({state_id!r})") as conn:
            rows = conn.execute(
                "SELECT version, created_at, run_id, reason FROM state_versions WHERE state_id = ? ORDER BY version",
                (state_id,),
            ).fetchall()
        return [StateSnapshot(state_id, v, {}, created_at, run_id, reason) for v, created_at, run_id, reason in rows]

    # ---- runs -------------------------------------------------------------------------------

    def put_run(self, record: RunRecord, *, owner: str | None = None) -> None:
        """Create or replace the record of ``record.run_id`` (its run-control fields are kept
        as stored); with ``owner``, only while that owner holds the run's lease."""
        body = _encode(record_body(redact_obj(record.to_dict())))
        with self._write(f"put_run({record.run_id!r})") as conn:
            if owner is not None:
                self._fence(conn, record.run_id, owner)
            self._upsert_run(conn, record.run_id, record.created_at, record.status, body)

    @staticmethod
    def _upsert_run(conn: sqlite3.Connection, run_id: str, created_at: float, status: str, body: bytes) -> None:
        conn.execute(
            "INSERT INTO runs (run_id, created_at, status, body) VALUES (?, ?, ?, ?) ON CONFLICT (run_id) DO "
            "UPDATE SET created_at = excluded.created_at, status = excluded.status, body = excluded.body",
            (run_id, float(created_at), status, body),
        )

    @staticmethod
    def _record(row: Sequence[Any]) -> RunRecord:
        record = RunRecord.from_dict(_decode(row[0]))
        if row[3] is not None or row[4] is not None:
            record.owner = _decode(row[1]) if row[1] is not None else None
            record.heartbeat_at, record.lease_expires_at = row[2], row[3]
            record.cancel_request = _decode(row[4]) if row[4] is not None else None
        return record

    def get_run(self, run_id: str) -> RunRecord:
        """The record of ``run_id``; :class:`~amsha.errors.RunNotFoundError` if absent."""
        with self._read(f"get_run({run_id!r})") as conn:
            row = conn.execute(_RUN_SQL + " WHERE r.run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.path}")
        return self._record(row)

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """The most recent runs, newest first."""
        with self._read("list_runs") as conn:
            rows = conn.execute(
                _RUN_SQL + " ORDER BY r.created_at DESC, r.rowid DESC LIMIT ?", (int(limit),)
            ).fetchall()
        return [self._record(row) for row in rows]

    # ---- run control ------------------------------------------------------------------------

    def _control(self, conn: sqlite3.Connection, run_id: str, status: str) -> RunControl | None:
        row = conn.execute(_CONTROL_SQL, (run_id,)).fetchone()
        if row is None:
            return None
        return RunControl(
            run_id,
            status,
            _decode(row[0]) if row[0] is not None else None,
            row[1],
            row[2],
            _decode(row[3]) if row[3] is not None else None,
        )

    def _fence(self, conn: sqlite3.Connection, run_id: str, owner_id: str) -> None:
        check_fence(run_id, self._control(conn, run_id, ""), owner_id, time.time())

    @staticmethod
    def _status(conn: sqlite3.Connection, run_id: str) -> str | None:
        row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else str(row[0])

    def _existing(self, conn: sqlite3.Connection, run_id: str) -> str:
        status = self._status(conn, run_id)
        if status is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.path}")
        return status

    def claim_run(self, record: RunRecord, owner: RunOwner, lease_s: float) -> RunControl:
        """Write ``record`` and give ``owner`` the lease (see :class:`~amsha.RunControlStore`)."""
        body = _encode(record_body(redact_obj(record.to_dict())))
        owner_blob = _encode(owner.to_dict())
        with self._write(f"claim_run({record.run_id!r})") as conn:
            now = time.time()
            status = self._status(conn, record.run_id)
            control = self._control(conn, record.run_id, status or record.status)
            check_claim(record.run_id, status, control, owner.id, now)
            self._upsert_run(conn, record.run_id, record.created_at, record.status, body)
            conn.execute(
                "INSERT INTO run_control (run_id, owner_id, owner, heartbeat_at, lease_expires_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET owner_id = excluded.owner_id, "
                "owner = excluded.owner, heartbeat_at = excluded.heartbeat_at, "
                "lease_expires_at = excluded.lease_expires_at",
                (record.run_id, owner.id, owner_blob, now, now + lease_s),
            )
        return RunControl(
            record.run_id,
            record.status,
            owner.to_dict(),
            now,
            now + lease_s,
            control.cancel_request if control else None,
        )

    def renew_lease(self, run_id: str, owner_id: str, lease_s: float) -> RunControl:
        """Extend ``owner_id``'s lease; returns the control fields (with any cancel request)."""
        with self._write(f"renew_lease({run_id!r})") as conn:
            status = self._existing(conn, run_id)
            now = time.time()
            control = self._control(conn, run_id, status)
            check_fence(run_id, control, owner_id, now)
            assert control is not None
            if status in ENDED:
                raise LeaseLostError(run_id, f"the run already ended ({status})")
            conn.execute(
                "UPDATE run_control SET heartbeat_at = ?, lease_expires_at = ? WHERE run_id = ?",
                (now, now + lease_s, run_id),
            )
        control.heartbeat_at, control.lease_expires_at = now, now + lease_s
        return control

    def read_control(self, run_id: str) -> RunControl:
        """The run's status and control fields, in one statement (a consistent read)."""
        try:
            row = self._conn().execute(_READ_CONTROL_SQL, (run_id,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(f"read_control({run_id!r})", exc) from None
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.path}")
        status, owner, heartbeat_at, lease_expires_at, cancel_request = row
        return RunControl(
            run_id,
            str(status),
            _decode(owner) if owner is not None else None,
            heartbeat_at,
            lease_expires_at,
            _decode(cancel_request) if cancel_request is not None else None,
        )

    def request_cancel(self, run_id: str, reason: str) -> str:
        """Ask the run to stop (see :class:`~amsha.RunControlStore`); a :class:`~amsha.CancelOutcome` value."""
        with self._write(f"request_cancel({run_id!r})") as conn:
            status = self._existing(conn, run_id)
            now = time.time()
            control = self._control(conn, run_id, status)
            outcome = cancel_outcome(status, control, now)
            if outcome == CancelOutcome.CANCELLED:
                row = conn.execute("SELECT body FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                record = cancelled_before_start(RunRecord.from_dict(_decode(row[0])), reason, now)
                self._upsert_run(conn, run_id, record.created_at, record.status, _encode(record.to_dict()))
            elif outcome == CancelOutcome.REQUESTED and (control is None or control.cancel_request is None):
                request = _encode(redact_obj({"reason": reason, "at": now}))
                conn.execute(
                    "INSERT INTO run_control (run_id, cancel_request) VALUES (?, ?) ON CONFLICT (run_id) "
                    "DO UPDATE SET cancel_request = excluded.cancel_request",
                    (run_id, request),
                )
        return outcome

    def list_runs_page(
        self, limit: int, *, before: str | None = None, status: str | None = None, text: str | None = None
    ) -> RunPage:
        """A page of runs, newest first, filtered (:class:`~amsha.state.RunPageStore`).

        Walks the ``created_at`` index from the cursor (``"created_at|rowid"``), a batch at a
        time, decoding only the rows the filters keep: the status is matched in SQL (LOST is a
        PENDING or RUNNING row whose lease expired, checked on the decoded record), and text
        made of plain ASCII is looked for in the row's JSON first, then matched exactly."""
        if limit < 1:
            raise StateError(f"list_runs_page: limit must be at least 1, got {limit}")
        at, rowid = float("inf"), 0
        if before:
            head, _, tail = before.partition("|")
            try:
                at, rowid = float(head), int(tail)
            except ValueError:
                raise StateError(f"list_runs_page: {before!r} is not a cursor this store returned") from None
        where, args = [], []
        if status:
            stored = RunStatus.ACTIVE if status in (RunStatus.LOST, RunStatus.RUNNING) else {status}
            where.append(f"r.status IN ({', '.join('?' * len(stored))})")
            args.extend(sorted(stored))
        needle = (text or "").lower()
        if needle and needle.isascii() and needle.isprintable() and '"' not in needle and "\\" not in needle:
            where.append("instr(lower(CAST(r.body AS TEXT)), ?) > 0")
            args.append(needle)
        sql = (
            "SELECT r.rowid, r.created_at, r.body, c.owner, c.heartbeat_at, c.lease_expires_at, c.cancel_request "
            "FROM runs r LEFT JOIN run_control c ON c.run_id = r.run_id "
            "WHERE (r.created_at < ? OR (r.created_at = ? AND r.rowid < ?))"
            + "".join(f" AND {w}" for w in where)
            + " ORDER BY r.created_at DESC, r.rowid DESC LIMIT ?"
        )
        batch = max(2 * limit, 64)
        now = time.time()
        out: list[RunRecord] = []
        last: tuple[float, int] | None = None
        while True:
            with self._read("list_runs_page") as conn:
                rows = conn.execute(sql, (at, at, rowid, *args, batch)).fetchall()
            for row in rows:
                row_id, created_at = row[0], row[1]
                at, rowid = created_at, row_id
                record = self._record(row[2:]).observed(now)
                if not run_matches(record, status, text):
                    continue
                if len(out) == limit:
                    assert last is not None
                    return RunPage(out, f"{last[0]!r}|{last[1]}")
                out.append(record)
                last = (created_at, row_id)
            if len(rows) < batch:
                return RunPage(out, None)

    # ---- events -----------------------------------------------------------------------------

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]], *, owner: str | None = None) -> None:
        """Append events to a run's log in one transaction. Events are never overwritten: a
        ``seq`` already stored for the run raises :class:`~amsha.errors.StateError` and nothing
        of the batch is written. With ``owner``, only while that owner holds the run's lease."""
        if not events:
            return
        rows = []
        for event in events:
            seq = event.get("seq")
            if not isinstance(seq, int):
                raise StateError(f"run {run_id!r}: an event without an integer 'seq' cannot be stored: {event!r:.200}")
            rows.append((run_id, seq, _encode(redact_obj(event))))
        try:
            with self._write(f"append_events({run_id!r})") as conn:
                if owner is not None:
                    self._fence(conn, run_id, owner)
                conn.executemany("INSERT INTO events (run_id, seq, body) VALUES (?, ?, ?)", rows)
        except StateError as exc:
            if "UNIQUE constraint failed" in str(exc):
                seqs = [r[1] for r in rows]
                raise StateError(
                    f"run {run_id!r}: events {seqs[0]}..{seqs[-1]} overlap events already stored; "
                    f"events are append-only, nothing of this batch was written"
                ) from None
            raise

    def append_events_batch(
        self, batches: Sequence[tuple[str, Sequence[dict[str, Any]], str | None]]
    ) -> dict[str, LeaseLostError]:
        """Append the events of several runs (``(run_id, events, owner)``) in one transaction,
        each run's fenced by its owner as :meth:`append_events` does. Returns the runs whose
        owner no longer holds the lease (their events are not written, the others' are); an
        overlap with stored events raises :class:`~amsha.errors.StateError` and nothing of the
        batch is written."""
        prepared = []
        for run_id, events, owner in batches:
            rows = []
            for event in events:
                seq = event.get("seq")
                if not isinstance(seq, int):
                    raise StateError(f"run {run_id!r}: an event without an integer 'seq' cannot be stored")
                rows.append((run_id, seq, _encode(redact_obj(event))))
            prepared.append((run_id, rows, owner))
        refused: dict[str, LeaseLostError] = {}
        with self._write(f"append_events_batch({len(prepared)} runs)") as conn:
            for run_id, rows, owner in prepared:
                if owner is not None:
                    try:
                        self._fence(conn, run_id, owner)
                    except LeaseLostError as exc:
                        refused[run_id] = exc
                        continue
                conn.executemany("INSERT INTO events (run_id, seq, body) VALUES (?, ?, ?)", rows)
        return refused

    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        """The run's events with ``seq >= from_seq``, in order."""
        with self._read(f"read_events({run_id!r})") as conn:
            rows = conn.execute(
                "SELECT body FROM events WHERE run_id = ? AND seq >= ? ORDER BY seq", (run_id, int(from_seq))
            ).fetchall()
        return [_decode(body) for (body,) in rows]

    # ---- retention --------------------------------------------------------------------------

    def delete_run(self, run_id: str) -> None:
        """Delete a run's record, its events and the state versions it wrote, in one
        transaction. Later versions of the same states still read back exactly: those that
        built on a deleted row are rewritten on the versions that remain. The file does not
        shrink until :meth:`vacuum`."""
        with self._write(f"delete_run({run_id!r})") as conn:
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM run_control WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            doomed = conn.execute(
                "SELECT state_id, version FROM state_versions WHERE run_id = ? ORDER BY state_id, version", (run_id,)
            ).fetchall()
            by_state: dict[str, set[int]] = {}
            for state_id, version in doomed:
                by_state.setdefault(state_id, set()).add(version)
            for state_id, versions in by_state.items():
                _delete_versions(conn, state_id, versions)
        with self._lock:
            self._tips.clear()
            self._tips_bytes = 0

    def vacuum(self) -> int:
        """Give the space freed by deletions back to the file system (``VACUUM``, after a WAL
        checkpoint). Takes the write lock for its duration. Returns the bytes saved."""
        size_before = self.size_bytes()
        conn = self._conn()
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise self._error("vacuum", exc) from None
        return max(0, size_before - self.size_bytes())

    def size_bytes(self) -> int:
        """The size of the database file plus its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                pass
        return total


def _delete_versions(conn: sqlite3.Connection, state_id: str, doomed: set[int]) -> None:
    """Delete the ``doomed`` versions of ``state_id`` and rewrite every kept version whose
    chain (its base snapshot up to it) held one of them, on the kept versions before it."""
    first = min(doomed)
    start = conn.execute(
        "SELECT base FROM state_versions WHERE state_id = ? AND version = ?", (state_id, first)
    ).fetchone()[0]
    chains = conn.execute(
        "SELECT version, created_at, base, depth, chain FROM state_versions WHERE state_id = ? AND version >= ? "
        "ORDER BY version",
        (state_id, start),
    ).fetchall()
    # A kept version is affected when a doomed version lies in its chain; those are suffixes
    # of chains, and every later kept version reads as before.
    affected = {v for v, _, base, _, _ in chains if v not in doomed and any(base <= d < v for d in doomed)}
    rewritten: list[tuple[Any, ...]] = []
    if affected:
        last = max(affected)
        state: dict[str, Any] | None = None
        prev: _Tip | None = None  # the latest kept version walked, as rewritten
        for (v, created_at, old_base, old_depth, old_chain), (removed, ord_, data) in zip(
            (c for c in chains if c[0] <= last),
            conn.execute(
                "SELECT removed, ord, data FROM state_versions WHERE state_id = ? AND version BETWEEN ? AND ? "
                "ORDER BY version",
                (state_id, start, last),
            ).fetchall(),
            strict=True,
        ):
            state = _apply(None if v == old_base else state, removed, ord_, data)
            if v in doomed:
                continue
            values = _encode_all(state_id, state)
            size = _size(values)
            if v in affected:
                planned = _plan(v, prev, values, size)
                rewritten.append((*planned, state_id, v))
                prev = _Tip(v, created_at, planned.base, planned.depth, planned.chain, values, size)
            else:
                prev = _Tip(v, created_at, old_base, old_depth, old_chain, values, size)
    conn.executemany(
        "DELETE FROM state_versions WHERE state_id = ? AND version = ?", [(state_id, v) for v in sorted(doomed)]
    )
    conn.executemany(
        "UPDATE state_versions SET base = ?, depth = ?, chain = ?, removed = ?, ord = ?, data = ? "
        "WHERE state_id = ? AND version = ?",
        rewritten,
    )


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def build(ctx: BackendContext) -> SqliteStore:
    """The factory registered as state store ``sqlite``."""
    opts = ctx.options
    path = Path(opts.path).expanduser()
    return SqliteStore(
        path if path.is_absolute() else ctx.base_dir / path,
        timeout_s=opts.timeout_s,
        synchronous=opts.synchronous,
        wal_limit_mb=opts.wal_limit_mb,
    )
