"""ExecutionSession and ExecutionHandle: modes, cancel, events, state, replay, secrets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _amsha_support import make_config

from amsha import Event, ExecutionMode, ExecutionSession, ExecutionState, RunStatus
from amsha.errors import (
    ConfigError,
    InputError,
    ReplayDivergenceError,
    RunCancelledError,
    RunFailedError,
    RunTimeoutError,
    ServerError,
    VersionConflictError,
)

SLOW = {"token_delay_s": 0.05}


def test_interactive_run_streams_tokens_in_order(session_factory: Any) -> None:
    session = session_factory()
    handle = session.run(inputs={"topic": "owls"})
    text = "".join(handle.stream_text())
    result = handle.result()
    assert text == result.outputs["research"] + result.outputs["write"]
    assert result.status == RunStatus.SUCCEEDED == handle.status()
    assert result.state is not None and result.state["write"] == "A short paragraph built from the facts."


def test_tasks_run_exactly_as_named(session_factory: Any) -> None:
    session = session_factory()
    result = session.run(["write"], inputs={"topic": "owls"}).result()
    assert list(result.outputs) == ["write"]
    with pytest.raises(InputError, match="unknown task 'publish'"):
        session.run(["publish"], inputs={"topic": "owls"})
    with pytest.raises(InputError, match=r"\{topic\}"):
        session.run()


def test_context_comes_from_this_run_or_the_shared_state(session_factory: Any) -> None:
    session = session_factory()
    state = ExecutionState()
    session.run(["research"], inputs={"topic": "owls"}, state=state).result()
    handle = session.run(["write"], inputs={"topic": "owls"}, state=state)
    handle.result()
    request = next(e for e in handle.stream() if e.kind == "llm.started").data["request"]
    assert "Fact one. Fact two. Fact three." in request["messages"][1]["content"]
    assert state["research"] and state["write"]


def test_events_are_ordered_gap_free_and_linked(session_factory: Any) -> None:
    session = session_factory()
    handle = session.run(inputs={"topic": "owls"})
    events = list(handle.stream())
    assert [e.seq for e in events] == list(range(len(events)))
    assert {e.run_id for e in events} == {handle.run_id}
    assert events[0].kind == "run.started" and events[-1].kind == "run.finished"
    spans = {e.span_id: e for e in events if e.kind in ("task.started", "llm.started")}
    for e in events:
        if e.kind == "task.started":
            assert e.parent_id == handle.run_id
        if e.kind in ("llm.started", "llm.token", "llm.finished"):
            assert spans[e.parent_id].kind == "task.started"
            assert spans[e.parent_id].task == e.task
    stored = session.events(handle.run_id)
    assert [e.to_dict() for e in stored] == [e.to_dict() for e in events]


def test_stream_resumes_from_a_sequence_number(session_factory: Any) -> None:
    session = session_factory()
    handle = session.run(inputs={"topic": "owls"})
    everything = list(handle.stream())
    resumed = list(handle.stream(from_seq=5))
    assert [e.seq for e in resumed] == [e.seq for e in everything[5:]]
    attached = session.attach(handle.run_id)
    assert [e.seq for e in attached.stream(from_seq=5)] == [e.seq for e in resumed]


def test_concurrent_runs_never_see_each_others_events(session_factory: Any) -> None:
    session = session_factory(make_config(provider_options={"token_delay_s": 0.005}))
    handles = [session.run(inputs={"topic": f"t{i}"}) for i in range(4)]
    for handle in handles:
        events = list(handle.stream())
        assert {e.run_id for e in events} == {handle.run_id}
        assert [e.seq for e in events] == list(range(len(events)))
        assert handle.result().outputs["write"]


def test_background_run_is_polled_to_completion(session_factory: Any) -> None:
    session = session_factory(make_config(provider_options={"token_delay_s": 0.01}))
    handle = session.run(inputs={"topic": "owls"}, mode="background")
    assert handle.mode is ExecutionMode.BACKGROUND
    seen = set()
    while not handle.done():
        seen.add(handle.status())
        time.sleep(0.01)
    assert RunStatus.RUNNING in seen
    assert handle.result(timeout=5).status == RunStatus.SUCCEEDED
    record = session.store.get_run(handle.run_id)
    assert record.status == RunStatus.SUCCEEDED and record.outputs == handle.result().outputs


def test_background_run_on_a_client_thread_pool(session_factory: Any) -> None:
    session = session_factory()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        handles = [session.run(inputs={"topic": str(i)}, mode="background", executor=pool) for i in range(3)]
        results = [h.result(timeout=10) for h in handles]
    assert all(r.status == RunStatus.SUCCEEDED for r in results)


def test_result_timeout_does_not_cancel(session_factory: Any) -> None:
    session = session_factory(make_config(provider_options=SLOW))
    handle = session.run(inputs={"topic": "owls"}, mode="background")
    with pytest.raises(RunTimeoutError):
        handle.result(timeout=0.05)
    assert handle.result(timeout=10).status == RunStatus.SUCCEEDED


@pytest.mark.parametrize("mode", ["interactive", "background"])
def test_cancel_closes_the_stream_within_100ms(session_factory: Any, mode: str) -> None:
    session = session_factory(make_config(provider_options={"token_delay_s": 0.2}))
    state = ExecutionState()
    handle = session.run(inputs={"topic": "owls"}, mode=mode, state=state)
    for event in handle.stream():
        if event.kind == "llm.token":
            break
    started = time.perf_counter()
    assert handle.cancel("enough") in (True, False)
    with pytest.raises(RunCancelledError, match=r"enough|consumer"):
        handle.result(timeout=1)
    assert time.perf_counter() - started < 0.1
    assert handle.status() == RunStatus.CANCELLED
    assert handle.cancel() is False  # idempotent
    events = list(handle.stream())
    last = events[-1]
    assert last.kind == "run.cancelled" and last.data["partial_text"].startswith("Fact")
    llm_end = [e for e in events if e.kind == "llm.finished"]
    assert llm_end and llm_end[-1].data["cancelled"] is True
    record = session.store.get_run(handle.run_id)
    assert record.status == RunStatus.CANCELLED


def test_closing_an_interactive_stream_cancels_the_run(session_factory: Any) -> None:
    session = session_factory(make_config(provider_options={"token_delay_s": 0.1}))
    handle = session.run(inputs={"topic": "owls"})
    stream = handle.stream()
    next(stream)
    stream.close()
    with pytest.raises(RunCancelledError, match="consumer went away"):
        handle.result(timeout=2)


def test_detached_run_survives_its_stream_closing(session_factory: Any) -> None:
    session = session_factory(make_config(provider_options={"token_delay_s": 0.01}))
    handle = session.run(inputs={"topic": "owls"}, detach=True)
    stream = handle.stream()
    next(stream)
    stream.close()
    assert handle.result(timeout=5).status == RunStatus.SUCCEEDED


def test_cancel_keeps_the_last_snapshot(session_factory: Any) -> None:
    config = make_config(
        provider_options={
            "responses": [{"match": "Research", "text": "done"}, {"text": "a b c d e f g h"}],
            "token_delay_s": 0.1,
        }
    )
    session = session_factory(config)
    state = ExecutionState()
    handle = session.run(inputs={"topic": "owls"}, state=state)
    for event in handle.stream():
        if event.kind == "llm.token" and event.task == "write":
            break
    handle.cancel()
    with pytest.raises(RunCancelledError):
        handle.result(timeout=2)
    latest = session.store.get_state(state.state_id)
    assert latest.data == {"research": "done"}
    with pytest.raises(RunCancelledError) as info:
        handle.result()
    # The record keeps the partial text of the task the run was in; the state only what finished.
    outputs = info.value.result.outputs
    assert outputs["research"] == "done" and "a b c d e f g h".startswith(outputs["write"]) and outputs["write"]
    assert session.store.get_run(handle.run_id).outputs == outputs


def test_provider_error_fails_the_run_with_the_typed_cause(session_factory: Any) -> None:
    session = session_factory(make_config(provider_options={"failures": [{"kind": "server", "times": 5}]}))
    handle = session.run(inputs={"topic": "owls"})
    with pytest.raises(RunFailedError) as info:
        handle.result()
    assert isinstance(info.value.cause, ServerError)
    assert info.value.task == "research"
    assert "research" in str(info.value)
    assert handle.metrics.retries == 2 and handle.metrics.errors == 1


def test_metrics_per_call_task_and_run(session_factory: Any) -> None:
    session = session_factory()
    result = session.run(inputs={"topic": "owls"}).result()
    m = result.metrics
    assert m is not None
    assert len(m.calls) == 2
    assert m.total_tokens == sum(c.total_tokens for c in m.calls) > 0
    assert m.tasks["research"].output_tokens == 6  # "Fact one. Fact two. Fact three."
    assert m.ttft_s is not None and m.latency_s is not None and m.latency_s >= m.ttft_s
    assert not m.total.tokens_estimated


def test_state_shared_by_runs_and_conflicts_caught(session_factory: Any) -> None:
    session = session_factory()
    state = ExecutionState({"seed": 1})
    session.run(["research"], inputs={"topic": "a"}, state=state).result()
    session.run(["research"], inputs={"topic": "a"}, mode="background", state=state).result()
    assert state.version == 2  # one task snapshot per run
    stale = ExecutionState.from_store(session.store, state.state_id, 1)
    with pytest.raises(RunFailedError) as info:
        session.run(["research"], inputs={"topic": "a"}, state=stale).result()
    assert isinstance(info.value.cause, VersionConflictError)
    assert session.store.get_state(state.state_id).version == 2


def test_state_by_id_and_round_trip(session_factory: Any) -> None:
    session = session_factory()
    state = ExecutionState({"notes": ["x"]})
    session.run(["research"], inputs={"topic": "a"}, state=state).result()
    by_id = session.run(["write"], inputs={"topic": "a"}, state=state.state_id).result()
    assert by_id.state is not None and by_id.state["notes"] == ["x"] and "research" in by_id.state
    reloaded = ExecutionState.load(by_id.state.save())
    assert reloaded.to_dict() == by_id.state.to_dict()


def test_replay_reproduces_outputs_without_the_provider(session_factory: Any) -> None:
    session = session_factory()
    original = session.run(inputs={"topic": "owls"})
    first = original.result()
    provider = session.llm().provider
    calls_before = provider.calls
    replay = session.replay(original.run_id)
    again = replay.result()
    assert again.outputs == first.outputs
    assert provider.calls == calls_before
    original_tokens = [e.text for e in original.stream() if e.kind == "llm.token"]
    assert [e.text for e in replay.stream() if e.kind == "llm.token"] == original_tokens
    assert session.store.get_run(replay.run_id).replay_of == original.run_id


def test_replay_reports_divergence(session_factory: Any) -> None:
    session = session_factory()
    handle = session.run(inputs={"topic": "owls"})
    handle.result()
    session.registry.tasks["write"] = session.registry.tasks["write"].model_copy(
        update={"description": "Write it differently."}
    )
    with pytest.raises(RunFailedError) as info:
        session.replay(handle.run_id).result()
    cause = info.value.cause
    assert isinstance(cause, ReplayDivergenceError)
    assert cause.expected is not None and cause.expected["task"] == "write"
    assert "write" in str(cause)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


class Raising:
    calls = 0

    def on_event(self, event: Event) -> None:
        Raising.calls += 1
        raise RuntimeError("observer bug")

    def close(self) -> None:
        pass


def test_observers_see_every_event_and_a_raising_one_breaks_nothing(
    session_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    session = session_factory(make_config(), observers=[Raising(), recorder])
    handle = session.run(inputs={"topic": "owls"})
    assert handle.result().status == RunStatus.SUCCEEDED
    assert session.flush_observers(timeout=10)
    assert [e.seq for e in recorder.events] == list(range(len(recorder.events)))
    assert {e.kind for e in recorder.events} >= {
        "run.started",
        "task.started",
        "llm.started",
        "llm.token",
        "llm.finished",
        "task.finished",
        "state.snapshot",
        "run.finished",
    }
    assert Raising.calls == 1
    assert sum("observer bug" in r.getMessage() for r in caplog.records) == 1
    [error] = session.observer_errors
    assert error.run_id == handle.run_id and error.event_kind == "run.started"
    assert error.error == "RuntimeError: observer bug"
    # A second run reports it again, once: it is skipped per run, not forever.
    session.run(inputs={"topic": "owls"}).result()
    session.flush_observers(timeout=10)
    assert Raising.calls == 2 and len(session.observer_errors) == 2


class Slow:
    """An observer that takes a second per event: a tracing exporter on a bad network."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.closed = False

    def on_event(self, event: Event) -> None:
        self.seen.append(event.kind)
        time.sleep(1.0)

    def close(self) -> None:
        self.closed = True


