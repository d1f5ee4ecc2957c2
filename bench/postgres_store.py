"""Figures of amsha-state-postgres, against LangGraph's PostgresSaver on the same server in
the same run, and a bare psycopg INSERT/SELECT of the JSON (the floor).

The server is started here (``amsha_postgres.testing.PostgresServer``, the same helper the
tests use) with PostgreSQL's default durability (fsync and synchronous commit on), and every
side connects to it over TCP on 127.0.0.1 with prepared statements, as a client would.

PostgresSaver is used as LangGraph uses it: each checkpoint carries its channel versions,
and ``put`` gets ``new_versions`` for the channels that changed, so it writes a blob for each
changed channel only (it stores by change too, per channel). The amsha store's get after its
put reads the latest version's row and, since that is the version it wrote, decodes the
values it kept (see ``bench/sqlite_store.py``); PostgresSaver's ``get_tuple`` reads the
checkpoint and its blobs back.

The stream lag figures are measured across processes: ``postgres.tail.store_lag_*`` at the
store level (a writer process appends an event every 10 ms; this process waits with
``wait_for_events``, woken by LISTEN/NOTIFY), ``postgres.tail.session_lag_*`` through the
session (a run on a process pool; the starting process's ``handle.stream()`` tails the
store), which adds the session's token batching (``runs.event_flush_s``, 20 ms at most).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from harness import Figure, Settings, Skip, benchmark, check, log
from sqlite_store import KEYS_1MB, VERSIONS, _size, _state_1kb, _state_1mb, _value_10kb

_SERVER: Any = None


def _server() -> Any:
    """One durable server for every postgres figure of this run (stopped at exit)."""
    global _SERVER
    if _SERVER is None:
        try:
            from amsha_postgres.testing import PostgresServer
        except ImportError as exc:
            raise Skip(f"amsha-state-postgres is not installed ({exc})") from None
        import atexit

        _SERVER = PostgresServer.launch(durable=True)
        atexit.register(_SERVER.close)
    return _SERVER


def _saver_module() -> Any:
    try:
        from langgraph.checkpoint import base
        from langgraph.checkpoint.postgres import PostgresSaver
    except ImportError as exc:  # the peer is a bench dependency, not a project one
        raise Skip(
            f"langgraph-checkpoint-postgres is not installed ({exc}); pip install langgraph-checkpoint-postgres"
        ) from None
    return PostgresSaver, base


# ---- the three sides ----------------------------------------------------------------------


class _Amsha:
    name = "amsha postgres"

    def __init__(self, dsn: str) -> None:
        from amsha_postgres.store import PostgresStore

        self.store = PostgresStore(dsn, schema=f"b_{uuid.uuid4().hex[:8]}", pool_min_size=1, pool_max_size=2)
        self.version = 0

    def put(self, state: dict[str, Any], changed: list[str] | None = None) -> None:
        self.version = self.store.put_state("s", state, expected_version=self.version)

    def put_get(self, state: dict[str, Any]) -> dict[str, Any]:
        self.put(state)
        return self.store.get_state("s").data

    def size(self) -> int:
        self.store.vacuum()
        return self.store.size_bytes()

    def close(self) -> None:
        self.store.close()


class _Saver:
    name = "LangGraph PostgresSaver"

    def __init__(self, dsn: str) -> None:
        import psycopg
        from psycopg.rows import dict_row

        PostgresSaver, self.base = _saver_module()
        self.db = f"saver_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db}"')
        self.dsn = dsn.rsplit("/", 1)[0] + f"/{self.db}"
        self.conn = psycopg.connect(self.dsn, autocommit=True, prepare_threshold=0, row_factory=dict_row)
        self.saver = PostgresSaver(self.conn)
        self.saver.setup()
        self.config: dict[str, Any] = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        self.versions: dict[str, Any] = {}

    def put(self, state: dict[str, Any], changed: list[str] | None = None, *, one_channel: bool = False) -> None:
        if one_channel:  # the whole state is one channel (as a graph with a single dict or messages channel)
            state, changed = {"state": state}, ["state"]
        changed = list(state) if changed is None else changed
        new = {k: self.saver.get_next_version(self.versions.get(k), None) for k in changed}
        self.versions.update(new)
        checkpoint = self.base.empty_checkpoint()
        checkpoint["channel_values"] = state
        checkpoint["channel_versions"] = dict(self.versions)
        self.config = self.saver.put(self.config, checkpoint, {"step": 0}, new)

    def put_get(self, state: dict[str, Any]) -> dict[str, Any]:
        self.put(state)
        got = self.saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})
        return got.checkpoint["channel_values"]

    def size(self) -> int:
        self.conn.execute("VACUUM")
        return int(self.conn.execute("SELECT pg_database_size(current_database()) AS n").fetchone()["n"])

    def empty_size(self) -> int:
        """The database before any checkpoint (its catalogs and the saver's empty tables)."""
        return self.size()

    def close(self) -> None:
        self.conn.close()


class _Floor:
    name = "bare psycopg INSERT/SELECT of the JSON"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
        self.table = f"floor_{uuid.uuid4().hex[:8]}"
        self.conn.execute(f"CREATE TABLE {self.table} (id text, version int, data bytea, PRIMARY KEY (id, version))")
        self.version = 0
        import orjson

        self.orjson = orjson

    def put_get(self, state: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.conn.execute(
            f"INSERT INTO {self.table} VALUES ('s', %s, %s)", (self.version, self.orjson.dumps(state)), binary=True
        )
        row = self.conn.execute(
            f"SELECT data FROM {self.table} WHERE id = 's' ORDER BY version DESC LIMIT 1", binary=True
        ).fetchone()
        return self.orjson.loads(row[0])

    def close(self) -> None:
        self.conn.execute(f"DROP TABLE {self.table}")
        self.conn.close()


# ---- put + get ----------------------------------------------------------------------------


def _put_get(settings: Settings, label: str, make: Callable[[str], dict[str, Any]], per_round: int) -> list[Figure]:
    dsn = _server().dsn()
    sides = [_Amsha(dsn), _Saver(dsn), _Floor(dsn)]
    rounds = settings.pick(9, 3)
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    try:
        for r in range(-1, rounds):  # round -1 warms every side up and is not counted
            states = [make(f"r{r}-{i}") for i in range(per_round)]
            order = sides if r % 2 == 0 else sides[::-1]
            for side in order:
                t0 = time.perf_counter_ns()
                for state in states:
                    got = side.put_get(state)
                elapsed = time.perf_counter_ns() - t0
                if got != states[-1]:
                    raise AssertionError(f"{side.name} did not read back what it wrote")
                if r >= 0:
                    times[side.name].append(elapsed / per_round / 1e3)
    finally:
        for side in sides:
            side.close()
    med = {name: statistics.median(values) for name, values in times.items()}
    amsha, saver, floor = (med[s.name] for s in sides)
    size = _size(make("x"))
    for s in sides:
        log(
            f"  {s.name}: {med[s.name]:.1f} us per put+get of {size} bytes (rounds: {', '.join(f'{v:.0f}' for v in times[s.name])})"
        )
    unit = "us" if size < 100_000 else "ms"
    scale = 1.0 if unit == "us" else 1e-3
    return [
        Figure(
            f"postgres.put_get.{label}",
            amsha * scale,
            saver * scale,
            f"LangGraph PostgresSaver put() + get_tuple() of the same {label} state, same server",
            unit,
            1.0,
        ),
        Figure(
            f"postgres.put_get.{label}.floor",
            amsha * scale,
            floor * scale,
            f"bare psycopg INSERT + SELECT of the {label} state's JSON (orjson), same server",
            unit,
            2.0,
        ),
    ]


@benchmark("postgres.put_get.1kb", "postgres.put_get.1kb.floor")
def put_get_1kb(settings: Settings) -> list[Figure]:
    """Put a new version of a 1 KB state, then get the latest version back; every value new."""
    _saver_module()
    return _put_get(settings, "1kb", _state_1kb, settings.pick(200, 60))


@benchmark("postgres.put_get.1mb", "postgres.put_get.1mb.floor")
def put_get_1mb(settings: Settings) -> list[Figure]:
    """The same with a 1 MB state (100 keys of 10 KB), every value new in every version."""
    _saver_module()
    return _put_get(settings, "1mb", _state_1mb, settings.pick(8, 4))


# ---- storage ------------------------------------------------------------------------------


def _storage(one_channel: bool) -> tuple[int, int]:
    dsn = _server().dsn()
    amsha, saver = _Amsha(dsn), _Saver(dsn)
    try:
        saver_empty, amsha_empty = saver.empty_size(), amsha.size()
        state = _state_1mb("base")
        t_amsha = t_saver = 0.0
        for v in range(VERSIONS):
            state = dict(state)
            key = f"k{v % KEYS_1MB:03d}"
            state[key] = _value_10kb(f"v{v}", v)
            t0 = time.perf_counter()
            amsha.put(state)
            t1 = time.perf_counter()
            saver.put(state, None if v == 0 else [key], one_channel=one_channel)
            t_amsha, t_saver = t_amsha + t1 - t0, t_saver + time.perf_counter() - t1
        got = saver.saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})
        values = got.checkpoint["channel_values"]
        check(
            f"postgres.storage.readback{'.one_channel' if one_channel else ''}",
            amsha.store.get_state("s").data == state
            and (values["state"] if one_channel else values) == state
            and amsha.store.get_state("s", 1).data["k000"] == _value_10kb("v0", 0),
            "the last version reads back from both sides, and the first from the amsha store",
        )
        a_bytes = amsha.size() - amsha_empty
        s_bytes = saver.size() - saver_empty
    finally:
        amsha.close()
        saver.close()
    log(
        f"  state {_size(state) / 1e6:.2f} MB, {VERSIONS} versions: amsha {a_bytes / 1e6:.2f} MB "
        f"(written in {t_amsha:.1f} s), PostgresSaver {'(one channel) ' if one_channel else ''}"
        f"{s_bytes / 1e6:.2f} MB (written in {t_saver:.1f} s)"
    )
    return a_bytes, s_bytes


