"""Contract suites for plugin authors: subclass one, supply a fixture, run pytest.

::

    from amsha.testing import ProviderContract

    class TestMyProvider(ProviderContract):
        @pytest.fixture
        def provider(self):
            return MyProvider(...)

Each test's failure message starts with ``contract:`` and says which promise the backend
broke. The suites are what Amsha's own built-ins and first-party plugins run too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NoReturn

import pytest

from ..errors import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    ProviderError,
    RateLimitError,
    RunCancelledError,
    RunNotFoundError,
    ServerError,
    StateNotFoundError,
    VersionConflictError,
)
from ..events import Event, EventKind
from ..llm import LLM
from ..provider import LLMChunk, LLMRequest, LLMResponse, Message, ProviderCapabilities, ToolSpec
from ..session import ExecutionSession
from ..state import RunRecord, RunStatus
from .runcontrol import RunControlContract

__all__ = ["ObserverContract", "OrchestratorContract", "ProviderContract", "StateStoreContract"]


def _fail(message: str) -> NoReturn:
    pytest.fail(f"contract: {message}", pytrace=False)


async def _drain(iterator: Any) -> list[Any]:
    return [item async for item in iterator]


class ProviderContract:
    """What every :class:`~amsha.ILLMProvider` must do.

    Fixtures to supply: ``provider`` (required). Optional: ``llm_request`` (an
    :class:`LLMRequest` the provider can answer; default "Say hello"), ``deterministic``
    (True if stream and generate give the same text for the same request), and
    ``failing_provider``: a callable ``kind -> provider`` that builds a provider failing
    in the given way, for the kinds in :attr:`ERROR_KINDS` it can simulate (return None for
    the others).
    """

    ERROR_KINDS: ClassVar[dict[str, tuple[type[ProviderError], bool]]] = {
        "rate_limit": (RateLimitError, True),
        "server": (ServerError, True),
        "auth": (AuthenticationError, False),
        "not_found": (NotFoundError, False),
        "bad_request": (BadRequestError, False),
    }

    @pytest.fixture
    def llm_request(self) -> LLMRequest:
        return LLMRequest(messages=[Message("user", "Say hello")])

    @pytest.fixture
    def deterministic(self) -> bool:
        return False

    @pytest.fixture
    def failing_provider(self) -> Callable[[str], Any] | None:
        return None

    def test_declares_name_and_capabilities(self, provider: Any) -> None:
        if not isinstance(getattr(provider, "name", None), str) or not provider.name:
            _fail("a provider has a non-empty string `name`")
        if not isinstance(getattr(provider, "capabilities", None), ProviderCapabilities):
            _fail(
                f"`capabilities` must be a ProviderCapabilities, got {type(getattr(provider, 'capabilities', None)).__name__}"
            )

    def test_generate_returns_a_response(self, provider: Any, llm_request: LLMRequest) -> None:
        response = provider.generate(llm_request)
        if not isinstance(response, LLMResponse):
            _fail(f"generate() must return an LLMResponse, got {type(response).__name__}")
        if not response.text and not response.tool_calls:
            _fail("generate() returned neither text nor tool calls")

    def test_stream_yields_chunks(self, provider: Any, llm_request: LLMRequest) -> None:
        if not provider.capabilities.streaming:
            chunks = list(LLM(provider).stream(llm_request))
            if len(chunks) != 1:
                _fail("a non-streaming provider must still stream through the LLM wrapper, as one chunk")
            return
        chunks = list(provider.stream(llm_request))
        if not chunks or not all(isinstance(c, LLMChunk) for c in chunks):
            _fail(f"stream() must yield LLMChunk objects, got {[type(c).__name__ for c in chunks][:5]}")
        if not "".join(c.text for c in chunks) and not any(c.tool_calls for c in chunks):
            _fail("stream() produced no text and no tool calls")

    def test_stream_and_generate_agree(self, provider: Any, llm_request: LLMRequest, deterministic: bool) -> None:
        if not deterministic:
            pytest.skip("the provider is not declared deterministic (fixture `deterministic`)")
        whole = provider.generate(llm_request).text
        streamed = "".join(c.text for c in LLM(provider).stream(llm_request))
        if whole != streamed:
            _fail(f"stream() text {streamed!r} differs from generate() text {whole!r}")

    def test_async_twins(self, provider: Any, llm_request: LLMRequest) -> None:
        async def both() -> tuple[Any, list[Any]]:
            response = await provider.agenerate(llm_request)
            chunks = await _drain(provider.astream(llm_request)) if provider.capabilities.streaming else []
            return response, chunks

        response, chunks = asyncio.run(both())
        if not isinstance(response, LLMResponse):
            _fail(f"agenerate() must return an LLMResponse, got {type(response).__name__}")
        if provider.capabilities.streaming and not all(isinstance(c, LLMChunk) for c in chunks):
            _fail("astream() must yield LLMChunk objects")

    def test_usage_is_reported_as_declared(self, provider: Any, llm_request: LLMRequest) -> None:
        llm = LLM(provider)
        with llm.stream(llm_request) as stream:
            list(stream)
        response = stream.response
        assert response is not None
        if response.usage is None:
            _fail("the LLM wrapper must always end a stream with usage")
        if provider.capabilities.usage_in_stream and response.usage.estimated:
            _fail("capabilities.usage_in_stream is True but the stream carried no usage (Amsha had to estimate)")
        if response.usage.total_tokens < response.usage.input_tokens + response.usage.output_tokens:
            _fail(f"usage total {response.usage.total_tokens} is less than input + output")

    def test_tools_are_accepted_when_declared(self, provider: Any, llm_request: LLMRequest) -> None:
        if not provider.capabilities.tools:
            # Not declared: a plain request must still answer, with no tool calls made up.
            plain = provider.generate(llm_request)
            if not isinstance(plain, LLMResponse) or plain.tool_calls:
                _fail("a provider declaring no tool support must answer plain requests without tool calls")
            return
        tool = ToolSpec("lookup", "Look a word up.", {"type": "object", "properties": {"word": {"type": "string"}}})
        with_tools = LLMRequest(messages=llm_request.messages, model=llm_request.model, tools=[tool])
        response = provider.generate(with_tools)
        if not isinstance(response, LLMResponse):
            _fail("generate() with tools must return an LLMResponse")

    def test_closing_a_stream_ends_it(self, provider: Any, llm_request: LLMRequest) -> None:
        if not provider.capabilities.streaming:
            # Not declared: the LLM wrapper streams the complete answer as one chunk.
            from ..llm import LLM

            with LLM(provider).stream(llm_request) as stream:
                chunks = list(stream)
            if len(chunks) != 1 or stream.response is None:
                _fail("a non-streaming provider's answer must reach LLM.stream as one chunk")
            return
        iterator = provider.stream(llm_request)
        next(iter(iterator))
        close = getattr(iterator, "close", None)
        if close is None:
            _fail("stream() must return an iterator with close() (a generator), so cancel can close the connection")
        close()
        if next(iterator, None) is not None:
            _fail("after close(), a stream must yield nothing more")

        async def aclose() -> None:
            aiter = provider.astream(llm_request)
            await aiter.__anext__()
            if not hasattr(aiter, "aclose"):
                _fail("astream() must return an async iterator with aclose()")
            await aiter.aclose()

        asyncio.run(aclose())

    @pytest.mark.parametrize("kind", list(ERROR_KINDS))
    def test_errors_are_typed(
        self, failing_provider: Callable[[str], Any] | None, llm_request: LLMRequest, kind: str
    ) -> None:
        if failing_provider is None:
            pytest.skip("no `failing_provider` fixture: typed errors are not checked")
        provider = failing_provider(kind)
        if provider is None:
            pytest.skip(f"the plugin cannot simulate a {kind} failure")
        expected, retryable = self.ERROR_KINDS[kind]
        try:
            provider.generate(llm_request)
        except ProviderError as exc:
            if not isinstance(exc, expected):
                _fail(f"a {kind} failure must raise {expected.__name__}, got {type(exc).__name__}")
            if exc.retryable is not retryable:
                _fail(f"{type(exc).__name__}.retryable must be {retryable}")
            return
        except Exception as exc:
            _fail(f"a {kind} failure must raise an amsha ProviderError, got {type(exc).__name__}: {exc}")
        _fail(f"the provider built for a {kind} failure did not fail")


class StateStoreContract(RunControlContract):
    """What every :class:`~amsha.StateStore` must do. Fixture to supply: ``store`` (a fresh,
    empty store per test). The run-control checks (:class:`RunControlContract`) are skipped,
    with the reason, for a store built for plugin API 1.0."""

    def test_versions_are_sequential_and_optimistic(self, store: Any) -> None:
        if store.put_state("s", {"a": 1}, expected_version=0) != 1:
            _fail("the first version of a state is 1")
        if store.put_state("s", {"a": 2}, expected_version=1) != 2:
            _fail("each write adds one to the version")
        try:
            store.put_state("s", {"a": 3}, expected_version=1)
        except VersionConflictError as exc:
            if (exc.expected, exc.actual) != (1, 2):
                _fail(f"VersionConflictError must name both versions (1, 2), got ({exc.expected}, {exc.actual})")
        else:
            _fail("a write naming a stale version must raise VersionConflictError")
        if store.get_state("s").data != {"a": 2}:
            _fail("a conflicting write must not overwrite anything")
        if store.get_state("s", 1).data != {"a": 1}:
            _fail("every version must read back exactly")
        if [v.version for v in store.list_versions("s")] != [1, 2]:
            _fail("list_versions() must list every version, oldest first")

    def test_missing_things_raise_typed_errors(self, store: Any) -> None:
        with pytest.raises(StateNotFoundError):
            store.get_state("never-written")
        store.put_state("s", {}, expected_version=0)
        with pytest.raises(StateNotFoundError):
            store.get_state("s", 5)
        with pytest.raises(RunNotFoundError):
            store.get_run("never-run")

    @pytest.mark.parametrize(
        "data",
        [
            {"unicode": "héllo wörld ✓ 你好 🎉", "escapes": 'quote " backslash \\ nul-free'},
            {"nested": {"a": [{"b": [1, 2.5, None, True, False]}]}, "empty": {}, "list": []},
            {"deep": json.loads("[" * 200 + "]" * 200)},
            {"big_int": 2**62, "neg": -1.5e-300, "zero": 0},
        ],
        ids=["unicode", "nested", "deep", "numbers"],
    )
    def test_any_json_round_trips(self, store: Any, data: dict[str, Any]) -> None:
        store.put_state("rt", data, expected_version=0)
        if store.get_state("rt").data != data:
            _fail("state data must round-trip exactly through the store")

    def test_run_records(self, store: Any) -> None:
        record = RunRecord("r1", status=RunStatus.RUNNING, tasks=["a", "b"], inputs={"x": "y"}, created_at=1000.0)
        store.put_run(record)
        store.put_run(RunRecord("r2", created_at=2000.0))
        got = store.get_run("r1")
        if (got.status, got.tasks, got.inputs) != (RunStatus.RUNNING, ["a", "b"], {"x": "y"}):
            _fail("a run record must read back as written")
        record.status = RunStatus.SUCCEEDED
        record.outputs = {"a": "done"}
        store.put_run(record)
        if store.get_run("r1").status != RunStatus.SUCCEEDED:
            _fail("put_run() must replace the record")
        if [r.run_id for r in store.list_runs()][:2] != ["r2", "r1"]:
            _fail("list_runs() must list the newest run first")

    def test_events_are_ordered_and_append_only(self, store: Any) -> None:
        store.append_events("r", [{"seq": i, "kind": "k", "data": {"i": i}} for i in range(3)])
        store.append_events("r", [{"seq": 3, "kind": "k", "data": {"text": "✓"}}])
        events = store.read_events("r")
        if [e["seq"] for e in events] != [0, 1, 2, 3]:
            _fail(f"events must read back in order, got seqs {[e['seq'] for e in events]}")
        if [e["seq"] for e in store.read_events("r", 2)] != [2, 3]:
            _fail("read_events(from_seq) must start at that sequence number")
        if store.read_events("other") != []:
            _fail("a run with no events reads back as []")

    def test_delete_run(self, store: Any) -> None:
        store.put_run(RunRecord("gone"))
        store.append_events("gone", [{"seq": 0, "kind": "k"}])
        store.put_state("sg", {"a": 1}, expected_version=0, run_id="gone")
        store.delete_run("gone")
        with pytest.raises(RunNotFoundError):
            store.get_run("gone")
        if store.read_events("gone"):
            _fail("delete_run() must delete the run's events")
        if store.list_versions("sg"):
            _fail("delete_run() must delete the state versions the run wrote")


def _run_config(orchestrator: dict[str, Any], delay: float = 0.0) -> dict[str, Any]:
    return {
        "provider": {
            "name": "scripted",
            "options": {
                "token_delay_s": delay,
                "responses": [
                    {"match": "Gather", "text": "alpha beta gamma"},
                    {"match": "Summarize", "text": "summary of alpha"},
                ],
            },
        },
        "orchestrator": orchestrator,
        "agents": {
            "gatherer": {"role": "Gatherer", "goal": "Gather words"},
            "summarizer": {"role": "Summarizer", "goal": "Summarize words"},
        },
        "tasks": {
            "gather": {"description": "Gather three words.", "expected_output": "three words", "agent": "gatherer"},
            "summarize": {"description": "Summarize the words.", "agent": "summarizer", "context": ["gather"]},
        },
    }


class OrchestratorContract:
    """What every :class:`~amsha.IOrchestrator` must do. Fixture to supply:
    ``orchestrator_config``, the ``orchestrator:`` config section selecting it (for example
    ``{"name": "direct"}``). The suite drives it with the ``scripted`` provider."""

    @pytest.fixture
    def session_for(self, orchestrator_config: dict[str, Any]) -> Iterator[Callable[..., ExecutionSession]]:
        sessions: list[ExecutionSession] = []

        def make(delay: float = 0.0) -> ExecutionSession:
            session = ExecutionSession(_run_config(orchestrator_config, delay))
            sessions.append(session)
            return session

        yield make
        for session in sessions:
            session.close()

    def test_executes_only_what_is_asked(self, session_for: Callable[..., ExecutionSession]) -> None:
        handle = session_for().run(["gather"])
        result = handle.result(timeout=60)
        if list(result.outputs) != ["gather"]:
            _fail(f"asked for ['gather'], the orchestrator produced outputs for {list(result.outputs)}")
        tasks = {e.task for e in handle.stream() if e.kind == "task.started"}
        if tasks != {"gather"}:
            _fail(f"asked for ['gather'], tasks started: {sorted(t or '' for t in tasks)}")

    def test_runs_tasks_in_the_order_given(self, session_for: Callable[..., ExecutionSession]) -> None:
        handle = session_for().run(["gather", "summarize"])
        handle.result(timeout=60)
        order = [e.task for e in handle.stream() if e.kind == "task.started"]
        if order != ["gather", "summarize"]:
            _fail(f"tasks must start in the order given, got {order}")

    def test_events_are_linked(self, session_for: Callable[..., ExecutionSession]) -> None:
        handle = session_for().run(["gather", "summarize"])
        handle.result(timeout=60)
        events = list(handle.stream())
        if [e.seq for e in events] != list(range(len(events))):
            _fail("events must be numbered without gaps")
        spans = {e.span_id: e for e in events if e.kind == "task.started"}
        llm = [e for e in events if e.kind == "llm.started"]
        if not llm:
            _fail("LLM calls must go through Amsha's LLM (the proxy rule): no llm.started event was seen")
        for event in llm:
            parent = spans.get(event.parent_id or "")
            if parent is None or parent.task != event.task:
                _fail(f"llm.started of task {event.task!r} must have that task's span as parent")

    def test_outputs_go_into_state_and_snapshots(self, session_for: Callable[..., ExecutionSession]) -> None:
        session = session_for()
        handle = session.run(["gather", "summarize"])
        result = handle.result(timeout=60)
        if result.state is None or result.state.get("gather") != result.outputs.get("gather"):
            _fail("each task's output must be written into the state under the task's name")
        if "alpha" not in str(result.outputs.get("gather")):
            _fail(f"the task output must be the LLM's answer, got {result.outputs.get('gather')!r}")
        snapshots = [e for e in handle.stream() if e.kind == "state.snapshot"]
        if len(snapshots) < 2:
            _fail("the state must be snapshotted when each task finishes")
        stored = session.store.get_state(result.state.state_id)
        if stored.data.get("summarize") != result.outputs.get("summarize"):
            _fail("the last snapshot must hold every task's output")

    def test_cancel_stops_the_run(self, session_for: Callable[..., ExecutionSession]) -> None:
        handle = session_for(delay=0.2).run(["gather", "summarize"], detach=True)
        for event in handle.stream():
            if event.kind == "llm.token":
                break
        started = time.perf_counter()
        handle.cancel("contract test")
        try:
            handle.result(timeout=10)
        except RunCancelledError:
            pass
        else:
            _fail("a cancelled run must end CANCELLED")
        elapsed = time.perf_counter() - started
        if elapsed > 1.0:
            _fail(f"cancel must stop the run at the next LLM token; it took {elapsed:.2f}s")
        if "summarize" in {e.task for e in handle.stream() if e.kind == "task.started"}:
            _fail("no task may start after cancel")

    def test_provider_errors_surface_typed(self, orchestrator_config: dict[str, Any]) -> None:
        config = _run_config(orchestrator_config)
        config["provider"]["options"]["failures"] = [{"kind": "bad_request", "message": "contract bad request"}]
        with ExecutionSession(config) as session:
            try:
                session.run(["gather"]).result(timeout=60)
            except Exception as exc:
                cause = getattr(exc, "cause", None)
                if not isinstance(cause, BadRequestError):
                    _fail(
                        f"a provider error must reach the client as its typed error, got {type(cause).__name__}: {cause}"
                    )
                if getattr(exc, "task", None) != "gather":
                    _fail("the error must name the task it happened in")
                return
        _fail("a failing provider must fail the run")


def _every_kind_events(run_id: str = "contract-run") -> list[Event]:
    kinds = [k.value for k in EventKind] + ["framework.custom"]
    samples: dict[str, dict[str, Any]] = {
        "llm.token": {"text": "tok"},
        "llm.finished": {"usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}, "latency_s": 0.1},
        "run.finished": {"metrics": {"total": {}}, "latency_s": 0.1, "outputs": {}},
        "run.failed": {"error": {"type": "X", "message": "m"}},
        "task.failed": {"error": {"type": "X", "message": "m"}},
        "llm.retry": {"attempt": 1, "wait_s": 0.1, "error": {"type": "ServerError"}},
    }
    return [
        Event(kind, run_id, i, time.time(), f"span-{i}", run_id, "task", "agent", samples.get(kind, {}))
        for i, kind in enumerate(kinds)
    ]


class ObserverContract:
    """What every :class:`~amsha.Observer` must do. Fixture to supply: ``observer``."""

    def test_accepts_every_event_kind(self, observer: Any) -> None:
        for event in _every_kind_events():
            try:
                observer.on_event(event)
            except Exception as exc:
                _fail(f"on_event() must accept every event kind; {event.kind!r} raised {type(exc).__name__}: {exc}")

    def test_observes_a_real_run(self, observer: Any) -> None:
        with ExecutionSession(_run_config({"name": "direct"}), observers=[observer]) as session:
            handle = session.run(["gather"])
            if handle.result(timeout=60).status != RunStatus.SUCCEEDED:
                _fail("a run with this observer attached must succeed")

    def test_close_is_idempotent(self, observer: Any) -> None:
        observer.close()
        observer.close()
