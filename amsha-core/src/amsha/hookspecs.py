"""Every hook an Amsha plugin can implement. Reading this file tells you the whole
extension surface.

A plugin is a module (usually ``yourpkg/plugin.py``) named by an entry point of group
``amsha`` in its distribution's ``pyproject.toml``::

    [project.entry-points.amsha]
    myprovider = "amsha_myprovider.plugin"

The module implements one or more ``amsha_register_*`` hooks with
:data:`amsha.hookimpl`. Each hook receives a ``register`` callable; call it once per
backend::

    register(name, factory, options=OptionsModel, description="...")

``factory`` is a callable, or a ``"module:attribute"`` string imported only when a session
selects the backend, so that importing the plugin module stays cheap (keep heavy imports
out of it). The factory is called as ``factory(ctx)`` with a :class:`~amsha.BackendContext`
(name, validated options, model, base directory, whole config) and returns the backend.
``options`` is a pydantic model that validates the backend's ``options:`` from config;
errors are reported with their key path.

A plugin module may set ``AMSHA_PLUGIN_API = "1.0"`` (the version of this file it was built
against). A plugin whose major version differs from :data:`PLUGIN_API_VERSION` is refused
when a session selects one of its backends; it does not stop sessions that don't.

Hooks are called once per plugin; one whose hook raises is reported as a load error of that
plugin and the others still register.

A plugin may also add subcommands to the ``amsha`` command line with
:func:`amsha_register_commands` (``amsha ui`` from amsha-ui is one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pluggy

__all__ = [
    "PLUGIN_API_VERSION",
    "CommandHandler",
    "CommandRegister",
    "Register",
    "amsha_register_commands",
    "amsha_register_observers",
    "amsha_register_orchestrators",
    "amsha_register_providers",
    "amsha_register_state_stores",
    "hookimpl",
    "hookspec",
]

PLUGIN_API_VERSION = "1.1"
"""The plugin API this core speaks: ``major.minor``. Plugins with another major are refused.

1.1 added run control to the state store protocol (:class:`amsha.state.RunControlStore`:
leases, cancel requests, fenced writes, optional ``wait_for_events``). Stores built for 1.0
keep working; a feature that needs run control (cancel from another process, LOST) says so
when it is used with one."""

hookspec = pluggy.HookspecMarker("amsha")
hookimpl = pluggy.HookimplMarker("amsha")


class Register(Protocol):
    """The ``register`` callable handed to every ``amsha_register_*`` hook."""

    def __call__(self, name: str, factory: Any, *, options: Any = None, description: str = "") -> None: ...


CommandHandler = Callable[[Any], int | None]
"""What a command's ``setup`` returns: called with the parsed :class:`argparse.Namespace`
when the command runs; returns the exit code (``None`` means 0)."""


class CommandRegister(Protocol):
    """The ``register`` callable handed to :func:`amsha_register_commands`."""

    def __call__(self, name: str, setup: Any, *, help: str = "") -> None: ...


@hookspec
def amsha_register_providers(register: Register) -> None:
    """Register LLM providers (:class:`~amsha.ILLMProvider` implementations).

    Called once per plugin when plugins are discovered. ``register(name, factory,
    options=Model, description=...)``: the factory receives a :class:`~amsha.BackendContext`
    whose ``model`` is the configured model and returns a provider. Selected by
    ``provider: {name: ...}`` or in a named ``llms`` entry.
    """


@hookspec
def amsha_register_orchestrators(register: Register) -> None:
    """Register orchestrators (:class:`~amsha.IOrchestrator` implementations).

    The factory receives a :class:`~amsha.BackendContext` and returns an orchestrator; it
    must not import its framework yet (do that on first execution). Selected by
    ``orchestrator: {name: ...}``.
    """


@hookspec
def amsha_register_state_stores(register: Register) -> None:
    """Register state stores (:class:`~amsha.StateStore` implementations).

    The factory receives a :class:`~amsha.BackendContext` and returns a store. Selected by
    ``state: {name: ...}``.
    """


@hookspec
def amsha_register_observers(register: Register) -> None:
    """Register observers (:class:`~amsha.Observer` implementations).

    The factory receives a :class:`~amsha.BackendContext` and returns an observer. Selected
    by entries of ``observers: [{name: ...}, ...]``.
    """


@hookspec
def amsha_register_commands(register: CommandRegister) -> None:
    """Register subcommands of the ``amsha`` command line (``amsha NAME ...``).

    Called once per plugin when the command line builds its parser.
    ``register(name, setup, help="one line for amsha --help")``: ``setup`` is a callable, or
    a ``"module:attribute"`` string imported only when the parser is built, called as
    ``setup(parser)`` with the :class:`argparse.ArgumentParser` of ``amsha NAME``; it adds the
    command's arguments and returns the handler (a :data:`CommandHandler`), which is called
    with the parsed :class:`argparse.Namespace` when the user runs the command and returns the
    exit code (``None`` means 0). ``setup`` runs for every invocation of ``amsha``, so it
    must stay cheap: import your framework (a web server, say) inside the handler.

    The handler may raise :class:`~amsha.errors.AmshaError` (one line on stderr, exit 2 for
    bad input) like the built-in commands. A name already taken by a built-in command
    (``plugins``, ``config``, ``run``, ``runs``) or by another plugin is refused: the command
    is left out and ``amsha plugins`` reports the conflict. Example (amsha-ui)::

        @hookimpl
        def amsha_register_commands(register):
            register("ui", setup_ui, help="browse recorded runs in the browser")


        def setup_ui(parser):
            parser.add_argument("--port", type=int, default=8765)
            return run_ui  # imports starlette and uvicorn when called
    """
