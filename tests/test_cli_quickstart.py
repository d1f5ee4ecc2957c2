"""The ``amsha`` command end to end on a copy of examples/quickstart, in the current environment.

The copy lives in a tmp dir, so the quickstart's ``file`` store (``.amsha`` next to the config)
and its ``jsonl`` observer file land there and nowhere else.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import QUICKSTART, amsha_here, describe

TOPIC = "topic=tide pools"
TERMINAL = {"run.finished", "run.failed", "run.cancelled"}


def scripted_answers() -> list[str]:
    """The two answers of examples/quickstart/responses.yaml, in task order."""
    rules = yaml.safe_load((QUICKSTART / "responses.yaml").read_text(encoding="utf-8"))
    return [rule["text"] for rule in rules]


def run_json(config: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = amsha_here("run", str(config), "--input", TOPIC, "--json", *args, env=env)
    assert proc.returncode == 0, describe(proc)
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, describe(proc)
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("amsha: error: "), describe(proc)
    return lines[0]


def assert_quickstart_outputs(outputs: dict[str, Any]) -> None:
    research, write = scripted_answers()
    assert outputs == {"research": research, "write": write}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One interactive quickstart run (real token delays), recorded in the copy's store."""
    folder = tmp_path_factory.mktemp("recorded") / "quickstart"
    folder.mkdir()
    for name in ("amsha.yaml", "responses.yaml"):
        shutil.copy2(QUICKSTART / name, folder / name)
    config = folder / "amsha.yaml"
    return config, run_json(config)


# ---- run ------------------------------------------------------------------------------------


