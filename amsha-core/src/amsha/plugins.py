"""The plugin manager: discovery, backend names, load errors and versions.

Loading works as pytest's does: the core's built-ins are always registered; then each
entry point of group ``amsha`` is loaded on its own, so a broken one is reported by name,
distribution and error and the rest still load. Environment variables:

``AMSHA_DISABLE_PLUGIN_AUTOLOAD``
    set (to anything non-empty) to load no entry points, only built-ins and plugins passed in code.
``AMSHA_LOAD_PLUGINS``
    a comma-separated allowlist of entry point names (or distribution names) to load.
``AMSHA_TRACE_PLUGINS``
    set to print each plugin load and registration to stderr.

Discovery runs once per process (and again only when those variables change or
:func:`refresh` is called): creating many sessions neither rescans nor re-imports.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from . import hookspecs
from .config import AmshaConfig, format_validation_error
from .errors import (
    ConfigError,
    DuplicatePluginError,
    PluginError,
    PluginLoadError,
    PluginVersionError,
    UnknownBackendError,
)

__all__ = [
    "BUILTIN_COMMANDS",
    "KINDS",
    "BackendContext",
    "BackendEntry",
    "CommandEntry",
    "PluginInfo",
    "PluginSet",
    "load_plugins",
    "refresh",
]

KINDS = ("provider", "orchestrator", "state_store", "observer")
_HOOKS = {
    "provider": "amsha_register_providers",
    "orchestrator": "amsha_register_orchestrators",
    "state_store": "amsha_register_state_stores",
    "observer": "amsha_register_observers",
}
#: Which first-party distribution provides a backend name, for "pip install ..." hints.
KNOWN_DISTRIBUTIONS = {
    ("provider", "openai"): "amsha-provider-openai",
    ("orchestrator", "crewai"): "amsha-orchestrator-crewai",
    ("orchestrator", "langgraph"): "amsha-orchestrator-langgraph",
    ("state_store", "sqlite"): "amsha-state-sqlite",
    ("observer", "opentelemetry"): "amsha-observer-opentelemetry",
}
BUILTIN_PLUGIN = "amsha.builtins.plugin"
#: Subcommands of ``amsha`` that the core itself defines; a plugin cannot take these names.
BUILTIN_COMMANDS = ("plugins", "config", "run", "runs")


@dataclass(slots=True)
class BackendContext:
    """What a backend factory receives.

    ``options`` is the validated options model (or the raw dict when the backend declared
    none); ``model`` is set for providers; ``base_dir`` is where relative paths in config
    resolve from.
    """

    kind: str
    name: str
    options: Any
    config: AmshaConfig
    base_dir: Path
    model: str | None = None
    key: str = ""


@dataclass(slots=True)
class BackendEntry:
    """One registered backend."""

    kind: str
    name: str
    factory: Callable[[BackendContext], Any] | str
    options_model: type[BaseModel] | None
    description: str
    plugin: str
    distribution: str | None
    version: str | None
    api: str

    def validate_options(self, options: dict[str, Any], key: str, *, source: str | None = None) -> Any:
        """Validate ``options`` against the backend's model; errors name ``key`` paths and
        the config file ``source`` they came from."""
        if self.options_model is None:
            return dict(options)
        try:
            return self.options_model.model_validate(options)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, prefix=key), source=source) from None

    def resolve_factory(self) -> Callable[[BackendContext], Any]:
        if not isinstance(self.factory, str):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            module = importlib.import_module(module_name)
            factory: Callable[[BackendContext], Any] = getattr(module, attr)
        except Exception as exc:
            raise PluginLoadError(self.plugin, self.distribution, self.version, exc) from exc
        return factory

    def build(self, ctx: BackendContext) -> Any:
        """Import the factory if needed and build the backend."""
        return self.resolve_factory()(ctx)


@dataclass(slots=True)
class CommandEntry:
    """One subcommand of ``amsha`` registered by a plugin (:func:`~amsha.hookspecs.amsha_register_commands`)."""

    name: str
    setup: Callable[[Any], Any] | str
    help: str
    plugin: str
    distribution: str | None
    version: str | None

    def resolve_setup(self) -> Callable[[Any], Any]:
        """The setup callable, imported first if it was given as ``"module:attr"``."""
        if not isinstance(self.setup, str):
            return self.setup
        module_name, _, attr = self.setup.partition(":")
        try:
            setup: Callable[[Any], Any] = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:
            raise PluginLoadError(self.plugin, self.distribution, self.version, exc) from exc
        return setup


@dataclass(slots=True)
class PluginInfo:
    """A loaded (or failed) plugin, as ``amsha plugins`` shows it."""

    name: str
    module: str | None
    distribution: str | None
    version: str | None
    api: str = hookspecs.PLUGIN_API_VERSION
    compatible: bool = True
    builtin: bool = False
    registers: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    implements: list[str] = field(default_factory=list)
    """The kinds whose registration hook the plugin implements (known even when its hooks
    are not called, as for an incompatible plugin)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "plugin_api": self.api,
            "compatible": self.compatible,
            "builtin": self.builtin,
            "registers": [{"kind": k, "name": n} for k, n in self.registers],
            "implements": list(self.implements),
            "error": self.error,
        }


