"""Amsha plugin distribution for the orchestrator ``langgraph`` (LangGraph graphs).

Public names (imported lazily, so importing this package loads no framework):
:class:`AmshaChatModel`, :class:`AmshaCheckpointSaver`, :class:`LangGraphOrchestrator`,
:class:`LangGraphOptions`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "AmshaChatModel": "chat_model",
    "AmshaCheckpointSaver": "checkpoint",
    "JsonCheckpointSerializer": "checkpoint",
    "LangGraphOrchestrator": "orchestrator",
    "LangGraphOptions": "options",
    "use_graph": "orchestrator",
}

__all__ = [
    "AmshaChatModel",
    "AmshaCheckpointSaver",
    "JsonCheckpointSerializer",
    "LangGraphOptions",
    "LangGraphOrchestrator",
    "__version__",
    "use_graph",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'amsha_langgraph' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
