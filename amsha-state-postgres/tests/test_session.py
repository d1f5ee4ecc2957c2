"""End to end through real sessions and the ``amsha`` CLI on a real server, every command in a
process of its own: a detached run watched, listed, shown, its events read and replayed;
a run cancelled from another process; a worker killed with SIGKILL seen LOST."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from amsha import ExecutionSession
from amsha.state import RunStatus
from amsha_postgres.store import PostgresStore
from amsha_postgres.testing import PostgresServer

WORDS = {
    "gather": " ".join(f"alpha{i}" for i in range(30)),
    "summarize": " ".join(f"beta{i}" for i in range(30)),
}


def write_config(folder: Path, schema: str, token_delay_s: float, name: str = "amsha.yaml") -> Path:
    config = {
        "provider": {
            "name": "scripted",
            "options": {
                "token_delay_s": token_delay_s,
                "responses": [
                    {"match": "Gather", "text": WORDS["gather"]},
                    {"match": "Summarize", "text": WORDS["summarize"]},
                ],
            },
        },
        "state": {"name": "postgres", "options": {"dsn_env": "AMSHA_TEST_PG_DSN", "schema": schema}},
        "runs": {"lease_s": 2.0},
        "agents": {"worker": {"role": "Worker", "goal": "Do {topic} work"}},
        "tasks": {
            "gather": {"description": "Gather words on {topic}.", "agent": "worker"},
            "summarize": {"description": "Summarize the words.", "agent": "worker", "context": ["gather"]},
        },
    }
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def env(pg_server: PostgresServer) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("AMSHA")}
    out["AMSHA_TEST_PG_DSN"] = pg_server.dsn()
    return out


def amsha(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amsha", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def detach(env: dict[str, str], config: Path) -> str:
    started = amsha(
        env, "run", str(config), "--task", "gather", "--task", "summarize", "--input", "topic=kelp", "--detach"
    )
    assert started.returncode == 0, started.stderr
    return started.stdout.strip().split()[-1]


def test_a_detached_run_watched_listed_shown_read_and_replayed_from_other_processes(
    pg_server: PostgresServer, schema: str, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, schema, token_delay_s=0.02)
    run_id = detach(env, config)
    watched = amsha(env, "runs", "watch", run_id, "--config", str(config), "--json")
    assert watched.returncode == 0, watched.stderr
    *events, outcome = [json.loads(line) for line in watched.stdout.splitlines()]
    assert outcome == {"run_id": run_id, "status": "SUCCEEDED"}
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[0]["kind"] == "run.started" and events[-1]["kind"] == "run.finished"
    assert (
        "".join(e["data"]["text"] for e in events if e["kind"] == "llm.token" and e["task"] == "gather")
        == WORDS["gather"]
    )

    listed = amsha(env, "runs", "list", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["run_id"], r["status"]) for r in json.loads(listed.stdout)] == [(run_id, "SUCCEEDED")]
    shown = json.loads(amsha(env, "runs", "show", run_id, "--config", str(config), "--json").stdout)
    assert shown["outputs"] == WORDS and shown["owner"]["pid"] != os.getpid()
    lines = amsha(env, "runs", "events", run_id, "--config", str(config), "--json", "--from-seq", "3")
    assert [json.loads(line)["seq"] for line in lines.stdout.splitlines()] == list(range(3, len(events)))
    replay = amsha(env, "runs", "replay", run_id, "--config", str(config), "--json")
    assert replay.returncode == 0, replay.stderr
    replayed = json.loads(replay.stdout)
    assert replayed["matches_original"] is True and replayed["outputs"] == WORDS
    missing = amsha(env, "runs", "show", "no-such-run", "--config", str(config))
    assert missing.returncode == 2 and "no-such-run" in missing.stderr and "Traceback" not in missing.stderr
    everything = watched.stdout + watched.stderr + listed.stdout + replay.stdout + replay.stderr + missing.stderr
    assert pg_server.password not in everything

    # Attached in this process: the stream live, then the result.
    monkeypatch.setenv("AMSHA_TEST_PG_DSN", pg_server.dsn())
    run_id2 = detach(env, config)
    with ExecutionSession(config) as session:
        assert isinstance(session.store.inner, PostgresStore)
        handle = session.attach(run_id2)
        streamed = list(handle.stream())
        assert [e.seq for e in streamed] == list(range(len(streamed)))
        assert handle.result(timeout=60).outputs == WORDS


def test_a_run_cancelled_from_another_process(schema: str, env: dict[str, str], tmp_path: Path) -> None:
    config = write_config(tmp_path, schema, token_delay_s=0.2)
    run_id = detach(env, config)
    store_env = dict(env)
    deadline = time.monotonic() + 60
    while True:
        shown = amsha(store_env, "runs", "events", run_id, "--config", str(config), "--json")
        if any(json.loads(line)["kind"] == "llm.token" for line in shown.stdout.splitlines()):
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    started = time.monotonic()
    cancelled = amsha(env, "runs", "cancel", run_id, "--config", str(config), "--reason", "enough", "--wait")
    assert cancelled.returncode == 0, cancelled.stderr
    assert time.monotonic() - started < 10
    record = json.loads(amsha(env, "runs", "show", run_id, "--config", str(config), "--json").stdout)
    assert record["status"] == RunStatus.CANCELLED and record["cancel_request"]["reason"] == "enough"
    assert "summarize" not in record["outputs"]
    again = amsha(env, "runs", "cancel", run_id, "--config", str(config))
    assert again.returncode == 0 and "ended" in (again.stdout + again.stderr).lower()


RUNNER = """
import sys
from amsha import ExecutionSession
with ExecutionSession(sys.argv[1]) as session:
    handle = session.run(["gather", "summarize"], inputs={"topic": "kelp"}, run_id=sys.argv[2], detach=True)
    print(handle.run_id, flush=True)
    handle.result(timeout=120)
"""


def test_a_worker_killed_mid_run_is_seen_lost(schema: str, env: dict[str, str], tmp_path: Path) -> None:
    config = write_config(tmp_path, schema, token_delay_s=0.1)
    child = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(config), "run-kill"], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "run-kill"
    deadline = time.monotonic() + 60
    while "llm.token" not in amsha(env, "runs", "events", "run-kill", "--config", str(config), "--json").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    killed = time.monotonic()
    assert child.wait(30) == -signal.SIGKILL

    def status() -> Any:
        return json.loads(amsha(env, "runs", "show", "run-kill", "--config", str(config), "--json").stdout)["status"]

    while status() != RunStatus.LOST:
        assert time.monotonic() - killed < 2.0 + 5, "not LOST within lease_s + 5 s"
        time.sleep(0.2)
    watched = amsha(env, "runs", "watch", "run-kill", "--config", str(config), timeout=30)
    assert watched.returncode != 0 and "LOST" in (watched.stdout + watched.stderr)
