"""The checkpointer over Amsha state stores, and interrupt/resume across processes."""

from __future__ import annotations

import json
import operator
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from amsha.builtins.stores import FileStore, MemoryStore
from amsha.errors import StateError
from amsha_langgraph import AmshaCheckpointSaver, JsonCheckpointSerializer
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.types import Interrupt, Send

HERE = Path(__file__).parent


class Counter(TypedDict):
    n: Annotated[int, operator.add]


WORKER = """
import json, sys
sys.path.insert(0, {here!r})
from lg_config import config
from amsha import ExecutionSession
cfg = config({{"name": "langgraph", "options": {{"graph": "graphs:draft_review"}}}}, state={store})
with ExecutionSession(cfg) as session:
    if sys.argv[1] == "start":
        result = session.run(inputs={{"topic": "kelp"}}).result(timeout=30)
    else:
        result = session.run(inputs={{"resume": sys.argv[2]}}, state=sys.argv[1]).result(timeout=30)
    print(json.dumps({{"state_id": result.state.state_id, "state": result.state.to_dict(), "outputs": result.outputs}}))
"""


def _worker(store: dict[str, Any], *args: str) -> dict[str, Any]:
    code = WORKER.format(here=str(HERE), store=store)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stores(tmp_path: Path) -> list[dict[str, Any]]:
    stores = [{"name": "file", "options": {"path": str(tmp_path / "file-store")}}]
    try:
        from amsha import load_plugins

        if any(("state_store", "sqlite") in p.registers for p in load_plugins(refresh=True).plugins):
            stores.append({"name": "sqlite", "options": {"path": str(tmp_path / "amsha.db")}})
    except Exception:
        pass
    return stores


def test_interrupt_in_one_process_resume_in_another(tmp_path: Path) -> None:
    tested = []
    for store in _stores(tmp_path):
        first = _worker(store, "start")
        assert first["state"]["__interrupt__"][0]["value"]["draft"] == "kelp grows fast"
        assert "final" not in first["outputs"]
        second = _worker(store, first["state_id"], "approved")
        assert "__interrupt__" not in second["state"], store
        assert second["state"]["review"] == {"approvals": ["approved"]}
        assert second["outputs"]["final"]["messages"][0]["content"] == "Kelp grows remarkably fast."
        # The draft node did not run again: its output came from the checkpoint.
        assert "draft" not in second["outputs"]
        tested.append(store["name"])
    print("stores tested:", tested)


@pytest.mark.parametrize("store_kind", ["memory", "file"])
def test_saver_round_trip_history_and_delete(tmp_path: Path, store_kind: str) -> None:
    graph = StateGraph(Counter)
    graph.add_node("inc", lambda s: {"n": 1})
    graph.add_edge(START, "inc")
    graph.add_edge("inc", END)
    store = MemoryStore() if store_kind == "memory" else FileStore(tmp_path / "s")
    saver = AmshaCheckpointSaver(store)
    app = graph.compile(checkpointer=saver)
    cfg = {"configurable": {"thread_id": "t/1.x"}}
    assert app.invoke({"n": 0}, cfg) == {"n": 1}
    assert app.invoke({"n": 0}, cfg) == {"n": 2}  # the thread continues from its checkpoint
    history = list(app.get_state_history(cfg))
    assert [h.values["n"] for h in history][:2] == [2, 1]
    older = history[2].config
    assert saver.get_tuple(older).config["configurable"]["checkpoint_id"] == older["configurable"]["checkpoint_id"]
    assert len(list(saver.list(cfg, limit=2))) == 2
    inputs = list(saver.list(cfg, filter={"source": "input"}))
    assert len(inputs) == 2 and {t.metadata["source"] for t in inputs} == {"input"}
    assert inputs[0].checkpoint["id"] > inputs[1].checkpoint["id"]  # newest first
    saver.delete_thread("t/1.x")
    assert saver.get_tuple(cfg) is None
    assert app.invoke({"n": 5}, cfg) == {"n": 6}


def test_json_serializer_round_trips_and_refuses_unknown_types() -> None:
    serde = JsonCheckpointSerializer()
    value = {
        "messages": [HumanMessage("hi"), AIMessage("yo", tool_calls=[{"name": "t", "args": {"a": 1}, "id": "c1"}])],
        "tuple": (1, "a"),
        "set": {3},
        "bytes": b"\x00\x01",
        "send": Send("node", {"x": 1}),
        "interrupt": Interrupt(value={"q": 1}, id="i1"),
        1: "int key",
        "__lg__": "a user key that looks like a tag",
    }
    kind, blob = serde.dumps_typed(value)
    assert kind == "json" and b"pickle" not in blob
    back = serde.loads_typed((kind, blob))
    assert back["messages"][1].tool_calls[0]["args"] == {"a": 1}
    assert back["tuple"] == (1, "a") and back["set"] == {3} and back["bytes"] == b"\x00\x01"
    assert back["send"] == Send("node", {"x": 1})
    assert back["interrupt"].id == "i1" and back["interrupt"].value == {"q": 1}
    assert back[1] == "int key" and back["__lg__"] == value["__lg__"]
    with pytest.raises(StateError, match="object"):
        serde.dumps_typed(object())
    from amsha import Usage  # a dataclass: stored, but revived only when allowed

    stored = serde.dumps_typed(Usage(1, 2, 3))
    with pytest.raises(StateError, match="checkpoint_types"):
        serde.loads_typed(stored)
    assert JsonCheckpointSerializer(["amsha.provider:Usage"]).loads_typed(stored) == Usage(1, 2, 3)
