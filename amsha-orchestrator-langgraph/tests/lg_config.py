"""The shared test config (a module of its own, so that running these tests together with
the repository's cross-package tests, which have their own ``conftest``, imports it unambiguously)."""

from __future__ import annotations

from typing import Any


def config(orchestrator: dict[str, Any] | None = None, *, delay: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A config on the scripted provider with two agents and two tasks."""
    base: dict[str, Any] = {
        "provider": {
            "name": "scripted",
            "model": "scripted-1",
            "options": {
                "token_delay_s": delay,
                "report_usage": True,
                "tools": True,
                "responses": [
                    {"match": "Gather", "text": "alpha beta gamma"},
                    {"match": "Summarize", "text": "summary of alpha"},
                    {"match": "Draft", "text": "kelp grows fast"},
                    {"match": "Polish", "text": "Kelp grows remarkably fast."},
                ],
            },
        },
        "orchestrator": orchestrator or {"name": "langgraph"},
        "agents": {
            "gatherer": {"role": "Gatherer", "goal": "Gather words"},
            "summarizer": {"role": "Summarizer", "goal": "Summarize words"},
            "writer": {"role": "Writer", "goal": "Write"},
        },
        "tasks": {
            "gather": {"description": "Gather three words.", "expected_output": "three words", "agent": "gatherer"},
            "summarize": {"description": "Summarize the words.", "agent": "summarizer", "context": ["gather"]},
        },
        "pipeline": ["gather", "summarize"],
    }
    base.update(extra)
    return base
