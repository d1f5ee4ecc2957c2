"""The core's own backends, registered through the same hooks third parties use.

Factories are ``"module:attr"`` strings so that nothing here is imported until a session
selects it.
"""

from __future__ import annotations

from ..hookspecs import Register, hookimpl
from .direct import DirectOptions
from .observers import ConsoleOptions, JsonlOptions
from .scripted import ScriptedOptions
from .stores import FileStoreOptions

AMSHA_PLUGIN_API = "1.0"


@hookimpl
def amsha_register_providers(register: Register) -> None:
    register(
        "scripted",
        "amsha.builtins.scripted:build",
        options=ScriptedOptions,
        description="deterministic answers from config or a file, streamed with optional delays and failures",
    )


@hookimpl
def amsha_register_orchestrators(register: Register) -> None:
    register(
        "direct",
        "amsha.builtins.direct:build",
        options=DirectOptions,
        description="framework-free: each task is one LLM call (with tool round trips)",
    )


@hookimpl
def amsha_register_state_stores(register: Register) -> None:
    register("memory", "amsha.builtins.stores:build_memory", description="in-process memory (the default)")
    register(
        "file", "amsha.builtins.stores:build_file", options=FileStoreOptions, description="JSON files in a directory"
    )


@hookimpl
def amsha_register_observers(register: Register) -> None:
    register(
        "console",
        "amsha.builtins.observers:build_console",
        options=ConsoleOptions,
        description="live tokens and progress",
    )
    register("jsonl", "amsha.builtins.observers:build_jsonl", options=JsonlOptions, description="events as JSON lines")
