"""``ExecutionState`` (the opaque JSON container) and the ``StateStore`` protocol.

Amsha stores, versions, snapshots and replays state; it never reads meaning into it and
never branches on it. Values must be JSON (checked when set, the key named on failure).
Versions give optimistic concurrency: a write that names a version other than the latest
fails with :class:`~amsha.errors.VersionConflictError`; nothing is silently merged.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .errors import NonJSONValueError, SchemaVersionError, StateError

__all__ = [
    "STATE_SCHEMA",
    "CancelOutcome",
    "ExecutionState",
    "RunControl",
    "RunControlStore",
    "RunOwner",
    "RunPage",
    "RunPageStore",
    "RunRecord",
    "RunStatus",
    "StateSnapshot",
    "StateStore",
    "MAX_JSON_DEPTH",
    "check_json",
    "page_of_runs",
    "run_matches",
    "run_search_text",
    "supports_run_control",
]

STATE_SCHEMA = 1


MAX_JSON_DEPTH = 256
"""The deepest nesting of lists and dicts a state value, run input or stored document may have."""


def check_json(key: str, value: Any, _depth: int = 0) -> None:
    """Raise :class:`NonJSONValueError` naming ``key`` (and the path inside it) unless
    ``value`` is plain JSON: ``None``, ``str``, ``bool``, ``int``, finite ``float``, and
    lists, tuples and string-keyed dicts of those, nested at most :data:`MAX_JSON_DEPTH`
    levels, with no container inside itself. Iterative: any depth is refused, never a
    ``RecursionError``."""
    if value is None or type(value) in _SCALARS:
        return
    # (path, value, depth, ids of the containers above it)
    stack: list[tuple[str, Any, int, frozenset[int]]] = [(key, value, _depth, frozenset())]
    while stack:
        path, item, depth, above = stack.pop()
        if item is None or isinstance(item, str | bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise NonJSONValueError(path, item, "NaN and infinity are not JSON")
            continue
        if not isinstance(item, list | tuple | dict):
            raise NonJSONValueError(path, item)
        if id(item) in above:
            raise NonJSONValueError(path, item, "the value contains itself")
        if depth >= MAX_JSON_DEPTH:
            shown = path if len(path) <= 120 else f"{path[:80]}...{path[-30:]}"
            raise NonJSONValueError(shown, item, f"nested more than {MAX_JSON_DEPTH} levels deep")
        inner = above | {id(item)}
        if isinstance(item, dict):
            for k, child in item.items():
                if not isinstance(k, str):
                    raise NonJSONValueError(f"{path}.{k!r}", item, f"dict key {k!r} is not a string")
                stack.append((f"{path}.{k}", child, depth + 1, inner))
        else:
            for i, child in enumerate(item):
                stack.append((f"{path}[{i}]", child, depth + 1, inner))


_SCALARS = frozenset({str, bool, int})


class ExecutionState:
    """A versioned, JSON-only key-value container shared by runs.

    ``version`` is the store version this object was last loaded from or saved as (0 for
    a state never saved). Runs that receive this object write task outputs into it and
    snapshot it to the session's store with the version they hold; two copies of the same
    version cannot both be committed. Thread-safe.
    """

    def __init__(self, data: Mapping[str, Any] | None = None, *, state_id: str | None = None, version: int = 0) -> None:
        self.state_id = state_id or f"state-{uuid.uuid4().hex[:12]}"
        self.version = version
        self._lock = threading.RLock()
        self._data: dict[str, Any] = {}
        for key, value in (data or {}).items():
            self[key] = value
        self.dirty = version == 0
        """True when the contents changed since the last load or commit."""

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise NonJSONValueError(repr(key), key, "state keys must be strings")
        check_json(key, value)
        # Stored as a private copy so later mutation of the caller's object cannot change it.
        value = copy.deepcopy(value) if isinstance(value, dict | list | tuple) else value
        if isinstance(value, tuple):
            value = list(value)
        with self._lock:
            self._data[key] = value
            self.dirty = True

    def __delitem__(self, key: str) -> None:
        with self._lock:
            del self._data[key]
            self.dirty = True

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ExecutionState(state_id={self.state_id!r}, version={self.version}, keys={self.keys()!r})"

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return copy.deepcopy(self._data.get(key, default))

    def set(self, key: str, value: Any) -> None:
        self[key] = value

    def update(self, values: Mapping[str, Any]) -> None:
        """Set several keys at once; none is set if any value is not JSON."""
        for key, value in values.items():
            check_json(key, value)
        for key, value in values.items():
            self[key] = value

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._data)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the contents."""
        with self._lock:
            return copy.deepcopy(self._data)

    def save(self) -> str:
        """The state as a JSON document (schema, id, version, data)."""
        return json.dumps(
            {"schema": STATE_SCHEMA, "state_id": self.state_id, "version": self.version, "data": self.to_dict()},
            ensure_ascii=False,
            allow_nan=False,
        )

    @classmethod
    def load(cls, document: str | bytes | Mapping[str, Any]) -> ExecutionState:
        """Rebuild a state from :meth:`save` output; an unknown schema fails loudly."""
        try:
            doc = json.loads(document) if isinstance(document, str | bytes) else dict(document)
        except json.JSONDecodeError as exc:
            raise StateError(f"cannot load state: not JSON ({exc})") from None
        if not isinstance(doc, dict) or "data" not in doc:
            raise StateError("cannot load state: expected an object with 'schema', 'state_id', 'version' and 'data'")
        if doc.get("schema") != STATE_SCHEMA:
            raise SchemaVersionError(
                f"state schema {doc.get('schema')!r} is not readable by this release (it reads schema {STATE_SCHEMA})"
            )
        return cls(doc["data"], state_id=doc.get("state_id"), version=int(doc.get("version", 0)))

    def commit(
        self, store: StateStore, *, run_id: str | None = None, reason: str = "manual", owner: str | None = None
    ) -> int:
        """Write this state to ``store`` as a new version (optimistic on :attr:`version`).
        ``owner``: the lease holder of ``run_id`` (a fenced write, see :class:`RunControlStore`)."""
        with self._lock:
            extra = {"owner": owner} if owner is not None else {}
            new_version = store.put_state(
                self.state_id, self.to_dict(), expected_version=self.version, run_id=run_id, reason=reason, **extra
            )
            self.version = new_version
            self.dirty = False
            return new_version

    @classmethod
    def from_store(cls, store: StateStore, state_id: str, version: int | None = None) -> ExecutionState:
        """Load the latest (or a given) version of ``state_id`` from ``store``."""
        snap = store.get_state(state_id, version)
        return cls(snap.data, state_id=snap.state_id, version=snap.version)


