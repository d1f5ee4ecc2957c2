"""A reference state store, written as a third party would from the README: everything kept
as JSON text in dicts (as a JSON-files store keeps it on disk), one lock, one step per call."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from amsha.errors import NonJSONValueError, RunNotFoundError, StateNotFoundError, VersionConflictError
from amsha.secrets import redact_obj
from amsha.state import RunRecord, StateSnapshot


def dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(redact_obj(value), allow_nan=False, ensure_ascii=False)
    except ValueError as exc:
        raise NonJSONValueError(what, value, str(exc)) from None


class ReferenceStore:
    """States as JSON text by id and version, run records as JSON text, events as lists of
    ``(seq, JSON text)``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.states: dict[str, list[dict[str, Any]]] = {}
        self.runs: dict[str, str] = {}
        self.events: dict[str, list[tuple[int, str]]] = {}

    def put_state(
        self, state_id: str, data: dict[str, Any], *, expected_version: int, run_id: str | None = None, reason: str = ""
    ) -> int:
        text = dumps(data, "data")
        with self.lock:
            versions = self.states.setdefault(state_id, [])
            latest = len(versions)
            if expected_version != latest:
                raise VersionConflictError(state_id, expected_version, latest)
            versions.append({"data": text, "at": time.time(), "run_id": run_id, "reason": reason})
            return latest + 1

    def snapshot(self, state_id: str, version: int, row: dict[str, Any], data: bool = True) -> StateSnapshot:
        return StateSnapshot(
            state_id, version, json.loads(row["data"]) if data else {}, row["at"], row["run_id"], row["reason"]
        )

    def get_state(self, state_id: str, version: int | None = None) -> StateSnapshot:
        with self.lock:
            versions = self.states.get(state_id)
            if not versions:
                raise StateNotFoundError(f"no state {state_id!r}")
            if version is None:
                version = len(versions)
            if not 1 <= version <= len(versions):
                raise StateNotFoundError(f"state {state_id!r} has no version {version}")
            return self.snapshot(state_id, version, versions[version - 1])

    def list_versions(self, state_id: str) -> list[StateSnapshot]:
        with self.lock:
            return [self.snapshot(state_id, i + 1, r, data=False) for i, r in enumerate(self.states.get(state_id, []))]

    def put_run(self, record: RunRecord) -> None:
        text = dumps(record.to_dict(), "record")
        with self.lock:
            self.runs[record.run_id] = text

    def get_run(self, run_id: str) -> RunRecord:
        with self.lock:
            text = self.runs.get(run_id)
        if text is None:
            raise RunNotFoundError(f"no run {run_id!r}")
        return RunRecord.from_dict(json.loads(text))

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        with self.lock:
            records = [RunRecord.from_dict(json.loads(t)) for t in self.runs.values()]
        records.sort(key=lambda r: r.created_at, reverse=True)
        return records[:limit]

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> None:
        rows = [(int(e["seq"]), dumps(e, f"events[{i}]")) for i, e in enumerate(events)]
        with self.lock:
            self.events.setdefault(run_id, []).extend(rows)

    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        with self.lock:
            rows = sorted(self.events.get(run_id, []), key=lambda r: r[0])
        return [json.loads(t) for seq, t in rows if seq >= from_seq]

    def delete_run(self, run_id: str) -> None:
        with self.lock:
            self.runs.pop(run_id, None)
            self.events.pop(run_id, None)
            for versions in self.states.values():
                versions[:] = [v for v in versions if v["run_id"] != run_id]
            for state_id in [s for s, v in self.states.items() if not v]:
                del self.states[state_id]

    def close(self) -> None:
        pass
