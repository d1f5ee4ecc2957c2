"""Built-in state stores: ``memory`` (one process) and ``file`` (a directory of JSON files).

``memory`` keeps everything in the process; it is the default. ``file`` keeps states, run
records and run events under a directory, so the CLI's ``runs`` commands, replay and
``attach`` work across processes with the core alone: each state version is its own file,
created exclusively (``O_EXCL``), which makes optimistic concurrency hold across processes;
run records are replaced atomically; events are appended as JSON lines. For heavier use,
install ``amsha-state-sqlite``.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import NonJSONValueError, RunNotFoundError, StateError, StateNotFoundError, VersionConflictError
from ..plugins import BackendContext
from ..secrets import redact_obj
from ..state import RunRecord, StateSnapshot, check_json

__all__ = ["FileStore", "FileStoreOptions", "MemoryStore"]


class MemoryStore:
    """Everything in memory, guarded by one lock. Values are deep-copied in and out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, list[StateSnapshot]] = {}
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, list[dict[str, Any]]] = {}

    def put_state(
        self, state_id: str, data: dict[str, Any], *, expected_version: int, run_id: str | None = None, reason: str = ""
    ) -> int:
        _check_state(state_id, data)
        data = _json_copy(redact_obj(data))
        with self._lock:
            versions = self._states.setdefault(state_id, [])
            latest = versions[-1].version if versions else 0
            if expected_version != latest:
                raise VersionConflictError(state_id, expected_version, latest)
            snap = StateSnapshot(state_id, latest + 1, data, time.time(), run_id, reason)
            versions.append(snap)
            return snap.version

    def get_state(self, state_id: str, version: int | None = None) -> StateSnapshot:
        with self._lock:
            versions = self._states.get(state_id)
            if not versions:
                raise StateNotFoundError(f"no state {state_id!r} in the memory store")
            if version is None:
                snap = versions[-1]
            elif 1 <= version <= len(versions):
                snap = versions[version - 1]
            else:
                raise StateNotFoundError(f"state {state_id!r} has no version {version} (latest is {len(versions)})")
            return StateSnapshot(
                snap.state_id, snap.version, copy.deepcopy(snap.data), snap.created_at, snap.run_id, snap.reason
            )

    def list_versions(self, state_id: str) -> list[StateSnapshot]:
        with self._lock:
            return [
                StateSnapshot(s.state_id, s.version, {}, s.created_at, s.run_id, s.reason)
                for s in self._states.get(state_id, [])
            ]

    def put_run(self, record: RunRecord) -> None:
        doc = record.to_dict()
        check_json(f"run {record.run_id!r}", doc)
        with self._lock:
            self._runs[record.run_id] = RunRecord.from_dict(_json_copy(redact_obj(doc)))

    def get_run(self, run_id: str) -> RunRecord:
        with self._lock:
            record = self._runs.get(run_id)
            if record is None:
                raise RunNotFoundError(f"no run {run_id!r} in the memory store")
            return RunRecord.from_dict(copy.deepcopy(record.to_dict()))

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        with self._lock:
            records = sorted(self._runs.values(), key=lambda r: r.created_at, reverse=True)[:limit]
            return [RunRecord.from_dict(copy.deepcopy(r.to_dict())) for r in records]

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            self._events.setdefault(run_id, []).extend(events)

    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._events.get(run_id, []) if e["seq"] >= from_seq]

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
            self._events.pop(run_id, None)
            for state_id, versions in list(self._states.items()):
                kept = [v for v in versions if v.run_id != run_id]
                if len(kept) != len(versions):
                    self._states[state_id] = kept

    def close(self) -> None:
        pass


class FileStoreOptions(BaseModel):
    """Options of the ``file`` store."""

    model_config = ConfigDict(extra="forbid")
    path: str = ".amsha"


