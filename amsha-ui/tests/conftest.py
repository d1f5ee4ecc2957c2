"""Fixtures for amsha-ui's tests: recorded runs in a real file store, the app served by a
real uvicorn on 127.0.0.1, and Debian's Chromium for Playwright (installed when missing).

One browser and one server per test session keep the browser tests to a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _ui_support import CHROMIUM_FLAGS, HOSTILE, Recorded, Server, write_config
from amsha import ExecutionSession, ExecutionState
from amsha.errors import RunFailedError


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
    tools = {
        "tools": {"add": "_ui_support:add"},
        "agents": {"calc": {"role": "Calculator", "goal": "Do arithmetic", "tools": ["add"]}},
        "tasks": {"sum": {"description": "Compute 40 + 2 with the tool.", "agent": "calc"}},
        "pipeline": ["sum"],
    }
    answers = [
        {"match": "42", "text": "The sum is 42."},
        {"match": "Compute", "tool_calls": [{"id": "c1", "name": "add", "arguments": {"a": 40, "b": 2}}]},
    ]
    with ExecutionSession(write_config(folder, "tools.yaml", tools, responses=answers)) as s:
        time.sleep(0.01)
        rec.tool = s.run(inputs={"topic": "sums"}).result().run_id
    with ExecutionSession(write_config(folder, "failing.yaml", failures=[{"kind": "auth", "times": 5}])) as s:
        time.sleep(0.01)
        handle = s.run(["research"], inputs={"topic": "bats"})
        with pytest.raises(RunFailedError, match="uthenticat"):
            handle.result()
        rec.failed = handle.run_id
    return rec


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
