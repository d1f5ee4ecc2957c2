"""``list_runs_page`` (the optional RunPageStore capability) on the built-in stores, and
``page_of_runs``, the fallback over ``list_runs`` for stores without it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from amsha.builtins.stores import FileStore, MemoryStore
from amsha.errors import StateError
from amsha.state import RunOwner, RunPageStore, RunRecord, page_of_runs, supports_run_control

STATUSES = ["SUCCEEDED", "FAILED", "CANCELLED", "RUNNING", "PENDING"]


def fill(store: Any, n: int = 120) -> list[RunRecord]:
    now = time.time()
    records = []
    for i in range(n):
        record = RunRecord(
            run_id=f"run-{i:04d}",
            status=STATUSES[i % len(STATUSES)],
            tasks=["research", "write" if i % 3 else "<script>alert(1)</script>"],
            inputs={"topic": f"Topic {i}"},
            created_at=now - i // 2,  # pairs share a created_at: the tie break matters
            error={"type": "ServerError", "message": f"boom {i}"} if i % 5 == 1 else None,
        )
        store.put_run(record)
        records.append(record)
    return records


def walk(store: Any, size: int, **filters: Any) -> list[str]:
    seen: list[str] = []
    before = None
    for _ in range(1000):
        page = store.list_runs_page(size, before=before, **filters)
        assert len(page.runs) <= size
        seen += [r.run_id for r in page.runs]
        if page.next_before is None:
            return seen
        assert len(page.runs) == size  # a page with a next page is full
        before = page.next_before
    raise AssertionError("the pages never ended")


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return MemoryStore() if request.param == "memory" else FileStore(tmp_path / "store")


def test_the_builtin_stores_have_the_capability(store: Any) -> None:
    assert isinstance(store, RunPageStore)


@pytest.mark.parametrize("size", [1, 7, 50, 500])
def test_pages_cover_every_run_once_newest_first(store: Any, size: int) -> None:
    fill(store)
    ids = walk(store, size)
    assert len(ids) == 120 and len(set(ids)) == 120
    created = {r.run_id: r.created_at for r in store.list_runs(1000)}
    assert [created[i] for i in ids] == sorted(created.values(), reverse=True)


def test_filters_by_status_and_text(store: Any) -> None:
    records = fill(store)
    assert walk(store, 9, status="FAILED") == [
        r.run_id
        for r in sorted(
            (r for r in records if r.status == "FAILED"), key=lambda r: (r.created_at, r.run_id), reverse=True
        )
    ]
    hostile = walk(store, 9, text="<SCRIPT>")  # case-insensitive, and a task name is searched
    assert sorted(hostile) == sorted(r.run_id for r in records if "write" not in r.tasks)
    assert sorted(walk(store, 9, text="boom 11")) == ["run-0011", "run-0111", "run-0116"]  # error messages
    assert sorted(walk(store, 9, text="topic 10")) == sorted(["run-0010", *[f"run-{i:04d}" for i in range(100, 110)]])
    assert walk(store, 9, text="nothing like this") == []
    both = walk(store, 4, status="CANCELLED", text="topic 1")
    assert both and all(
        store.get_run(i).status == "CANCELLED" and "Topic 1" in store.get_run(i).inputs["topic"] for i in both
    )


def test_a_run_whose_lease_expired_is_listed_lost(store: Any) -> None:
    fill(store, 10)
    record = RunRecord(run_id="run-lost", status="RUNNING", created_at=time.time() + 10)
    if supports_run_control(store):
        store.claim_run(record, RunOwner.here(), 0.01)
        time.sleep(0.05)
    else:
        record.lease_expires_at = time.time() - 1
        store.put_run(record)
    first = store.list_runs_page(3).runs[0]
    assert first.run_id == "run-lost" and first.status == "LOST"
    assert walk(store, 3, status="LOST") == ["run-lost"]
    assert "run-lost" not in walk(store, 3, status="RUNNING")


def test_a_bad_cursor_or_limit_is_a_typed_error(store: Any) -> None:
    fill(store, 3)
    with pytest.raises(StateError, match="cursor"):
        store.list_runs_page(5, before="not-a-cursor")
    with pytest.raises(StateError, match="limit"):
        store.list_runs_page(0)


def test_page_of_runs_is_the_fallback_over_list_runs(store: Any) -> None:
    fill(store)
    everything = store.list_runs(10_000)
    before, ids = None, []
    while True:
        page = page_of_runs(everything, 11, before=before, text="topic")
        ids += [r.run_id for r in page.runs]
        if page.next_before is None:
            break
        before = page.next_before
    assert sorted(ids) == sorted(r.run_id for r in everything)


def test_the_file_store_rereads_only_changed_records(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    fill(store, 20)
    first = store.list_runs_page(5).runs[0]
    assert first.status != "CANCELLED"
    first.status = "CANCELLED"
    store.put_run(first)  # a new record file: its stamp differs
    assert store.list_runs_page(5).runs[0].status == "CANCELLED"
    store.delete_run(first.run_id)
    assert first.run_id not in walk(store, 50)
