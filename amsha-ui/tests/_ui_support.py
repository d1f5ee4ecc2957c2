"""Helpers shared by amsha-ui's tests and their fixtures: configs over a shared file store,
the recorded runs' ids, the app served by uvicorn on a thread, the browser flags."""

from __future__ import annotations

import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHROMIUM_FLAGS = [
    "--no-sandbox",  # tests run as root in CI containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> [/x] [bold]tags[/bold] & "quotes"'

AGENTS = {
    "researcher": {"role": "Field researcher", "goal": "Gather facts about {topic}", "backstory": "Short notes."},
    "writer": {"role": "Science writer", "goal": "Write about {topic}", "backstory": "Plain words."},
}
TASKS = {
    "research": {"description": "List facts about {topic}.", "expected_output": "Bullets.", "agent": "researcher"},
    "write": {
        "description": "Write a paragraph about {topic}.",
        "expected_output": "A paragraph.",
        "agent": "writer",
        "context": ["research"],
    },
}
RESPONSES = [
    {"match": "List facts", "text": "- Anemones clone themselves.\n- Sea stars digest outside their bodies."},
    {"match": "Write a paragraph", "text": "Tide pools are busy: anemones clone, sea stars digest outside."},
]


def add(a: int, b: int) -> int:
    """Add two integers (the tool of the recorded tool run)."""
    return a + b


def write_config(folder: Path, name: str, extra: dict[str, Any] | None = None, **provider_options: Any) -> Path:
    """A config in ``folder`` whose file store is ``folder/store`` (shared by every config
    written there); ``extra`` replaces top-level sections."""
    options = {"responses": RESPONSES, **provider_options}
    config = {
        "provider": {"name": "scripted", "model": "scripted-1", "options": options},
        "orchestrator": "direct",
        "state": {"name": "file", "options": {"path": "store"}},
        "retry": {"max_retries": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.02, "jitter": False},
        "runs": {"cancel_poll_s": 0.05, "lease_s": 5},
        "agents": AGENTS,
        "tasks": TASKS,
        "pipeline": ["research", "write"],
        **(extra or {}),
    }
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Recorded:
    """The runs recorded once for the whole test session."""

    folder: Path
    config: Path
    ok: str = ""
    """Two tasks, succeeded; its topic is :data:`HOSTILE`."""
    retried: str = ""
    """Succeeded after one rate-limit retry."""
    failed: str = ""
    """Failed on an authentication error."""
    changed: str = ""
    """Started from a committed state whose key ``research`` the run changed (v1 -> v2)."""
    tool: str = ""
    """One task whose LLM called the tool ``add`` (an LLM call, a tool call, an LLM call)."""
    state_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """The app served by uvicorn on a thread of this process, on 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
            )
        )
        self.thread = threading.Thread(target=self.server.run, name="amsha-ui-test-server", daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


def amsha_cli() -> list[str]:
    """The ``amsha`` command of this interpreter's environment."""
    return [sys.executable, "-m", "amsha"]