class RunStatus:
    """The life of a run: PENDING -> RUNNING -> one of SUCCEEDED, FAILED, CANCELLED, LOST.

    ``LOST`` is never written by the run: a reader reports it for a PENDING or RUNNING run
    whose owner's lease expired (the owning process died, or stopped renewing), see
    :meth:`RunRecord.observed`. It is terminal: the run will not write again.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"
    TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "LOST"})
    ACTIVE = frozenset({"PENDING", "RUNNING"})


@dataclass(slots=True)
class StateSnapshot:
    """One stored version of a state."""

    state_id: str
    version: int
    data: dict[str, Any]
    created_at: float = field(default_factory=time.time)
    run_id: str | None = None
    reason: str = ""


@dataclass(slots=True, frozen=True)
class RunOwner:
    """The process executing a run: a random ``id`` (fresh for every run it executes), the
    ``host`` name and the ``pid``."""

    id: str
    host: str
    pid: int

    @classmethod
    def here(cls) -> RunOwner:
        """A new owner for this process."""
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid())

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "pid": self.pid}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunOwner:
        return cls(str(data["id"]), str(data.get("host", "")), int(data.get("pid", 0)))

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid} (owner {self.id[:8]})"


@dataclass(slots=True)
class RunRecord:
    """What a store keeps about a run, so another process can attach to it and poll it.

    The run-control fields (``owner``, ``heartbeat_at``, ``lease_expires_at``,
    ``cancel_request``) are written only by :class:`RunControlStore` methods
    (``claim_run``, ``renew_lease``, ``request_cancel``); :meth:`StateStore.put_run` keeps
    the stored ones and ignores those of the record it is given. Times are ``time.time()``
    of the reading process: a store whose clock is another machine's converts them.
    """

    run_id: str
    status: str = RunStatus.PENDING
    mode: str = "interactive"
    tasks: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    state_id: str | None = None
    base_version: int = 0
    state_version: int | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    replay_of: str | None = None
    owner: dict[str, Any] | None = None
    """The process holding the lease (``RunOwner.to_dict()``), if the run was claimed."""
    heartbeat_at: float | None = None
    """When the owner last took or renewed its lease."""
    lease_expires_at: float | None = None
    """When the lease runs out unless renewed; past it, an active run is LOST."""
    cancel_request: dict[str, Any] | None = None
    """``{"reason", "at"}`` once someone asked the run to stop."""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        names = set(cls.__slots__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def lost(self, now: float | None = None) -> bool:
        """True when the run is PENDING or RUNNING but its owner's lease has expired."""
        return (
            self.status in RunStatus.ACTIVE
            and self.lease_expires_at is not None
            and (time.time() if now is None else now) > self.lease_expires_at
        )

    def observed(self, now: float | None = None) -> RunRecord:
        """This record as a reader should report it: status ``LOST`` if :meth:`lost`."""
        if not self.lost(now):
            return self
        seen = RunRecord.from_dict(self.to_dict())
        seen.status = RunStatus.LOST
        return seen


