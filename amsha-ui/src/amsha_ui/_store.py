"""The one place the UI talks to Amsha's store: pages of runs, a run, its events, a live
tail, state versions and cancel. Everything returned is scrubbed of registered secrets.

The live tail is the core's :func:`amsha.runcontrol.atail` (the store's own
``wait_for_events``, or adaptive polling);
cancel goes through the session's ``cancel_run`` (or the store's ``request_cancel``: run
control, plugin API 1.1), so it reaches a run executing in any process sharing the store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from amsha.errors import AmshaError, StateNotFoundError
from amsha.runcontrol import atail
from amsha.secrets import redact_obj
from amsha.state import RunPage, RunRecord, StateSnapshot, StateStore, page_of_runs, supports_run_control

__all__ = ["CancelNotSupportedError", "RunSource", "run_duration"]

FALLBACK_SCAN = 100_000
"""A store without ``list_runs_page`` is paged over at most this many of its newest runs."""
POLL_MAX_S = 0.25
"""The longest pause of the live tail between two reads of an idle run."""


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
        if not events:
            self.store.get_run(run_id)  # an unknown run is an error, not an empty log
        return [redact_obj(e) for e in events]

    async def tail(self, run_id: str, from_seq: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The run's events from ``from_seq`` on, live, ending after the terminal one (or
        when the record shows the run over: LOST, or cancelled before it started). The core's
        store tail: the store's ``wait_for_events`` when it has one, else adaptive polling."""
        async for event in atail(self.store, run_id, from_seq, poll_max_s=POLL_MAX_S):
            yield redact_obj(event)

    # ---- cancel -------------------------------------------------------------------------

    def cancel(self, run_id: str, reason: str) -> str:
        """Ask the run to stop, wherever it executes; returns the outcome (``requested``,
        ``cancelled``, ``ended`` or ``lost``). The session's ``cancel_run`` when the core has
        it, else the store's ``request_cancel``."""
        if not self.can_cancel:
            self.store.get_run(run_id)  # an unknown run is a 404 first
            raise CancelNotSupportedError(
                f"the {self.store_name!r} store keeps no run control, so run {run_id} cannot be cancelled "
                f"from another process; cancel it where it runs (handle.cancel())"
            )
        cancel_run = getattr(self.session, "cancel_run", None)
        if callable(cancel_run):
            return str(cancel_run(run_id, reason))
        return str(self.store.request_cancel(run_id, reason))  # type: ignore[attr-defined]

    @property
    def can_cancel(self) -> bool:
        """Whether the store keeps run control (cancel requests reach any process)."""
        return supports_run_control(self.store)

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