def test_a_slow_and_a_raising_observer_do_not_hold_back_a_200_token_stream(
    session_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    text = " ".join(f"w{i}" for i in range(200))
    config = make_config(
        provider_options={"responses": [{"match": "", "text": text}], "token_delay_s": 0.001},
        tasks={"only": {"description": "Say it.", "agent": "writer"}},
    )
    slow, recorder = Slow(), Recorder()
    session = session_factory(config, observers=[slow, Raising(), recorder])
    started = time.perf_counter()
    arrivals = []
    handle = session.run(inputs={"topic": "owls"})
    for event in handle.stream():
        if event.kind == "llm.token":
            arrivals.append(time.perf_counter() - started)
    result = handle.result()
    elapsed = time.perf_counter() - started
    assert result.status == RunStatus.SUCCEEDED and result.outputs["only"] == text
    assert len(arrivals) == 200
    # 200 tokens at 1 ms each: well under a second, while the slow observer has seen a few events.
    assert elapsed < 1.0, elapsed
    assert len(slow.seen) <= 2
    # The fast observer got everything, in order, while the slow one is still far behind.
    assert session.flush_observers(timeout=0.5) is False
    deadline = time.monotonic() + 10
    while (not recorder.events or recorder.events[-1].kind != "run.finished") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.seq for e in recorder.events] == [e.seq for e in handle.stream()]
    # Closing waits at most the drain timeout, then reports what was not delivered.
    t0 = time.perf_counter()
    session.close(drain_timeout_s=0.2)
    assert time.perf_counter() - t0 < 1.5  # the drain timeout, plus the event in the observer's hands
    assert slow.closed
    assert any("did not keep up" in r.getMessage() for r in caplog.records)


