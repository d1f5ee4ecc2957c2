"""Fixtures for amsha-ui's tests: recorded runs in a real file store, the app served by a
real uvicorn on 127.0.0.1, and Debian's Chromium for Playwright (installed when missing).

One browser and one server per test session keep the browser tests to a few seconds.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from amsha import ExecutionSession, ExecutionState

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


def write_config(folder: Path, name: str, **provider_options: Any) -> Path:
    """A config in ``folder`` whose file store is ``folder/store`` (shared by every config
    written there)."""
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
    state_id: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    folder = tmp_path_factory.mktemp("ui-runs")
    config = write_config(folder, "amsha.yaml")
    rec = Recorded(folder, config)
    with ExecutionSession(config) as session:
        rec.ok = session.run(inputs={"topic": HOSTILE}).result().run_id
        time.sleep(0.01)
        state = ExecutionState({"research": "old notes", "keep": 1}, state_id="state-ui-test")
        state.commit(session.store, reason="seeded by the test")
        rec.changed = session.run(["research"], inputs={"topic": "kelp"}, state=state).result().run_id
        rec.state_id = state.state_id
    with ExecutionSession(write_config(folder, "retry.yaml", failures=[{"kind": "rate_limit", "times": 1}])) as s:
        time.sleep(0.01)
        rec.retried = s.run(["research"], inputs={"topic": "owls"}).result().run_id
    with ExecutionSession(write_config(folder, "failing.yaml", failures=[{"kind": "auth", "times": 5}])) as s:
        time.sleep(0.01)
        handle = s.run(["research"], inputs={"topic": "bats"})
        with pytest.raises(Exception):
            handle.result()
        rec.failed = handle.run_id
    return rec


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


@pytest.fixture(scope="session")
def ui_session(recorded: Recorded) -> Iterator[ExecutionSession]:
    session = ExecutionSession(recorded.config)
    yield session
    session.close()


@pytest.fixture(scope="session")
def ui(ui_session: ExecutionSession) -> Iterator[Server]:
    from amsha_ui import create_app

    with Server(create_app(ui_session)) as server:
        yield server


# ---- the browser: Debian's Chromium, installed if missing --------------------------------


def _find_chromium() -> str | None:
    for candidate in (os.environ.get("AMSHA_UI_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's ``chromium``; installed with apt-get when missing (Playwright's own browser
    download cannot work here). Fails, never skips, when it cannot be had."""
    found = _find_chromium()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.fail("Chromium is not installed and there is no apt-get to install it; set AMSHA_UI_CHROMIUM")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    steps = [[*sudo, apt, *lock, "update"], [*sudo, apt, *lock, "install", "-y", "--no-install-recommends", "chromium"]]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0 and cmd is steps[-1]:
            pytest.fail(f"could not install chromium ({' '.join(cmd)}): {proc.stderr[-2000:]}")
    found = _find_chromium()
    if not found:
        pytest.fail("apt-get installed chromium but /usr/bin/chromium is not there")
    return found


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any], chromium_executable: str) -> dict[str, Any]:
    # Playwright launches with a fresh, temporary profile (user data dir) of its own.
    return {
        **browser_type_launch_args,
        "executable_path": chromium_executable,
        "args": CHROMIUM_FLAGS,
        "headless": True,
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}}


def amsha_cli() -> list[str]:
    """The ``amsha`` command of this interpreter's environment."""
    return [sys.executable, "-m", "amsha"]
