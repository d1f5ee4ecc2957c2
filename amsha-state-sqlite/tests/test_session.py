"""End to end through a real session and the ``amsha`` CLI: a background run in one process,
attached by run id and polled to completion from another; a process killed with SIGKILL in
the middle of a run, then resumed from its last snapshot."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from amsha import ExecutionSession, ExecutionState
from amsha.state import RunStatus
from amsha_sqlite.store import SqliteStore

WORDS = {
    "gather": " ".join(f"alpha{i}" for i in range(40)),
    "summarize": " ".join(f"beta{i}" for i in range(40)),
    "polish": " ".join(f"gamma{i}" for i in range(400)),
}


def write_config(folder: Path, token_delay_s: float, name: str = "amsha.yaml") -> Path:
    config = {
        "provider": {
            "name": "scripted",
            "options": {
                "token_delay_s": token_delay_s,
                "responses": [
                    {"match": "Gather", "text": WORDS["gather"]},
                    {"match": "Summarize", "text": WORDS["summarize"]},
                    {"match": "Polish", "text": WORDS["polish"]},
                ],
            },
        },
        "state": {"name": "sqlite", "options": {"path": "store/runs.db"}},
        "agents": {"worker": {"role": "Worker", "goal": "Do {topic} work"}},
        "tasks": {
            "gather": {"description": "Gather words on {topic}.", "agent": "worker"},
            "summarize": {"description": "Summarize the words.", "agent": "worker", "context": ["gather"]},
            "polish": {"description": "Polish the summary.", "agent": "worker", "context": ["summarize"]},
        },
    }
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AMSHA")}


def amsha(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amsha", *args], capture_output=True, text=True, env=env(), timeout=120, check=False
    )


RUNNER = """
import sys
from amsha import ExecutionSession, ExecutionState
config, tasks, mode = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
with ExecutionSession(config) as session:
    handle = session.run(tasks, inputs={"topic": "kelp"}, mode=mode, run_id=sys.argv[4],
                         state=ExecutionState(state_id=sys.argv[5]))
    print(handle.run_id, flush=True)
    print(handle.result(timeout=120).status, flush=True)
"""


def start_runner(config: Path, tasks: str, mode: str, run_id: str, state_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(config), tasks, mode, run_id, state_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )


def test_background_run_attached_from_another_process_and_the_cli(tmp_path: Path) -> None:
    config = write_config(tmp_path, token_delay_s=0.03)
    child = start_runner(config, "gather,summarize", "background", "run-bg", "state-bg")
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "run-bg"
    assert (tmp_path / "store" / "runs.db").is_file()  # relative to the config's folder

    with ExecutionSession(config) as session:
        assert isinstance(session.store.inner, SqliteStore)
        handle = session.attach("run-bg")
        assert handle.status() not in RunStatus.TERMINAL  # the run takes seconds; we are early
        events = list(handle.stream())  # replays what was missed, then polls to the end
        result = handle.result(timeout=60)
        assert result.status == RunStatus.SUCCEEDED
        assert result.outputs == {"gather": WORDS["gather"], "summarize": WORDS["summarize"]}
        assert [e.seq for e in events] == list(range(len(events)))
        assert events[0].kind == "run.started" and events[-1].kind == "run.finished"
        tokens = "".join(e.text for e in events if e.kind == "llm.token" and e.task == "gather")
        assert tokens == WORDS["gather"]
        assert [e.seq for e in handle.stream(from_seq=5)] == list(range(5, len(events)))
        assert result.state is not None and result.state.state_id == "state-bg"
        assert result.state["summarize"] == WORDS["summarize"]
        assert [v.version for v in session.store.list_versions("state-bg")] == [1, 2]
    assert child.wait(60) == 0
    assert child.stdout.read().strip() == "SUCCEEDED"

    listed = amsha("runs", "list", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["run_id"], r["status"]) for r in json.loads(listed.stdout)] == [("run-bg", "SUCCEEDED")]
    shown = amsha("runs", "show", "run-bg", "--config", str(config), "--json")
    assert json.loads(shown.stdout)["outputs"]["summarize"] == WORDS["summarize"]
    lines = amsha("runs", "events", "run-bg", "--config", str(config), "--json", "--from-seq", "3")
    assert lines.returncode == 0, lines.stderr
    seqs = [json.loads(line)["seq"] for line in lines.stdout.splitlines()]
    assert seqs == list(range(3, len(events)))
    replay = amsha("runs", "replay", "run-bg", "--config", str(config), "--json")
    assert replay.returncode == 0, replay.stderr
    replayed = json.loads(replay.stdout)
    assert replayed["matches_original"] is True and replayed["replay_of"] == "run-bg"
    assert replayed["outputs"] == result.outputs
    # The replay is a run of its own in the same file.
    listed = json.loads(amsha("runs", "list", "--config", str(config), "--json").stdout)
    assert {r["run_id"] for r in listed} == {"run-bg", replayed["run_id"]}
    missing = amsha("runs", "show", "no-such-run", "--config", str(config))
    assert missing.returncode == 2 and "no-such-run" in missing.stderr and "Traceback" not in missing.stderr


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the child")
        time.sleep(0.05)


def test_sigkill_mid_run_keeps_what_was_committed_and_resumes(tmp_path: Path) -> None:
    config = write_config(tmp_path, token_delay_s=0.02)
    child = start_runner(config, "gather,summarize,polish", "interactive", "run-kill", "state-kill")
    assert child.stdout is not None and child.stdout.readline().strip() == "run-kill"
    store = SqliteStore(tmp_path / "store" / "runs.db")

    def polishing() -> bool:
        return any(e["kind"] == "llm.token" and e.get("task") == "polish" for e in store.read_events("run-kill"))

    wait_for(polishing)  # two tasks are done and snapshotted, the third is streaming
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL
    store.close()

    # The file opens and is sound; the last committed version and every committed event are there.
    conn = sqlite3.connect(tmp_path / "store" / "runs.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    # Resumed without token delays (same store: the path is relative to the same folder).
    with ExecutionSession(write_config(tmp_path, token_delay_s=0.0, name="resume.yaml")) as session:
        record = session.store.get_run("run-kill")
        assert record.status == RunStatus.RUNNING and record.finished_at is None  # not finished
        events = session.store.read_events("run-kill")
        assert [e["seq"] for e in events] == list(range(len(events)))
        kinds = [e["kind"] for e in events]
        assert not {"run.finished", "run.failed", "run.cancelled"} & set(kinds)
        snapshots = [e["data"]["version"] for e in events if e["kind"] == "state.snapshot"]
        assert snapshots == [1, 2]
        snap = session.store.get_state("state-kill")
        assert snap.version == 2 and snap.run_id == "run-kill"
        assert snap.data == {"gather": WORDS["gather"], "summarize": WORDS["summarize"]}

        # The client resumes by loading the last snapshot and running what is left.
        state = ExecutionState.from_store(session.store, "state-kill")
        result = session.run(["polish"], inputs={"topic": "kelp"}, state=state).result(timeout=60)
        assert result.status == RunStatus.SUCCEEDED
        assert session.store.get_state("state-kill").version == 3
        assert set(session.store.get_state("state-kill").data) == {"gather", "summarize", "polish"}

    listed = amsha("runs", "list", "--config", str(config), "--json")
    statuses = {r["run_id"]: r["status"] for r in json.loads(listed.stdout)}
    assert statuses["run-kill"] == RunStatus.RUNNING and list(statuses.values()).count("SUCCEEDED") == 1
