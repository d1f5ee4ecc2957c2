"""The ``sqlite`` state store: states, run records and run events in one SQLite file.

Layout (schema 2, see :data:`SCHEMA_VERSION`):

* ``blobs(hash, data)``: every distinct JSON value of a state key, once, addressed by the
  SHA-256 of its JSON text (content-addressed: a value seen before costs nothing).
* ``state_keys(state_id, key, version, hash, ord)``: one row per key *that changed* in a
  version (``hash`` NULL means the key was removed in that version). A version reads back as,
  for each key, its row with the greatest ``version`` not above the one asked for. So a version
  in which one key of a 1 MB state changed adds one small row and that key's new value,
  never the whole state. ``ord`` keeps the order of the keys exactly.
* ``state_versions(state_id, version, created_at, run_id, reason)``: one row per version.
* ``runs(run_id, created_at, status, body)`` and ``events(run_id, seq, body)``.
* ``amsha_schema(version)``: the layout's version; older files are migrated forward when
  opened, a newer file is refused with :class:`~amsha.errors.SchemaVersionError`.

Every write is one ``BEGIN IMMEDIATE`` transaction: the write lock is taken first, so two
writers queue on SQLite's busy timeout (``timeout_s``) instead of failing half way, and the
version check and the insert happen under the same lock (optimistic concurrency holds across
processes). Reads run in short deferred transactions (one consistent snapshot, everything
fetched before it ends, no read held open while the caller iterates). The journal is WAL, so
readers never block the writer; ``synchronous`` is NORMAL by default (a committed write
survives the process being killed; a power loss may undo the last commits, never corrupt the
file) or FULL.

Each thread gets its own connection, and a process that inherited the store through ``fork``
opens its own (the parent's connections are left untouched); pickling the store (for spawned
workers) carries only the path and options.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from amsha.errors import RunNotFoundError, SchemaVersionError, StateError, StateNotFoundError, VersionConflictError
from amsha.plugins import BackendContext
from amsha.secrets import redact_obj
from amsha.state import RunRecord, StateSnapshot, check_json

__all__ = ["SCHEMA_VERSION", "SqliteStore", "build"]

SCHEMA_VERSION = 2
"""The layout this release writes. 1: a whole JSON document per state version."""

# Connections a forked child inherited: kept referenced and never closed in the child, because
# closing them there could release or disturb locks that belong to the parent.
_INHERITED: list[sqlite3.Connection] = []

_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS blobs (
    hash BLOB PRIMARY KEY,
    data BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_versions (
    state_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    run_id TEXT,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (state_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_keys (
    state_id TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    hash BLOB,
    ord INTEGER NOT NULL,
    PRIMARY KEY (state_id, key, version)
) WITHOUT ROWID;
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

# The value of each key as of a version: its latest row at or below that version. The key
# names are walked with one index seek each (a recursive "skip scan"), and each key's row with
# one more seek, so a read costs O(keys * log rows) however long the state's history is.
_MANIFEST_SQL = """
WITH RECURSIVE names(name) AS (
    SELECT min(key) FROM state_keys WHERE state_id = ?1
    UNION ALL
    SELECT (SELECT min(key) FROM state_keys WHERE state_id = ?1 AND key > name) FROM names WHERE name IS NOT NULL
)
SELECT k.key, k.hash, k.ord FROM names JOIN state_keys AS k
    ON k.state_id = ?1 AND k.key = names.name AND k.version = (
        SELECT max(version) FROM state_keys WHERE state_id = ?1 AND key = names.name AND version <= ?2
    )
