"""Amsha: an agentic execution substrate.

Amsha standardizes how LLM and agent work executes (streaming or in the background), how it
is observed, and how its state is kept and replayed. It never decides what runs next: loops,
branches, retries of whole steps and meaning belong to the client.

Everything public is importable from here; names load on first use, so ``import amsha``
stays cheap and imports no framework.
"""

from __future__ import annotations

import importlib

# ``typing`` costs more to import than the rest of this module; type checkers treat a name
# ``TYPE_CHECKING`` as true, so the import below is for them only.
TYPE_CHECKING = False

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # session and execution
    "ExecutionSession": "session",
    "ExecutionHandle": "handle",
    "ExecutionMode": "handle",
    "RunResult": "handle",
    # LLM factory
    "LLM": "llm",
    "LLMStream": "llm",
    "AsyncLLMStream": "llm",
    "CallContext": "llm",
    "ILLMProvider": "provider",
    "BaseProvider": "provider",
    "ProviderCapabilities": "provider",
    "LLMRequest": "provider",
    "LLMResponse": "provider",
    "LLMChunk": "provider",
    "Message": "provider",
    "ToolCall": "provider",
    "ToolCallDelta": "provider",
    "ToolSpec": "provider",
    "Usage": "provider",
    # registry and orchestration
    "Registry": "registry",
    "IOrchestrator": "orchestrator",
    "BaseOrchestrator": "orchestrator",
    "RunContext": "orchestrator",
    "TaskScope": "orchestrator",
    # state
    "ExecutionState": "state",
    "StateStore": "state",
    "StateSnapshot": "state",
    "RunRecord": "state",
    "RunStatus": "state",
    "RunOwner": "state",
    "RunControl": "state",
    "RunControlStore": "state",
    "CancelOutcome": "state",
    "supports_run_control": "state",
    # events and metrics
    "Event": "events",
    "EventKind": "events",
    "Observer": "events",
    "AmshaMetrics": "metrics",
    "CallMetrics": "metrics",
    "UsageTotals": "metrics",
    # config
    "AmshaConfig": "config",
    "AgentSpec": "config",
    "TaskSpec": "config",
    "RetryConfig": "config",
    "RunsConfig": "config",
    "load_config": "config",
    # plugins
    "hookimpl": "hookspecs",
    "PLUGIN_API_VERSION": "hookspecs",
    "BackendContext": "plugins",
    "load_plugins": "plugins",
    # replay and secrets
    "ReplayProvider": "replay",
    "get_secret": "secrets",
}

__all__ = [
    "AgentSpec",
    "AmshaConfig",
    "AmshaMetrics",
    "AsyncLLMStream",
    "BackendContext",
    "BaseOrchestrator",
    "BaseProvider",
    "CallContext",
    "CancelOutcome",
    "CallMetrics",
    "UsageTotals",
    "Event",
    "EventKind",
    "ExecutionHandle",
    "ExecutionMode",
    "ExecutionSession",
    "ExecutionState",
    "ILLMProvider",
    "IOrchestrator",
    "LLM",
    "LLMChunk",
    "LLMRequest",
    "LLMResponse",
    "LLMStream",
    "Message",
    "Observer",
    "PLUGIN_API_VERSION",
    "ProviderCapabilities",
    "Registry",
    "ReplayProvider",
    "RetryConfig",
    "RunContext",
    "RunControl",
    "RunControlStore",
    "RunOwner",
    "RunRecord",
    "RunResult",
    "RunStatus",
    "RunsConfig",
    "StateSnapshot",
    "StateStore",
    "TaskScope",
    "TaskSpec",
    "ToolCall",
    "ToolCallDelta",
    "ToolSpec",
    "Usage",
    "__version__",
    "errors",
    "get_secret",
    "hookimpl",
    "load_config",
    "load_plugins",
    "supports_run_control",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name == "errors":
            return importlib.import_module(".errors", __name__)
        raise AttributeError(f"module 'amsha' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from typing import Any

    from . import errors
    from .config import AgentSpec, AmshaConfig, RetryConfig, RunsConfig, TaskSpec, load_config
    from .events import Event, EventKind, Observer
    from .handle import ExecutionHandle, ExecutionMode, RunResult
    from .hookspecs import PLUGIN_API_VERSION, hookimpl
    from .llm import LLM, AsyncLLMStream, CallContext, LLMStream
    from .metrics import AmshaMetrics, CallMetrics, UsageTotals
    from .orchestrator import BaseOrchestrator, IOrchestrator, RunContext, TaskScope
    from .plugins import BackendContext, load_plugins
    from .provider import (
        BaseProvider,
        ILLMProvider,
        LLMChunk,
        LLMRequest,
        LLMResponse,
        Message,
        ProviderCapabilities,
        ToolCall,
        ToolCallDelta,
        ToolSpec,
        Usage,
    )
    from .registry import Registry
    from .replay import ReplayProvider
    from .secrets import get_secret
    from .session import ExecutionSession
    from .state import (
        CancelOutcome,
        ExecutionState,
        RunControl,
        RunControlStore,
        RunOwner,
        RunRecord,
        RunStatus,
        StateSnapshot,
        StateStore,
        supports_run_control,
    )