class CancelOutcome:
    """What :meth:`RunControlStore.request_cancel` did."""

    REQUESTED = "requested"
    """The run has an owner: it was asked to stop, and records CANCELLED when it has."""
    CANCELLED = "cancelled"
    """The run had not started (PENDING, no owner): it is now CANCELLED and will never start."""
    ENDED = "ended"
    """The run had already ended (SUCCEEDED, FAILED or CANCELLED): nothing changed."""
    LOST = "lost"
    """The run's owner's lease had expired: nothing changed; the run is LOST."""


@dataclass(slots=True)
class RunControl:
    """A run's control fields as one read of the store sees them."""

    run_id: str
    status: str
    owner: dict[str, Any] | None = None
    heartbeat_at: float | None = None
    lease_expires_at: float | None = None
    cancel_request: dict[str, Any] | None = None

    @property
    def cancel_reason(self) -> str | None:
        """The reason of the pending cancel request, or None."""
        return None if self.cancel_request is None else str(self.cancel_request.get("reason") or "cancelled")


@runtime_checkable
class StateStore(Protocol):
    """Where states, run records and run events are kept.

    All methods are synchronous and short (one transaction each); the session calls them
    from its event loop, so a store must never hold a lock across calls. Data passed in
    and out is plain JSON. Implementations: ``memory`` (built in), ``sqlite``
    (amsha-state-sqlite), and any third party's.
    """

    def put_state(
        self, state_id: str, data: dict[str, Any], *, expected_version: int, run_id: str | None = None, reason: str = ""
    ) -> int:
        """Store ``data`` as version ``expected_version + 1`` of ``state_id``.

        Raises :class:`VersionConflictError` (naming both versions) when the latest stored
        version is not ``expected_version`` (0 means "no version yet"). Returns the new version.
        """
        ...

    def get_state(self, state_id: str, version: int | None = None) -> StateSnapshot:
        """The latest (or the given) version; :class:`StateNotFoundError` if absent."""
        ...

    def list_versions(self, state_id: str) -> list[StateSnapshot]:
        """Every stored version of ``state_id``, oldest first (``data`` may be empty)."""
        ...

    def put_run(self, record: RunRecord) -> None:
        """Create or replace the record of ``record.run_id``."""
        ...

    def get_run(self, run_id: str) -> RunRecord:
        """The record of ``run_id``; :class:`RunNotFoundError` if absent."""
        ...

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """The most recent runs, newest first."""
        ...

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> None:
        """Append events (dicts with increasing ``seq``) to a run's log."""
        ...

    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        """The run's events with ``seq >= from_seq``, in order."""
        ...

    def delete_run(self, run_id: str) -> None:
        """Delete a run's record, events and the state versions it wrote."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


@runtime_checkable
class RunControlStore(StateStore, Protocol):
    """A :class:`StateStore` that also keeps run control (plugin API 1.1): leases, cancel
    requests and fenced writes. The store is the control plane of runs that execute in
    another process or on another machine: no broker, no server.

    * **Lease.** The process executing a run holds a lease on it (:meth:`claim_run`) and
      renews it from the run's own loop every ``lease_s / 3`` (:meth:`renew_lease`). A
      PENDING or RUNNING run whose lease expired is LOST for every reader
      (:meth:`RunRecord.observed`); its owner, if it comes back, finds the lease gone.
    * **Fencing.** ``put_run``, ``append_events`` and ``put_state`` accept an ``owner``
      keyword (an owner id). Given one, the write happens only if that owner holds an
      unexpired lease on the run (for ``put_state``: on its ``run_id``), checked in the
      same transaction; otherwise :class:`~amsha.errors.LeaseLostError` and nothing is
      written. A stale owner can never overwrite the record, events or state.
    * **Cancel requests.** :meth:`request_cancel` records one; the owner reads it with
      :meth:`read_control` (every ``cancel_poll_s``) or on renewal, and stops.
    * ``put_run`` keeps the stored control fields: a record's ``owner``,
      ``heartbeat_at``, ``lease_expires_at`` and ``cancel_request`` are written only by
      the methods below. ``get_run`` and ``list_runs`` return them.

    Optional: a ``cheap_control_reads = True`` attribute says :meth:`read_control` is quick
    enough (a local index lookup that writers never block) for the owner to call it from its
    event loop every ``cancel_poll_s`` without a thread hop.

    Optional: ``append_events_batch([(run_id, events, owner), ...]) -> {run_id:
    LeaseLostError}`` appends the events of several runs in one transaction (each run fenced
    by its owner; the refused runs are returned, the others written). The runs of one event
    loop then share one write every ``runs.event_flush_s``, however many stream at once.

    Optional: ``wait_for_events(run_id, from_seq, timeout_s) -> list[dict]`` blocks until
    the run has events with ``seq >= from_seq`` (returning them) or ``timeout_s`` passes
    (returning ``[]``). A store with notifications (PostgreSQL's LISTEN/NOTIFY) implements
    it; without it, readers poll :meth:`read_events` with an adaptive interval.

    ``amsha.testing.StateStoreContract`` checks all of this.
    """

    def put_run(self, record: RunRecord, *, owner: str | None = None) -> None:
        """As :meth:`StateStore.put_run`; with ``owner``, only while it holds the lease."""
        ...

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]], *, owner: str | None = None) -> None:
        """As :meth:`StateStore.append_events`; with ``owner``, only while it holds the lease."""
        ...

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
        """As :meth:`StateStore.put_state`; with ``owner``, only while it holds the lease on
        ``run_id``."""
        ...

    def claim_run(self, record: RunRecord, owner: RunOwner, lease_s: float) -> RunControl:
        """Write ``record`` (create or replace) and give ``owner`` the lease on it, expiring
        ``lease_s`` seconds from now, in one transaction; returns the control fields (a cancel
        request made before the claim is kept and returned).

        Raises :class:`~amsha.errors.LeaseLostError`, writing nothing, when the stored run
        has already ended (a terminal status), when another owner holds an unexpired lease,
        or when any lease on it has expired (the run is LOST; it is never claimed again).
        The same owner may claim again (PENDING, then RUNNING).
        """
        ...

    def renew_lease(self, run_id: str, owner_id: str, lease_s: float) -> RunControl:
        """Extend the lease of ``owner_id`` to ``lease_s`` seconds from now and set
        ``heartbeat_at``; returns the control fields (with any cancel request). Raises
        :class:`~amsha.errors.LeaseLostError` if that owner does not hold an unexpired lease,
        or the run has ended; :class:`~amsha.errors.RunNotFoundError` if there is no run."""
        ...

    def read_control(self, run_id: str) -> RunControl:
        """The run's status and control fields, read cheaply (no events, no body decoding if
        the store can avoid it). :class:`~amsha.errors.RunNotFoundError` if absent."""
        ...

    def request_cancel(self, run_id: str, reason: str) -> str:
        """Ask the run to stop; returns a :class:`CancelOutcome` value.

        ``requested``: the run is owned and active; the request (``{"reason", "at"}``) is
        recorded (a second request keeps the first). ``cancelled``: the run was PENDING with
        no owner (queued on an executor); it is recorded CANCELLED (status, ``error``
        ``{"type": "RunCancelledError", "message": reason}``, ``finished_at``) and a later
        :meth:`claim_run` fails. ``ended``: already terminal; nothing changes. ``lost``: the
        lease expired; nothing changes. :class:`~amsha.errors.RunNotFoundError` if absent.
        """
        ...


RUN_CONTROL_METHODS = ("claim_run", "renew_lease", "read_control", "request_cancel")


def supports_run_control(store: object) -> bool:
    """True when ``store`` implements :class:`RunControlStore` (plugin API 1.1)."""
    return all(callable(getattr(store, name, None)) for name in RUN_CONTROL_METHODS)


# ---- Optional: a page of runs, filtered by the store (for run browsers such as amsha-ui) ----


@dataclass(slots=True)
class RunPage:
    """One page of runs, newest first, and the cursor of the next (older) page."""

    runs: list[RunRecord]
    next_before: str | None = None
    """Pass as ``before`` to get the next page; None when this page is the last."""


@runtime_checkable
class RunPageStore(Protocol):
    """Optional store capability: :meth:`list_runs_page`, so that a run browser lists ten
    thousand runs a page at a time without reading them all. Built-in ``memory`` and
    ``file`` stores and ``sqlite`` have it; for a store without it, :func:`page_of_runs`
    over ``list_runs`` gives the same answer, slower."""

    def list_runs_page(
        self, limit: int, *, before: str | None = None, status: str | None = None, text: str | None = None
    ) -> RunPage:
        """At most ``limit`` runs, newest first (``created_at``, then a store-defined tie
        break), older than the cursor ``before`` (an opaque string a previous page returned).

        Records are returned as readers see them (:meth:`RunRecord.observed`: an expired
        lease reads LOST). ``status`` keeps only runs with that observed status (``LOST``
        included; ``RUNNING`` then excludes lost runs). ``text`` keeps only runs whose
        :func:`run_search_text` contains it, case-insensitively.
        """
        ...


def run_search_text(record: RunRecord) -> str:
    """What a text filter over runs searches, lower-cased: the run id, status, mode, task
    names, inputs, the replayed run's id, and the error's type and message."""
    error = record.error or {}
    parts = [
        record.run_id,
        record.status,
        record.mode,
        " ".join(record.tasks),
        json.dumps(record.inputs, ensure_ascii=False, default=str) if record.inputs else "",
        record.replay_of or "",
        str(error.get("type") or ""),
        str(error.get("message") or ""),
    ]
    return "\n".join(parts).lower()


def run_matches(record: RunRecord, status: str | None = None, text: str | None = None) -> bool:
    """True when an (observed) record passes the filters of :meth:`RunPageStore.list_runs_page`."""
    if status and record.status != status:
        return False
    return not text or text.lower() in run_search_text(record)


def _cursor(record: RunRecord) -> str:
    return f"{float(record.created_at)!r}|{record.run_id}"


def page_of_runs(
    records: Sequence[RunRecord],
    limit: int,
    *,
    before: str | None = None,
    status: str | None = None,
    text: str | None = None,
    now: float | None = None,
) -> RunPage:
    """:meth:`RunPageStore.list_runs_page` over records already in memory (any order): the
    built-in stores use it, and a reader uses it over ``list_runs`` for a store without the
    capability. The cursor is ``"created_at|run_id"``; ties on ``created_at`` break on the
    run id, descending."""
    if limit < 1:
        raise StateError(f"list_runs_page: limit must be at least 1, got {limit}")
    now = time.time() if now is None else now
    ordered = sorted(records, key=lambda r: (float(r.created_at), r.run_id), reverse=True)
    if before:
        at, _, run_id = before.partition("|")
        try:
            key = (float(at), run_id)
        except ValueError:
            raise StateError(f"list_runs_page: {before!r} is not a cursor this store returned") from None
        ordered = [r for r in ordered if (float(r.created_at), r.run_id) < key]
    out: list[RunRecord] = []
    for record in ordered:
        seen = record.observed(now)
        if not run_matches(seen, status, text):
            continue
        if len(out) == limit:
            return RunPage(out, _cursor(out[-1]))
        out.append(seen)
    return RunPage(out, None)
