"""``SqliteStore.list_runs_page``: the same pages as the fallback over every record, with
the status and text filters done in SQL where they can be."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from amsha.errors import StateError
from amsha.state import RunOwner, RunPageStore, RunRecord, page_of_runs, supports_run_control
from amsha_sqlite.store import SqliteStore

STATUSES = ["SUCCEEDED", "FAILED", "CANCELLED", "RUNNING", "PENDING"]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SqliteStore(tmp_path / "runs.db")
    now = time.time()
    for i in range(150):
        s.put_run(
            RunRecord(
                run_id=f"run-{i:04d}",
                status=STATUSES[i % 5],
                tasks=["research", "write" if i % 3 else 'Ünïcode "quoted" \\ task'],
                inputs={"topic": f"Topic {i}"},
                created_at=now - i // 3,
                error={"type": "ServerError", "message": f"boom {i}"} if i % 5 == 1 else None,
            )
        )
    yield s
    s.close()


def walk(store: Any, size: int, **filters: Any) -> list[str]:
    ids: list[str] = []
    before = None
    while True:
        page = store.list_runs_page(size, before=before, **filters)
        assert len(page.runs) <= size
        ids += [r.run_id for r in page.runs]
        if page.next_before is None:
            return ids
        assert len(page.runs) == size
        before = page.next_before


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"status": "FAILED"},
        {"text": "topic 1"},
        {"text": "ünïcode"},
        {"text": '"quoted" \\'},
        {"text": "BOOM 2", "status": "FAILED"},
    ],
)
@pytest.mark.parametrize("size", [1, 8, 64, 1000])
def test_pages_match_the_fallback(store: Any, filters: dict[str, Any], size: int) -> None:
    assert isinstance(store, RunPageStore)
    everything = store.list_runs(10_000)
    expected: list[str] = []
    before = None
    while True:
        page = page_of_runs(everything, 1000, before=before, **filters)
        expected += [r.run_id for r in page.runs]
        if page.next_before is None:
            break
        before = page.next_before
    got = walk(store, size, **filters)
    assert sorted(got) == sorted(expected) and len(set(got)) == len(got)
    created = {r.run_id: r.created_at for r in everything}
    assert [created[i] for i in got] == sorted((created[i] for i in got), reverse=True)


def test_lost_runs_are_listed_lost(store: Any) -> None:
    record = RunRecord(run_id="run-lost", status="RUNNING", created_at=time.time() + 5)
    if supports_run_control(store):
        store.claim_run(record, RunOwner.here(), 0.01)
        time.sleep(0.05)
    else:
        record.lease_expires_at = time.time() - 1
        store.put_run(record)
    assert store.list_runs_page(1).runs[0].status == "LOST"
    assert walk(store, 5, status="LOST") == ["run-lost"]
    assert "run-lost" not in walk(store, 50, status="RUNNING")


def test_bad_cursor_and_limit(store: Any) -> None:
    with pytest.raises(StateError, match="cursor"):
        store.list_runs_page(5, before="nope")
    with pytest.raises(StateError, match="limit"):
        store.list_runs_page(0)
