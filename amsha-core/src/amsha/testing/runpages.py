"""The paging checks of :class:`~amsha.testing.StateStoreContract`: the optional
``list_runs_page`` capability (:class:`amsha.state.RunPageStore`), which run browsers such
as amsha-ui use. A store without it has these checks skipped, with the reason; readers then
page over ``list_runs`` with :func:`amsha.state.page_of_runs`."""

from __future__ import annotations

import time
from typing import Any, NoReturn

import pytest

from ..errors import StateError
from ..state import RunOwner, RunRecord, RunStatus, page_of_runs, supports_run_control

__all__ = ["RunPageContract"]

STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


def _fail(message: str) -> NoReturn:
    pytest.fail(f"contract: {message}", pytrace=False)


def _needs_paging(store: Any) -> None:
    if not callable(getattr(store, "list_runs_page", None)):
        pytest.skip("the store does not offer list_runs_page (readers page over list_runs)")


def _fill(store: Any, n: int = 23) -> list[RunRecord]:
    now = time.time()
    records = []
    for i in range(n):
        record = RunRecord(
            f"rp-{i:03d}",
            status=STATUSES[i % 3],
            tasks=["alpha", "Beta" if i % 2 else "gamma"],
            inputs={"topic": f"Topic {i}"},
            created_at=now - i // 2,  # pairs share a created_at: the tie break must hold
            error={"type": "ServerError", "message": f"boom {i}"} if STATUSES[i % 3] == RunStatus.FAILED else None,
        )
        store.put_run(record)
        records.append(record)
    return records


def _walk(store: Any, size: int, **filters: Any) -> list[str]:
    ids: list[str] = []
    before = None
    for _ in range(10_000):
        page = store.list_runs_page(size, before=before, **filters)
        if len(page.runs) > size:
            _fail(f"list_runs_page({size}) returned {len(page.runs)} runs")
        ids += [r.run_id for r in page.runs]
        if page.next_before is None:
            return ids
        if len(page.runs) != size:
            _fail(f"list_runs_page({size}) returned a short page ({len(page.runs)} runs) with a next page")
        before = page.next_before
    _fail("list_runs_page never returned a last page (next_before None)")


class RunPageContract:
    """Pages of runs, as :class:`amsha.state.RunPageStore` documents them."""

    @pytest.mark.parametrize("size", [1, 4, 50])
    def test_pages_cover_every_run_once_newest_first(self, store: Any, size: int) -> None:
        _needs_paging(store)
        records = _fill(store)
        ids = _walk(store, size)
        if sorted(ids) != sorted(r.run_id for r in records):
            _fail(f"walking pages of {size} did not give every run exactly once: {ids}")
        created = {r.run_id: r.created_at for r in records}
        if [created[i] for i in ids] != sorted(created.values(), reverse=True):
            _fail("list_runs_page must list the newest runs first (by created_at)")

    def test_filters_match_the_documented_search(self, store: Any) -> None:
        _needs_paging(store)
        records = _fill(store)
        cases: list[dict[str, Any]] = [
            {"status": "FAILED"},
            {"text": "beta"},
            {"text": "BOOM 1"},
            {"text": "topic 2", "status": "SUCCEEDED"},
        ]
        for filters in cases:
            expected = page_of_runs(records, 1000, **filters).runs
            got = _walk(store, 3, **filters)
            if sorted(got) != sorted(r.run_id for r in expected):
                _fail(f"list_runs_page(**{filters}) gave {sorted(got)}, expected {sorted(r.run_id for r in expected)}")

    def test_lost_runs_are_listed_lost(self, store: Any) -> None:
        _needs_paging(store)
        if not supports_run_control(store):
            pytest.skip("LOST needs run control (leases)")
        _fill(store, 4)
        store.claim_run(
            RunRecord("rp-lost", status=RunStatus.RUNNING, created_at=time.time() + 5), RunOwner.here(), 0.2
        )
        time.sleep(0.35)
        first = store.list_runs_page(2).runs[0]
        if first.run_id != "rp-lost" or first.status != RunStatus.LOST:
            _fail(f"a run whose lease expired must be listed LOST, got {first.run_id} {first.status}")
        if _walk(store, 2, status="LOST") != ["rp-lost"]:
            _fail("status='LOST' must select the runs whose lease expired")
        if "rp-lost" in _walk(store, 2, status="RUNNING"):
            _fail("status='RUNNING' must leave out LOST runs")

    def test_bad_cursor_is_a_state_error(self, store: Any) -> None:
        _needs_paging(store)
        _fill(store, 2)
        try:
            store.list_runs_page(5, before="not a cursor of this store")
        except StateError:
            return
        except Exception as exc:
            _fail(f"a bad cursor must raise StateError, got {type(exc).__name__}: {exc}")
        _fail("a bad cursor must raise StateError")
