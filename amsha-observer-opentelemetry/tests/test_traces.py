"""Spans and metrics of real runs on the scripted provider, read back from the SDK's
in-memory span exporter and metric reader."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import pytest
from amsha import ExecutionSession, LLMRequest, RunStatus
from amsha.builtins.scripted import ScriptedProvider
from amsha.errors import RunFailedError
from opentelemetry.trace import SpanKind, StatusCode
from otel_support import TOOL_CALLS, by_name, dump, make_config, metric_points, parent_of, spans_of


def _events(handle: Any) -> list[Any]:
    return list(handle.stream())


def _provider_usage(config: dict[str, Any], handle: Any) -> list[tuple[int, int]]:
    """What the provider itself reports for each request of the run, asked again directly."""
    provider = ScriptedProvider(config["provider"]["options"], model=config["provider"]["model"])
    usage = []
    for event in _events(handle):
        if event.kind == "llm.started":
            response = provider.generate(LLMRequest.from_dict(event.data["request"]))
            assert response.usage is not None
            usage.append((response.usage.input_tokens, response.usage.output_tokens))
    return usage


def test_span_tree_of_a_direct_run_with_a_tool_call() -> None:
    TOOL_CALLS.clear()
    config = make_config()
    with ExecutionSession(config) as session:
        handle = session.run(inputs={"topic": "numbers"})
        result = handle.result(timeout=30)
        spans = spans_of(session)
        provider_usage = _provider_usage(config, handle)
    assert result.status == RunStatus.SUCCEEDED and TOOL_CALLS == [(40, 2)]
    names = sorted(s.name for s in spans)
    assert names == sorted(
        ["invoke_workflow amsha", "amsha.task sum", "amsha.task write", "execute_tool add"] + ["chat scripted-1"] * 3
    )
    run = next(s for s in spans if s.name == "invoke_workflow amsha")
    tasks = {s.attributes["amsha.task.name"]: s for s in spans if s.name.startswith("amsha.task")}
    tool = next(s for s in spans if s.name == "execute_tool add")
    chats = sorted((s for s in spans if s.name.startswith("chat")), key=lambda s: s.start_time)
    # One trace, rooted at the run; tasks under the run; calls and tools under their task.
    assert {s.context.trace_id for s in spans} == {run.context.trace_id}
    assert run.parent is None
    assert {parent_of(t) for t in tasks.values()} == {run.context.span_id}
    assert [parent_of(c) for c in chats] == [tasks["sum"].context.span_id] * 2 + [tasks["write"].context.span_id]
    assert parent_of(tool) == tasks["sum"].context.span_id
    # Children lie within their parents' time; the tool runs between the two calls of "sum".
    for child, parent in [(tasks["sum"], run), (tasks["write"], run), (chats[0], tasks["sum"]), (tool, tasks["sum"])]:
        assert parent.start_time <= child.start_time <= child.end_time <= parent.end_time
    assert chats[0].end_time <= tool.start_time <= tool.end_time <= chats[1].start_time
    # GenAI attributes.
    assert run.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert run.attributes["amsha.run.id"] == result.run_id
    assert run.attributes["amsha.run.mode"] == "interactive"
    assert run.attributes["amsha.run.status"] == "succeeded"
    assert tuple(run.attributes["amsha.run.tasks"]) == ("sum", "write")
    for chat in chats:
        assert chat.kind == SpanKind.CLIENT and chat.status.status_code == StatusCode.UNSET
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"] == "scripted"
        assert chat.attributes["gen_ai.request.model"] == "scripted-1"
        assert chat.attributes["gen_ai.response.model"] == "scripted-1"
        assert "amsha.llm.retries" not in chat.attributes  # set only when there were retries
        assert chat.attributes["gen_ai.response.time_to_first_chunk"] >= 0
    assert [tuple(c.attributes["gen_ai.response.finish_reasons"]) for c in chats] == [
        ("tool_calls",),
        ("stop",),
        ("stop",),
    ]
    assert [c.attributes["gen_ai.agent.name"] for c in chats] == ["mathematician", "mathematician", "writer"]
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "add"
    assert tool.attributes["gen_ai.tool.call.id"] == "c1"
    # Token values are the provider's own, call by call, and AmshaMetrics says the same.
    span_usage = [
        (c.attributes["gen_ai.usage.input_tokens"], c.attributes["gen_ai.usage.output_tokens"]) for c in chats
    ]
    assert span_usage == provider_usage
    assert result.metrics is not None
    assert span_usage == [(c.input_tokens, c.output_tokens) for c in result.metrics.calls]
    assert run.attributes["amsha.usage.input_tokens"] == result.metrics.input_tokens == sum(u[0] for u in span_usage)
    assert run.attributes["amsha.usage.output_tokens"] == result.metrics.output_tokens == sum(u[1] for u in span_usage)
    assert [c.attributes["amsha.llm.latency_s"] for c in chats] == [c.latency_s for c in result.metrics.calls]
    assert [c.attributes["gen_ai.response.time_to_first_chunk"] for c in chats] == [
        c.ttft_s for c in result.metrics.calls
    ]


def test_metrics_match_amsha_metrics() -> None:
    with ExecutionSession(make_config()) as session:
        result = session.run(inputs={"topic": "numbers"}).result(timeout=30)
        points = metric_points(session)
    metrics = result.metrics
    assert metrics is not None
    usage = points["gen_ai.client.token.usage"]
    by_type = {p.attributes["gen_ai.token.type"]: p for p in usage}
    assert set(by_type) == {"input", "output"}
    assert by_type["input"].sum == metrics.input_tokens
    assert by_type["output"].sum == metrics.output_tokens
    assert by_type["input"].count == by_type["output"].count == len(metrics.calls) == 3
    for p in usage:
        assert p.attributes["gen_ai.operation.name"] == "chat"
        assert p.attributes["gen_ai.provider.name"] == "scripted"
        assert p.attributes["gen_ai.request.model"] == "scripted-1"
        assert p.attributes["gen_ai.response.model"] == "scripted-1"
        assert tuple(p.explicit_bounds)[:3] == (1, 4, 16)  # the conventions' advised buckets
    (duration,) = points["gen_ai.client.operation.duration"]
    assert duration.count == 3
    assert duration.sum == pytest.approx(sum(c.latency_s or 0 for c in metrics.calls))
    (ttft,) = points["gen_ai.client.operation.time_to_first_chunk"]
    assert ttft.count == 3 and ttft.sum == pytest.approx(sum(c.ttft_s or 0 for c in metrics.calls))
    assert "amsha.llm.retries" not in points  # nothing was retried


def test_retries_are_span_events_and_counted() -> None:
    config = make_config(provider_options={"failures": [{"kind": "rate_limit", "times": 2}]})
    with ExecutionSession(config) as session:
        result = session.run(["sum"], inputs={"topic": "x"}).result(timeout=30)
        spans = spans_of(session)
        points = metric_points(session)
    assert result.status == RunStatus.SUCCEEDED and result.metrics is not None
    assert result.metrics.retries == 2
    first = min((s for s in spans if s.name.startswith("chat")), key=lambda s: s.start_time)
    assert first.attributes["amsha.llm.retries"] == 2
    retries = [e for e in first.events if e.name == "amsha.llm.retry"]
    assert [e.attributes["amsha.retry.attempt"] for e in retries] == [1, 2]
    assert {e.attributes["error.type"] for e in retries} == {"RateLimitError"}
    assert sum(p.value for p in points["amsha.llm.retries"]) == result.metrics.retries
    run = by_name(s for s in spans if not s.name.startswith(("chat", "execute")))["invoke_workflow amsha"]
    assert run.attributes["amsha.run.retries"] == 2


def test_a_failed_run_gives_error_spans_and_every_span_ends() -> None:
    config = make_config(provider_options={"failures": [{"kind": "auth", "message": "bad key"}]})
    with ExecutionSession(config) as session:
        handle = session.run(["sum"], inputs={"topic": "x"})
        with pytest.raises(RunFailedError) as failed:
            handle.result(timeout=30)
        spans = spans_of(session)
        points = metric_points(session)
        observer = session.observers[0]
        assert observer._runs == {}  # nothing of the run is kept once it ended
    assert failed.value.result.status == RunStatus.FAILED
    named = by_name(spans)
    chat, task, run = named["chat scripted-1"], named["amsha.task sum"], named["invoke_workflow amsha"]
    for span in (chat, task, run):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == "AuthenticationError"
        assert span.end_time is not None
    assert "bad key" in (chat.status.description or "")
    assert run.attributes["amsha.run.status"] == "failed"
    (duration,) = points["gen_ai.client.operation.duration"]
    assert duration.attributes["error.type"] == "AuthenticationError" and duration.count == 1


def test_a_cancelled_run_ends_every_span() -> None:
    config = make_config(provider_options={"default": " ".join(["tok"] * 400), "token_delay_s": 0.01})
    config["tasks"]["slow"] = {"description": "Say many things.", "agent": "writer"}
    with ExecutionSession(config) as session:
        handle = session.run(["slow"], inputs={"topic": "x"}, detach=True)
        seen = 0
        for event in handle.stream():
            seen += event.kind == "llm.token"
            if seen == 5:
                handle.cancel()
                break
        deadline = time.monotonic() + 10
        while handle.status() not in (RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.SUCCEEDED):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        spans = spans_of(session)
    assert handle.status() == RunStatus.CANCELLED
    named = by_name(spans)
    assert set(named) == {"invoke_workflow amsha", "amsha.task slow", "chat scripted-1"}
    run = named["invoke_workflow amsha"]
    assert run.attributes["amsha.run.status"] == "cancelled"
    assert run.attributes["error.type"] == "RunCancelledError"
    assert named["chat scripted-1"].status.status_code == StatusCode.ERROR
    assert named["chat scripted-1"].attributes["gen_ai.usage.output_tokens"] >= 5
    for span in spans:
        assert span.end_time is not None and span.end_time <= run.end_time


def test_background_runs_parent_under_their_own_run_span() -> None:
    with ExecutionSession(make_config()) as session, concurrent.futures.ThreadPoolExecutor(3) as pool:
        handles = [session.run(inputs={"topic": str(i)}, mode="background", executor=pool) for i in range(3)]
        results = [h.result(timeout=30) for h in handles]
        spans = spans_of(session)
    assert all(r.status == RunStatus.SUCCEEDED for r in results)
    runs = {s.attributes["amsha.run.id"]: s for s in spans if s.name == "invoke_workflow amsha"}
    assert set(runs) == {r.run_id for r in results}
    for run_id, run in runs.items():
        assert run.attributes["amsha.run.mode"] == "background"
        mine = [s for s in spans if s.context.trace_id == run.context.trace_id]
        assert len(mine) == 7  # run, 2 tasks, 3 calls, 1 tool: nothing of another run
        ids = {s.context.span_id for s in mine}
        assert all(parent_of(s) in ids for s in mine if s is not run)
        assert [s.attributes["amsha.run.id"] for s in mine if "amsha.run.id" in s.attributes] == [run_id]


def test_agent_and_framework_events_of_an_orchestrator() -> None:
    """Orchestrators (CrewAI, LangGraph) emit agent spans and their own framework events:
    agent spans nest under the task and calls under the agent; framework events land on
    the span they name."""
    from amsha.events import Event
    from amsha_otel import OtelObserver

    observer = OtelObserver({"exporter": "memory"})
    t = time.time()
    events = [
        Event("run.started", "r1", 0, t, "r1", None, data={"mode": "interactive", "tasks": ["t"]}),
        Event("task.started", "r1", 1, t + 0.1, "task-1", "r1", "t", "ag"),
        Event("agent.started", "r1", 2, t + 0.2, "agent-1", "task-1", "t", "ag"),
        Event("framework.crew.step", "r1", 3, t + 0.3, "agent-1", "task-1", "t", "ag", {"step": 1, "note": "x"}),
        Event("llm.started", "r1", 4, t + 0.4, "llm-1", "agent-1", "t", "ag", {"provider": "p", "model": "m"}),
        Event("llm.finished", "r1", 5, t + 0.5, "llm-1", "agent-1", "t", "ag", {"usage": {"input_tokens": 3}}),
        Event("agent.finished", "r1", 6, t + 0.6, "agent-1", "task-1", "t", "ag"),
        Event("task.finished", "r1", 7, t + 0.7, "task-1", "r1", "t", "ag", {"output": "o"}),
        Event("run.finished", "r1", 8, t + 0.8, "r1", None, data={"metrics": {"total": {}}}),
    ]
    for event in events:
        observer.on_event(event)
    named = by_name(observer.span_exporter.get_finished_spans())
    observer.close()
    agent = named["invoke_agent ag"]
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.agent.name"] == "ag"
    assert parent_of(agent) == named["amsha.task t"].context.span_id
    assert parent_of(named["chat m"]) == agent.context.span_id
    (step,) = agent.events
    assert step.name == "framework.crew.step" and step.attributes["amsha.step"] == 1
    assert "amsha.note" not in step.attributes  # strings are content: kept only when captured
    # Span times are the events' own times, not when the observer got to them.
    assert named["chat m"].start_time == int((t + 0.4) * 1e9)
    assert named["invoke_workflow amsha"].end_time == int((t + 0.8) * 1e9)


def test_closing_ends_spans_of_runs_still_open() -> None:
    from amsha.events import Event
    from amsha_otel import OtelObserver

    observer = OtelObserver({"exporter": "memory"})
    t = time.time()
    observer.on_event(Event("run.started", "r2", 0, t, "r2", None, data={"mode": "background", "tasks": []}))
    observer.on_event(Event("task.started", "r2", 1, t, "task-2", "r2", "t", "a"))
    exporter = observer.span_exporter
    observer.close()
    observer.close()  # idempotent
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["amsha.task t", "invoke_workflow amsha"]
    assert all(s.attributes["amsha.incomplete"] is True for s in spans)
    # Ended at closing time, after they started.
    assert all(s.end_time is not None and s.end_time >= s.start_time for s in spans)
    observer.on_event(Event("run.finished", "r2", 2, t, "r2", None))  # after close: ignored, no error


def test_dump_helper_sees_attributes() -> None:
    with ExecutionSession(make_config()) as session:
        session.run(["sum"], inputs={"topic": "x"}).result(timeout=30)
        text = dump(spans_of(session))
    assert '"gen_ai.tool.name": "add"' in text


@pytest.mark.parametrize("mode", ["interactive", "background"])
def test_a_run_started_inside_a_span_of_the_application_is_its_child(mode: str) -> None:
    with ExecutionSession(make_config()) as session:
        from opentelemetry.sdk.trace import TracerProvider

        tracer = TracerProvider().get_tracer("app")  # the application's own tracing
        with tracer.start_as_current_span("handle request") as outer:
            handle = session.run(inputs={"topic": "numbers"}, mode=mode)
        handle.result(timeout=30)
        spans = spans_of(session)
    run = next(s for s in spans if s.name == "invoke_workflow amsha")
    assert run.context.trace_id == outer.get_span_context().trace_id
    assert run.parent is not None and run.parent.span_id == outer.get_span_context().span_id
    started = next(e for e in handle.stream() if e.kind == "run.started")
    assert started.data["links"]["traceparent"].startswith("00-")


def test_a_standalone_llm_call_is_traced_and_its_run_state_released() -> None:
    """``session.llm().generate()`` outside any run: its scope becomes a workflow span with
    the chat span under it, and the observer keeps nothing of it afterwards."""
    with ExecutionSession(make_config()) as session:
        session.llm().generate("hi")
        with session.llm().stream("hi") as stream:
            for _ in stream:
                pass
        spans = spans_of(session)
        observer = session.observers[0]
        assert not observer._runs  # every scope ended: nothing held per call
    workflows = [s for s in spans if s.name.startswith("invoke_workflow")]
    chats = [s for s in spans if s.name.startswith("chat")]
    assert len(workflows) == 2 and len(chats) == 2
    assert {w.attributes["amsha.run.mode"] for w in workflows} == {"standalone"}
    assert sorted(parent_of(c) for c in chats) == sorted(w.context.span_id for w in workflows)
