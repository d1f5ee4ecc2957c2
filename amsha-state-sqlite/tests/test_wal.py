"""The WAL stays bounded under sustained writes from several processes (the checkpoint
policy, ``wal_limit_mb``); without it SQLite's passive automatic checkpoint never catches up."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

from amsha_sqlite.store import SqliteStore

LIMIT_MB = 1.0


def _write(path: str, i: int, seconds: float, limit_mb: float) -> None:
    store = SqliteStore(path, wal_limit_mb=limit_mb)
    end = time.monotonic() + seconds
    version = n = 0
    while time.monotonic() < end:
        version = store.put_state(f"s{i}", {"blob": os.urandom(2000).hex(), "n": n}, expected_version=version)
        store.append_events(
            f"r{i}", [{"seq": n * 4 + k, "kind": "llm.token", "data": {"text": "x" * 200}} for k in range(4)]
        )
        n += 1
    store.close()


def _peak_wal(path: Path, limit_mb: float, seconds: float = 1.5) -> float:
    SqliteStore(path).close()
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_write, args=(str(path), i, seconds, limit_mb)) for i in range(3)]
    for proc in writers:
        proc.start()
    reader = SqliteStore(path)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            reader.read_events("r0", 0)[-1:]

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    peak = 0
    wal = Path(f"{path}-wal")
    while any(p.is_alive() for p in writers):
        if wal.exists():
            peak = max(peak, wal.stat().st_size)
        time.sleep(0.01)
    stop.set()
    thread.join(5)
    reader.close()
    assert all(p.exitcode == 0 for p in writers)
    return peak / 1e6


def test_the_wal_is_kept_under_its_limit_by_the_writers(tmp_path: Path) -> None:
    peak = _peak_wal(tmp_path / "bounded.db", LIMIT_MB)
    # The limit, plus what one connection writes between two looks at the WAL's size.
    assert peak < LIMIT_MB * 4, peak


def test_wal_limit_is_an_option_and_survives_pickling(tmp_path: Path) -> None:
    import pickle

    from amsha import ExecutionSession

    config = {"state": {"name": "sqlite", "options": {"path": str(tmp_path / "o.db"), "wal_limit_mb": 8}}}
    with ExecutionSession(config) as session:
        store = session.store.inner
        assert store.wal_limit_bytes == 8_000_000
        assert pickle.loads(pickle.dumps(store)).wal_limit_bytes == 8_000_000