@benchmark("postgres.storage.200_versions_1mb", "postgres.storage.200_versions_1mb.one_channel")
def storage(settings: Settings) -> list[Figure]:
    """The bytes on the server after 200 versions of a 1 MB state in which one key (of 100)
    changes each time, written through each side's put; after VACUUM, TOAST and indexes
    included, less what each side's empty tables took before the first write.
    Twice: with each key of the state a channel of its own (PostgresSaver writes a blob for
    the changed channel only), and with the state as one channel (a graph whose state is one
    dict or message list: PostgresSaver writes the whole value again)."""
    _saver_module()
    a_bytes, s_bytes = _storage(one_channel=False)
    a_one, s_one = _storage(one_channel=True)
    return [
        Figure(
            "postgres.storage.200_versions_1mb",
            a_bytes / 1e6,
            s_bytes / 1e6,
            "LangGraph PostgresSaver after the same 200 checkpoints, one channel per key (a blob for the changed channel only)",
            "MB",
            0.02,
        ),
        Figure(
            "postgres.storage.200_versions_1mb.one_channel",
            a_one / 1e6,
            s_one / 1e6,
            "LangGraph PostgresSaver after the same 200 checkpoints, the state as one channel (the whole value per checkpoint)",
            "MB",
            0.02,
        ),
    ]


