"""ExecutionState and the built-in stores: JSON only, versions, conflicts, round trips."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amsha import ExecutionState
from amsha.builtins.stores import FileStore, MemoryStore
from amsha.errors import (
    NonJSONValueError,
    SchemaVersionError,
    StateError,
    StateNotFoundError,
    VersionConflictError,
)
from amsha.state import RunRecord

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return MemoryStore() if request.param == "memory" else FileStore(tmp_path / "store")


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({1, 2}, "k"),
        (object(), "k"),
        ({"inner": b"bytes"}, "k.inner"),
        ([1, [2, {"x": float("nan")}]], "k[1][1].x"),
        ({"a": {3: "int key"}}, "k.a.3"),
    ],
)
def test_non_json_values_are_rejected_naming_the_key(value: Any, key: str) -> None:
    state = ExecutionState()
    with pytest.raises(NonJSONValueError) as info:
        state["k"] = value
    assert repr(key.rsplit(".", maxsplit=1)[-1]) in str(info.value) or key in str(info.value)
    assert "k" not in state


def test_update_is_all_or_nothing() -> None:
    state = ExecutionState({"a": 1})
    with pytest.raises(NonJSONValueError, match="'bad'"):
        state.update({"b": 2, "bad": {1, 2}})
    assert state.to_dict() == {"a": 1}


def test_values_are_copied_in_and_out() -> None:
    payload = {"list": [1, 2]}
    state = ExecutionState({"p": payload})
    payload["list"].append(3)
    assert state["p"] == {"list": [1, 2]}
    got = state.get("p")
    got["list"].append(4)
    assert state["p"] == {"list": [1, 2]}


def test_save_load_round_trip_and_schema() -> None:
    state = ExecutionState({"text": "héllo ✓", "n": [1, 2.5, None, True]}, state_id="s1", version=3)
    loaded = ExecutionState.load(state.save())
    assert loaded.to_dict() == state.to_dict()
    assert (loaded.state_id, loaded.version) == ("s1", 3)
    doc = json.loads(state.save())
    doc["schema"] = 99
    with pytest.raises(SchemaVersionError, match="99"):
        ExecutionState.load(json.dumps(doc))
    with pytest.raises(StateError, match="not JSON"):
        ExecutionState.load("{nope")


@settings(max_examples=60, deadline=None)
@given(data=st.dictionaries(st.text(), json_values, max_size=5))
def test_any_json_round_trips_through_every_version(data: dict[str, Any]) -> None:
    store = MemoryStore()
    state = ExecutionState()
    versions = []
    for key, value in data.items():
        state[key] = value
        state.commit(store)
        versions.append((state.version, state.to_dict()))
    for version, expected in versions:
        assert store.get_state(state.state_id, version).data == expected
    assert ExecutionState.load(state.save()).to_dict() == data


def test_versions_and_conflicts(store: Any) -> None:
    assert store.put_state("s", {"a": 1}, expected_version=0) == 1
    assert store.put_state("s", {"a": 2}, expected_version=1) == 2
    with pytest.raises(VersionConflictError) as info:
        store.put_state("s", {"a": 3}, expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert "expected version 1" in str(info.value) and "version 2" in str(info.value)
    assert store.get_state("s").data == {"a": 2}
    assert store.get_state("s", 1).data == {"a": 1}
    assert [v.version for v in store.list_versions("s")] == [1, 2]
    with pytest.raises(StateNotFoundError):
        store.get_state("s", 7)
    with pytest.raises(StateNotFoundError):
        store.get_state("other")


def test_two_copies_of_one_version_cannot_both_commit(store: Any) -> None:
    original = ExecutionState({"x": 0})
    original.commit(store)
    a = ExecutionState.from_store(store, original.state_id)
    b = ExecutionState.from_store(store, original.state_id)
    a["x"] = 1
    b["x"] = 2
    a.commit(store)
    with pytest.raises(VersionConflictError):
        b.commit(store)
    assert store.get_state(original.state_id).data == {"x": 1}


def test_run_records_and_events(store: Any) -> None:
    store.put_run(RunRecord("r1", tasks=["t"]))
    store.put_run(RunRecord("r2", status="SUCCEEDED", created_at=2e9))
    assert store.get_run("r1").tasks == ["t"]
    assert [r.run_id for r in store.list_runs()] == ["r2", "r1"]
    store.append_events("r1", [{"seq": 0, "kind": "a"}, {"seq": 1, "kind": "b"}])
    store.append_events("r1", [{"seq": 2, "kind": "c"}])
    assert [e["kind"] for e in store.read_events("r1")] == ["a", "b", "c"]
    assert [e["seq"] for e in store.read_events("r1", 1)] == [1, 2]
    store.put_state("s", {"a": 1}, expected_version=0, run_id="r1")
    store.delete_run("r1")
    assert store.read_events("r1") == []
    with pytest.raises(KeyError):
        store.get_run("r1")


def _commit_many(root: str, worker: int, results: Any) -> None:
    store = FileStore(root)
    won = lost = 0
    for _ in range(20):
        while True:
            snap = store.get_state("shared")
            data = dict(snap.data)
            data[f"w{worker}"] = data.get(f"w{worker}", 0) + 1
            try:
                store.put_state("shared", data, expected_version=snap.version)
                won += 1
                break
            except VersionConflictError:
                lost += 1
    results.put((worker, won, lost))


def test_file_store_optimistic_concurrency_across_processes(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    FileStore(root).put_state("shared", {}, expected_version=0)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_commit_many, args=(root, i, results)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcome = [results.get(timeout=5) for _ in procs]
    final = FileStore(root).get_state("shared")
    # Every increment landed exactly once: no write was lost to a race.
    assert final.data == {"w0": 20, "w1": 20, "w2": 20}
    assert final.version == 61
    assert all(won == 20 for _, won, _ in outcome)