def test_run_json_has_both_outputs_and_token_metrics(recorded: tuple[Path, dict[str, Any]]) -> None:
    config, result = recorded
    assert result["status"] == "SUCCEEDED" and result["error"] is None
    assert result["run_id"].startswith("run-")
    assert_quickstart_outputs(result["outputs"])
    metrics = result["metrics"]
    total = metrics["total"]
    assert total["calls"] == 2
    assert total["input_tokens"] > 0 and total["output_tokens"] > 0
    assert total["total_tokens"] == total["input_tokens"] + total["output_tokens"]
    assert total["tokens_estimated"] is False
    assert set(metrics["tasks"]) == {"research", "write"}
    for name, task in metrics["tasks"].items():
        assert task["calls"] == 1 and task["total_tokens"] > 0, name
    assert metrics["ttft_s"] is not None and metrics["latency_s"] >= metrics["ttft_s"] > 0
    assert "state" not in result
    # The store and the observer's file are next to the copied config.
    store = config.parent / ".amsha"
    assert (store / "runs" / f"{result['run_id']}.json").is_file()
    assert (store / "events" / f"{result['run_id']}.jsonl").is_file()
    logged = [json.loads(line) for line in (store / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {e["run_id"] for e in logged} == {result["run_id"]}
    assert logged[-1]["kind"] == "run.finished"
    assert not (QUICKSTART / ".amsha" / "runs" / f"{result['run_id']}.json").exists()


def test_run_streams_text_to_the_terminal_without_json(quickstart: Path) -> None:
    proc = amsha_here("run", str(quickstart), "--input", TOPIC, env={"AMSHA__PROVIDER__OPTIONS__TOKEN_DELAY_S": "0"})
    assert proc.returncode == 0, describe(proc)
    research, write = scripted_answers()
    assert research.splitlines()[0] in proc.stdout and write.split()[0] in proc.stdout
    assert "metrics: 2 LLM calls" in proc.stdout


def test_run_in_background_mode_json(quickstart: Path) -> None:
    result = run_json(quickstart, "--mode", "background")
    assert result["status"] == "SUCCEEDED"
    assert_quickstart_outputs(result["outputs"])
    assert result["metrics"]["total"]["output_tokens"] > 0
    show = amsha_here("runs", "show", result["run_id"], "--config", str(quickstart), "--json")
    assert show.returncode == 0, describe(show)
    record = json.loads(show.stdout)
    assert record["mode"] == "background" and record["status"] == "SUCCEEDED"
    assert record["outputs"] == result["outputs"]


def test_run_selected_task_only(quickstart: Path) -> None:
    result = run_json(quickstart, "--task", "research", env={"AMSHA__PROVIDER__OPTIONS__TOKEN_DELAY_S": "0"})
    assert list(result["outputs"]) == ["research"]
    assert result["metrics"]["total"]["calls"] == 1


def test_failed_run_exits_1_with_the_error_in_json(quickstart: Path) -> None:
    env = {"AMSHA__PROVIDER__OPTIONS__FAILURES": '[{"kind": "auth", "message": "key rejected"}]'}
    proc = amsha_here("run", str(quickstart), "--input", TOPIC, "--json", env=env)
    assert proc.returncode == 1, describe(proc)
    result = json.loads(proc.stdout)
    assert result["status"] == "FAILED"
    assert result["outputs"] == {}
    assert "key rejected" in result["error"]["message"] and "research" in result["error"]["message"]
    assert "Traceback" not in proc.stderr
    plain = amsha_here("run", str(quickstart), "--input", TOPIC, env=env)
    assert plain.returncode == 1, describe(plain)
    errors = [line for line in plain.stderr.splitlines() if line.startswith("amsha: ")]
    assert len(errors) == 1 and "AuthenticationError" in errors[0] and "key rejected" in errors[0]
    assert "Traceback" not in plain.stderr
    # The JSON names the error that ended the run, as a succeeded run's record and
    # `amsha runs show` do, not the wrapper the handle raised.
    record = amsha_here("runs", "show", result["run_id"], "--config", str(quickstart), "--json")
    assert json.loads(record.stdout)["error"]["type"] == "AuthenticationError"
    assert result["error"]["type"] == "AuthenticationError"


# ---- runs list / show / events / replay -----------------------------------------------------


def test_runs_list_and_show(recorded: tuple[Path, dict[str, Any]]) -> None:
    config, result = recorded
    listed = amsha_here("runs", "list", "--config", str(config), "--json")
    assert listed.returncode == 0, describe(listed)
    records = json.loads(listed.stdout)
    mine = [r for r in records if r["run_id"] == result["run_id"]]
    assert len(mine) == 1
    assert mine[0]["status"] == "SUCCEEDED" and mine[0]["tasks"] == ["research", "write"]
    assert mine[0]["inputs"] == {"topic": "tide pools"}
    text = amsha_here("runs", "list", "--config", str(config))
    assert text.returncode == 0 and result["run_id"] in text.stdout, describe(text)

    show = amsha_here("runs", "show", result["run_id"], "--config", str(config), "--json")
    assert show.returncode == 0, describe(show)
    record = json.loads(show.stdout)
    assert record["run_id"] == result["run_id"] and record["mode"] == "interactive"
    assert record["outputs"] == result["outputs"]
    assert record["state_version"] == 2  # one snapshot per finished task
    assert record["metrics"]["total"] == result["metrics"]["total"]
    assert record["started_at"] <= record["finished_at"]


def test_runs_events(recorded: tuple[Path, dict[str, Any]]) -> None:
    config, result = recorded
    run_id = result["run_id"]
    proc = amsha_here("runs", "events", run_id, "--config", str(config), "--json")
    assert proc.returncode == 0, describe(proc)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events)))  # gap-free, in order
    assert {e["run_id"] for e in events} == {run_id}
    assert events[0]["kind"] == "run.started" and events[-1]["kind"] == "run.finished"
    assert [e["kind"] for e in events if e["kind"] in TERMINAL] == ["run.finished"]
    assert [e["task"] for e in events if e["kind"] == "task.finished"] == ["research", "write"]
    for task, output in result["outputs"].items():
        streamed = "".join(e["data"]["text"] for e in events if e["kind"] == "llm.token" and e["task"] == task)
        assert streamed == output, task

    quiet = amsha_here("runs", "events", run_id, "--config", str(config), "--json", "--no-tokens")
    kinds = [json.loads(line)["kind"] for line in quiet.stdout.splitlines()]
    assert "llm.token" not in kinds
    assert kinds == [e["kind"] for e in events if e["kind"] != "llm.token"]

    later = amsha_here("runs", "events", run_id, "--config", str(config), "--json", "--from-seq", "5")
    assert [json.loads(line)["seq"] for line in later.stdout.splitlines()] == list(range(5, len(events)))


