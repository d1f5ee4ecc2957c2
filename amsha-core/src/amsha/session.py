"""``ExecutionSession``: the client's entry point.

A session is created from config (a file, a dict or an :class:`AmshaConfig`), discovers
plugins, builds the configured backends (provider, orchestrator, state store, observers)
and runs what the client asks, in a mode, with an optional injected state, returning an
:class:`ExecutionHandle`. It applies observers automatically. It owns no pool, queue or
scheduler: background runs go to the executor the client hands in, or to a task on the
caller's running event loop; the sync API's documented minimal default is one daemon thread
with an event loop (see ``amsha._loop``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import importlib
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from . import _loop
from .config import AmshaConfig, LLMConfig, ProviderConfig, load_config
from .errors import (
    AmshaError,
    ConfigError,
    ExecutionError,
    InputError,
    RunCancelledError,
    RunNotFoundError,
)
from .events import Event, Observer, RunEventLog
from .handle import ExecutionHandle, ExecutionMode, RunResult, raise_for
from .llm import LLM
from .metrics import MetricsCollector, UsageTotals
from .observe import ObserverChannel, ObserverError, observer_name
from .orchestrator import IOrchestrator, RunContext
from .plugins import BackendContext, PluginSet, load_plugins
from .provider import ILLMProvider
from .registry import Registry
from .standalone import StandaloneScope
from .state import ExecutionState, RunRecord, RunStatus, StateStore

__all__ = ["ExecutionSession", "run_spec"]

log = logging.getLogger("amsha")
TOKEN_FLUSH = 64


class ExecutionSession:
    """Runs registry tasks (or bare LLM calls) with Amsha's execution semantics.

    ``config``: path, mapping or :class:`AmshaConfig` (None for the defaults: the
    ``scripted`` provider, ``direct`` orchestrator, ``memory`` store). ``plugins``: plugin
    objects passed in code, on top of the installed ones. ``registry``: agents and tasks
    registered in code instead of (or on top of) config. ``tools``: callables by name,
    overriding config import paths. ``observers``: observer objects passed in code.
    ``executor``: the default executor for BACKGROUND runs.
    """

    def __init__(
        self,
        config: AmshaConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        plugins: Iterable[object] = (),
        registry: Registry | None = None,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        observers: Iterable[Observer] = (),
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.config, self.base_dir = load_config(config, code_tools=tools or ())
        self._source = config if isinstance(config, str | os.PathLike) else None
        self.plugins: PluginSet = load_plugins(plugins)
        self._extra_plugins = list(plugins)
        cfg = self.config
        self.registry = registry or Registry.from_config(cfg)
        self.executor = executor
        self._tool_overrides = dict(tools or {})
        self._imported_tools: dict[str, Callable[..., Any]] = {}
        self._providers: dict[str | None, LLM] = {}
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._closed = False
        # Validate every backend now: an unknown name or bad option fails at creation.
        self._llm_configs: dict[str | None, tuple[ProviderConfig, str]] = {None: (cfg.provider, "provider")}
        for name, llm_cfg in cfg.llms.items():
            self._llm_configs[name] = (_merge_llm(cfg.provider, llm_cfg), f"llms.{name}")
        self._provider_specs = {
            name: self._validate("provider", pcfg.name, pcfg.options, key, model=pcfg.model)
            for name, (pcfg, key) in self._llm_configs.items()
        }
        self.store: StateStore = self._build("state_store", cfg.state.name, cfg.state.options, "state")
        self.orchestrator: IOrchestrator = self._build(
            "orchestrator", cfg.orchestrator.name, cfg.orchestrator.options, "orchestrator"
        )
        self.observers: list[Observer] = [
            self._build("observer", o.name, o.options, f"observers[{i}]") for i, o in enumerate(cfg.observers)
        ]
        self.observers.extend(observers)
        # Each observer gets its own queue and thread: a slow or raising one never holds back a run.
        self._channels = [
            ObserverChannel(
                observer,
                observer_name(observer, ocfg.name if ocfg else ""),
                queue_max=ocfg.queue_max if ocfg else 100_000,
                drain_timeout_s=ocfg.drain_timeout_s if ocfg else 5.0,
                delivery_interval_s=ocfg.delivery_interval_s if ocfg else None,
            )
            for observer, ocfg in itertools.zip_longest(self.observers, cfg.observers)
        ]
        # LLM calls made outside any run reach the same observers (see amsha.standalone).
        self._standalone = StandaloneScope(
            [channel.submit for channel in self._channels], lambda scope_id: _run_links(self.observers, scope_id)
        )

    # ---- construction -------------------------------------------------------------------

    def _validate(
        self, kind: str, name: str, options: dict[str, Any], key: str, model: str | None = None
    ) -> BackendContext:
        entry = self.plugins.get(kind, name, key=f"{key}.name")
        validated = entry.validate_options(options, f"{key}.options")
        return BackendContext(kind, name, validated, self.config, self.base_dir, model, key)

    def _build(self, kind: str, name: str, options: dict[str, Any], key: str) -> Any:
        ctx = self._validate(kind, name, options, key)
        entry = self.plugins.get(kind, name, key=f"{key}.name")
        try:
            return entry.build(ctx)
        except AmshaError:
            raise
        except Exception as exc:
            raise ConfigError(
                [(key, f"{kind.replace('_', ' ')} {name!r} could not be built: {type(exc).__name__}: {exc}")]
            ) from exc

    @property
    def source(self) -> str | None:
        """The config file this session was created from, if any."""
        return os.fspath(self._source) if self._source is not None else None

    def llm(self, name: str | None = None) -> LLM:
        """The execution-aware :class:`LLM` for the default provider, or a named ``llms`` entry.

        Usable on its own, outside any run: ``session.llm().generate("hi")``. Each such call
        emits its events to the session's observers in a scope of its own (``run.started``
        with mode ``standalone``, the ``llm.*`` events, ``run.finished`` with its metrics),
        and its usage is summed in :attr:`llm_totals`; see :mod:`amsha.standalone`.
        """
        if name is not None and name not in self._llm_configs:
            raise InputError(
                f"unknown llm {name!r}; configured llms: {', '.join(n for n in self._llm_configs if n) or 'none'}"
            )
        with self._lock:
            llm = self._providers.get(name)
            if llm is None:
                pcfg, key = self._llm_configs[name]
                ctx = self._provider_specs[name]
                entry = self.plugins.get("provider", pcfg.name, key=f"{key}.name")
                provider: ILLMProvider = entry.build(ctx)
                # The config's own retry section for this LLM wins, then the provider's declared
                # policy (its options), then the top-level ``retry``.
                retry = pcfg.retry or getattr(provider, "retry_config", None) or self.config.retry
                llm = LLM(provider, model=pcfg.model, retry=retry, name=name or "default", scope=self._standalone)
                self._providers[name] = llm
            return llm

    def tool(self, name: str) -> Callable[..., Any]:
        """A tool callable by name: passed in code, or imported from its config path."""
        if name in self._tool_overrides:
            return self._tool_overrides[name]
        if name in self._imported_tools:
            return self._imported_tools[name]
        path = self.config.tools.get(name)
        if path is None:
            raise InputError(f"unknown tool {name!r}; declare it under 'tools' or pass tools={{...}}")
        module, _, attr = path.partition(":")
        try:
            fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        except Exception as exc:
            raise ConfigError([(f"tools.{name}", f"cannot import {path!r}: {type(exc).__name__}: {exc}")]) from None
        self._imported_tools[name] = fn
        return fn

    # ---- runs ---------------------------------------------------------------------------

    def _prepare(
        self,
        tasks: Sequence[str] | str | None,
        inputs: Mapping[str, Any] | None,
        state: ExecutionState | Mapping[str, Any] | str | None,
        mode: ExecutionMode | str,
        run_id: str | None,
        provider_override: ILLMProvider | None = None,
        replay_of: str | None = None,
    ) -> _Run:
        if self._closed:
            raise ExecutionError("this session is closed")
        mode = ExecutionMode(mode)
        names = self.registry.select([tasks] if isinstance(tasks, str) else tasks)
        inputs = dict(inputs or {})
        if isinstance(state, ExecutionState):
            st = state
        elif isinstance(state, str):
            st = ExecutionState.from_store(self.store, state)
        else:
            st = ExecutionState(state or {})
        # Placeholders may name keys of the injected state as well as inputs (inputs win), so
        # a run's texts can use what earlier runs stored; the state itself is never changed
        # (nor copied: only the keys a placeholder names are read).
        values: Mapping[str, Any] = collections.ChainMap(inputs, cast(Any, st)) if len(st) else inputs
        registry = self.registry.render(values, names)
        tools: dict[str, Callable[..., Any]] = {}
        for name in names:
            spec = registry.task(name)
            for tool in [*registry.agent(spec.agent).tools, *spec.tools]:
                tools[tool] = self.tool(tool)
        run = _Run(
            session=self,
            run_id=run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}",
            mode=mode,
            registry=registry,
            task_names=names,
            inputs=inputs,
            state=st,
            tools=tools,
            provider_override=provider_override,
            replay_of=replay_of,
        )
        with self._lock:
            self._runs[run.run_id] = run
        return run

    def run(
        self,
        tasks: Sequence[str] | str | None = None,
        *,
        inputs: Mapping[str, Any] | None = None,
        state: ExecutionState | Mapping[str, Any] | str | None = None,
        mode: ExecutionMode | str = ExecutionMode.INTERACTIVE,
        executor: concurrent.futures.Executor | None = None,
        run_id: str | None = None,
        detach: bool = False,
    ) -> ExecutionHandle:
        """Start a run of ``tasks`` (exactly those, in that order; default: the pipeline hint,
        else every task) and return its handle at once.

        ``inputs`` fill ``{placeholders}``; ``state`` is an :class:`ExecutionState` to write
        into (shared with other runs), a mapping, or a state id to load from the store.
        BACKGROUND runs go to ``executor`` (or the session's): a thread pool runs them in
        this process, any other executor (process pool, Dask, Ray) gets a picklable spec
        and reports through the store. Works from sync code, also under a running loop.
        """
        run = self._prepare(tasks, inputs, state, mode, run_id)
        executor = executor or (self.executor if run.mode is ExecutionMode.BACKGROUND else None)
        run.start_record()
        if executor is None:
            run.loop_future = _loop.submit(run.execute())
        elif isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            run.future = executor.submit(asyncio.run, run.execute())
        else:
            run.start_remote(executor)
        return ExecutionHandle(run.run_id, run.mode, run=run, detach=detach)

    async def arun(
        self,
        tasks: Sequence[str] | str | None = None,
        *,
        inputs: Mapping[str, Any] | None = None,
        state: ExecutionState | Mapping[str, Any] | str | None = None,
        mode: ExecutionMode | str = ExecutionMode.INTERACTIVE,
        executor: concurrent.futures.Executor | None = None,
        run_id: str | None = None,
        detach: bool = False,
    ) -> ExecutionHandle:
        """Async twin of :meth:`run`: the run is a task on the caller's event loop (or on
        ``executor`` for BACKGROUND runs)."""
        run = self._prepare(tasks, inputs, state, mode, run_id)
        executor = executor or (self.executor if run.mode is ExecutionMode.BACKGROUND else None)
        await asyncio.to_thread(run.start_record)
        if executor is None:
            run.task = asyncio.get_running_loop().create_task(run.execute())
        elif isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            run.future = executor.submit(asyncio.run, run.execute())
        else:
            run.start_remote(executor)
        return ExecutionHandle(run.run_id, run.mode, run=run, detach=detach)

    def attach(self, run: str) -> ExecutionHandle:
        """A handle for a run by id (or ``handle.to_json()``), in this process or another one
        sharing the store. Raises :class:`RunNotFoundError` if the store has no such run."""
        if run.startswith("{"):
            data = json.loads(run)
            run_id, mode = data["run_id"], ExecutionMode(data.get("mode", "background"))
        else:
            run_id, mode = run, ExecutionMode.BACKGROUND
        local = self._runs.get(run_id)
        if local is not None:
            return ExecutionHandle(run_id, local.mode, run=local, detach=True)
        record = self.store.get_run(run_id)
        return ExecutionHandle(
            run_id, ExecutionMode(record.mode) if record.mode else mode, store=self.store, detach=True
        )

    def replay(self, run_id: str, *, mode: ExecutionMode | str = ExecutionMode.INTERACTIVE) -> ExecutionHandle:
        """Re-run a finished run offline from its recorded LLM exchanges: the same tasks,
        inputs and starting state, every LLM answered from the record (deterministic, no
        provider called). A request the record lacks raises :class:`ReplayDivergenceError`
        naming the first exchange where the runs diverge."""
        from .replay import ReplayProvider

        record = self.store.get_run(run_id)
        events = [Event.from_dict(e) for e in self.store.read_events(run_id)]
        provider = ReplayProvider(run_id, events)
        state: ExecutionState | None = None
        if record.state_id and record.base_version:
            snap = self.store.get_state(record.state_id, record.base_version)
            state = ExecutionState(snap.data)
        run = self._prepare(
            record.tasks, record.inputs, state, mode, None, provider_override=provider, replay_of=run_id
        )
        run.start_record()
        run.loop_future = _loop.submit(run.execute())
        return ExecutionHandle(run.run_id, run.mode, run=run)

    def flush_observers(self, timeout: float | None = None) -> bool:
        """Wait until every observer has been handed every event emitted so far.

        Observers run on threads of their own; call this before reading what an observer
        wrote (a file, an exporter). Returns False if ``timeout`` (seconds, for all observers
        together) expired first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for channel in self._channels:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not channel.flush(remaining):
                return False
        return True

    @property
    def llm_totals(self) -> UsageTotals:
        """Usage, latency, retries and errors of the LLM calls made outside any run."""
        return self._standalone.totals

    @property
    def observer_errors(self) -> list[ObserverError]:
        """What observers raised in this session, one entry per observer and run."""
        return [error for channel in self._channels for error in channel.errors]

    def runs(self, limit: int = 50) -> list[RunRecord]:
        """Recent runs in the configured store, newest first."""
        return self.store.list_runs(limit)

    def events(self, run_id: str, from_seq: int = 0) -> list[Event]:
        """A run's recorded events."""
        self.store.get_run(run_id)
        return [Event.from_dict(e) for e in self.store.read_events(run_id, from_seq)]

    # ---- lifecycle ----------------------------------------------------------------------

    def close(self, *, drain_timeout_s: float | None = None) -> None:
        """Cancel runs still going in this process, close backends and observers.

        Observers are first given time to catch up: at most ``drain_timeout_s`` each (default:
        each observer's configured ``drain_timeout_s``, 5 s unless set); what a slow observer
        has not taken by then is dropped and reported.
        """
        if self._closed:
            return
        self._closed = True
        for run in list(self._runs.values()):
            if run.status not in RunStatus.TERMINAL and run.mode is ExecutionMode.INTERACTIVE:
                run.cancel("the session was closed")
        for channel in self._channels:
            channel.close(drain_timeout_s)
        for obj in [
            self.orchestrator,
            *(llm.provider for llm in self._providers.values()),
            self.store,
        ]:
            close = getattr(obj, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # closing must not fail the client's shutdown
                    log.warning("amsha: closing %r failed", obj, exc_info=True)

    def __enter__(self) -> ExecutionSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ExecutionSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _merge_llm(base: ProviderConfig, llm: LLMConfig) -> ProviderConfig:
    same = llm.provider is None or llm.provider == base.name
    return ProviderConfig(
        name=llm.provider or base.name,
        model=llm.model or base.model,
        options={**(base.options if same else {}), **llm.options},
        retry=llm.retry or base.retry,
    )


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
        self.remote = False
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
        self._pending: list[dict[str, Any]] = []
        self.links = _run_links(session.observers, run_id)
        """What observers captured in the caller's thread when the run was started (e.g. a
        W3C ``traceparent``), carried on the ``run.started`` event."""
        self.log.add_sink(self._persist)
        for channel in session._channels:
            self.log.add_sink(channel.submit)
        self.outputs: dict[str, Any] = {}
        self.remote_result: dict[str, Any] | None = None

    # ---- sinks --------------------------------------------------------------------------

    def _persist(self, event: Event) -> None:
        self._pending.append(event.to_dict())
        if event.kind != "llm.token" or len(self._pending) >= TOKEN_FLUSH:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            try:
                self.session.store.append_events(self.run_id, batch)
            except Exception:
                log.exception("amsha: run %s: could not persist %d events", self.run_id, len(batch))

    # ---- lifecycle ----------------------------------------------------------------------

    def start_record(self) -> None:
        self.session.store.put_run(self.record)

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

    def _snapshot(self, reason: str) -> None:
        if not self.state.dirty:
            return  # nothing changed since the last snapshot
        self.state.commit(self.session.store, run_id=self.run_id, reason=reason)
        self.record.state_version = self.state.version
        self.log.emit(
            "state.snapshot",
            self.run_id,
            None,
            data={"state_id": self.state.state_id, "version": self.state.version, "reason": reason},
        )

    async def execute(self) -> None:
        """The run itself; never raises (the outcome is in the record and the handle)."""
        self.loop = asyncio.get_running_loop()
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
            await asyncio.to_thread(self.session.store.put_run, self.record)
            if self.cancel_event.is_set():
                raise RunCancelledError(self.run_id, self.cancel_reason or "cancelled")
            await self.session.orchestrator.aexecute(ctx)
            self.outputs = dict(ctx.outputs)
            self._snapshot("run finished")
            self._end(RunStatus.SUCCEEDED, "run.finished", {})
        except (asyncio.CancelledError, RunCancelledError) as exc:
            self.outputs = dict(ctx.outputs)
            reason = self.cancel_reason or (exc.reason if isinstance(exc, RunCancelledError) else "cancelled")
            self.error = {"type": "RunCancelledError", "message": reason}
            partial = "".join(e.text for e in self.log.events if e.kind == "llm.token" and e.task not in ctx.outputs)
            self._safe_snapshot("run cancelled")
            self._end(RunStatus.CANCELLED, "run.cancelled", {"reason": reason, "partial_text": partial})
        except BaseException as exc:  # the outcome is reported through the handle
            self.outputs = dict(ctx.outputs)
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

    def _end(self, status: str, kind: str, data: dict[str, Any]) -> None:
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
        try:
            self.session.store.put_run(self.record)
        except Exception:
            log.exception("amsha: run %s: could not write the final run record", self.run_id)
        self.log.close()
        if not self.done.done():
            self.done.set_result(None)

    def cancel(self, reason: str) -> bool:
        if self.status in RunStatus.TERMINAL or self.cancel_event.is_set():
            return False
        if self.remote and self.future is not None and not self.future.cancel():
            log.warning("amsha: run %s is executing in another process and cannot be cancelled from here", self.run_id)
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
        session = self.session
        if session._extra_plugins or session._tool_overrides:
            raise InputError(
                "runs on a non-thread executor rebuild the session from config: pass plugins and tools through config"
            )
        spec = {
            "config": session.config.model_dump(mode="json"),
            "base_dir": str(session.base_dir),
            "tasks": self.task_names,
            "inputs": self.inputs,
            "state": self.state.save(),
            "run_id": self.run_id,
        }
        self.status = RunStatus.RUNNING
        self.remote = True
        future = executor.submit(run_spec, spec)
        self.future = future
        future.add_done_callback(self._remote_done)

    def _remote_done(self, future: concurrent.futures.Future[Any]) -> None:
        try:
            data = future.result()
            self.remote_result = data
            self.status = data["status"]
            self.outputs = data["outputs"]
            self.error = data["error"]
            for raw in data["events"]:
                event = Event.from_dict(raw)
                self.collector(event)
                self.log.events.append(event)
            if data.get("state"):
                loaded = ExecutionState.load(data["state"])
                self.state.update(loaded.to_dict())
                self.state.version = loaded.version
        except BaseException as exc:
            self.status = RunStatus.FAILED
            self.error = {"type": type(exc).__name__, "message": str(exc)}
            self.exception = exc
        # The worker wrote to its own store (the same one when the backend is shared, such as
        # a file or a database); make this process's store agree without overwriting it.
        store = self.session.store
        try:
            if not store.read_events(self.run_id):
                store.append_events(self.run_id, [e.to_dict() for e in self.log.events])
            try:
                theirs: RunRecord | None = store.get_run(self.run_id)
            except RunNotFoundError:
                theirs = None
            if theirs is not None and theirs.status == self.status:
                self.record = theirs
                self.log.close()
                if not self.done.done():
                    self.done.set_result(None)
                return
            self.record.state_version = self.state.version if self.state.version else None
            self.record.status = self.status
            self.record.outputs = self.outputs
            self.record.error = self.error
            self.record.finished_at = time.time()
            self.record.metrics = self.collector.metrics.to_dict()
            store.put_run(self.record)
        except Exception:
            log.exception("amsha: run %s: could not record the remote outcome", self.run_id)
        self.log.close()
        if not self.done.done():
            self.done.set_result(None)


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Execute a run described by a picklable spec (in a worker process); returns its record."""
    config = AmshaConfig.model_validate(spec["config"])
    cwd = Path.cwd()
    os.chdir(spec["base_dir"])
    try:
        with ExecutionSession(config) as session:
            state = ExecutionState.load(spec["state"])
            handle = session.run(
                spec["tasks"], inputs=spec["inputs"], state=state, run_id=spec["run_id"], mode=ExecutionMode.BACKGROUND
            )
            try:
                handle.result()
            except (AmshaError, RunCancelledError):
                pass
            run = session._runs[spec["run_id"]]
            return {
                "status": run.status,
                "outputs": run.outputs,
                "error": run.error,
                "events": [e.to_dict() for e in run.log.events],
                "state": run.state.save(),
            }
    finally:
        os.chdir(cwd)


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
