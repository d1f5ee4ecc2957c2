"""Built-in state stores: ``memory`` (one process) and ``file`` (a directory of JSON files).

``memory`` keeps everything in the process; it is the default. ``file`` keeps states, run
records and run events under a directory, so the CLI's ``runs`` commands, replay and
``attach`` work across processes with the core alone: each state version is its own file,
created exclusively (``O_EXCL``), which makes optimistic concurrency hold across processes;
run records are replaced atomically; events are appended as JSON lines. Run control (a
run's lease and cancel request) is a small JSON file per run (``runs/ID.ctl``), changed only
under an exclusive ``flock`` of ``runs/ID.lock``, which fenced writes of the run's owner take
too. For heavier use, install ``amsha-state-sqlite``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import (
    LeaseLostError,
    NonJSONValueError,
    RunNotFoundError,
    StateError,
    StateNotFoundError,
    VersionConflictError,
)
from ..plugins import BackendContext
from ..runcontrol import (
    ENDED,
    cancel_outcome,
    cancelled_before_start,
    check_claim,
    check_fence,
    record_body,
    with_control,
)
from ..secrets import redact_obj
from ..state import (
    CancelOutcome,
    RunControl,
    RunOwner,
    RunPage,
    RunRecord,
    StateSnapshot,
    check_json,
    page_of_runs,
)

__all__ = ["FileStore", "FileStoreOptions", "MemoryStore"]


class MemoryStore:
    """Everything in memory, guarded by one lock. Values are deep-copied in and out. Keeps
    run control (leases, cancel requests, fenced writes) for the runs of this process."""

    in_process = True
    """Its calls never block on I/O: callers on an event loop may call it directly."""
    process_local = True
    """Another process cannot reach it: runs handed to a process pool or cluster need another store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, list[StateSnapshot]] = {}
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._control: dict[str, RunControl] = {}

    def _fence(self, run_id: str | None, owner: str | None) -> None:
        if owner is not None and run_id is not None:
            check_fence(run_id, self._control.get(run_id), owner, time.time())

    def put_state(
        self,
        state_id: str,
        data: dict[str, Any],
        *,
        expected_version: int,
        run_id: str | None = None,
        reason: str = "",
        owner: str | None = None,
    ) -> int:
        _check_state(state_id, data)
        data = _json_copy(redact_obj(data))
        with self._lock:
            self._fence(run_id, owner)
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

    def put_run(self, record: RunRecord, *, owner: str | None = None) -> None:
        check_json(f"run {record.run_id!r}", record.to_dict())
        with self._lock:
            self._fence(record.run_id, owner)
            self._runs[record.run_id] = _body(record)

    def _out(self, record: RunRecord) -> RunRecord:
        out = RunRecord.from_dict(copy.deepcopy(record.to_dict()))
        return with_control(out, self._control.get(record.run_id))

    def get_run(self, run_id: str) -> RunRecord:
        with self._lock:
            record = self._runs.get(run_id)
            if record is None:
                raise RunNotFoundError(f"no run {run_id!r} in the memory store")
            return self._out(record)

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        with self._lock:
            records = sorted(self._runs.values(), key=lambda r: r.created_at, reverse=True)[:limit]
            return [self._out(r) for r in records]

    def list_runs_page(
        self, limit: int, *, before: str | None = None, status: str | None = None, text: str | None = None
    ) -> RunPage:
        """A page of runs, newest first, filtered (:class:`~amsha.state.RunPageStore`)."""
        with self._lock:
            records = [with_control(copy.copy(r), self._control.get(r.run_id)) for r in self._runs.values()]
        page = page_of_runs(records, limit, before=before, status=status, text=text)
        page.runs = [RunRecord.from_dict(copy.deepcopy(r.to_dict())) for r in page.runs]
        return page

    def claim_run(self, record: RunRecord, owner: RunOwner, lease_s: float) -> RunControl:
        with self._lock:
            now = time.time()
            stored = self._runs.get(record.run_id)
            control = self._control.get(record.run_id)
            check_claim(record.run_id, stored.status if stored else None, control, owner.id, now)
            self._runs[record.run_id] = _body(record)
            control = RunControl(
                record.run_id,
                record.status,
                owner.to_dict(),
                now,
                now + lease_s,
                control.cancel_request if control else None,
            )
            self._control[record.run_id] = control
            return copy.deepcopy(control)

    def renew_lease(self, run_id: str, owner_id: str, lease_s: float) -> RunControl:
        with self._lock:
            stored = self._runs.get(run_id)
            if stored is None:
                raise RunNotFoundError(f"no run {run_id!r} in the memory store")
            now = time.time()
            control = self._control.get(run_id)
            check_fence(run_id, control, owner_id, now)
            assert control is not None
            if stored.status in ENDED:
                raise LeaseLostError(run_id, f"the run already ended ({stored.status})")
            control.heartbeat_at, control.lease_expires_at, control.status = now, now + lease_s, stored.status
            return copy.deepcopy(control)

    def read_control(self, run_id: str) -> RunControl:
        with self._lock:
            stored = self._runs.get(run_id)
            if stored is None:
                raise RunNotFoundError(f"no run {run_id!r} in the memory store")
            control = copy.deepcopy(self._control.get(run_id)) or RunControl(run_id, stored.status)
            control.status = stored.status
            return control

    def request_cancel(self, run_id: str, reason: str) -> str:
        with self._lock:
            stored = self._runs.get(run_id)
            if stored is None:
                raise RunNotFoundError(f"no run {run_id!r} in the memory store")
            now = time.time()
            control = self._control.get(run_id)
            outcome = cancel_outcome(stored.status, control, now)
            if outcome == CancelOutcome.CANCELLED:
                cancelled_before_start(stored, reason, now)
            elif outcome == CancelOutcome.REQUESTED:
                control = self._control.setdefault(run_id, RunControl(run_id, stored.status))
                if control.cancel_request is None:
                    control.cancel_request = {"reason": reason, "at": now}
            return outcome

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]], *, owner: str | None = None) -> None:
        # Copied in (through JSON, which also refuses NaN and infinity) and out: a caller
        # changing an event dict later must not change the log.
        try:
            copies = json.loads(json.dumps(list(events), allow_nan=False))
        except (TypeError, ValueError):
            for i, event in enumerate(events):
                check_json(f"events[{i}]", event)  # raises NonJSONValueError naming the key
            raise
        with self._lock:
            self._fence(run_id, owner)
            self._events.setdefault(run_id, []).extend(copies)

    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            found = [e for e in self._events.get(run_id, []) if e["seq"] >= from_seq]
        return copy.deepcopy(found)

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
            self._control.pop(run_id, None)
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

    # ---- run control: a control file per run, changed under an exclusive lock file ---------

    @contextlib.contextmanager
    def _run_lock(self, run_id: str) -> Iterator[None]:
        """An exclusive lock on one run's record, control and events, across processes."""
        path = self.root / "runs" / f"{self._safe(run_id)}.lock"
        # flock excludes other open files of the same path, in this process and others.
        with open(path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_control(self, run_id: str) -> RunControl | None:
        try:
            doc = json.loads((self.root / "runs" / f"{run_id}.ctl").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return RunControl(**doc)

    def _write_control(self, control: RunControl) -> None:
        path = self.root / "runs" / f"{control.run_id}.ctl"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(control)), encoding="utf-8")
        os.replace(tmp, path)

    def _fence(self, run_id: str | None, owner: str | None) -> contextlib.AbstractContextManager[None]:
        if owner is None or run_id is None:
            return contextlib.nullcontext()
        lock = self._run_lock(run_id)

        @contextlib.contextmanager
        def fenced() -> Iterator[None]:
            with lock:
                check_fence(run_id, self._read_control(run_id), owner, time.time())
                yield

        return fenced()

    def _stored(self, run_id: str) -> RunRecord:
        path = self.root / "runs" / f"{self._safe(run_id)}.json"
        try:
            return RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise RunNotFoundError(f"no run {run_id!r} in {self.root}") from None
        except (OSError, ValueError) as exc:
            raise StateError(f"file store: cannot read {path}: {exc}") from None

    def claim_run(self, record: RunRecord, owner: RunOwner, lease_s: float) -> RunControl:
        with self._run_lock(record.run_id):
            now = time.time()
            try:
                status: str | None = self._stored(record.run_id).status
            except RunNotFoundError:
                status = None
            control = self._read_control(record.run_id)
            check_claim(record.run_id, status, control, owner.id, now)
            self._put_body(record)
            control = RunControl(
                record.run_id,
                record.status,
                owner.to_dict(),
                now,
                now + lease_s,
                control.cancel_request if control else None,
            )
            self._write_control(control)
            return control

    def renew_lease(self, run_id: str, owner_id: str, lease_s: float) -> RunControl:
        with self._run_lock(run_id):
            stored = self._stored(run_id)
            now = time.time()
            control = self._read_control(run_id)
            check_fence(run_id, control, owner_id, now)
            assert control is not None
            if stored.status in ENDED:
                raise LeaseLostError(run_id, f"the run already ended ({stored.status})")
            control.heartbeat_at, control.lease_expires_at, control.status = now, now + lease_s, stored.status
            self._write_control(control)
            return control

    def read_control(self, run_id: str) -> RunControl:
        stored = self._stored(run_id)
        control = self._read_control(run_id) or RunControl(run_id, stored.status)
        control.status = stored.status
        return control

    def request_cancel(self, run_id: str, reason: str) -> str:
        with self._run_lock(run_id):
            stored = self._stored(run_id)
            now = time.time()
            control = self._read_control(run_id)
            outcome = cancel_outcome(stored.status, control, now)
            if outcome == CancelOutcome.CANCELLED:
                self._put_body(cancelled_before_start(stored, reason, now))
            elif outcome == CancelOutcome.REQUESTED:
                control = control or RunControl(run_id, stored.status)
                if control.cancel_request is None:
                    control.cancel_request = {"reason": reason, "at": now}
                    self._write_control(control)
            return outcome

    # ---- states --------------------------------------------------------------------------

    def put_state(
        self,
        state_id: str,
        data: dict[str, Any],
        *,
        expected_version: int,
        run_id: str | None = None,
        reason: str = "",
        owner: str | None = None,
    ) -> int:
        with self._fence(run_id, owner):
            return self._put_state(state_id, data, expected_version, run_id, reason)

    def _put_state(
        self, state_id: str, data: dict[str, Any], expected_version: int, run_id: str | None, reason: str
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

    # ---- runs ----------------------------------------------------------------------------

    def _put_body(self, record: RunRecord) -> None:
        path = self.root / "runs" / f"{self._safe(record.run_id)}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        doc = record.to_dict()
        check_json(f"run {record.run_id!r}", doc)
        body = _dumps(record_body(redact_obj(doc)), f"run {record.run_id!r}")
        try:
            tmp.write_text(body, encoding="ascii")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StateError(f"file store: cannot write {path}: {exc.strerror or exc}") from None

    def put_run(self, record: RunRecord, *, owner: str | None = None) -> None:
        with self._fence(record.run_id, owner):
            self._put_body(record)

    def get_run(self, run_id: str) -> RunRecord:
        return with_control(self._stored(run_id), self._read_control(run_id))

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        records = []
        for path in (self.root / "runs").glob("*.json"):
            try:
                record = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
            records.append(record)
        records.sort(key=lambda r: r.created_at, reverse=True)
        return [with_control(r, self._read_control(r.run_id)) for r in records[:limit]]

    def list_runs_page(
        self, limit: int, *, before: str | None = None, status: str | None = None, text: str | None = None
    ) -> RunPage:
        """A page of runs, newest first, filtered (:class:`~amsha.state.RunPageStore`).

        Every record and control file is looked at (``stat``), but one is parsed again only
        when it changed since this store object last read it, so a browser refreshing its
        page of ten thousand runs reads only what changed."""
        cache: dict[str, tuple[tuple[int, int, int], Any]] = self.__dict__.setdefault("_page_cache", {})
        records: dict[str, RunRecord] = {}
        controls: dict[str, RunControl] = {}
        seen: set[str] = set()
        with os.scandir(self.root / "runs") as entries:
            for entry in entries:
                name = entry.name
                is_record = name.endswith(".json")
                if name.startswith(".") or not (is_record or name.endswith(".ctl")):
                    continue
                try:
                    st = entry.stat()
                    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a replaced file is a new file
                    hit = cache.get(name)
                    if hit is None or hit[0] != stamp:
                        with open(entry.path, encoding="utf-8") as fh:
                            doc = json.load(fh)
                        value: Any = RunRecord.from_dict(doc) if is_record else RunControl(**doc)
                        hit = (stamp, value)
                        cache[name] = hit
                except (OSError, ValueError, TypeError):
                    continue
                seen.add(name)
                if is_record:
                    records[name[: -len(".json")]] = hit[1]
                else:
                    controls[name[: -len(".ctl")]] = hit[1]
        for gone in set(cache) - seen:
            cache.pop(gone, None)
        merged = [with_control(copy.copy(r), controls.get(run_id)) for run_id, r in records.items()]
        page = page_of_runs(merged, limit, before=before, status=status, text=text)
        page.runs = [RunRecord.from_dict(copy.deepcopy(r.to_dict())) for r in page.runs]
        return page

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]], *, owner: str | None = None) -> None:
        if not events:
            return
        blob = "".join(_dumps(redact_obj(e), f"run {run_id!r}: event") + "\n" for e in events).encode("ascii")
        path = self.root / "events" / f"{self._safe(run_id)}.jsonl"
        with self._fence(run_id, owner), self._lock, open(path, "ab+") as fh:
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
        (self.root / "runs" / f"{run_id}.ctl").unlink(missing_ok=True)
        (self.root / "runs" / f"{run_id}.lock").unlink(missing_ok=True)
        (self.root / "events" / f"{self._safe(run_id)}.jsonl").unlink(missing_ok=True)
        for path in (self.root / "states").glob("*/*.json"):
            try:
                if json.loads(path.read_text(encoding="utf-8")).get("run_id") == run_id:
                    path.unlink()
            except (OSError, ValueError):
                continue

    def close(self) -> None:
        pass


def _body(record: RunRecord) -> RunRecord:
    return RunRecord.from_dict(_json_copy(record_body(redact_obj(record.to_dict()))))


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
