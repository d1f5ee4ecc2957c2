"""Shared pieces of the crewai orchestrator's tests (imported by module name): configs on the offline ``scripted``
provider (real CrewAI crews, no network)."""

from __future__ import annotations

import json
from typing import Any

RESEARCH = "Tide pools hold anemones, hermit crabs and sea stars."
POST = "Tide pools are small worlds: anemones, crabs and stars."


def lookup(species: str) -> str:
    """Look up facts about a species."""
    return json.dumps({"species": species, "fact": "eats plankton"})


def crew_config(**provider_options: Any) -> dict[str, Any]:
    """Two agents, two tasks, the second using the first's output as context."""
    options: dict[str, Any] = {
        "responses": [
            {"match": "Research {topic}".replace("{topic}", "tide pools"), "text": RESEARCH},
            # Answers only when the research output reached the writer as context.
            {"match": "anemones, hermit crabs", "text": POST},
        ]
    }
    options.update(provider_options)
    return {
        "provider": {"name": "scripted", "options": options},
        "orchestrator": {"name": "crewai"},
        "agents": {
            "researcher": {"role": "Researcher", "goal": "Find facts", "backstory": "A marine biologist."},
            "writer": {"role": "Writer", "goal": "Write short posts"},
        },
        "tasks": {
            "research": {
                "description": "Research {topic}",
                "agent": "researcher",
                "expected_output": "Facts",
            },
            "write": {
                "description": "Write a post about {topic}",
                "agent": "writer",
                "context": ["research"],
                "expected_output": "A post",
            },
        },
        "retry": {"max_retries": 2, "initial_backoff_s": 0.001, "max_backoff_s": 0.001},
    }
