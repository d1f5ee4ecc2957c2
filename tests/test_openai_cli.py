"""``amsha run`` end to end with provider ``openai`` selected by config and pointed (``base_url``)
at the local Chat Completions server of ``amsha_openai.testing``, through the ``direct``
orchestrator: streamed to the terminal, as JSON, and in the background. The ``amsha`` command
runs in a subprocess of the environment under test, the server in this process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from amsha_openai.testing import OpenAIServer, Reply
from conftest import amsha_here, describe

RESEARCH = "Tide pools hold anemones, sea stars and hermit crabs."
WRITE = "At low tide, the rocks become a city of small lives."


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(models={"local-model"}, chunk_delay_s=0.005) as srv:
        srv.script(Reply(RESEARCH, match="Research", times=10), Reply(WRITE, match="Write", times=10))
        yield srv


def write_config(folder: Path, server: OpenAIServer, **provider_options: Any) -> Path:
    config = {
        "provider": {
            "name": "openai",
            "model": "local-model",
            # A local server needs no key: the variable named here is left unset.
            "options": {"base_url": server.base_url, "api_key_env": "LOCAL_SERVER_KEY", **provider_options},
        },
        "orchestrator": "direct",
        "state": {"name": "file", "options": {"path": ".amsha"}},
        "agents": {
            "researcher": {"role": "Researcher", "goal": "Research {topic}"},
            "writer": {"role": "Writer", "goal": "Write about {topic}"},
        },
        "tasks": {
            "research": {"description": "Research {topic}.", "agent": "researcher"},
            "write": {"description": "Write one line on {topic}.", "agent": "writer", "context": ["research"]},
        },
        "pipeline": ["research", "write"],
    }
    path = folder / "amsha.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def check_requests(server: OpenAIServer) -> None:
    assert server.attempts == 2
    first, second = (r.body for r in server.requests)
    assert first["model"] == second["model"] == "local-model"
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    assert "Research tide pools." in first["messages"][-1]["content"]
    assert RESEARCH in second["messages"][-1]["content"]  # the context task's output went along
    assert server.requests[0].headers["authorization"] == "Bearer amsha-no-key"


def test_amsha_run_streams_to_the_terminal(server: OpenAIServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, server)
    proc = amsha_here("run", str(config), "--input", "topic=tide pools", cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert RESEARCH in proc.stdout and WRITE in proc.stdout
    assert "metrics: 2 LLM calls" in proc.stdout
    check_requests(server)


def test_amsha_run_json_interactive(server: OpenAIServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, server)
    proc = amsha_here("run", str(config), "--input", "topic=tide pools", "--json", cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    result = json.loads(proc.stdout)
    assert result["status"] == "SUCCEEDED" and result["outputs"] == {"research": RESEARCH, "write": WRITE}
    total = result["metrics"]["total"]
    assert total["calls"] == 2 and total["tokens_estimated"] is False  # usage reported by the server
    assert total["output_tokens"] == len(RESEARCH.split()) + len(WRITE.split())
    assert result["metrics"]["ttft_s"] is not None
    check_requests(server)
    events = amsha_here("runs", "events", result["run_id"], "--config", str(config), "--json", cwd=tmp_path)
    tokens = [json.loads(line) for line in events.stdout.splitlines() if '"llm.token"' in line]
    assert "".join(e["data"]["text"] for e in tokens if e["task"] == "research") == RESEARCH


def test_amsha_run_in_the_background(server: OpenAIServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, server)
    proc = amsha_here("run", str(config), "--input", "topic=tide pools", "--mode", "background", "--json", cwd=tmp_path)
    assert proc.returncode == 0, describe(proc)
    result = json.loads(proc.stdout)
    assert result["status"] == "SUCCEEDED" and result["outputs"] == {"research": RESEARCH, "write": WRITE}
    assert result["metrics"]["total"]["tokens_estimated"] is False
    check_requests(server)
    show = amsha_here("runs", "show", result["run_id"], "--config", str(config), "--json", cwd=tmp_path)
    record = json.loads(show.stdout)
    assert record["mode"] == "background" and record["status"] == "SUCCEEDED"


def test_a_bad_model_fails_the_run_with_a_clear_one_line_error(server: OpenAIServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, server)
    text = config.read_text(encoding="utf-8").replace("model: local-model", "model: no-such-model")
    config.write_text(text, encoding="utf-8")
    proc = amsha_here("run", str(config), "--input", "topic=tide pools", cwd=tmp_path)
    assert proc.returncode == 1, describe(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("amsha: ")]
    assert len(errors) == 1 and "NotFoundError" in errors[0] and "'no-such-model'" in errors[0], describe(proc)
    assert "Traceback" not in proc.stderr
    assert server.attempts == 1  # a 404 is not retried


def test_a_server_that_stays_down_fails_after_the_configured_retries(tmp_path: Path) -> None:
    with OpenAIServer() as srv:
        srv.script(Reply.fail(503, "overloaded", times=100))
        config = write_config(tmp_path, srv, max_retries=1)
        proc = amsha_here(
            "run",
            str(config),
            "--input",
            "topic=x",
            "--json",
            cwd=tmp_path,
            env={"AMSHA__RETRY__INITIAL_BACKOFF_S": "0"},
        )
        assert proc.returncode == 1, describe(proc)
        assert json.loads(proc.stdout)["error"]["type"] == "ServerError"
        assert srv.attempts == 2  # max_retries 1: one attempt and one retry