def test_jsonl_observer_writes_every_event(session_factory: Any, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    session = session_factory(make_config(observers=[{"name": "jsonl", "options": {"path": str(path)}}]))
    handle = session.run(inputs={"topic": "owls"})
    events = list(handle.stream())
    session.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["seq"] for line in lines] == [e.seq for e in events]


def test_secrets_never_reach_events_state_records_or_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from amsha.secrets import get_secret

    canary = "sk-canary-4f1d2c9a8b7e6d5c"
    monkeypatch.setenv("AMSHA_TEST_CANARY_KEY", canary)
    assert get_secret("AMSHA_TEST_CANARY_KEY") is not None
    store_dir = tmp_path / "store"
    config = make_config(
        state={"name": "file", "options": {"path": str(store_dir)}},
        observers=[{"name": "jsonl", "options": {"path": str(tmp_path / "events.jsonl")}}],
        provider_options={"failures": [{"kind": "server", "times": 1, "message": f"upstream said key={canary}"}]},
    )
    # A careless client puts the key in an input and the state; Amsha must still scrub it.
    with ExecutionSession(config) as session:
        state = ExecutionState({"note": f"the key is {canary}"})
        handle = session.run(inputs={"topic": canary}, state=state)
        handle.result()
        for event in handle.stream():
            if event.kind != "llm.token":
                assert canary not in json.dumps(event.to_dict())
        failing = ExecutionSession(
            make_config(provider_options={"failures": [{"kind": "bad_request", "message": f"bad key {canary}"}]})
        )
        with pytest.raises(RunFailedError) as info:
            failing.run(inputs={"topic": "x"}).result()
        failing.close()
        assert canary not in str(info.value) and canary not in str(info.value.cause)
        assert canary not in repr(info.value) and canary not in repr(info.value.cause)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert canary not in path.read_text(encoding="utf-8"), path


