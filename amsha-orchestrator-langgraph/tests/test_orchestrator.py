"""The `langgraph` orchestrator end to end on the offline `scripted` provider."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from amsha import ExecutionSession, RunStatus
from amsha.errors import BadRequestError, ConfigError, InputError, RunCancelledError, RunFailedError
from amsha.testing import OrchestratorContract
from amsha_langgraph import use_graph
from graphs import two_step
from lg_config import config


class TestLangGraphContract(OrchestratorContract):
    @pytest.fixture
    def orchestrator_config(self) -> dict[str, Any]:
        return {"name": "langgraph"}


def test_registry_graph_outputs_tokens_events_state() -> None:
    with ExecutionSession(config()) as session:
        handle = session.run()
        tokens = list(handle.stream_text())
        result = handle.result(timeout=30)
    assert result.outputs == {"gather": "alpha beta gamma", "summarize": "summary of alpha"}
    # Tokens come out of the handle one by one, in the order the graph produced them.
    assert tokens == ["alpha ", "beta ", "gamma", "summary ", "of ", "alpha"]
    events = list(handle.stream())
    kinds = [e.kind for e in events if e.kind != "llm.token"]
    assert kinds == [
        "run.started",
        "task.started", "llm.started", "llm.finished", "task.finished", "state.snapshot",
        "task.started", "llm.started", "llm.finished", "task.finished", "state.snapshot",
        "run.finished",
    ]  # fmt: skip
    summarize_call = next(e for e in events if e.kind == "llm.started" and e.task == "summarize")
    # The registry's context: the summarize node received gather's output.
    assert "alpha beta gamma" in summarize_call.data["request"]["messages"][-1]["content"]
    assert result.state.to_dict() == result.outputs
    assert session.store.get_state(result.state.state_id).data == result.outputs
    assert result.metrics.total_tokens > 0


def test_background_mode_is_polled_and_does_not_stream_per_token() -> None:
    cfg = config()
    cfg["provider"]["options"]["first_token_delay_s"] = 0.05  # each call takes a while: RUNNING is seen
    with ExecutionSession(cfg) as session, ThreadPoolExecutor(2) as pool:
        handle = session.run(mode="background", executor=pool)
        seen = set()
        deadline = time.monotonic() + 30
        while handle.status() not in RunStatus.TERMINAL and time.monotonic() < deadline:
            seen.add(handle.status())
            time.sleep(0.005)
        result = handle.result(timeout=30)
        assert result.status == RunStatus.SUCCEEDED
        assert RunStatus.RUNNING in seen
        assert result.outputs["summarize"] == "summary of alpha"
        # Without the `messages` stream mode the chat model generates rather than streams:
        # no token events, one complete answer per call.
        events = list(handle.stream())
        assert not [e for e in events if e.kind == "llm.token"]
        finished = [e.data["response"]["text"] for e in events if e.kind == "llm.finished"]
        assert finished == ["alpha beta gamma", "summary of alpha"]
        assert session.attach(handle.run_id).status() == RunStatus.SUCCEEDED
        # The run's time to first output is the first answer's arrival, as a streamed run's
        # is its first token's: after the first call's 50 ms, before the run's end.
        ttft = result.metrics.ttft_s
        assert ttft is not None and 0.05 <= ttft < result.metrics.latency_s  # type: ignore[operator]
        assert result.metrics.calls[0].ttft_s is not None


def test_client_builder_graph_from_code() -> None:
    with ExecutionSession(config()) as session:
        use_graph(session, two_step)
        handle = session.run()
        text = "".join(handle.stream_text())
        result = handle.result(timeout=30)
    assert text == "alpha beta gammasummary of alpha"
    events = list(handle.stream())
    started = [e for e in events if e.kind == "task.started"]
    assert [e.task for e in started] == ["gather", "summarize"]
    spans = {e.span_id: e.task for e in started}
    for call in (e for e in events if e.kind == "llm.started"):
        assert spans[call.parent_id] == call.task  # each LLM call linked to its node
    assert [m["content"] for m in result.state["summarize"]["messages"]] == ["summary of alpha"]
    assert result.outputs["gather"]["messages"][0]["type"] == "ai"
    assert len([e for e in events if e.kind == "state.snapshot"]) >= 2


def test_client_builder_from_import_path_and_bad_path() -> None:
    cfg = config({"name": "langgraph", "options": {"graph": "graphs:two_step"}})
    with ExecutionSession(cfg) as session:
        assert session.run().result(timeout=30).outputs["summarize"]["messages"][0]["content"] == "summary of alpha"
    cfg = config({"name": "langgraph", "options": {"graph": "graphs:nope"}})
    with ExecutionSession(cfg) as session, pytest.raises(RunFailedError) as info:
        session.run().result(timeout=30)
    assert isinstance(info.value.cause, ConfigError)
    assert "orchestrator.options.graph: cannot import 'graphs:nope'" in str(info.value.cause)
    with ExecutionSession(config({"name": "direct"})) as session, pytest.raises(InputError, match="not 'langgraph'"):
        use_graph(session, two_step)


def echo_words(words: str) -> str:
    """Echo the words back, upper-cased."""
    return words.upper()


def test_tool_calling_node_round_trip() -> None:
    cfg = config(tools={"echo_words": "test_orchestrator:echo_words"})
    cfg["provider"]["options"]["responses"] = [
        {"match": "Gather", "tool_calls": [{"name": "echo_words", "arguments": {"words": "sea otter"}}], "times": 1},
        {"match": "SEA OTTER", "text": "the tool said SEA OTTER"},
    ]
    cfg["tasks"]["gather"]["tools"] = ["echo_words"]
    with ExecutionSession(cfg) as session:
        handle = session.run(["gather"])
        result = handle.result(timeout=30)
    assert result.outputs == {"gather": "the tool said SEA OTTER"}
    events = list(handle.stream())
    tool = [e for e in events if e.kind.startswith("tool.")]
    assert [(e.kind, e.data.get("result")) for e in tool] == [("tool.started", None), ("tool.finished", "SEA OTTER")]
    second = [e for e in events if e.kind == "llm.started"][1].data["request"]["messages"]
    assert second[-2]["tool_calls"][0]["name"] == "echo_words"
    assert second[-1] == {"role": "tool", "content": "SEA OTTER", "tool_call_id": "call_0"}


def test_structured_output_task() -> None:
    cfg = config()
    cfg["provider"]["options"]["responses"] = [{"match": "Gather", "text": '{"words": ["a", "b"]}'}]
    cfg["tasks"]["gather"]["output_schema"] = {"type": "object", "properties": {"words": {"type": "array"}}}
    with ExecutionSession(cfg) as session:
        assert session.run(["gather"]).result(timeout=30).outputs == {"gather": {"words": ["a", "b"]}}


def test_cancel_mid_graph_records_cancelled() -> None:
    with ExecutionSession(config({"name": "langgraph", "options": {"graph": "graphs:two_step"}}, delay=0.1)) as session:
        handle = session.run(detach=True)
        for event in handle.stream():
            if event.kind == "llm.token":
                break
        handle.cancel("user pressed stop")
        with pytest.raises(RunCancelledError):
            handle.result(timeout=10)
        assert handle.status() == RunStatus.CANCELLED
        record = session.store.get_run(handle.run_id)
        assert record.status == RunStatus.CANCELLED
        assert "summarize" not in {e.task for e in handle.stream() if e.kind == "task.started"}
        end = next(e for e in handle.stream() if e.kind == "run.cancelled")
        assert end.data["reason"] == "user pressed stop"


@pytest.mark.parametrize("graph", [None, "graphs:two_step"], ids=["registry", "builder"])
def test_provider_error_surfaces_typed(graph: Any) -> None:
    cfg = config({"name": "langgraph", "options": {"graph": graph}})
    cfg["provider"]["options"]["failures"] = [{"kind": "bad_request", "message": "no such model"}]
    with ExecutionSession(cfg) as session:
        handle = session.run()
        with pytest.raises(Exception) as info:
            handle.result(timeout=30)
    assert isinstance(info.value.cause, BadRequestError)  # type: ignore[attr-defined]
    assert info.value.task == "gather"  # type: ignore[attr-defined]
    assert handle.status() == RunStatus.FAILED


def test_interrupt_and_resume_in_one_process() -> None:
    cfg = config({"name": "langgraph", "options": {"graph": "graphs:draft_review"}})
    with ExecutionSession(cfg) as session:
        first = session.run(inputs={"topic": "kelp"})
        result = first.result(timeout=30)
        pending = result.state["__interrupt__"]
        assert pending[0]["value"] == {"question": "approve the draft?", "draft": "kelp grows fast"}
        assert "final" not in result.outputs
        assert any(e.kind == "framework.langgraph.interrupt" for e in first.stream())
        second = session.run(inputs={"resume": "yes"}, state=result.state)
        done = second.result(timeout=30)
    assert "__interrupt__" not in done.state
    assert done.state["review"] == {"approvals": ["yes"]}
    assert done.outputs["final"]["messages"][0]["content"] == "Kelp grows remarkably fast."
    assert [e.task for e in second.stream() if e.kind == "task.started"] == ["review", "final"]