class FileStore:
    """States, run records and events as files under one directory (see module docs)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        try:
            for sub in ("states", "runs", "events"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"file store: cannot create {self.root}: {exc.strerror}") from None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    @staticmethod
    def _safe(name: str) -> str:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise StateError(f"file store: invalid id {name!r}")
        return name

    def _versions(self, state_id: str) -> list[int]:
        folder = self.root / "states" / self._safe(state_id)
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())

    def put_state(
        self, state_id: str, data: dict[str, Any], *, expected_version: int, run_id: str | None = None, reason: str = ""
    ) -> int:
        folder = self.root / "states" / self._safe(state_id)
        _check_state(state_id, data)
        folder.mkdir(parents=True, exist_ok=True)
        versions = self._versions(state_id)
        latest = versions[-1] if versions else 0
        if expected_version != latest:
            raise VersionConflictError(state_id, expected_version, latest)
        new = latest + 1
        body = _dumps(
            {
                "state_id": state_id,
                "version": new,
                "data": redact_obj(data),
                "created_at": time.time(),
                "run_id": run_id,
                "reason": reason,
            },
            f"state {state_id!r}",
        )
        target = folder / f"{new:010d}.json"
        tmp = folder / f".{new:010d}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            tmp.write_text(body, encoding="ascii")
            # link() fails if the version exists: another writer got there first.
            os.link(tmp, target)
        except FileExistsError:
            now = self._versions(state_id)
            raise VersionConflictError(state_id, expected_version, now[-1] if now else 0) from None
        except OSError as exc:
            raise StateError(f"file store: cannot write {target}: {exc.strerror or exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return new

    def _read_snapshot(self, path: Path) -> StateSnapshot:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StateError(f"file store: cannot read {path}: {exc}") from None
        return StateSnapshot(
            doc["state_id"], doc["version"], doc["data"], doc["created_at"], doc.get("run_id"), doc.get("reason", "")
        )

    def get_state(self, state_id: str, version: int | None = None) -> StateSnapshot:
        versions = self._versions(state_id)
        if not versions:
            raise StateNotFoundError(f"no state {state_id!r} in {self.root}")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise StateNotFoundError(f"state {state_id!r} has no version {version} (latest is {versions[-1]})")
        return self._read_snapshot(self.root / "states" / state_id / f"{version:010d}.json")

    def list_versions(self, state_id: str) -> list[StateSnapshot]:
        out = []
        for v in self._versions(state_id):
            snap = self._read_snapshot(self.root / "states" / state_id / f"{v:010d}.json")
            snap.data = {}
            out.append(snap)
        return out

    def put_run(self, record: RunRecord) -> None:
        path = self.root / "runs" / f"{self._safe(record.run_id)}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        doc = record.to_dict()
        check_json(f"run {record.run_id!r}", doc)
        body = _dumps(redact_obj(doc), f"run {record.run_id!r}")
        try:
            tmp.write_text(body, encoding="ascii")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StateError(f"file store: cannot write {path}: {exc.strerror or exc}") from None

    def get_run(self, run_id: str) -> RunRecord:
        path = self.root / "runs" / f"{self._safe(run_id)}.json"
        try:
            return RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise RunNotFoundError(f"no run {run_id!r} in {self.root}") from None
        except (OSError, ValueError) as exc:
            raise StateError(f"file store: cannot read {path}: {exc}") from None

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        records = []
        for path in (self.root / "runs").glob("*.json"):
            try:
                records.append(RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError):
                continue
        records.sort(key=lambda r: r.created_at, reverse=True)
        return records[:limit]

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> None:
        if not events:
            return
        blob = "".join(_dumps(redact_obj(e), f"run {run_id!r}: event") + "\n" for e in events).encode("ascii")
        with self._lock, open(self.root / "events" / f"{self._safe(run_id)}.jsonl", "ab+") as fh:
            # A writer killed mid-line leaves a torn last line: start on a line of our own,
            # so these events stay readable.
            if fh.tell() and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
                blob = b"\n" + blob
            fh.write(blob)
            fh.flush()

    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        path = self.root / "events" / f"{self._safe(run_id)}.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash (its write was never acknowledged)
            if event["seq"] >= from_seq:
                out.append(event)
        return out

    def delete_run(self, run_id: str) -> None:
        (self.root / "runs" / f"{self._safe(run_id)}.json").unlink(missing_ok=True)
        (self.root / "events" / f"{self._safe(run_id)}.jsonl").unlink(missing_ok=True)
        for path in (self.root / "states").glob("*/*.json"):
            try:
                if json.loads(path.read_text(encoding="utf-8")).get("run_id") == run_id:
                    path.unlink()
            except (OSError, ValueError):
                continue

    def close(self) -> None:
        pass


def _check_state(state_id: str, data: Any) -> None:
    if not isinstance(data, dict):
        raise StateError(f"state {state_id!r}: data must be a dict, got {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(key, str):
            raise NonJSONValueError(repr(key), key, "state keys must be strings")
        check_json(key, value)


def _json_copy(value: Any) -> Any:
    """A copy of checked JSON as JSON gives it back: tuples become lists, nothing shared."""
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_copy(v) for v in value]
    return value


def _dumps(value: Any, what: str) -> str:
    """``value`` as ASCII JSON: ``\\u`` escapes keep any string Python can hold (a lone
    surrogate included) readable back exactly, and the file valid UTF-8."""
    try:
        return json.dumps(value, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        check_json(what, value)  # names the bad key when it can
        raise StateError(f"file store: {what} is not JSON: {exc}") from None


def build_memory(ctx: BackendContext) -> MemoryStore:
    return MemoryStore()


def build_file(ctx: BackendContext) -> FileStore:
    opts: FileStoreOptions = ctx.options
    path = Path(opts.path)
    return FileStore(path if path.is_absolute() else ctx.base_dir / path)