def test_sync_api_inside_a_running_event_loop(session_factory: Any) -> None:
    session = session_factory()

    async def notebook_cell() -> str:
        handle = session.run(inputs={"topic": "owls"})
        return str(handle.result().outputs["write"])

    assert asyncio.run(notebook_cell()).startswith("A short")


def test_async_api_on_the_callers_loop(session_factory: Any) -> None:
    session = session_factory(make_config(provider_options={"token_delay_s": 0.01}))

    async def web_handler() -> tuple[str, list[str], str]:
        loop_thread = threading.get_ident()
        handle = await session.arun(inputs={"topic": "owls"})
        tokens = [t async for t in handle.astream_text()]
        result = await handle.aresult(timeout=5)
        background = await session.arun(inputs={"topic": "x"}, mode="background")
        await background.aresult()
        assert threading.get_ident() == loop_thread
        return result.status, tokens, background.status()

    status, tokens, background = asyncio.run(web_handler())
    assert status == background == RunStatus.SUCCEEDED
    assert len(tokens) == 13


def test_async_cancel(session_factory: Any) -> None:
    session = session_factory(make_config(provider_options={"token_delay_s": 0.2}))

    async def main() -> float:
        handle = await session.arun(inputs={"topic": "owls"})
        async for event in handle.astream():
            if event.kind == "llm.token":
                break
        started = time.perf_counter()
        await handle.acancel()
        assert handle.status() == RunStatus.CANCELLED
        return time.perf_counter() - started

    assert asyncio.run(main()) < 0.1


