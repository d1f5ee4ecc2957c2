"""Helpers shared by amsha-core's tests (imported by module name; tests/ is on sys.path)."""

from __future__ import annotations

import copy
from typing import Any

BASE: dict[str, Any] = {
    "provider": {
        "name": "scripted",
        "model": "scripted-1",
        "options": {
            "responses": [
                {"match": "Research", "text": "Fact one. Fact two. Fact three."},
                {"match": "Write", "text": "A short paragraph built from the facts."},
            ]
        },
    },
    "agents": {
        "researcher": {"role": "Researcher", "goal": "Find facts about {topic}"},
        "writer": {"role": "Writer", "goal": "Write about {topic}"},
    },
    "tasks": {
        "research": {"description": "Research {topic}.", "expected_output": "facts", "agent": "researcher"},
        "write": {"description": "Write about {topic}.", "agent": "writer", "context": ["research"]},
    },
    "retry": {"max_retries": 2, "initial_backoff_s": 0.001, "max_backoff_s": 0.002},
}


def make_config(**overrides: Any) -> dict[str, Any]:
    """The two-agent, two-task base config with top-level keys replaced or provider options merged."""
    config = copy.deepcopy(BASE)
    options = overrides.pop("provider_options", None)
    if options is not None:
        config["provider"]["options"].update(options)
    config.update(overrides)
    return config