# ---- stream lag across processes ------------------------------------------------------------


def _writer(dsn: str, schema: str, run_id: str, count: int, start: Any) -> None:
    from amsha_postgres.store import PostgresStore

    store = PostgresStore(dsn, schema=schema)
    start.wait()
    for i in range(count):
        store.append_events(run_id, [{"seq": i, "kind": "llm.token", "t": time.time()}])
        time.sleep(0.01)
    store.close()


def _percentiles(lags: list[float]) -> tuple[float, float]:
    ordered = sorted(lags)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@benchmark("postgres.tail.store_lag_p50", "postgres.tail.store_lag_p99")
def store_lag(settings: Settings) -> list[Figure]:
    """From an event's append in a writer process (stamped just before its transaction) to
    its arrival from ``wait_for_events`` in this process, woken by LISTEN/NOTIFY."""
    from amsha_postgres.store import PostgresStore

    dsn = _server().dsn()
    schema = f"lag_{uuid.uuid4().hex[:8]}"
    reader = PostgresStore(dsn, schema=schema)
    count = settings.pick(300, 100)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    proc = ctx.Process(target=_writer, args=(dsn, schema, "lag", count, start))
    proc.start()
    assert reader.wait_for_events("lag", 0, 0.01) == []  # listening before the writer starts
    start.set()
    lags: list[float] = []
    deadline = time.monotonic() + 120
    while len(lags) < count and time.monotonic() < deadline:
        for event in reader.wait_for_events("lag", len(lags), 5.0):
            lags.append((time.time() - event["t"]) * 1e3)
    proc.join(30)
    notified = reader._notify_ok
    reader.close()
    check(
        "postgres.tail.store.all",
        len(lags) == count and notified is True,
        f"{len(lags)} of {count} events, woken by NOTIFY: {notified}",
    )
    p50, p99 = _percentiles(lags)
    log(f"  store-level lag over {len(lags)} events: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return [
        Figure(
            "postgres.tail.store_lag_p50",
            p50,
            20.0,
            "the goal, 20 ms (no peer tails a run across processes)",
            "ms",
            1.0,
        ),
        Figure("postgres.tail.store_lag_p99", p99, None, "reported only", "ms", None),
    ]


