"""The boundary between the core and a state store: everything handed to the store is
scrubbed of registered secrets first, so a store that never heard of scrubbing (a third
party's) cannot persist one. The session wraps its store in :func:`scrubbing_store`; what
a store does itself (``redact_obj`` in the built-in ones) is harmless and no longer relied
on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import secrets as _secrets
from .secrets import redact, redact_obj
from .state import RunControl, RunOwner, RunRecord, StateSnapshot, StateStore, supports_run_control

__all__ = ["ScrubbingStore", "scrubbing_store"]


def _record(record: RunRecord) -> RunRecord:
    if not _secrets.ACTIVE:
        return record
    return RunRecord.from_dict(redact_obj(record.to_dict()))


class ScrubbingStore:
    """A :class:`~amsha.state.StateStore` that scrubs what it passes on to ``inner``.

    Reads and anything else (``inner``'s own methods and attributes) pass through
    unchanged. ``inner`` is the store the config built.
    """

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return repr(self.inner)

    def __getattr__(self, name: str) -> Any:
        if name == "inner" or (name.startswith("__") and name.endswith("__")):
            # Not set yet (while unpickling), or a protocol the wrapper answers itself.
            raise AttributeError(name)
        found = getattr(self.inner, name)
        if name == "append_events_batch":  # an optional write: scrubbed like append_events
            return self._batch(found)
        return found

    @staticmethod
    def _batch(write: Any) -> Any:
        def append_events_batch(batches: Sequence[tuple[str, Sequence[dict[str, Any]], str | None]]) -> Any:
            if _secrets.ACTIVE:
                batches = [(run_id, [redact_obj(e) for e in events], owner) for run_id, events, owner in batches]
            return write(batches)

        return append_events_batch

    def put_state(
        self,
        state_id: str,
        data: dict[str, Any],
        *,
        expected_version: int,
        run_id: str | None = None,
        reason: str = "",
        **kw: Any,
    ) -> int:
        if _secrets.ACTIVE:
            data, reason = redact_obj(data), redact(reason)
        return self.inner.put_state(
            state_id, data, expected_version=expected_version, run_id=run_id, reason=reason, **kw
        )

    def get_state(self, state_id: str, version: int | None = None) -> StateSnapshot:
        return self.inner.get_state(state_id, version)

    def list_versions(self, state_id: str) -> list[StateSnapshot]:
        return self.inner.list_versions(state_id)

    def put_run(self, record: RunRecord, **kw: Any) -> None:
        self.inner.put_run(_record(record), **kw)

    def get_run(self, run_id: str) -> RunRecord:
        return self.inner.get_run(run_id)

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        return self.inner.list_runs(limit)

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]], **kw: Any) -> None:
        if _secrets.ACTIVE:
            events = [redact_obj(e) for e in events]
        self.inner.append_events(run_id, events, **kw)

    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        return self.inner.read_events(run_id, from_seq)

    def delete_run(self, run_id: str) -> None:
        self.inner.delete_run(run_id)

    def close(self) -> None:
        self.inner.close()


class ScrubbingControlStore(ScrubbingStore):
    """:class:`ScrubbingStore` for a store with run control (:class:`~amsha.state.RunControlStore`)."""

    def claim_run(self, record: RunRecord, owner: RunOwner, lease_s: float) -> RunControl:
        return self.inner.claim_run(_record(record), owner, lease_s)  # type: ignore[attr-defined, no-any-return]

    def renew_lease(self, run_id: str, owner_id: str, lease_s: float) -> RunControl:
        return self.inner.renew_lease(run_id, owner_id, lease_s)  # type: ignore[attr-defined, no-any-return]

    def read_control(self, run_id: str) -> RunControl:
        return self.inner.read_control(run_id)  # type: ignore[attr-defined, no-any-return]

    def request_cancel(self, run_id: str, reason: str) -> str:
        if _secrets.ACTIVE:
            reason = redact(reason)
        return self.inner.request_cancel(run_id, reason)  # type: ignore[attr-defined, no-any-return]


def scrubbing_store(store: StateStore) -> StateStore:
    """``store`` behind the scrubbing boundary (itself if already wrapped)."""
    if isinstance(store, ScrubbingStore):
        return store
    if supports_run_control(store):
        return ScrubbingControlStore(store)
    return ScrubbingStore(store)
