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
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from . import _loop
from ._run import _elsewhere, _Run, _run_links, run_spec
from ._scrub import scrubbing_store
from .config import AmshaConfig, LLMConfig, ProviderConfig, load_config
from .errors import (
    AmshaError,
    ConfigError,
    ExecutionError,
    InputError,
    NonJSONValueError,
)
from .events import Event, Observer
from .handle import ExecutionHandle, ExecutionMode
from .llm import LLM
from .metrics import UsageTotals
from .observe import ObserverChannel, ObserverError, observer_name
from .orchestrator import IOrchestrator
from .plugins import BackendContext, PluginSet, load_plugins
from .provider import ILLMProvider
from .registry import Registry
from .runcontrol import EventWriter, StoreRun
from .secrets import read_secret_refs, secret_env_refs
from .standalone import StandaloneScope
from .state import (
    CancelOutcome,
    ExecutionState,
    RunRecord,
    StateStore,
    check_json,
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
        # Everything the core hands to the store passes the scrubbing boundary first.
        self.store: StateStore = scrubbing_store(self._build("state_store", cfg.state.name, cfg.state.options, "state"))
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
        # LLM calls made outside any run reach the same observers (see amsha.standalone).
        self._standalone = StandaloneScope(
            [channel.submit for channel in self._channels], lambda scope_id: _run_links(self.observers, scope_id)
        )

    # ---- construction -------------------------------------------------------------------

    def _validate(
        self, kind: str, name: str, options: dict[str, Any], key: str, model: str | None = None
    ) -> BackendContext:
        entry = self.plugins.get(kind, name, key=f"{key}.name", source=self._label)
        validated = entry.validate_options(options, f"{key}.options", source=self._label)
        # Every secret a backend's options name is read (and so registered for scrubbing)
        # now, before the first run record is written, not when the backend first uses it.
        try:
            read_secret_refs(secret_env_refs(validated, f"{key}.options"))
        except ConfigError as exc:
            raise ConfigError(exc.problems, source=self._label) from None
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
                entry = self.plugins.get("provider", pcfg.name, key=f"{key}.name", source=self._label)
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
        inputs = _checked_inputs(inputs)
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
    def llm_totals(self) -> UsageTotals:
        """Usage, latency, retries and errors of the LLM calls made outside any run."""
        return self._standalone.totals

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


def _checked_inputs(inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's inputs, refused with :class:`InputError` naming the input unless each is
    plain JSON (they are stored with the run's record)."""
    checked = dict(inputs or {})
    for key, value in checked.items():
        if not isinstance(key, str):
            raise InputError(f"input names must be strings, got {key!r}")
        try:
            check_json(key, value)
        except NonJSONValueError as exc:
            raise InputError(f"input {exc.key!r}: {str(exc).partition(': ')[2]}") from None
    return checked
