"""LLM calls made outside any run reach the session's observers and metrics (spec 2.4)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from amsha import Event, ExecutionSession
from amsha.errors import BadRequestError


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def on_event(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def close(self) -> None:
        pass


def _session(recorder: Recorder, **options: Any) -> ExecutionSession:
    options.setdefault("responses", ["one two three"])
    config = {"provider": {"name": "scripted", "model": "scripted-1", "options": options}}
    return ExecutionSession(config, observers=[recorder])


def _scopes(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for event in events:
        out.setdefault(event.run_id, []).append(event)
    return out


def test_each_standalone_call_is_a_scope_of_its_own_seen_by_observers() -> None:
    recorder = Recorder()
    with _session(recorder) as session:
        llm = session.llm()
        assert llm.generate("hi").text == "one two three"
        with llm.stream("hi") as stream:
            assert "".join(c.text for c in stream) == "one two three"

        async def both() -> None:
            await llm.agenerate("hi")
            async with llm.astream("hi") as astream:
                async for _ in astream:
                    pass

        asyncio.run(both())
        assert session.flush_observers(5)
        totals = session.llm_totals
    scopes = _scopes(recorder.events)
    assert len(scopes) == 4 and all(scope_id.startswith("call-") for scope_id in scopes)
    for events in scopes.values():
        kinds = [e.kind for e in events]
        assert kinds[0] == "run.started" and events[0].data["mode"] == "standalone"
        assert kinds[1] == "llm.started" and kinds[-2] == "llm.finished" and kinds[-1] == "run.finished"
        assert [e.seq for e in events] == list(range(len(events)))  # gap-free, in order
        llm_started = events[1]
        assert llm_started.parent_id == llm_started.run_id  # the call hangs under its scope
        metrics = events[-1].data["metrics"]
        assert metrics["total"]["calls"] == 1 and metrics["total"]["output_tokens"] == 3
    streamed = [events for events in scopes.values() if any(e.kind == "llm.token" for e in events)]
    assert len(streamed) == 2
    assert totals.calls == 4 and totals.output_tokens == 12 and totals.errors == 0


def test_a_failed_standalone_call_is_reported_as_failed() -> None:
    recorder = Recorder()
    with _session(recorder, failures=[{"kind": "bad_request"}]) as session:
        with pytest.raises(BadRequestError):
            session.llm().generate("hi")
        assert session.flush_observers(5)
        assert session.llm_totals.errors == 1
    kinds = [e.kind for e in recorder.events]
    assert kinds[-2:] == ["llm.failed", "run.failed"]
    assert recorder.events[-1].data["error"]["type"] == "BadRequestError"


def test_a_stream_closed_early_is_reported_as_cancelled() -> None:
    recorder = Recorder()
    with _session(recorder) as session:
        with session.llm().stream("hi") as stream:
            next(iter(stream))
        assert session.flush_observers(5)
    assert [e.kind for e in recorder.events][-1] == "run.cancelled"


def test_calls_inside_a_run_open_no_standalone_scope() -> None:
    recorder = Recorder()
    config = {
        "provider": {"name": "scripted", "model": "scripted-1", "options": {"responses": ["done"]}},
        "agents": {"a": {"role": "Writer", "goal": "Write"}},
        "tasks": {"t": {"description": "Write", "expected_output": "text", "agent": "a"}},
    }
    with ExecutionSession(config, observers=[recorder]) as session:
        session.llm()  # built before the run: the run's calls still belong to the run
        result = session.run().result(timeout=10)
        assert session.flush_observers(5)
        assert session.llm_totals.calls == 0
    assert {e.run_id for e in recorder.events} == {result.run_id}


def test_without_observers_calls_are_counted_and_emit_nothing() -> None:
    config = {"provider": {"name": "scripted", "model": "scripted-1", "options": {"responses": ["one two three"]}}}
    with ExecutionSession(config) as session:
        llm = session.llm()
        llm.generate("hi")
        with llm.stream("hi") as stream:
            for _ in stream:
                pass
        totals = session.llm_totals
        assert totals.calls == 2 and totals.output_tokens == 6 and totals.errors == 0
        assert totals.latency_s > 0
    failing = {"provider": {"name": "scripted", "options": {"failures": [{"kind": "bad_request"}]}}}
    with ExecutionSession(failing) as session:
        with pytest.raises(BadRequestError):
            session.llm().generate("hi")
        assert session.llm_totals.calls == 1 and session.llm_totals.errors == 1
