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
import atexit
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
import weakref
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
    LeaseLostError,
    RunCancelledError,
)
from .events import Event, Observer, RunEventLog
from .handle import ExecutionHandle, ExecutionMode, RunResult, raise_for
from .llm import LLM
from .metrics import MetricsCollector
from .observe import ObserverChannel, ObserverError, observer_name
from .orchestrator import IOrchestrator, RunContext
from .plugins import BackendContext, PluginSet, load_plugins
from .provider import ILLMProvider
from .registry import Registry
from .runcontrol import EventWriter, OwnerLease, StoreRun
from .state import (
    CancelOutcome,
    ExecutionState,
    RunControlStore,
    RunRecord,
    RunStatus,
    StateStore,
    supports_run_control,
)

__all__ = ["ExecutionSession", "run_spec"]

log = logging.getLogger("amsha")


class ExecutionSession:
    """Runs registry tasks (or bare LLM calls) with Amsha's execution semantics.

    ``config``: path, mapping or :class:`AmshaConfig` (None for the defaults: the
    ``scripted`` provider, ``direct`` orchestrator, ``memory`` store). ``plugins``: plugin
    objects passed in code, on top of the installed ones. ``registry``: agents and tasks
    registered in code instead of (or on top of) config. ``tools``: callables by name,
    overriding config import paths. ``observers``: observer objects passed in code.
    ``executor``: the default executor for BACKGROUND runs. ``base_dir``: where relative
    paths in a config given as a mapping or model resolve (default: the config file's folder,
    else the working directory).
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
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config, self.base_dir = load_config(config, code_tools=tools or ())
        if base_dir is not None and not isinstance(config, str | os.PathLike):
            self.base_dir = Path(base_dir)
        self._source = config if isinstance(config, str | os.PathLike) else None
        self._label = os.fspath(self._source) if self._source is not None else None
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
        self._writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EventWriter] = weakref.WeakKeyDictionary()
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
        # Observers passed in code see runs handed to workers through the store tail (the
        # worker runs the config's observers itself).
        self._code_channels = self._channels[len(cfg.observers) :]

    # ---- construction -------------------------------------------------------------------

    def _validate(
        self, kind: str, name: str, options: dict[str, Any], key: str, model: str | None = None
    ) -> BackendContext:
        entry = self.plugins.get(kind, name, key=f"{key}.name", source=self._label)
        validated = entry.validate_options(options, f"{key}.options", source=self._label)
        return BackendContext(kind, name, validated, self.config, self.base_dir, model, key)

    def _build(self, kind: str, name: str, options: dict[str, Any], key: str) -> Any:
        ctx = self._validate(kind, name, options, key)
        entry = self.plugins.get(kind, name, key=f"{key}.name", source=self._label)
        try:
            return entry.build(ctx)
        except AmshaError:
            raise
        except Exception as exc:
            raise ConfigError(
                [(key, f"{kind.replace('_', ' ')} {name!r} could not be built: {type(exc).__name__}: {exc}")],
                source=self._label,
            ) from exc

    @property
    def source(self) -> str | None:
        """The config file this session was created from, if any."""
        return os.fspath(self._source) if self._source is not None else None

    def llm(self, name: str | None = None) -> LLM:
        """The execution-aware :class:`LLM` for the default provider, or a named ``llms`` entry.

        Usable on its own, outside any run: ``session.llm().generate("hi")``.
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
                entry = self.plugins.get("provider", pcfg.name, key=f"{key}.name", source=self._label)
                provider: ILLMProvider = entry.build(ctx)
                # The config's own retry section for this LLM wins, then the provider's declared
                # policy (its options), then the top-level ``retry``.
                retry = pcfg.retry or getattr(provider, "retry_config", None) or self.config.retry
                llm = LLM(provider, model=pcfg.model, retry=retry, name=name or "default")
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
        if _elsewhere(executor):
            self._start(run, run.start_remote, cast(concurrent.futures.Executor, executor))
        else:
            self._start_record(run)
            if executor is None:
                run.loop_future = _loop.submit(run.execute())
            else:
                run.future = executor.submit(asyncio.run, run.execute())
        return self._handle(run, detach)

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
        if _elsewhere(executor):
            await asyncio.to_thread(self._start, run, run.start_remote, cast(concurrent.futures.Executor, executor))
        else:
            await asyncio.to_thread(self._start_record, run)
            if executor is None:
                run.task = asyncio.get_running_loop().create_task(run.execute())
            else:
                run.future = executor.submit(asyncio.run, run.execute())
        return self._handle(run, detach)

    def _writer(self, loop: asyncio.AbstractEventLoop | None) -> EventWriter:
        """The event writer of the runs on ``loop`` (one per loop: its timer runs there)."""
        with self._lock:
            writer = self._writers.get(loop) if loop is not None else None
            if writer is None:
                writer = EventWriter(self.store, loop, self.config.runs.event_flush_s)
                if loop is not None:
                    self._writers[loop] = writer
            return writer

    def _start_record(self, run: _Run) -> None:
        self._start(run, run.start_record)

    def _start(self, run: _Run, start: Callable[..., None], *args: Any) -> None:
        """Start ``run`` with ``start(*args)``; a run that could not start is forgotten."""
        try:
            start(*args)
        except BaseException:
            with self._lock:
                self._runs.pop(run.run_id, None)
            raise

    def _handle(self, run: _Run, detach: bool = False) -> ExecutionHandle:
        return ExecutionHandle(
            run.run_id, run.mode, run=run, detach=detach, poll_max_s=self.config.runs.tail_poll_max_s
        )

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
            return self._handle(local, detach=True)
        record = self.store.get_run(run_id)
        return ExecutionHandle(
            run_id,
            ExecutionMode(record.mode) if record.mode else mode,
            store=self.store,
            detach=True,
            poll_max_s=self.config.runs.tail_poll_max_s,
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
        self._start_record(run)
        run.loop_future = _loop.submit(run.execute())
        return self._handle(run)

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
    def observer_errors(self) -> list[ObserverError]:
        """What observers raised in this session, one entry per observer and run."""
        return [error for channel in self._channels for error in channel.errors]

    def runs(self, limit: int = 50) -> list[RunRecord]:
        """Recent runs in the configured store, newest first, as a reader reports them (a run
        whose owner's lease expired is LOST)."""
        now = time.time()
        return [record.observed(now) for record in self.store.list_runs(limit)]

    def cancel_run(self, run_id: str, reason: str = "cancelled by the client") -> str:
        """Cancel a run by id, wherever it executes; returns what happened, a
        :class:`~amsha.CancelOutcome` value: ``requested`` (its owner stops it within
        ``runs.cancel_poll_s``), ``cancelled`` (it had not started: it never will), ``ended``
        (it had already ended: nothing changed) or ``lost``. :class:`RunNotFoundError` if the
        store has no such run; a store without run control raises :class:`StateError`."""
        local = self._runs.get(run_id)
        if local is not None and local.remote is None:
            return CancelOutcome.REQUESTED if local.cancel(reason) else CancelOutcome.ENDED
        if local is not None and local.remote is not None:
            return local.remote.cancel(reason)
        return StoreRun(self.store, run_id).cancel(reason)

    def get_run(self, run_id: str) -> RunRecord:
        """The record of ``run_id`` as a reader reports it (LOST applied);
        :class:`RunNotFoundError` if the store has no such run."""
        return self.store.get_run(run_id).observed()

    def events(self, run_id: str, from_seq: int = 0) -> list[Event]:
        """A run's recorded events."""
        self.store.get_run(run_id)
        return [Event.from_dict(e) for e in self.store.read_events(run_id, from_seq)]

    # ---- lifecycle ----------------------------------------------------------------------

    def close(self, *, drain_timeout_s: float | None = None, wait: bool = False, timeout_s: float = 30.0) -> None:
        """End the session: runs still executing in this process are cancelled (reason "the
        session was closed"), or with ``wait=True`` waited for, at most ``timeout_s`` in all;
        then observers catch up and the backends close. The store is closed only after every
        run of this process has written its end, never under a running write. Runs handed to a
        worker are not this process's: they go on (attach to them by id).

        Observers are given at most ``drain_timeout_s`` each to catch up (default: each
        observer's configured ``drain_timeout_s``, 5 s unless set); what a slow observer has
        not taken by then is dropped and reported.
        """
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        live = [run for run in list(self._runs.values()) if run.remote is None and not run.done.done()]
        for run in live:
            if not wait:
                run.cancel("the session was closed")
        for run in live:
            try:
                run.done.result(max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                log.warning("amsha: run %s did not end within %ss of close()", run.run_id, timeout_s)
        stuck = [run.run_id for run in live if not run.done.done()]
        for run in self._runs.values():
            run.stop_feeding()
        for channel in self._channels:
            channel.close(drain_timeout_s)
        if stuck:
            log.warning("amsha: the state store is left open: runs %s are still writing", ", ".join(stuck))
        for obj in [
            self.orchestrator,
            *(llm.provider for llm in self._providers.values()),
            *([] if stuck else [self.store]),
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
