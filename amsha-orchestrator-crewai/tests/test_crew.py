"""Real CrewAI crews run offline through Amsha on the ``scripted`` provider: outputs, event
order, metrics, state snapshots, tools, streaming, cancel, background runs and errors."""

from __future__ import annotations

import time
from typing import Any

import pytest
from amsha import ExecutionSession, ExecutionState, RunStatus
from amsha.errors import AuthenticationError, RateLimitError, RunCancelledError, RunFailedError
from crew_support import POST, RESEARCH, crew_config


def _kinds(events: list[Any]) -> list[tuple[str, str | None]]:
    wanted = ("task.", "agent.", "llm.started", "llm.finished", "tool.", "framework.crew")
    return [(e.kind, e.task) for e in events if e.kind.startswith(wanted)]


def test_two_agent_crew_with_context_outputs_events_metrics_and_snapshots(config: dict[str, Any]) -> None:
    with ExecutionSession(config) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        result = handle.result(timeout=60)
        events = list(handle.stream())
        versions = session.store.list_versions(result.state.state_id)
        first_version = session.store.get_state(result.state.state_id, 1).data
    # The writer answered with POST only because the research output reached it as context.
    assert result.outputs == {"research": RESEARCH, "write": POST}
    assert result.state.to_dict() == {"research": RESEARCH, "write": POST}
    assert _kinds(events) == [
        ("framework.crew.started", None),
        ("task.started", "research"),
        ("agent.started", "research"),
        ("llm.started", "research"),
        ("llm.finished", "research"),
        ("agent.finished", "research"),
        ("task.finished", "research"),
        ("task.started", "write"),
        ("agent.started", "write"),
        ("llm.started", "write"),
        ("llm.finished", "write"),
        ("agent.finished", "write"),
        ("task.finished", "write"),
        ("framework.crew.finished", None),
    ]
    assert [e.seq for e in events] == list(range(len(events)))
    # LLM events sit under their task's span; tasks under the run.
    # Spans: run > task > agent execution > LLM call; no span id is reused.
    tasks = {e.task: e.span_id for e in events if e.kind == "task.started"}
    agents = {e.task: e.span_id for e in events if e.kind == "agent.started"}
    assert all(e.parent_id == handle.run_id for e in events if e.kind == "task.started")
    assert all(e.parent_id == tasks[e.task] for e in events if e.kind in ("agent.started", "agent.finished"))
    assert all(e.parent_id == agents[e.task] for e in events if e.kind == "llm.started")
    assert len({*tasks.values(), *agents.values()}) == 4
    # Metrics are the provider's usage, summed.
    usage = [e.data["usage"] for e in events if e.kind == "llm.finished"]
    total = result.metrics.to_dict()["total"]
    assert total["calls"] == 2 and total["tokens_estimated"] is False
    assert total["input_tokens"] == sum(u["input_tokens"] for u in usage) > 0
    assert total["output_tokens"] == sum(u["output_tokens"] for u in usage) > 0
    # One snapshot per finished task: the first holds only the research output.
    assert [v.version for v in versions] == [1, 2]
    assert [e.data.get("reason") for e in events if e.kind == "state.snapshot"] == [
        "task research finished",
        "task write finished",
    ]
    assert list(first_version) == ["research"]


def test_only_the_named_tasks_run_in_the_given_order(config: dict[str, Any]) -> None:
    config["provider"]["options"]["responses"].insert(0, {"match": "Write a post", "text": "Written alone."})
    with ExecutionSession(config) as session:
        result = session.run(["write"], inputs={"topic": "tide pools"}).result(timeout=60)
    assert result.outputs == {"write": "Written alone."}


def test_tokens_stream_in_order_while_the_crew_runs(config: dict[str, Any]) -> None:
    config["provider"]["options"]["token_delay_s"] = 0.005
    with ExecutionSession(config) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        arrivals: list[tuple[float, str]] = []
        for token in handle.stream_text():
            arrivals.append((time.monotonic(), token))
        finished = time.monotonic()
        handle.result(timeout=60)
    text = "".join(t for _, t in arrivals)
    assert text == RESEARCH + POST
    assert len(arrivals) == len(RESEARCH.split()) + len(POST.split())
    # Token by token: the first arrived well before the crew ended.
    assert finished - arrivals[0][0] > 0.02


def test_a_tool_call_round_trip_through_crewai(config: dict[str, Any]) -> None:
    config["tools"] = {"lookup": "crew_support:lookup"}
    config["agents"]["researcher"]["tools"] = ["lookup"]
    config["provider"]["options"]["responses"][:1] = [
        {
            "match": "Research tide pools",
            "times": 1,
            "tool_calls": [{"name": "lookup", "arguments": {"species": "anemone"}}],
        },
        # Answers only once the tool's result was fed back to the model.
        {"match": "eats plankton", "text": RESEARCH},
    ]
    with ExecutionSession(config) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        result = handle.result(timeout=60)
        events = list(handle.stream())
    assert result.outputs["research"] == RESEARCH
    started = [e for e in events if e.kind == "tool.started"]
    finished = [e for e in events if e.kind == "tool.finished"]
    assert len(started) == len(finished) == 1
    assert started[0].data["tool"] == "lookup" and "anemone" in started[0].data["arguments"]
    assert "eats plankton" in finished[0].data["result"]
    assert started[0].task == "research" and started[0].span_id == finished[0].span_id
    agent_span = next(e.span_id for e in events if e.kind == "agent.started" and e.task == "research")
    assert started[0].parent_id == agent_span
    kinds = _kinds(events)
    i = kinds.index(("tool.started", "research"))
    assert kinds[i - 1] == ("llm.finished", "research") and kinds[i + 1] == ("tool.finished", "research")
    assert kinds[i + 2] == ("llm.started", "research")
    assert result.metrics.to_dict()["total"]["calls"] == 3


