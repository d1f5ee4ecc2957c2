"""Property-based: any sequence of JSON states round-trips through every version, exactly
(types, nesting and key order), also after the versions of another run are deleted."""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from amsha import delta
from amsha_sqlite.store import SqliteStore
from hypothesis import given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
# Few key names, so that successive versions keep, change, drop, re-add and reorder keys.
states = st.dictionaries(st.sampled_from(["a", "b", "c", "d", "é", "🔑"]), json_values, max_size=6)
history = st.lists(st.tuples(states, st.sampled_from(["r0", "r1", "r2"])), min_size=1, max_size=8)

_ids = itertools.count()


def exact(value: Any) -> str:
    """A form in which 1, 1.0 and True differ, and key order matters."""
    return json.dumps(value, ensure_ascii=False)


@pytest.fixture(scope="module")
def store() -> Iterator[SqliteStore]:
    with tempfile.TemporaryDirectory() as folder:
        s = SqliteStore(Path(folder) / "prop.db")
        yield s
        s.close()


def check_history(store: SqliteStore, versions: list[tuple[dict[str, Any], str]]) -> tuple[str, list]:
    """Write ``versions``, read each back, delete run r1's, read the rest back; returns the
    state id and the kept (version, data) pairs."""
    state_id = f"s{next(_ids)}"
    for i, (data, run) in enumerate(versions):
        assert store.put_state(state_id, data, expected_version=i, run_id=f"{state_id}-{run}") == i + 1
    for i, (data, _run) in enumerate(versions, start=1):
        assert exact(store.get_state(state_id, i).data) == exact(data), f"version {i}"
    store.delete_run(f"{state_id}-r1")
    kept = [(i, data) for i, (data, run) in enumerate(versions, start=1) if run != "r1"]
    assert [v.version for v in store.list_versions(state_id)] == [i for i, _ in kept]
    for i, data in kept:
        assert exact(store.get_state(state_id, i).data) == exact(data), f"version {i} after delete_run"
    return state_id, kept


@settings(max_examples=120, deadline=None)
@given(versions=history)
def test_every_version_round_trips(store: SqliteStore, versions: list[tuple[dict[str, Any], str]]) -> None:
    check_history(store, versions)


@contextmanager
def deltas_only(depth: int) -> Iterator[None]:
    """Store every version as a delta on the one before, with a snapshot every ``depth + 1``
    versions, so the delta rows (removals, orders, chains) and their rewriting are exercised
    on states of any size."""
    saved = delta.MAX_DEPTH, delta._DELTA_SHARE, delta._CHAIN_SHARE
    delta.MAX_DEPTH, delta._DELTA_SHARE, delta._CHAIN_SHARE = depth, 1e18, 1e18
    try:
        yield
    finally:
        delta.MAX_DEPTH, delta._DELTA_SHARE, delta._CHAIN_SHARE = saved


@settings(max_examples=120, deadline=None)
@given(versions=history, depth=st.integers(min_value=1, max_value=4))
def test_every_version_round_trips_through_delta_chains(
    store: SqliteStore, versions: list[tuple[dict[str, Any], str]], depth: int
) -> None:
    with deltas_only(depth):
        state_id, kept = check_history(store, versions)
        # A fresh instance holds nothing in memory: everything is read from the file.
        fresh = SqliteStore(store.path)
        for i, data in kept:
            assert exact(fresh.get_state(state_id, i).data) == exact(data), f"version {i}, fresh store"
        if kept:
            latest = kept[-1][0]
            assert fresh.put_state(state_id, {"after": True}, expected_version=latest) == latest + 1
            assert fresh.get_state(state_id, latest).data == kept[-1][1]
        fresh.close()
