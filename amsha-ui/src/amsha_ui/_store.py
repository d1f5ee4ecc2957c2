"""The one place the UI talks to Amsha's store: pages of runs, a run, its events, a live
tail, state versions and cancel. Everything returned is scrubbed of registered secrets.

The live tail uses :func:`amsha.runcontrol.atail` when the core has it (the store's own
``wait_for_events`` or adaptive polling), else polls ``read_events`` here the same way;
cancel uses the store's ``request_cancel`` (run control, plugin API 1.1), so it reaches a
run executing in any process that shares the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from amsha.errors import AmshaError, StateNotFoundError
from amsha.events import TERMINAL_KINDS
from amsha.secrets import redact_obj
from amsha.state import RunPage, RunRecord, RunStatus, StateSnapshot, StateStore, page_of_runs

__all__ = ["CancelNotSupportedError", "RunSource", "run_duration"]

FALLBACK_SCAN = 100_000
"""A store without ``list_runs_page`` is paged over at most this many of its newest runs."""
POLL_MIN_S = 0.01
POLL_MAX_S = 0.25


class CancelNotSupportedError(AmshaError):
    """The configured store keeps no run control, so a run cannot be cancelled from here."""


def _scrub_record(record: RunRecord) -> RunRecord:
    return RunRecord.from_dict(redact_obj(record.to_dict()))


class RunSource:
    """Read access to one session's store (and cancel), as the pages and the API need it."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.store: StateStore = session.store

    @property
    def store_name(self) -> str:
        return str(self.session.config.state.name)

    # ---- runs ---------------------------------------------------------------------------

    def page(
        self, limit: int, *, before: str | None = None, status: str | None = None, text: str | None = None
    ) -> RunPage:
        """Newest runs first, filtered, paged by the store when it can (``list_runs_page``)."""
        paged = getattr(self.store, "list_runs_page", None)
        if callable(paged):
            page: RunPage = paged(limit, before=before, status=status, text=text)
        else:
            page = page_of_runs(self.store.list_runs(FALLBACK_SCAN), limit, before=before, status=status, text=text)
        page.runs = [_scrub_record(r) for r in page.runs]
        return page

    def run(self, run_id: str) -> RunRecord:
        """The run's record as readers see it (LOST when its lease expired)."""
        getter = getattr(self.session, "get_run", None)
        record: RunRecord = getter(run_id) if callable(getter) else self.store.get_run(run_id)
        return _scrub_record(record.observed())

    def events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        """The run's recorded events from ``from_seq`` on (RunNotFoundError if no such run)."""
        events = self.store.read_events(run_id, max(0, from_seq))
        if not events and from_seq == 0:
            self.store.get_run(run_id)  # an unknown run is an error, not an empty log
        return [redact_obj(e) for e in events]

    async def tail(self, run_id: str, from_seq: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The run's events from ``from_seq`` on, live, ending after the terminal one (or
        when the run is over: ended or LOST, and nothing more is recorded)."""
        try:
            from amsha.runcontrol import atail as core_tail  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            core_tail = None
        if core_tail is not None:
            async for event in core_tail(self.store, run_id, from_seq):
                yield redact_obj(event)
                if event.get("kind") in TERMINAL_KINDS:
                    return
            return
        seq = from_seq
        wait = POLL_MIN_S
        while True:
            batch = await asyncio.to_thread(self.store.read_events, run_id, seq)
            for event in batch:
                seq = int(event["seq"]) + 1
                yield redact_obj(event)
                if event.get("kind") in TERMINAL_KINDS:
                    return
            if batch:
                wait = POLL_MIN_S
                continue
            record = await asyncio.to_thread(self.store.get_run, run_id)
            if record.observed().status in RunStatus.TERMINAL:
                if not await asyncio.to_thread(self.store.read_events, run_id, seq):
                    return
                continue
            await asyncio.sleep(wait)
            wait = min(wait * 2, POLL_MAX_S)

    # ---- cancel -------------------------------------------------------------------------

    def cancel(self, run_id: str, reason: str) -> str:
        """Ask the run to stop, wherever it executes; returns the store's outcome
        (``requested``, ``cancelled``, ``ended`` or ``lost``)."""
        request = getattr(self.store, "request_cancel", None)
        if not callable(request):
            self.store.get_run(run_id)
            raise CancelNotSupportedError(
                f"the {self.store_name!r} store keeps no run control, so run {run_id} cannot be cancelled "
                f"from another process; cancel it where it runs (handle.cancel()), or use a store with run "
                f"control (file, sqlite, postgres)"
            )
        return str(request(run_id, reason))

    # ---- state --------------------------------------------------------------------------

    def versions(self, state_id: str, limit: int = 200) -> list[StateSnapshot]:
        """The newest ``limit`` versions of a state (without data), oldest first."""
        try:
            return self.store.list_versions(state_id)[-limit:]
        except StateNotFoundError:
            return []

    def state(self, state_id: str, version: int) -> dict[str, Any]:
        """The data of one version; version 0 is the empty state before the first."""
        if version <= 0:
            return {}
        data: dict[str, Any] = redact_obj(self.store.get_state(state_id, version).data)
        return data


def run_duration(record: RunRecord, now: float | None = None) -> float | None:
    """Wall time of a run: start to end, or to now while it is active."""
    if record.started_at is None:
        return None
    end = record.finished_at
    if end is None:
        end = time.time() if now is None else now
    return max(0.0, end - record.started_at)