def test_runs_replay_reproduces_the_outputs(recorded: tuple[Path, dict[str, Any]]) -> None:
    config, result = recorded
    proc = amsha_here("runs", "replay", result["run_id"], "--config", str(config), "--json")
    assert proc.returncode == 0, describe(proc)
    replay = json.loads(proc.stdout)
    assert replay["matches_original"] is True
    assert replay["replay_of"] == result["run_id"] and replay["run_id"] != result["run_id"]
    assert replay["status"] == "SUCCEEDED"
    assert replay["outputs"] == result["outputs"]
    # The replay is a run of its own in the store, linked to the original.
    show = amsha_here("runs", "show", replay["run_id"], "--config", str(config), "--json")
    assert show.returncode == 0, describe(show)
    assert json.loads(show.stdout)["replay_of"] == result["run_id"]


def test_runs_commands_find_amsha_yaml_in_the_working_directory(recorded: tuple[Path, dict[str, Any]]) -> None:
    config, result = recorded
    proc = amsha_here("runs", "show", result["run_id"], "--json", cwd=config.parent)
    assert proc.returncode == 0, describe(proc)
    assert json.loads(proc.stdout)["outputs"] == result["outputs"]


# ---- config check ---------------------------------------------------------------------------


def test_config_check(quickstart: Path) -> None:
    proc = amsha_here("config", "check", str(quickstart))
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.splitlines()[0] == f"{quickstart}: ok"
    as_json = amsha_here("config", "check", str(quickstart), "--json")
    assert as_json.returncode == 0, describe(as_json)
    summary = json.loads(as_json.stdout)
    assert summary["ok"] is True
    assert summary["provider"] == "scripted" and summary["orchestrator"] == "direct" and summary["state"] == "file"
    assert summary["agents"] == ["researcher", "writer"] and summary["tasks"] == ["research", "write"]
    assert summary["placeholders"] == ["topic"]


# ---- bad input ------------------------------------------------------------------------------


def _bad_yaml(config: Path) -> list[str]:
    bad = config.with_name("bad.yaml")
    bad.write_text("provider:\n  name: scripted\n agents: [\n", encoding="utf-8")
    return ["run", str(bad)]


def _unknown_key(config: Path) -> list[str]:
    text = config.read_text(encoding="utf-8").replace(
        "    expected_output: Three bullet points.\n", "    expected_output: Three bullet points.\n    expectd: oops\n"
    )
    assert "expectd" in text
    typo = config.with_name("typo.yaml")
    typo.write_text(text, encoding="utf-8")
    return ["run", str(typo), "--input", TOPIC]


BAD_INPUTS = {
    "missing-file": (lambda c: ["run", str(c.with_name("nope.yaml"))], ["nope.yaml", "config file not found"]),
    "invalid-yaml": (_bad_yaml, ["bad.yaml", "invalid YAML", "line 3"]),
    "unknown-key": (_unknown_key, ["typo.yaml", "tasks.research.expectd", "unknown key"]),
    "missing-input": (lambda c: ["run", str(c)], ["{topic}", "--input topic="]),
    "unknown-task": (
        lambda c: ["run", str(c), "--input", TOPIC, "--task", "summarize"],
        ["unknown task 'summarize'", "research, write"],
    ),
    "bad-input-pair": (lambda c: ["run", str(c), "--input", "topic"], ["KEY=VALUE", "'topic'"]),
    "unknown-run": (lambda c: ["runs", "show", "run-missing", "--config", str(c)], ["no run 'run-missing'"]),
    "config-check-missing": (lambda c: ["config", "check", str(c.with_name("nope.yaml"))], ["config file not found"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_one_line_error_without_traceback(quickstart: Path, case: str) -> None:
    make_args, expected = BAD_INPUTS[case]
    proc = amsha_here(*make_args(quickstart))
    line = one_line_error(proc, 2)
    for text in expected:
        assert text in line, (text, line)
    assert proc.stdout == ""
    # Nothing ran: no run record was written.
    assert not list((quickstart.parent / ".amsha" / "runs").glob("*.json"))


@pytest.mark.parametrize("how", ["flag", "env"])
def test_traceback_on_request(quickstart: Path, how: str) -> None:
    args = ["run", str(quickstart), "--input", TOPIC, "--task", "summarize"]
    if how == "flag":
        proc = amsha_here("--traceback", *args)
    else:
        proc = amsha_here(*args, env={"AMSHA_TRACEBACK": "1"})
    assert proc.returncode == 2, describe(proc)
    assert "Traceback (most recent call last)" in proc.stderr
    assert "InputError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("amsha: error: unknown task 'summarize'")