"""
_DATA_SQL = "SELECT m.key, b.data FROM (" + _MANIFEST_SQL + ") AS m JOIN blobs AS b ON b.hash = m.hash ORDER BY m.ord"

Manifest = dict[str, tuple[bytes, int]]
"""key -> (hash of its JSON value, position) for the live keys of one version."""


try:  # a declared dependency; the standard library's json is the fallback
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

# Make orjson refuse what is not plain JSON (dates, dataclasses, subclasses) instead of
# converting it, so such values take the checked path below.
_ORJSON_OPTS = (
    (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS)
    if orjson is not None
    else 0
)


def _encode(value: Any, key: str = "value") -> bytes:
    """``value`` as compact UTF-8 JSON.

    orjson when it can encode the value exactly; otherwise (integers beyond 64 bits, lone
    surrogates in strings) the standard library's json, after :func:`check_json`, with one
    leading space: still JSON text, and the mark that tells :func:`_decode` to read it back
    with the standard library too (orjson would read a big integer as a float).
    """
    if orjson is not None:
        try:
            blob = orjson.dumps(value, option=_ORJSON_OPTS)
        except (TypeError, ValueError):
            pass
        else:
            if b"null" in blob:
                check_json(key, value)  # orjson writes NaN and infinity as null: refuse them
            return blob
    check_json(key, value)
    # surrogatepass: a lone surrogate is a valid str (and JSON \ud800); json.loads(bytes)
    # decodes with surrogatepass too.
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return b" " + text.encode("utf-8", "surrogatepass")


def _decode(blob: bytes) -> Any:
    if orjson is not None and blob[:1] != b" ":
        return orjson.loads(blob)
    return json.loads(blob)


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class SqliteStore:
    """A :class:`~amsha.StateStore` in one SQLite file (see the module docs for the layout).

    ``path`` is created (with its folder) on first use. ``timeout_s`` is how long a write waits
    for another writer; ``synchronous`` is ``"NORMAL"`` or ``"FULL"``. Raises
    :class:`~amsha.errors.StateError` at once if the file cannot be opened or is not a usable
    SQLite database, and :class:`~amsha.errors.SchemaVersionError` if a newer release wrote it.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 30.0, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise StateError(
                f"sqlite store: path {str(path)!r} is not a file path; for an in-process store use 'memory'"
            )
        synchronous = synchronous.upper()
        if synchronous not in ("NORMAL", "FULL"):
            raise StateError(f"sqlite store: synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.timeout_s = float(timeout_s)
        self.synchronous = synchronous
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
        # state_id -> ((version, created_at) of the latest version, its manifest). A cached
        # manifest is used only while the latest version is still that row: a version deleted
        # and written again (by any process) has another timestamp.
        self._manifests: dict[str, tuple[tuple[int, float], Manifest]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "timeout_s": self.timeout_s, "synchronous": self.synchronous}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], timeout_s=state["timeout_s"], synchronous=state["synchronous"])  # type: ignore[misc]

    def _conn(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:
            # A forked child: leave the parent's connections alone and open its own.
            _INHERITED.extend(conn for _, conn in self._conns.values())
            self._setup_process()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
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
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("open", exc) from None
        return conn

    def close(self) -> None:
        """Close this process's connections (the store reopens on next use)."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            conns, self._conns = self._conns, {}
            self._manifests.clear()
        for _, conn in conns.values():
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

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
        """One write transaction; the write lock is taken up front (BEGIN IMMEDIATE)."""
        conn = self._conn()
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
                for statement in _statements(_SCHEMA_V2):
                    wconn.execute(statement)
                wconn.execute("CREATE TABLE amsha_schema (version INTEGER NOT NULL)")
                wconn.execute("INSERT INTO amsha_schema (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            while found < SCHEMA_VERSION:
                try:
                    MIGRATIONS[found](self, wconn)
                except Exception as exc:  # the transaction rolls back: the file stays as it was
                    raise StateError(
                        f"sqlite store: migrating {self.path} from schema {found} to {found + 1} failed "
                        f"({type(exc).__name__}: {exc}); the file is left at schema {found}"
                    ) from exc
                found += 1
                wconn.execute("UPDATE amsha_schema SET version = ?", (found,))

    def _migrate_1_to_2(self, conn: sqlite3.Connection) -> None:
        """Schema 1 kept each state version as one JSON document (``states.data``) and runs
        without a ``status`` column; rewrite versions as changed keys and add the column."""
        for statement in _statements(_SCHEMA_V2):
            conn.execute(statement)
        cols = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        if "status" not in cols:
            conn.execute("ALTER TABLE runs ADD COLUMN status TEXT NOT NULL DEFAULT 'PENDING'")
            for run_id, body in conn.execute("SELECT run_id, body FROM runs").fetchall():
                status = _decode(body).get("status", "PENDING")
                conn.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))
        rows = conn.execute(
            "SELECT state_id, version, created_at, run_id, reason, data FROM states ORDER BY state_id, version"
        ).fetchall()
        manifests: dict[str, Manifest] = {}
        for state_id, version, created_at, run_id, reason, data in rows:
            encoded = [(k, _encode(v)) for k, v in json.loads(data).items()]
            manifests[state_id] = self._write_version(
                conn, state_id, version, manifests.get(state_id, {}), encoded, created_at, run_id, reason or ""
            )
        conn.execute("DROP TABLE states")

    # ---- states -----------------------------------------------------------------------------

    def put_state(
        self, state_id: str, data: dict[str, Any], *, expected_version: int, run_id: str | None = None, reason: str = ""
    ) -> int:
        """Store ``data`` as version ``expected_version + 1`` of ``state_id``, writing only
        the keys whose value changed since the latest version. Raises
        :class:`~amsha.errors.VersionConflictError` (naming both versions) when the latest
        stored version is not ``expected_version``."""
        if not isinstance(data, dict):
            raise StateError(f"state {state_id!r}: data must be a dict of JSON values, got {type(data).__name__}")
        # Encoding and hashing happen before the write lock is taken.
        encoded = []
        for key, value in redact_obj(data).items():
            if not isinstance(key, str):
                raise StateError(f"state {state_id!r}: key {key!r} is not a string")
            encoded.append((key, _encode(value, key)))
        with self._write(f"put_state({state_id!r})") as conn:
            row = conn.execute(
                "SELECT version, created_at FROM state_versions WHERE state_id = ? ORDER BY version DESC LIMIT 1",
                (state_id,),
            ).fetchone()
            latest, latest_at = row if row else (0, 0.0)
            if latest != expected_version:
                raise VersionConflictError(state_id, expected_version, latest)
            cached = self._manifests.get(state_id)
            if cached is not None and cached[0] == (latest, latest_at):
                manifest = cached[1]
            else:
                manifest = self._manifest(conn, state_id, latest) if latest else {}
            created_at = time.time()
            new_manifest = self._write_version(
                conn, state_id, latest + 1, manifest, encoded, created_at, run_id, reason
            )
        with self._lock:
            self._manifests[state_id] = ((latest + 1, created_at), new_manifest)
            while len(self._manifests) > 256:
                self._manifests.pop(next(iter(self._manifests)))
        return latest + 1

    @staticmethod
    def _manifest(conn: sqlite3.Connection, state_id: str, version: int) -> Manifest:
        return {
            key: (digest, ord_)
            for key, digest, ord_ in conn.execute(_MANIFEST_SQL, (state_id, version))
            if digest is not None
        }

    @staticmethod
    def _write_version(
        conn: sqlite3.Connection,
        state_id: str,
        version: int,
        manifest: Manifest,
        encoded: Sequence[tuple[str, bytes]],
        created_at: float,
        run_id: str | None,
        reason: str,
    ) -> Manifest:
        """Insert version ``version`` given the manifest of the version before it: the changed
        values, a row per changed key, a removal row per removed key. Returns its manifest."""
        # Positions: keep the stored ones when the keys come in the same relative order with
        # new keys at the end (the usual case); otherwise renumber so the order reads back exact.
        top = max((o for _, o in manifest.values()), default=-1)
        ords: list[int] = []
        for key, _ in encoded:
            old = manifest.get(key)
            if old is None:
                top += 1
                ords.append(top)
            else:
                ords.append(old[1])
        if any(a >= b for a, b in itertools.pairwise(ords)):
            ords = list(range(len(encoded)))
        new_manifest: Manifest = {}
        blobs: list[tuple[bytes, bytes]] = []
        rows: list[tuple[str, str, int, bytes | None, int]] = []
        for (key, blob), ord_ in zip(encoded, ords, strict=True):
            digest = _digest(blob)
            new_manifest[key] = (digest, ord_)
            if manifest.get(key) != (digest, ord_):
                if manifest.get(key, (None,))[0] != digest:
                    blobs.append((digest, blob))
                rows.append((state_id, key, version, digest, ord_))
        for key in manifest.keys() - new_manifest.keys():
            rows.append((state_id, key, version, None, 0))
        if blobs:
            conn.executemany("INSERT OR IGNORE INTO blobs (hash, data) VALUES (?, ?)", blobs)
        if rows:
            conn.executemany("INSERT INTO state_keys (state_id, key, version, hash, ord) VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute(
            "INSERT INTO state_versions (state_id, version, created_at, run_id, reason) VALUES (?, ?, ?, ?, ?)",
            (state_id, version, created_at, run_id, reason or ""),
        )
        return new_manifest

    def get_state(self, state_id: str, version: int | None = None) -> StateSnapshot:
        """The latest (or the given) version of ``state_id``, exactly as it was written."""
        with self._read(f"get_state({state_id!r})") as conn:
            if version is None:
                row = conn.execute(
                    "SELECT version, created_at, run_id, reason FROM state_versions WHERE state_id = ? "
                    "ORDER BY version DESC LIMIT 1",
                    (state_id,),
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT version, created_at, run_id, reason FROM state_versions WHERE state_id = ? AND version = ?",
                    (state_id, version),
                ).fetchone()
            if row is None:
                latest = conn.execute("SELECT max(version) FROM state_versions WHERE state_id = ?", (state_id,))
                top = latest.fetchone()[0]
                if top is None:
                    raise StateNotFoundError(f"no state {state_id!r} in {self.path}")
                raise StateNotFoundError(f"state {state_id!r} has no version {version} (latest is {top})")
            found, created_at, run_id, reason = row
            rows = conn.execute(_DATA_SQL, (state_id, found)).fetchall()
        data = {key: _decode(blob) for key, blob in rows}
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

    def put_run(self, record: RunRecord) -> None:
        """Create or replace the record of ``record.run_id``."""
        body = _encode(redact_obj(record.to_dict()))
        with self._write(f"put_run({record.run_id!r})") as conn:
            conn.execute(
                "INSERT INTO runs (run_id, created_at, status, body) VALUES (?, ?, ?, ?) ON CONFLICT (run_id) DO "
                "UPDATE SET created_at = excluded.created_at, status = excluded.status, body = excluded.body",
                (record.run_id, float(record.created_at), record.status, body),
            )

    def get_run(self, run_id: str) -> RunRecord:
        """The record of ``run_id``; :class:`~amsha.errors.RunNotFoundError` if absent."""
        with self._read(f"get_run({run_id!r})") as conn:
            row = conn.execute("SELECT body FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.path}")
        return RunRecord.from_dict(_decode(row[0]))

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """The most recent runs, newest first."""
        with self._read("list_runs") as conn:
            rows = conn.execute(
                "SELECT body FROM runs ORDER BY created_at DESC, rowid DESC LIMIT ?", (int(limit),)
            ).fetchall()
        return [RunRecord.from_dict(_decode(body)) for (body,) in rows]

    # ---- events -----------------------------------------------------------------------------

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> None:
        """Append events to a run's log in one transaction. Events are never overwritten: a
        ``seq`` already stored for the run raises :class:`~amsha.errors.StateError` and nothing
        of the batch is written."""
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
                conn.executemany("INSERT INTO events (run_id, seq, body) VALUES (?, ?, ?)", rows)
        except StateError as exc:
            if "UNIQUE constraint failed" in str(exc):
                seqs = [r[1] for r in rows]
                raise StateError(
                    f"run {run_id!r}: events {seqs[0]}..{seqs[-1]} overlap events already stored; "
                    f"events are append-only, nothing of this batch was written"
                ) from None
            raise

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
        transaction; values no version refers to any more are deleted too. Later versions of the
        same states still read back exactly. The file does not shrink until :meth:`vacuum`."""
        with self._write(f"delete_run({run_id!r})") as conn:
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            doomed = conn.execute(
                "SELECT state_id, version FROM state_versions WHERE run_id = ? ORDER BY state_id, version", (run_id,)
            ).fetchall()
            by_state: dict[str, set[int]] = {}
            for state_id, version in doomed:
                by_state.setdefault(state_id, set()).add(version)
            for state_id, versions in by_state.items():
                self._delete_versions(conn, state_id, versions)
            if doomed:
                conn.execute("DELETE FROM blobs WHERE hash NOT IN (SELECT hash FROM state_keys WHERE hash IS NOT NULL)")
        with self._lock:
            self._manifests.clear()

    def _delete_versions(self, conn: sqlite3.Connection, state_id: str, doomed: set[int]) -> None:
        kept = [
            v
            for (v,) in conn.execute(
                "SELECT version FROM state_versions WHERE state_id = ? ORDER BY version", (state_id,)
            )
            if v not in doomed
        ]
        # A kept version right after a deleted one may rely on rows written by it: remember
        # what it reads as, delete, then write back what differs.
        previous = {v: p for p, v in zip([0, *kept], kept, strict=False)}
        rebase = [v for v in kept if any(previous[v] < d < v for d in doomed)]
        before = {v: self._manifest(conn, state_id, v) for v in rebase}
        conn.executemany(
            "DELETE FROM state_versions WHERE state_id = ? AND version = ?", [(state_id, v) for v in doomed]
        )
        conn.executemany("DELETE FROM state_keys WHERE state_id = ? AND version = ?", [(state_id, v) for v in doomed])
        for v in rebase:
            now = self._manifest(conn, state_id, v)
            rows: list[tuple[str, str, int, bytes | None, int]] = [
                (state_id, key, v, digest, ord_)
                for key, (digest, ord_) in before[v].items()
                if now.get(key) != (digest, ord_)
            ]
            rows += [(state_id, key, v, None, 0) for key in now.keys() - before[v].keys()]
            conn.executemany(
                "INSERT OR REPLACE INTO state_keys (state_id, key, version, hash, ord) VALUES (?, ?, ?, ?, ?)", rows
            )

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


MIGRATIONS: dict[int, Callable[[SqliteStore, sqlite3.Connection], None]] = {1: SqliteStore._migrate_1_to_2}
"""from-version -> the step to the next version (run in the write transaction that opens the file)."""


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def build(ctx: BackendContext) -> SqliteStore:
    """The factory registered as state store ``sqlite``."""
    opts = ctx.options
    path = Path(opts.path).expanduser()
    return SqliteStore(
        path if path.is_absolute() else ctx.base_dir / path, timeout_s=opts.timeout_s, synchronous=opts.synchronous
    )
