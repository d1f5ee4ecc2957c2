"""Figures of amsha-state-sqlite: put + get time and file size, against LangGraph's
SqliteSaver and against a bare ``sqlite3`` INSERT/SELECT of the JSON (the floor).

All three write to a real file in a temporary folder, in WAL mode with ``synchronous=NORMAL``
(the store's default; SqliteSaver's connection is given the same setting, so no side pays for
an fsync the others skip). Every figure is lower-is-better.

What each side's get does after its put: SqliteSaver's ``get_tuple`` and the floor's SELECT
read the row back and decode it. The amsha store runs one indexed SELECT of the latest
version's row and, since that is the version it just wrote, decodes the values it kept in
memory (its encoded JSON, so the caller gets new objects) instead of reading the row again;
a read of a version it does not hold (another process wrote it, or an older one) rebuilds it
from the file. That is the store's normal behaviour, not a bench setting. The amsha store
also checks every value for NaN and infinity (JSON has neither), which SqliteSaver's msgpack
does not need to.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import Figure, Settings, Skip, benchmark, check, log

KEYS_1MB = 100  # 100 keys of about 10 KB: a state of about 1 MB
VERSIONS = 200


def _saver_module() -> Any:
    try:
        from langgraph.checkpoint import base
        from langgraph.checkpoint.sqlite import SqliteSaver
    except ImportError as exc:  # the peer is a bench dependency, not a project one
        raise Skip(
            f"langgraph-checkpoint-sqlite is not installed ({exc}); pip install langgraph-checkpoint-sqlite"
        ) from None
    return SqliteSaver, base


def _state_1kb(tag: str) -> dict[str, Any]:
    """About 1 KB of JSON; every value carries ``tag``, so no two states share a value."""
    return {
        "topic": f"tide pools {tag}",
        "research": f"{tag}: anemones close when the tide goes out; hermit crabs swap shells. " * 3,
        "write": f"{tag}: a paragraph about rocky shores, " * 6,
        "scores": [len(tag) + i for i in range(20)],
        "meta": {"step": tag, "done": False, "agents": ["researcher", "writer"]},
    }


def _value_10kb(tag: str, i: int) -> list[Any]:
    return [{"role": "assistant", "content": f"{tag}/{i}: " + "kelp forest notes " * 8, "n": j} for j in range(60)]


def _state_1mb(tag: str) -> dict[str, Any]:
    """About 1 MB of JSON in KEYS_1MB keys; every value carries ``tag``."""
    return {f"k{i:03d}": _value_10kb(tag, i) for i in range(KEYS_1MB)}


def _size(state: dict[str, Any]) -> int:
    return len(json.dumps(state, separators=(",", ":")).encode())


# ---- the three sides ----------------------------------------------------------------------


class _Amsha:
    name = "amsha sqlite"

    def __init__(self, folder: Path) -> None:
        from amsha_sqlite.store import SqliteStore

        self.store = SqliteStore(folder / "amsha.db")
        self.version = 0

    def put_get(self, state: dict[str, Any]) -> dict[str, Any]:
        self.version = self.store.put_state("s", state, expected_version=self.version)
        return self.store.get_state("s").data

    def close(self) -> None:
        self.store.close()


class _Saver:
    name = "LangGraph SqliteSaver"

    def __init__(self, folder: Path) -> None:
        SqliteSaver, self.base = _saver_module()
        self.conn = sqlite3.connect(folder / "saver.db", check_same_thread=False)
        self.saver = SqliteSaver(self.conn)
        self.saver.setup()
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}

    def put_get(self, state: dict[str, Any]) -> dict[str, Any]:
        checkpoint = self.base.empty_checkpoint()
        checkpoint["channel_values"] = state
        self.config = self.saver.put(self.config, checkpoint, {"step": 0}, {})
        got = self.saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})
        return got.checkpoint["channel_values"]

    def close(self) -> None:
        self.conn.close()


class _Floor:
    name = "bare sqlite3 INSERT/SELECT of the JSON"

    def __init__(self, folder: Path) -> None:
        self.conn = sqlite3.connect(folder / "floor.db", isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("CREATE TABLE s (id TEXT, version INTEGER, data TEXT, PRIMARY KEY (id, version))")
        self.version = 0

    def put_get(self, state: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.conn.execute("INSERT INTO s VALUES ('s', ?, ?)", (self.version, json.dumps(state, ensure_ascii=False)))
        row = self.conn.execute("SELECT data FROM s WHERE id = 's' ORDER BY version DESC LIMIT 1").fetchone()
        return json.loads(row[0])

    def close(self) -> None:
        self.conn.close()


def _file_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


# ---- put + get ----------------------------------------------------------------------------


def _put_get(settings: Settings, label: str, make: Callable[[str], dict[str, Any]], per_round: int) -> list[Figure]:
    folder = Path(tempfile.mkdtemp(prefix="amsha-bench-sqlite-"))
    sides = [_Amsha(folder), _Saver(folder), _Floor(folder)]
    rounds = settings.pick(9, 3)
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    try:
        for r in range(-1, rounds):  # round -1 warms every side up and is not counted
            # Fresh states each round, built before timing: no value is ever written twice.
            states = [make(f"r{r}-{i}") for i in range(per_round)]
            order = sides if r % 2 == 0 else sides[::-1]  # alternate who goes first
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
        shutil.rmtree(folder, ignore_errors=True)
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
            f"sqlite.put_get.{label}",
            amsha * scale,
            saver * scale,
            f"LangGraph SqliteSaver put() + get_tuple() of the same {label} state",
            unit,
            1.0,
        ),
        Figure(
            f"sqlite.put_get.{label}.floor",
            amsha * scale,
            floor * scale,
            f"bare sqlite3 INSERT + SELECT of the {label} state's JSON (json.dumps/loads)",
            unit,
            2.0,
        ),
    ]


@benchmark("sqlite.put_get.1kb", "sqlite.put_get.1kb.floor")
def put_get_1kb(settings: Settings) -> list[Figure]:
    """Put a new version of a 1 KB state, then get the latest version back, per operation
    pair. Every value of every state is new (no side can skip a write)."""
    _saver_module()
    return _put_get(settings, "1kb", _state_1kb, settings.pick(400, 150))


@benchmark("sqlite.put_get.1mb", "sqlite.put_get.1mb.floor")
def put_get_1mb(settings: Settings) -> list[Figure]:
    """The same with a 1 MB state (100 keys of 10 KB), every value new in every version: the
    worst case for the sqlite store, which stores by change (each version is a whole
    snapshot here)."""
    _saver_module()
    return _put_get(settings, "1mb", _state_1mb, settings.pick(12, 6))


# ---- file size ----------------------------------------------------------------------------


@benchmark("sqlite.file_size.200_versions_1mb")
def file_size(settings: Settings) -> list[Figure]:
    """The file after 200 versions of a 1 MB state in which one key (of 100) changes each
    time, written through each side's put; measured after closing (WAL checkpointed)."""
    _saver_module()
    folder = Path(tempfile.mkdtemp(prefix="amsha-bench-sqlite-size-"))
    try:
        amsha, saver = _Amsha(folder), _Saver(folder)
        state = _state_1mb("base")
        t_amsha = t_saver = 0.0
        for v in range(VERSIONS):
            state = dict(state)
            state[f"k{v % KEYS_1MB:03d}"] = _value_10kb(f"v{v}", v)
            t0 = time.perf_counter()
            amsha.store.put_state("s", state, expected_version=v)
            t1 = time.perf_counter()
            checkpoint = saver.base.empty_checkpoint()
            checkpoint["channel_values"] = state
            saver.config = saver.saver.put(saver.config, checkpoint, {"step": v}, {})
            t_amsha, t_saver = t_amsha + t1 - t0, t_saver + time.perf_counter() - t1
        check(
            "sqlite.file_size.readback",
            amsha.store.get_state("s").data == state
            and saver.put_get(state) == state
            and amsha.store.get_state("s", 1).data["k000"] == _value_10kb("v0", 0),
            "the last and the first of the 200 versions read back from the amsha store",
        )
        amsha.close()
        saver.close()
        a_bytes = _file_bytes(folder / "amsha.db")
        s_bytes = _file_bytes(folder / "saver.db")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    log(
        f"  state {_size(state) / 1e6:.2f} MB, {VERSIONS} versions: amsha {a_bytes / 1e6:.2f} MB "
        f"(written in {t_amsha:.1f} s), SqliteSaver {s_bytes / 1e6:.1f} MB (written in {t_saver:.1f} s)"
    )
    return [
        Figure(
            "sqlite.file_size.200_versions_1mb",
            a_bytes / 1e6,
            s_bytes / 1e6,
            "LangGraph SqliteSaver file after the same 200 checkpoints",
            "MB",
            0.05,
        )
    ]