def test_attach_by_run_id_in_the_same_process(session_factory: Any, tmp_path: Path) -> None:
    session = session_factory(make_config(state={"name": "file", "options": {"path": str(tmp_path)}}))
    handle = session.run(inputs={"topic": "owls"}, mode="background")
    handle.result()
    other = ExecutionSession(make_config(state={"name": "file", "options": {"path": str(tmp_path)}}))
    try:
        attached = other.attach(handle.to_json())
        assert attached.status() == RunStatus.SUCCEEDED
        assert attached.result().outputs == handle.result().outputs
        assert [e.kind for e in attached.stream()] == [e.kind for e in handle.stream()]
        assert attached.metrics.total_tokens == handle.metrics.total_tokens
    finally:
        other.close()


def test_llm_usable_without_any_run(session_factory: Any) -> None:
    session = session_factory()
    assert session.llm().generate("Research owls").text.startswith("Fact one")


def test_closed_session_refuses_runs(session_factory: Any) -> None:
    session = session_factory()
    session.close()
    with pytest.raises(Exception, match="closed"):
        session.run(inputs={"topic": "x"})


def test_placeholders_are_filled_from_the_injected_state_and_inputs_win() -> None:
    config = {
        "provider": {
            "name": "scripted",
            "options": {"responses": [{"match": "Use 3 facts about reefs", "text": "ok"}]},
        },
        "agents": {"a": {"role": "Writer", "goal": "Write"}},
        "tasks": {"t": {"description": "Use {count} facts about {topic}", "agent": "a"}},
    }
    with ExecutionSession(config) as session:
        state = ExecutionState({"count": 3, "topic": "kelp"})
        result = session.run("t", inputs={"topic": "reefs"}, state=state).result(timeout=10)
        assert result.outputs == {"t": "ok"}
        assert state.get("topic") == "kelp"  # read, never written
        with pytest.raises(InputError, match="count"):
            session.run("t", inputs={"topic": "reefs"})


