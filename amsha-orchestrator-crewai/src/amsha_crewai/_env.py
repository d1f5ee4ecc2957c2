"""Environment defaults set before CrewAI is first imported.

Offline, CrewAI's telemetry stalls for seconds trying to reach its server, and on a terminal
its tracing asks whether to share traces, waiting for an answer. Amsha sets these defaults
unless the user has set the variables: nothing phones home and nothing waits for input.
"""

from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_DISABLE_VERSION_CHECK": "true",
}


def apply() -> dict[str, str]:
    """Set each default the user has not set; return the ones set."""
    applied = {}
    for name, value in OFFLINE_DEFAULTS.items():
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    return applied