class PluginSet:
    """The result of discovery: every plugin, every backend, every load error."""

    def __init__(self) -> None:
        self.plugins: list[PluginInfo] = []
        self.backends: dict[str, dict[str, list[BackendEntry]]] = {k: {} for k in KINDS}
        self.errors: list[PluginLoadError] = []
        self.commands: dict[str, list[CommandEntry]] = {}
        """Subcommand name -> the plugins registering it (more than one is a conflict)."""
        self.manager = pluggy.PluginManager("amsha")
        self.manager.add_hookspecs(hookspecs)

    def names(self, kind: str) -> list[str]:
        return sorted(self.backends[kind])

    def get(self, kind: str, name: str, *, key: str = "", source: str | None = None) -> BackendEntry:
        """The backend ``name`` of ``kind``, or a clear error: unknown (listing the installed
        names and the distribution that provides it), duplicate, or incompatible (naming the
        config ``key``, the config file ``source``, the plugin and both plugin API versions)."""
        entries = self.backends[kind].get(name)
        if not entries:
            incompatible = [p for p in self.plugins if not p.compatible and kind in p.implements]
            # Their hooks were never called, so which names they would register is unknown: a
            # plugin whose entry point or distribution carries the name is taken to be it.
            named = [p for p in incompatible if name in p.name or name in (p.distribution or "")]
            if named:
                info = named[0]
                raise PluginVersionError(
                    info.name,
                    info.api,
                    hookspecs.PLUGIN_API_VERSION,
                    info.distribution,
                    key=key,
                    source=source,
                    backend=f"{kind.replace('_', ' ')} {name!r}",
                    version=info.version,
                )
            hint = None
            dist = KNOWN_DISTRIBUTIONS.get((kind, name))
            if dist:
                hint = f"pip install {dist}"
            failed = [e for e in self.errors]
            if failed:
                names = ", ".join(f"{e.name} ({type(e.error).__name__}: {e.error})" for e in failed)
                hint = (hint + "; " if hint else "") + f"plugins that failed to load: {names}"
            core = hookspecs.PLUGIN_API_VERSION
            for info in incompatible:
                shipped = " ".join(filter(None, (info.distribution, info.version)))
                hint = (hint + "; " if hint else "") + (
                    f"plugin {info.name!r}{f' ({shipped})' if shipped else ''} implements {kind.replace('_', ' ')}s but targets plugin API "
                    f"{info.api} and this amsha-core speaks {core}, so it is not loaded (it may be the one providing "
                    f"{name!r}): install a release of {info.distribution or info.name} built for plugin API "
                    f"{core.split('.', maxsplit=1)[0]}.x"
                )
            raise UnknownBackendError(
                kind.replace("_", " "), name, self.names(kind), hint=hint, key=key, source=source
            )
        if len(entries) > 1:
            raise DuplicatePluginError(
                kind.replace("_", " "), name, [f"{e.plugin} ({e.distribution or 'in code'})" for e in entries]
            )
        entry = entries[0]
        if entry.api.split(".")[0] != hookspecs.PLUGIN_API_VERSION.split(".")[0]:
            raise PluginVersionError(
                entry.plugin, entry.api, hookspecs.PLUGIN_API_VERSION, entry.distribution, key=key, source=source
            )
        return entry

    def conflicts(self) -> list[DuplicatePluginError]:
        out = []
        for kind, names in self.backends.items():
            for name, entries in names.items():
                if len(entries) > 1:
                    out.append(DuplicatePluginError(kind, name, [e.plugin for e in entries]))
        for name, commands in self.commands.items():
            owners = [c.plugin for c in commands]
            if name in BUILTIN_COMMANDS:
                owners.insert(0, "amsha (built-in command)")
            if len(owners) > 1:
                out.append(DuplicatePluginError("command", name, owners))
        return out

    def command(self, name: str) -> CommandEntry | None:
        """The plugin command ``name``, or None when no plugin registers it or the name is
        contested (a built-in command's name, or registered by two plugins)."""
        entries = self.commands.get(name, [])
        if len(entries) != 1 or name in BUILTIN_COMMANDS:
            return None
        return entries[0]

    def add(
        self, plugin: object, *, name: str, distribution: str | None, version: str | None, builtin: bool = False
    ) -> None:
        """Register one plugin object (module or instance) and collect its backends."""
        api = str(getattr(plugin, "AMSHA_PLUGIN_API", hookspecs.PLUGIN_API_VERSION))
        info = PluginInfo(
            name=name,
            module=getattr(plugin, "__name__", type(plugin).__name__),
            distribution=distribution,
            version=version,
            api=api,
            compatible=api.split(".", maxsplit=1)[0] == hookspecs.PLUGIN_API_VERSION.split(".")[0],
            builtin=builtin,
        )
        info.implements = [k for k, hook in _HOOKS.items() if callable(getattr(plugin, hook, None))]
        self.plugins.append(info)
        if not info.compatible:
            # Built for another major of the plugin API: its hooks are not called (their
            # signatures may differ); a session selecting what it would provide is told why.
            if os.environ.get("AMSHA_TRACE_PLUGINS"):
                print(
                    f"amsha: plugin {name} targets plugin API {api}, this core speaks "
                    f"{hookspecs.PLUGIN_API_VERSION}: not registered",
                    file=sys.stderr,
                )
            return
        try:
            if self.manager.is_registered(plugin):
                info.error = "already registered"
                return
            self.manager.register(plugin, name=name)
        except Exception as exc:
            self._fail(info, exc)
            return
        unknown = [c.name for c in self.manager.get_hookcallers(plugin) or [] if not c.has_spec()]
        if unknown:
            self.manager.unregister(plugin)
            self._fail(info, PluginError(f"implements hooks Amsha does not define: {', '.join(unknown)}"))
            return
        trace = bool(os.environ.get("AMSHA_TRACE_PLUGINS"))
        for kind, hook_name in _HOOKS.items():
            hook = getattr(self.manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                if impl.plugin is not plugin:
                    continue

                def register(
                    bname: str,
                    factory: Any,
                    *,
                    options: type[BaseModel] | None = None,
                    description: str = "",
                    _kind: str = kind,
                ) -> None:
                    if not isinstance(bname, str) or not bname:
                        raise PluginError(f"plugin {name!r} registered a {_kind} with an invalid name {bname!r}")
                    entry = BackendEntry(_kind, bname, factory, options, description, name, distribution, version, api)
                    self.backends[_kind].setdefault(bname, []).append(entry)
                    info.registers.append((_kind, bname))
                    if trace:
                        print(f"amsha: plugin {name} registers {_kind} {bname!r}", file=sys.stderr)

                try:
                    impl.function(register=register)
                except Exception as exc:
                    self._fail(info, exc)
                    self._forget(name)
                    return
        self._add_commands(plugin, info, trace)

    def _add_commands(self, plugin: object, info: PluginInfo, trace: bool) -> None:
        for impl in self.manager.hook.amsha_register_commands.get_hookimpls():
            if impl.plugin is not plugin:
                continue

            def register(cname: str, setup: Any, *, help: str = "") -> None:
                if not isinstance(cname, str) or not cname or cname.startswith("-") or " " in cname:
                    raise PluginError(f"plugin {info.name!r} registered a command with an invalid name {cname!r}")
                if not (callable(setup) or (isinstance(setup, str) and ":" in setup)):
                    raise PluginError(
                        f"plugin {info.name!r}: command {cname!r} needs a setup callable or a 'module:attr' string"
                    )
                entry = CommandEntry(cname, setup, help, info.name, info.distribution, info.version)
                self.commands.setdefault(cname, []).append(entry)
                info.registers.append(("command", cname))
                if trace:
                    print(f"amsha: plugin {info.name} registers command {cname!r}", file=sys.stderr)

            try:
                impl.function(register=register)
            except Exception as exc:
                self._fail(info, exc)
                self._forget(info.name)

    def _fail(self, info: PluginInfo, exc: BaseException) -> None:
        err = PluginLoadError(info.name, info.distribution, info.version, exc)
        info.error = f"{type(exc).__name__}: {exc}"
        self.errors.append(err)

    def _forget(self, plugin_name: str) -> None:
        for names in self.backends.values():
            for bname in list(names):
                names[bname] = [e for e in names[bname] if e.plugin != plugin_name]
                if not names[bname]:
                    del names[bname]
        for cname in list(self.commands):
            self.commands[cname] = [c for c in self.commands[cname] if c.plugin != plugin_name]
            if not self.commands[cname]:
                del self.commands[cname]
        for info in self.plugins:
            if info.name == plugin_name:
                info.registers.clear()

    def add_failure(self, name: str, distribution: str | None, version: str | None, exc: BaseException) -> None:
        info = PluginInfo(name=name, module=None, distribution=distribution, version=version)
        self.plugins.append(info)
        self._fail(info, exc)


@dataclass(slots=True)
class _Loaded:
    name: str
    distribution: str | None
    version: str | None
    module: types.ModuleType | None
    error: BaseException | None


_lock = threading.Lock()
_cache: dict[tuple[str, str], list[_Loaded]] = {}
_set_cache: dict[tuple[str, str], PluginSet] = {}


def _env_key() -> tuple[str, str]:
    return (os.environ.get("AMSHA_DISABLE_PLUGIN_AUTOLOAD", ""), os.environ.get("AMSHA_LOAD_PLUGINS", ""))


def _load_entry_points(key: tuple[str, str]) -> list[_Loaded]:
    disabled, allow = key
    if disabled:
        return []
    allowed = {a.strip() for a in allow.split(",") if a.strip()} if allow else None
    trace = bool(os.environ.get("AMSHA_TRACE_PLUGINS"))
    loaded: list[_Loaded] = []
    seen: set[tuple[str, str]] = set()
    for ep in metadata.entry_points(group="amsha"):
        dist_name = ep.dist.name if ep.dist is not None else None
        dist_version = ep.dist.version if ep.dist is not None else None
        if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        if ep.value == BUILTIN_PLUGIN:
            continue
        if allowed is not None and ep.name not in allowed and (dist_name or "") not in allowed:
            continue
        try:
            module = ep.load()
            loaded.append(_Loaded(ep.name, dist_name, dist_version, module, None))
            if trace:
                print(f"amsha: loaded plugin {ep.name} ({dist_name} {dist_version}) from {ep.value}", file=sys.stderr)
        except Exception as exc:  # a broken plugin must not break the others
            loaded.append(_Loaded(ep.name, dist_name, dist_version, None, exc))
            if trace:
                print(f"amsha: plugin {ep.name} failed to load: {exc!r}", file=sys.stderr)
    return loaded


def load_plugins(extra: Iterable[object] = (), *, refresh: bool = False) -> PluginSet:
    """Discover plugins: built-ins, entry points of group ``amsha``, then ``extra``.

    ``extra`` holds plugin objects passed in code (modules or instances with hook
    implementations). The entry-point scan is cached per process.
    """
    extra = list(extra)
    key = _env_key()
    with _lock:
        if refresh:
            _cache.clear()
            _set_cache.clear()
        if not extra and key in _set_cache:
            return _set_cache[key]
        loaded = _cache.get(key)
        if loaded is None:
            loaded = _cache[key] = _load_entry_points(key)
    from .builtins import plugin as builtin_plugin

    plugins = PluginSet()
    core_version = _core_version()
    plugins.add(builtin_plugin, name="amsha", distribution="amsha-core", version=core_version, builtin=True)
    for item in loaded:
        if item.module is None:
            assert item.error is not None
            plugins.add_failure(item.name, item.distribution, item.version, item.error)
        else:
            plugins.add(item.module, name=item.name, distribution=item.distribution, version=item.version)
    for i, obj in enumerate(extra):
        name = getattr(obj, "__name__", None) or f"{type(obj).__name__}-{i}"
        plugins.add(obj, name=str(name), distribution=None, version=None)
    plugins.manager.check_pending()  # cannot fail: plugins with unknown hooks were refused one by one
    if os.environ.get("AMSHA_TRACE_PLUGINS"):
        plugins.manager.trace.root.setwriter(lambda s: print(s, end="", file=sys.stderr))
        plugins.manager.enable_tracing()
    if not extra:
        with _lock:
            _set_cache[key] = plugins
    return plugins


def refresh() -> PluginSet:
    """Forget the cached discovery and scan entry points again."""
    return load_plugins(refresh=True)


_version: str | None = None


def _core_version() -> str | None:
    global _version
    if _version is None:
        try:
            _version = metadata.version("amsha-core")
        except metadata.PackageNotFoundError:
            _version = "0+unknown"
    return _version


def describe(plugins: PluginSet) -> list[dict[str, Any]]:
    """The JSON rows ``amsha plugins --json`` prints."""
    rows = [p.to_dict() for p in plugins.plugins]
    return rows


def builtin_names(kinds: Sequence[str] = KINDS) -> dict[str, list[str]]:
    plugins = load_plugins()
    return {k: plugins.names(k) for k in kinds}