def test_run_context_exposes_the_session_store() -> None:
    """Orchestrators that keep framework data (LangGraph checkpoints) next to the run's
    state reach the session's store through ``run.store``."""
    from amsha import BaseOrchestrator, RunContext

    seen: list[Any] = []

    class Probe(BaseOrchestrator):
        name = "probe"

        def execute(self, run: RunContext) -> None:
            seen.append(run.store)

    with ExecutionSession({}) as session:
        session.orchestrator = Probe()
        session.registry.add_agent("a", role="r", goal="g")
        session.registry.add_task("t", description="d", agent="a")
        session.run(["t"]).result(timeout=10)
        assert seen == [session.store]


def test_an_observer_ignoring_event_kinds_is_never_sent_them() -> None:
    class NoTokens:
        ignored_event_kinds = ("llm.token", "task.started", "task.finished", "state.snapshot", "llm.started")

        def __init__(self) -> None:
            self.kinds: list[str] = []

        def on_event(self, event: Event) -> None:
            self.kinds.append(event.kind)

        def close(self) -> None:
            pass

    watcher = NoTokens()
    config = {
        "provider": {"name": "scripted", "options": {"responses": ["one two three"]}},
        "agents": {"a": {"role": "R", "goal": "G"}},
        "tasks": {"t": {"description": "Say it", "agent": "a"}},
    }
    with ExecutionSession(config, observers=[watcher]) as session:
        handle = session.run("t")
        handle.result(timeout=10)
        assert session.flush_observers(5)
        assert any(e.kind == "llm.token" for e in handle.stream())
    assert watcher.kinds == ["run.started", "llm.finished", "run.finished"]


def test_run_links_are_captured_in_the_callers_thread_and_carried_on_run_started() -> None:
    caller = threading.local()

    class Linking:
        def run_links(self, run_id: str) -> dict[str, str]:
            return {"who": caller.name, "run": run_id}

        def on_event(self, event: Event) -> None:
            pass

        def close(self) -> None:
            pass

    class Broken(Linking):
        def run_links(self, run_id: str) -> dict[str, str]:
            raise RuntimeError("boom")

    config = {
        "provider": {"name": "scripted", "options": {"responses": ["ok"]}},
        "agents": {"a": {"role": "R", "goal": "G"}},
        "tasks": {"t": {"description": "Say it", "agent": "a"}},
    }
    caller.name = "request-7"
    with ExecutionSession(config, observers=[Broken(), Linking()]) as session:
        handle = session.run("t", mode="background")
        assert handle.result(timeout=10).outputs == {"t": "ok"}
        started = next(e for e in handle.stream() if e.kind == "run.started")
    assert started.data["links"] == {"who": "request-7", "run": handle.run_id}


def test_agents_may_name_tools_passed_in_code() -> None:
    def shout(text: str) -> str:
        """Shout the text."""
        return text.upper()

    config = {
        "provider": {
            "name": "scripted",
            "options": {
                "responses": [
                    {"match": "Shout", "times": 1, "tool_calls": [{"name": "shout", "arguments": {"text": "hi"}}]},
                    {"match": "HI", "text": "done"},
                ]
            },
        },
        "agents": {"a": {"role": "R", "goal": "G", "tools": ["shout"]}},
        "tasks": {"t": {"description": "Shout hi", "agent": "a"}},
    }
    with pytest.raises(ConfigError, match="tools=") as info:
        ExecutionSession(config)
    assert "agents.a.tools[0]" in str(info.value)
    with ExecutionSession(config, tools={"shout": shout}) as session:
        assert session.run("t").result(timeout=10).outputs == {"t": "done"}