def _session_config(dsn_env: str, schema: str, flush_s: float | None = None) -> dict[str, Any]:
    words = " ".join(f"w{i}" for i in range(300))
    return {
        **({"runs": {"event_flush_s": flush_s}} if flush_s is not None else {}),
        "provider": {
            "name": "scripted",
            "options": {"token_delay_s": 0.01, "responses": [{"match": "Write", "text": words}]},
        },
        "state": {"name": "postgres", "options": {"dsn_env": dsn_env, "schema": schema}},
        "agents": {"writer": {"role": "Writer", "goal": "Write"}},
        "tasks": {"write": {"description": "Write words.", "agent": "writer"}},
    }


def _session_lags(settings: Settings, flush_s: float | None) -> list[float]:
    from amsha import ExecutionSession, ExecutionState

    os.environ["AMSHA_BENCH_PG_DSN"] = _server().dsn()
    schema = f"slag_{uuid.uuid4().hex[:8]}"
    lags: list[float] = []
    ctx = multiprocessing.get_context("spawn")
    with (
        concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool,
        ExecutionSession(_session_config("AMSHA_BENCH_PG_DSN", schema, flush_s), executor=pool) as session,
    ):
        for _ in range(settings.pick(2, 1)):
            handle = session.run(["write"], mode="background", state=ExecutionState())
            for event in handle.stream():
                if event.kind == "llm.token":
                    lags.append((time.time() - event.ts) * 1e3)
            handle.result(timeout=120)
    check(
        f"postgres.tail.session.all{'' if flush_s is None else f'.flush_{flush_s:g}'}",
        len(lags) >= 300,
        f"{len(lags)} tokens streamed to the starting process",
    )
    return lags


@benchmark(
    "postgres.tail.session_lag_p50",
    "postgres.tail.session_lag_p99",
    "postgres.tail.session_lag_p50.flush_5ms",
)
def session_lag(settings: Settings) -> list[Figure]:
    """A run on a process pool worker (a token every 10 ms); from each token's emission in
    the worker (its event timestamp) to its arrival in the starting process's
    ``handle.stream()``. Includes the session's token batching: ``runs.event_flush_s`` at
    its default (20 ms), and at 5 ms (reported only)."""
    lags = _session_lags(settings, None)
    p50, p99 = _percentiles(lags)
    fast50, _ = _percentiles(_session_lags(settings, 0.005))
    log(
        f"  session-level lag over {len(lags)} tokens: p50 {p50:.2f} ms, p99 {p99:.2f} ms; event_flush_s 5 ms: p50 {fast50:.2f} ms"
    )
    goal = "the goal, 20 ms (no peer tails a run across processes)"
    return [
        Figure("postgres.tail.session_lag_p50", p50, 20.0, goal, "ms", 1.0),
        Figure("postgres.tail.session_lag_p99", p99, None, "reported only", "ms", None),
        Figure("postgres.tail.session_lag_p50.flush_5ms", fast50, 20.0, goal + "; runs.event_flush_s 5 ms", "ms", None),
    ]
