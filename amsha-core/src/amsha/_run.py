"""One run in this process (``_Run``), and the worker's side of a run handed to another
process (:func:`run_spec`).

``_Run`` holds a run's log, state, metrics, record and task; it executes the run on an event
loop, holds its lease when the store has run control, writes its events (through the loop's
:class:`~amsha.runcontrol.EventWriter`) and its end. A run handed to a worker is read
through the store here (:class:`~amsha.runcontrol.StoreRun`); in the worker,
:func:`run_spec` rebuilds the session from the config and executes it.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from . import _loop
from .config import AmshaConfig
from .errors import AmshaError, InputError, LeaseLostError, RunCancelledError
from .events import Event, RunEventLog
from .handle import ExecutionMode, RunResult, raise_for
from .llm import LLM
from .metrics import MetricsCollector
from .observe import ObserverChannel
from .orchestrator import RunContext
from .provider import ILLMProvider
from .registry import Registry
from .runcontrol import EventWriter, OwnerLease, StoreRun
from .state import (
    CancelOutcome,
    ExecutionState,
    RunControlStore,
    RunRecord,
    RunStatus,
    supports_run_control,
)

if TYPE_CHECKING:
    from .session import ExecutionSession

__all__ = ["run_spec"]

log = logging.getLogger("amsha")


class _Run:
    """One run in this process: its log, state, metrics, record and task."""

    def __init__(
        self,
        *,
        session: ExecutionSession,
        run_id: str,
        mode: ExecutionMode,
        registry: Registry,
        task_names: list[str],
        inputs: dict[str, Any],
        state: ExecutionState,
        tools: dict[str, Callable[..., Any]],
        provider_override: ILLMProvider | None,
        replay_of: str | None,
    ) -> None:
        self.session = session
        self.run_id = run_id
        self.mode = mode
        self.registry = registry
        self.task_names = task_names
        self.inputs = inputs
        self.state = state
        self.tools = tools
        self.provider_override = provider_override
        self.status = RunStatus.PENDING
        self.error: dict[str, Any] | None = None
        self.exception: BaseException | None = None
        self.cancel_event = threading.Event()
        self.cancel_reason: str | None = None
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.task: asyncio.Task[None] | None = None
        self.future: concurrent.futures.Future[Any] | None = None
        """The client executor's future, for runs handed to an executor."""
        self.loop_future: concurrent.futures.Future[None] | None = None
        self.remote: StoreRun | None = None
        """Set when the run was handed to a worker: it is then read through the store."""
        self.lease: OwnerLease | None = None
        """This process's lease on the run, when it executes it and the store has run control."""
        self.lost: LeaseLostError | None = None
        self._feeder: concurrent.futures.Future[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.collector = MetricsCollector(run_id)
        self.record = RunRecord(
            run_id=run_id,
            mode=mode.value,
            tasks=list(task_names),
            inputs=inputs,
            state_id=state.state_id,
            base_version=state.version,
            replay_of=replay_of,
        )
        self.log = RunEventLog(run_id, [self.collector])
        self.writer: EventWriter | None = None
        """Writes this run's events to the store (shared by the runs on its loop)."""
        self.links = _run_links(session.observers, run_id)
        """What observers captured in the caller's thread when the run was started (e.g. a
        W3C ``traceparent``), carried on the ``run.started`` event."""
        self.log.add_sink(self._persist)
        for channel in session._channels:
            self.log.add_sink(channel.submit)
        self.outputs: dict[str, Any] = {}

    # ---- sinks --------------------------------------------------------------------------

    def _persist(self, event: Event) -> None:
        writer = self.writer
        if writer is None:  # an event before the run's loop is known (none in practice)
            writer = self.writer = self.session._writer(None)
        if self.lost is None:
            writer.add(
                self.run_id,
                event.to_dict(),
                owner=self.lease.owner_id if self.lease is not None else None,
                on_lost=self._lose,
            )

    def flush(self) -> None:
        """Write the pending events to the store, in order (fenced by the lease, if held)."""
        if self.writer is not None:
            self.writer.flush()

    # ---- lifecycle ----------------------------------------------------------------------

    def start_record(self) -> None:
        """Write the run's first record; with a run-control store, take the lease on it (a
        run id that already ended, or that another live process owns, raises
        :class:`LeaseLostError`)."""
        store = self.session.store
        if supports_run_control(store):
            runs = self.session.config.runs
            self.lease = OwnerLease(store, self.run_id, lease_s=runs.lease_s, cancel_poll_s=runs.cancel_poll_s)
            control = self.lease.claim(self.record)
            if control.cancel_reason is not None:
                self.cancel(control.cancel_reason)
        else:
            store.put_run(self.record)

    def _put_record(self) -> None:
        if self.lease is not None:
            cast(RunControlStore, self.session.store).put_run(self.record, owner=self.lease.owner_id)
        else:
            self.session.store.put_run(self.record)

    def _lose(self, exc: LeaseLostError) -> None:
        """The lease is gone (this process was declared LOST while it was away): stop at
        once, and write nothing more."""
        if self.lost is not None:
            return
        self.lost = exc
        log.warning("amsha: run %s: %s; stopping without writing", self.run_id, exc)
        if self.status not in RunStatus.TERMINAL:
            self.cancel("the run's lease was lost")

    def _llm_factory(self, name: str | None) -> LLM:
        override = self.provider_override
        if override is not None:
            # Replay never builds the real provider: it may need keys or a network.
            if name is not None and name not in self.session._llm_configs:
                raise InputError(f"unknown llm {name!r}")
            pcfg, _key = self.session._llm_configs[name]
            view = override.view(name or "default") if hasattr(override, "view") else override
            return LLM(view, model=pcfg.model, retry=pcfg.retry or self.session.config.retry, name=name or "default")
        return self.session.llm(name)

    def _build_llms(self) -> None:
        names = {self.registry.agent(self.registry.task(t).agent).llm for t in self.task_names}
        for name in names:
            try:
                self._llm_factory(name)
            except Exception:
                pass  # the orchestrator meets the same error where it belongs, with the task named

    def _snapshot(self, reason: str) -> None:
        if not self.state.dirty or self.lost is not None:
            return  # nothing changed since the last snapshot, or no longer ours to write
        owner = self.lease.owner_id if self.lease is not None else None
        self.state.commit(self.session.store, run_id=self.run_id, reason=reason, owner=owner)
        self.record.state_version = self.state.version
        self.log.emit(
            "state.snapshot",
            self.run_id,
            None,
            data={"state_id": self.state.state_id, "version": self.state.version, "reason": reason},
        )

    async def execute(self) -> None:
        """The run itself; never raises (the outcome is in the record and the handle)."""
        try:
            await self._execute()
        finally:
            await self._settle()

    async def _execute(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.writer = self.session._writer(self.loop)
        if self.task is None:
            self.task = asyncio.current_task()
        ctx = RunContext(
            run_id=self.run_id,
            mode=self.mode.value,
            registry=self.registry,
            task_names=self.task_names,
            inputs=self.inputs,
            state=self.state,
            log=self.log,
            llm_factory=self._llm_factory,
            snapshot=self._snapshot,
            tools=self.tools,
            cancel_event=self.cancel_event,
            store=self.session.store,
        )
        self.status = RunStatus.RUNNING
        self.record.status = RunStatus.RUNNING
        self.record.started_at = time.time()
        try:
            self.log.emit(
                "run.started",
                self.run_id,
                None,
                data={
                    "mode": self.mode.value,
                    "tasks": self.task_names,
                    "orchestrator": getattr(self.session.orchestrator, "name", None),
                    **({"links": self.links} if self.links else {}),
                },
            )
            await _finish_then_cancel(asyncio.to_thread(self._put_record))
            if self.lease is not None:
                self._watch = asyncio.ensure_future(self.lease.watch(self.cancel, self._lose))
            # Providers import their SDKs when first built: do it off the loop, so the loop
            # (which renews the lease and reads cancel requests) is never held by an import.
            await asyncio.to_thread(self._build_llms)
            if self.cancel_event.is_set():
                raise RunCancelledError(self.run_id, self.cancel_reason or "cancelled")
            await self.session.orchestrator.aexecute(ctx)
            self.outputs = dict(ctx.outputs)
            self._snapshot("run finished")
            self._end(RunStatus.SUCCEEDED, "run.finished", {})
        except (asyncio.CancelledError, RunCancelledError) as exc:
            self.outputs = dict(ctx.outputs)
            if self.lost is not None:
                self._end_lost()
                return
            reason = self.cancel_reason or (exc.reason if isinstance(exc, RunCancelledError) else "cancelled")
            self.error = {"type": "RunCancelledError", "message": reason}
            # The text of the tasks it was in goes into the outputs: the record keeps it.
            partial: dict[str, str] = {}
            for e in self.log.events:
                if e.kind == "llm.token" and e.task not in ctx.outputs:
                    key = e.task or ""
                    partial[key] = partial.get(key, "") + e.text
            self.outputs.update({k: v for k, v in partial.items() if k})
            self._safe_snapshot("run cancelled")
            self._end(
                RunStatus.CANCELLED,
                "run.cancelled",
                {"reason": reason, "partial_text": "".join(partial.values()), "partial": partial},
            )
        except BaseException as exc:  # the outcome is reported through the handle
            self.outputs = dict(ctx.outputs)
            if self.lost is not None:
                self._end_lost()
                return
            self.exception = exc
            self.error = (
                exc.to_dict() if isinstance(exc, AmshaError) else {"type": type(exc).__name__, "message": str(exc)}
            )
            task_name = getattr(exc, "task_name", None)
            if task_name:
                self.error["task"] = task_name
            self._safe_snapshot("run failed")
            self._end(RunStatus.FAILED, "run.failed", {"error": self.error})

    def _safe_snapshot(self, reason: str) -> None:
        try:
            self._snapshot(reason)
        except Exception as exc:
            log.warning("amsha: run %s: final snapshot failed: %s", self.run_id, exc)

    def _stop_watch(self) -> None:
        if self.lease is not None:
            self.lease.stop()

    async def _settle(self) -> None:
        """The run's end: wait until the lease watch has stopped (no store call of the run is
        left in flight, so the session may close the store), then tell the handles."""
        watch = self._watch
        try:
            if watch is not None and not watch.done():
                self._stop_watch()
                while not watch.done():
                    try:
                        await asyncio.shield(asyncio.gather(watch, return_exceptions=True))
                    except asyncio.CancelledError:
                        continue  # a cancel that came late: the run has ended already
        finally:
            if not self.done.done():
                self.done.set_result(None)

    def _end_lost(self) -> None:
        """End a run whose lease was lost: nothing is written (the store would refuse it and
        readers already report it LOST)."""
        self._stop_watch()
        self.status = RunStatus.LOST
        assert self.lease is not None
        self.error = {
            "type": "RunLostError",
            "message": str(self.lost),
            "owner": self.lease.owner.to_dict(),
            "heartbeat_at": None,
        }
        if self.writer is not None:
            self.writer.drop(self.run_id)
        self.log.close()

    def _end(self, status: str, kind: str, data: dict[str, Any]) -> None:
        self._stop_watch()
        self.status = status
        now = time.time()
        self.log.emit(
            kind,
            self.run_id,
            None,
            data={
                **data,
                "outputs": self.outputs,
                "latency_s": now - (self.record.started_at or now),
                "metrics": self.collector.metrics.to_dict(),
            },
        )
        self.flush()
        self.record.status = status
        self.record.finished_at = now
        self.record.outputs = self.outputs
        self.record.error = self.error
        self.record.metrics = self.collector.metrics.to_dict()
        if self.lost is None:
            try:
                self._put_record()
            except LeaseLostError as exc:
                self.lost = exc
                log.warning("amsha: run %s: %s; its end was not written", self.run_id, exc)
            except Exception:
                log.exception("amsha: run %s: could not write the final run record", self.run_id)
        self.log.close()
        if self._watch is None and not self.done.done():
            self.done.set_result(None)  # no watch to wait for (execute settles it otherwise)

    def cancel(self, reason: str) -> bool:
        """Cancel a run executing in this process (fast path: no store round trip)."""
        if self.remote is not None:
            return self.remote.cancel(reason) in (CancelOutcome.REQUESTED, CancelOutcome.CANCELLED)
        if self.status in RunStatus.TERMINAL or self.cancel_event.is_set():
            return False
        self.cancel_reason = reason
        self.cancel_event.set()
        task, loop = self.task, self.loop
        if task is not None and loop is not None and not task.done():
            loop.call_soon_threadsafe(task.cancel)
        # A run still queued on a client executor never starts: record it as cancelled here.
        if task is None and self.future is not None and self.future.cancel():
            self.error = {"type": "RunCancelledError", "message": reason}
            self._end(RunStatus.CANCELLED, "run.cancelled", {"reason": reason, "partial_text": ""})
        return True

    def outcome(self) -> RunResult:
        result = RunResult(self.run_id, self.status, dict(self.outputs), self.state, self.collector.metrics, self.error)
        raise_for(result, self.exception)
        return result

    # ---- remote executors (process pools, Dask, Ray) ------------------------------------

    def start_remote(self, executor: concurrent.futures.Executor) -> None:
        """Hand the run to ``executor`` (a process pool, Dask, Ray): the worker rebuilds the
        session from config, claims the run in the shared store and executes it; this process
        reads it through the store (:class:`StoreRun`)."""
        session = self.session
        if session._extra_plugins or session._tool_overrides:
            raise InputError(
                "runs on a non-thread executor rebuild the session from config: pass plugins and tools through config"
            )
        store = session.store
        if getattr(store, "process_local", False):
            raise InputError(
                f"a run on {type(executor).__name__} executes in another process, which cannot reach the "
                f"{session.config.state.name!r} store of this one; configure a store both reach (state: file, "
                f"sqlite or postgres)"
            )
        spec = {
            "config": session.config.model_dump(mode="json"),
            "base_dir": str(session.base_dir),
            "tasks": self.task_names,
            "inputs": self.inputs,
            "state": self.state.save(),
            "run_id": self.run_id,
            "created_at": self.record.created_at,
        }
        store.put_run(self.record)  # PENDING, no owner: queued until a worker claims it
        try:
            future = executor.submit(run_spec, spec)
        except BaseException:
            self.record.status = RunStatus.FAILED
            self.record.error = {"type": "ExecutionError", "message": "the executor refused the run"}
            store.put_run(self.record)
            raise
        self.future = future
        self.remote = StoreRun(
            store, self.run_id, poll_max_s=session.config.runs.tail_poll_max_s, future=future, state=self.state
        )
        if session._code_channels:
            self._feeder = _loop.submit(self._feed(session._code_channels))

    async def _feed(self, channels: Sequence[ObserverChannel]) -> None:
        """Hand a worker run's events, tailed from the store, to the observers passed in code."""
        assert self.remote is not None
        try:
            async for event in self.remote.aevents(0):
                for channel in channels:
                    channel.submit(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("amsha: run %s: tailing its events for observers failed: %s", self.run_id, exc)

    def stop_feeding(self) -> None:
        if self._feeder is not None and not self._feeder.done():
            self._feeder.cancel()


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Execute a run described by a picklable spec, in a worker (a process pool, Dask, Ray, a
    detached ``amsha run``): rebuild the session from the config, claim the run in the shared
    store, execute it. Returns ``{"claimed": False, "reason"}`` when the run was not this
    worker's to run (cancelled while queued, owned by another live worker, or LOST), else
    ``{"claimed": True, "status"}``; the outcome itself is in the store."""
    session = _worker_session(spec["config"], spec["base_dir"])
    state = ExecutionState.load(spec["state"])
    run = session._prepare(spec["tasks"], spec["inputs"], state, ExecutionMode.BACKGROUND, spec["run_id"])
    run.record.created_at = float(spec.get("created_at") or run.record.created_at)
    try:
        session._start_record(run)
    except LeaseLostError as exc:
        return {"claimed": False, "reason": str(exc)}
    try:
        _loop.run_sync(run.execute())
    finally:
        with session._lock:
            session._runs.pop(run.run_id, None)  # the store has it; a worker lives long
    return {"claimed": True, "status": run.status}


_WORKER_SESSIONS: collections.OrderedDict[str, ExecutionSession] = collections.OrderedDict()
_WORKER_LOCK = threading.Lock()
_WORKER_PID: int | None = None


def _worker_session(config: dict[str, Any], base_dir: str) -> ExecutionSession:
    """The session a worker process runs specs of one config in: built once per process and
    config (plugins discovered, backends built, the store opened once), as a long-lived
    session in one process would be; closed when the process exits."""
    global _WORKER_PID
    key = json.dumps([config, base_dir], sort_keys=True)
    with _WORKER_LOCK:
        if os.getpid() != _WORKER_PID:
            _WORKER_SESSIONS.clear()  # a forked child: the parent's sessions are not its own
            if _WORKER_PID is None:
                atexit.register(_close_worker_sessions)
            _WORKER_PID = os.getpid()
        session = _WORKER_SESSIONS.get(key)
        if session is None or session._closed:
            from .session import ExecutionSession

            session = ExecutionSession(AmshaConfig.model_validate(config), base_dir=base_dir)
            _WORKER_SESSIONS[key] = session
            while len(_WORKER_SESSIONS) > 8:
                _WORKER_SESSIONS.popitem(last=False)[1].close(wait=True)
        _WORKER_SESSIONS.move_to_end(key)
        return session


def _close_worker_sessions() -> None:
    for session in list(_WORKER_SESSIONS.values()):
        session.close(wait=True)
    _WORKER_SESSIONS.clear()


async def _finish_then_cancel(write: Any) -> None:
    """Await a store write running in a worker thread; if the run is cancelled meanwhile, let
    the write finish first (a thread cannot be stopped: a RUNNING record written after the
    CANCELLED one would win), then let the cancellation through."""
    task = asyncio.ensure_future(write)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.gather(task, return_exceptions=True)
        raise


def _elsewhere(executor: concurrent.futures.Executor | None) -> bool:
    """Whether a run given to ``executor`` executes in another process (anything but a thread
    pool): it is then read through the store."""
    return executor is not None and not isinstance(executor, concurrent.futures.ThreadPoolExecutor)


def _run_links(observers: Sequence[Any], run_id: str) -> dict[str, str]:
    """Ask each observer with a ``run_links(run_id)`` method, in the caller's thread, for
    string pairs to carry on ``run.started`` (an observer on a thread of its own cannot see
    the caller's context later). A failing observer gives nothing; the run goes on."""
    links: dict[str, str] = {}
    for observer in observers:
        capture = getattr(observer, "run_links", None)
        if capture is None:
            continue
        try:
            found = capture(run_id) or {}
            links.update({str(k): str(v) for k, v in found.items()})
        except Exception as exc:
            log.warning("amsha: observer %r failed in run_links: %s", observer, exc)
    return links
