"""The checkpointer against LangGraph's own: its conformance suite, and side by side with
``InMemorySaver`` and ``SqliteSaver`` on the same operations (namespaces, order, a checkpoint id put twice)."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from amsha import StateStore
from amsha.builtins.stores import FileStore, MemoryStore
from amsha_langgraph import AmshaCheckpointSaver
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import BASE_CAPABILITIES
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph


def _sqlite_store(tmp: Path) -> StateStore:
    try:
        from amsha_sqlite.store import SqliteStore
    except ImportError:
        pytest.skip("amsha-state-sqlite is not installed in this environment: the sqlite store is not tested here")
    return SqliteStore(tmp / "amsha.db")


STORES: dict[str, Callable[[Path], StateStore]] = {
    "memory": lambda tmp: MemoryStore(),
    "file": lambda tmp: FileStore(tmp / "file-store"),
    "sqlite": _sqlite_store,
}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    return STORES[request.param](tmp_path)


def test_langgraph_conformance_suite(store: StateStore) -> None:
    """LangGraph's ``langgraph-checkpoint-conformance``: every base capability detected,
    every one of its checks passed."""

    @checkpointer_test(name=f"amsha-{type(store).__name__}")
    async def saver() -> AsyncIterator[AmshaCheckpointSaver]:
        yield AmshaCheckpointSaver(store)

    report = asyncio.run(validate(saver))
    ran = {name: r for name, r in report.results.items() if r.detected}
    assert {c.value for c in BASE_CAPABILITIES} <= set(ran), report.results
    failures = {name: r.failures for name, r in ran.items() if not r.passed}
    assert not failures, failures
    passed = sum(r.tests_passed for r in ran.values())
    assert passed >= 58, report.results
    print(f"conformance on {type(store).__name__}: {passed} checks passed in {sorted(ran)}")


def _cfg(thread: str, ns: str | None = None, checkpoint_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread}
    if ns is not None:
        conf["checkpoint_ns"] = ns
    if checkpoint_id is not None:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


def _scripted(saver: BaseCheckpointSaver[Any], ids: list[str]) -> None:
    """The same puts for every saver: three namespaces, ids put out of order, one id put
    twice (the second put carries other metadata), pending writes on one checkpoint."""
    puts = [
        ("", ids[0], "input", 0),
        ("", ids[2], "loop", 1),
        ("child:1", ids[1], "loop", 0),
        ("", ids[3], "loop", 2),
        ("child:2", ids[4], "input", 0),
        ("", ids[2], "update", 7),  # the same id again: replaces the first
    ]
    for ns, checkpoint_id, source, step in puts:
        version = saver.get_next_version(None, None)
        checkpoint = generate_checkpoint(
            checkpoint_id=checkpoint_id, channel_values={"n": step}, channel_versions={"n": version}
        )
        saver.put(_cfg("t", ns), checkpoint, generate_metadata(source=source, step=step), {"n": version})
    saver.put_writes(_cfg("t", "", ids[3]), [("n", 1), ("m", "x")], "task-1")
    saver.put(_cfg("other", ""), generate_checkpoint(), generate_metadata(), {})


def _view(saver: BaseCheckpointSaver[Any], config: dict[str, Any], **kw: Any) -> list[tuple[Any, ...]]:
    return [
        (
            t.config["configurable"]["checkpoint_ns"],
            t.checkpoint["id"],
            t.checkpoint["channel_values"],
            t.metadata.get("source"),
            t.metadata.get("step"),
            [(w[0], w[1], w[2]) for w in t.pending_writes or []],
        )
        for t in saver.list(config, **kw)
    ]


def test_answers_as_langgraph_savers(store: StateStore) -> None:
    import sqlite3

    from langgraph.checkpoint.base.id import uuid6
    from langgraph.checkpoint.sqlite import SqliteSaver

    ids = [str(uuid6(clock_seq=-1)) for _ in range(5)]
    ours, memory = AmshaCheckpointSaver(store), InMemorySaver()
    sqlite_saver = SqliteSaver(sqlite3.connect(":memory:", check_same_thread=False))
    for saver in (ours, memory, sqlite_saver):
        _scripted(saver, ids)
    queries: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (_cfg("t"), {}),  # no checkpoint_ns: every namespace of the thread
        (_cfg("t", ""), {}),
        (_cfg("t", "child:1"), {}),
        (_cfg("t"), {"limit": 2}),
        (_cfg("t"), {"before": _cfg("t", "", ids[3])}),
        (_cfg("t"), {"filter": {"source": "input"}}),
        (_cfg("t", ""), {"filter": {"source": "update"}}),
        (_cfg("t", "", ids[2]), {}),
        (_cfg("nobody"), {}),
    ]
    for config, kw in queries:
        got = _view(ours, config, **kw)
        assert got == _view(sqlite_saver, config, **kw), (config, kw)
        expected = _view(memory, config, **kw)
        if "checkpoint_ns" not in config["configurable"]:
            if kw.get("limit"):
                continue  # InMemorySaver applies a limit namespace by namespace
            # InMemorySaver goes namespace by namespace; SqliteSaver (and this saver) sort
            # all of the thread's checkpoints by id. The same entries either way.
            expected.sort(key=lambda row: row[1], reverse=True)
        assert got == expected, (config, kw)
    everything = _view(ours, _cfg("t"))
    assert [row[1] for row in everything] == sorted(ids, reverse=True)  # newest id first, across namespaces
    assert len(everything) == 5  # the id put twice is one entry: the last one put
    assert next(r for r in everything if r[1] == ids[2])[3:5] == ("update", 7)
    assert ours.get_tuple(_cfg("t", "", ids[2])).metadata["source"] == "update"  # type: ignore[union-attr]
    ours.delete_thread("t")
    assert _view(ours, _cfg("t")) == [] and len(_view(ours, _cfg("other"))) == 1


class _Inner(TypedDict):
    n: Annotated[int, operator.add]


def _graph_with_subgraph() -> Any:
    inner = StateGraph(_Inner)
    inner.add_node("step", lambda s: {"n": 1})
    inner.add_edge(START, "step")
    inner.add_edge("step", END)
    sub = inner.compile(checkpointer=True)  # the subgraph keeps checkpoints of its own namespace
    outer = StateGraph(_Inner)
    outer.add_node("sub", sub)
    outer.add_node("after", lambda s: {"n": 10})
    outer.add_edge(START, "sub")
    outer.add_edge("sub", "after")
    outer.add_edge("after", END)
    return outer


def test_real_graph_with_a_subgraph_lists_as_langgraph_savers(store: StateStore) -> None:
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    shapes = []
    sqlite_saver = SqliteSaver(sqlite3.connect(":memory:", check_same_thread=False))
    for saver in (AmshaCheckpointSaver(store), sqlite_saver, InMemorySaver()):
        app = _graph_with_subgraph().compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "g"}}
        assert app.invoke({"n": 0}, config) == {"n": 11}
        listed = list(saver.list(config))
        namespaces = sorted({t.config["configurable"]["checkpoint_ns"].split(":")[0] for t in listed})
        ids = [t.checkpoint["id"] for t in listed]
        if not isinstance(saver, InMemorySaver):
            assert ids == sorted(ids, reverse=True)  # newest first across namespaces, as SqliteSaver
        shapes.append((len(listed), namespaces, len(list(saver.list(_cfg("g", ""))))))
    assert shapes[0] == shapes[1] == shapes[2]
    assert shapes[0][1] == ["", "sub"], shapes  # the subgraph's namespace is listed too