def test_cancel_mid_crew_keeps_the_finished_task_and_records_cancelled(config: dict[str, Any]) -> None:
    config["provider"]["options"]["responses"][1]["text"] = " ".join(["word"] * 400)
    config["provider"]["options"]["token_delay_s"] = 0.01
    with ExecutionSession(config) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        for event in handle.stream():
            if event.kind == "llm.token" and event.task == "write":
                handle.cancel("enough")
                break
        with pytest.raises(RunCancelledError) as info:
            handle.result(timeout=30)
        assert handle.status() == RunStatus.CANCELLED
        record = session.store.get_run(handle.run_id)
        snap = session.store.get_state(record.state_id)
        events = list(handle.stream())
    # The record keeps the partial text of the task the run was in; the state what finished.
    tokens = [e for e in events if e.kind == "llm.token" and e.task == "write"]
    assert info.value.result.outputs == {"research": RESEARCH, "write": "".join(e.text for e in tokens)}
    assert record.outputs == info.value.result.outputs
    assert snap.data == {"research": RESEARCH}
    assert 0 < len(tokens) < 50  # stopped at once, not after the 400 tokens
    assert not [e for e in events if e.kind == "task.finished" and e.task == "write"]


def test_background_run_is_polled_to_completion(config: dict[str, Any]) -> None:
    with ExecutionSession(config) as session:
        handle = session.run(inputs={"topic": "tide pools"}, mode="background")
        deadline = time.monotonic() + 60
        while not handle.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handle.status() == RunStatus.SUCCEEDED
        assert handle.result().outputs == {"research": RESEARCH, "write": POST}


def test_one_retry_layer_attempts_are_exactly_amshas_policy() -> None:
    config = crew_config(failures=[{"kind": "rate_limit", "times": 100, "retry_after": 0.001}])
    with ExecutionSession(config) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        with pytest.raises(RunFailedError) as info:
            handle.result(timeout=60)
        provider = session.llm().provider
        events = list(handle.stream())
    # max_retries 2: three attempts, not 3 (CrewAI's own retry) x 3 x agent retries.
    assert provider.calls == 3
    assert len([e for e in events if e.kind == "llm.retry"]) == 2
    assert isinstance(info.value.cause, RateLimitError)
    assert info.value.task == "research"
    assert [e.task for e in events if e.kind == "task.failed"] == ["research"]


def test_a_provider_error_in_the_second_task_names_that_task(config: dict[str, Any]) -> None:
    # The writer's LLM is another provider instance, refusing the key.
    config["llms"] = {"refusing": {"options": {"failures": [{"kind": "auth", "times": 5}]}}}
    config["agents"]["writer"]["llm"] = "refusing"
    with ExecutionSession(config) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        with pytest.raises(RunFailedError) as info:
            handle.result(timeout=60)
        assert session.llm("refusing").provider.calls == 1  # not retryable: one attempt
    assert isinstance(info.value.cause, AuthenticationError)
    assert info.value.task == "write"
    assert "in task 'write'" in str(info.value)
    assert info.value.result.outputs == {"research": RESEARCH}


def test_injected_state_reaches_the_crew_and_outputs_are_written_into_it(config: dict[str, Any]) -> None:
    config["tasks"]["write"]["description"] = "Write a post about {topic} for {audience}"
    config["provider"]["options"]["responses"][1] = {"match": "for children", "text": POST}
    with ExecutionSession(config) as session:
        state = ExecutionState({"audience": "children"})
        result = session.run(["research", "write"], inputs={"topic": "tide pools"}, state=state).result(timeout=60)
    assert result.outputs["write"] == POST
    assert state.to_dict() == {"audience": "children", "research": RESEARCH, "write": POST}
    assert state.version == 2


def test_a_crewai_tool_passed_in_code_is_used_as_is(config: dict[str, Any]) -> None:
    from crewai.tools import BaseTool

    class Lookup(BaseTool):
        name: str = "lookup"
        description: str = "Look up a species."

        def _run(self, species: str) -> str:
            return f"{species} eats plankton"

    config["agents"]["researcher"]["tools"] = ["lookup"]
    config["provider"]["options"]["responses"][:1] = [
        {
            "match": "Research tide pools",
            "times": 1,
            "tool_calls": [{"name": "lookup", "arguments": {"species": "kelp"}}],
        },
        {"match": "kelp eats plankton", "text": RESEARCH},
    ]
    with ExecutionSession(config, tools={"lookup": Lookup()}) as session:
        handle = session.run(inputs={"topic": "tide pools"})
        assert handle.result(timeout=60).outputs["research"] == RESEARCH
        finished = [e for e in handle.stream() if e.kind == "tool.finished"]
    assert [e.data["result"] for e in finished] == ["kelp eats plankton"]