class Batches:
    """Records which events arrive together: on_event calls closer than 1 ms apart are one
    hand-over."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self.threads: set[str] = set()

    def on_event(self, event: Event) -> None:
        self.arrivals.append((time.monotonic(), event.run_id))
        self.threads.add(threading.current_thread().name)

    def close(self) -> None:
        pass


def _quick_config() -> dict[str, Any]:
    return {
        "provider": {"name": "scripted", "options": {"responses": ["one two three"]}},
        "agents": {"a": {"role": "R", "goal": "G"}},
        "tasks": {"t": {"description": "Say it", "agent": "a"}},
    }


def test_observer_events_are_gathered_for_the_delivery_interval_then_handed_over_together() -> None:
    watcher = Batches()
    with ExecutionSession(_quick_config(), observers=[watcher]) as session:
        [channel] = session._channels
        channel.delivery_interval_s = 0.3  # read when the thread starts, on the first event
        t0 = time.monotonic()
        handles = [session.run("t") for _ in range(3)]
        runs = [h.result(timeout=10).run_id for h in handles]
        assert time.monotonic() - t0 < 0.25, "runs took too long for this test to mean anything"
        assert watcher.arrivals == [], "nothing is handed over before the interval ends"
        deadline = time.monotonic() + 5
        while not watcher.arrivals and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        first = watcher.arrivals[0][0]
        # The three runs' events arrived in one hand-over, at the end of the interval.
        assert first - t0 >= 0.29
        assert {run for _, run in watcher.arrivals} == set(runs)
        assert watcher.arrivals[-1][0] - first < 0.05
        assert watcher.threads == {"amsha-observer-Batches"}


def test_flush_hands_over_at_once_without_waiting_out_a_long_interval() -> None:
    watcher = Batches()
    with ExecutionSession(_quick_config(), observers=[watcher]) as session:
        session._channels[0].delivery_interval_s = 30.0
        session.run("t").result(timeout=10)
        t0 = time.monotonic()
        assert session.flush_observers(timeout=5)
        assert time.monotonic() - t0 < 1
        assert len(watcher.arrivals) >= 3


def test_delivery_interval_comes_from_config_else_the_observer_else_the_default() -> None:
    from amsha.observe import DELIVERY_INTERVAL_S

    class Live(Batches):
        delivery_interval_s = 0.0

    config = {**_quick_config(), "observers": [{"name": "console", "delivery_interval_s": 0.5}]}
    with ExecutionSession(config, observers=[Live(), Batches()]) as session:
        assert [c.delivery_interval_s for c in session._channels] == [0.5, 0.0, DELIVERY_INTERVAL_S]
    with pytest.raises(
        ConfigError, match=r"observers\[0\]\.delivery_interval_s: Input should be greater than or equal to 0"
    ):
        ExecutionSession({**_quick_config(), "observers": [{"name": "console", "delivery_interval_s": -1}]})


def test_events_still_queued_at_interpreter_exit_are_handed_over(tmp_path: Path) -> None:
    """A script that never closes its session: the exit hook drains the observer's queue."""
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "events.txt"
    script = textwrap.dedent(
        f"""
        from amsha import ExecutionSession

        class ToFile:
            delivery_interval_s = 30.0  # far longer than the script lives

            def on_event(self, event):
                with open({str(out)!r}, "a") as f:
                    f.write(event.kind + "\\n")

        session = ExecutionSession({_quick_config()!r}, observers=[ToFile()])
        session.run("t").result(timeout=10)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    kinds = out.read_text().split()
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished", kinds


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork exists on POSIX only")
def test_a_forked_child_delivers_its_own_runs_events(tmp_path: Path) -> None:
    """A session used before a fork (a pre-forking server): the child's observer gets a
    thread of its own and sees the child's runs."""
    import os

    out = tmp_path / "child.txt"

    class ToFile:
        def on_event(self, event: Event) -> None:
            with open(out, "a") as f:
                f.write(f"{os.getpid()} {event.kind}\n")

    session = ExecutionSession(_quick_config(), observers=[ToFile()])
    session.run("t").result(timeout=10)  # the parent's observer thread is running
    pid = os.fork()
    if pid == 0:  # the child: run, flush, leave without the parent's cleanup
        code = 1
        try:
            session.run("t").result(timeout=10)
            code = 0 if session.flush_observers(timeout=10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = [line.split()[1] for line in out.read_text().splitlines() if line.startswith(f"{pid} ")]
    assert child[0] == "run.started" and child[-1] == "run.finished", child
    session.close()
