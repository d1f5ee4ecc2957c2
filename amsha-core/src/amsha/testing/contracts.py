"""Contract suites for plugin authors: subclass one, supply its fixtures, run pytest.

::

    from amsha.testing import ProviderContract

    class TestMyProvider(ProviderContract):
        @pytest.fixture
        def provider(self):
            return MyProvider(...)

Each test's failure message starts with ``contract:`` and says which promise the backend
broke. A test that needs a feature the backend does not declare is skipped with the reason;
a test that needs a fixture the class did not supply fails, naming the fixture and what to
return from it. The suites are what Amsha's own built-ins and first-party plugins run too.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..errors import (
    BadRequestError,
    NonJSONValueError,
    RunCancelledError,
    RunNotFoundError,
    StateError,
    StateNotFoundError,
    VersionConflictError,
)
from ..events import Event, EventKind
from ..hookspecs import hookimpl
from ..session import ExecutionSession
from ..state import RunRecord, RunStatus
from ._common import Missing, canary, contract_suite, fail, leaks, registered_secret, require
from ._provider import ProviderContract
from .runcontrol import RunControlContract
from .runpages import RunPageContract

__all__ = ["ObserverContract", "OrchestratorContract", "ProviderContract", "StateStoreContract"]


_fail = fail  # the name an older revision of this module used


class _InstancePlugin:
    """An in-code plugin registering one ready-made backend object under a name."""

    def __init__(self, kind: str, name: str, backend: Any) -> None:
        self.__name__ = f"contract-{kind}-{name}"
        self._kind, self._name, self._backend = kind, name, backend

    def _register(self, kind: str, register: Any) -> None:
        if kind == self._kind:
            register(self._name, lambda ctx: self._backend, description="the backend under contract test")

    @hookimpl
    def amsha_register_state_stores(self, register: Any) -> None:
        self._register("state_store", register)

    @hookimpl
    def amsha_register_observers(self, register: Any) -> None:
        self._register("observer", register)


def _expect_raise(error: type[BaseException], what: str, call: Callable[[], Any]) -> None:
    try:
        got = call()
    except error:
        return
    except Exception as exc:
        fail(f"{what} must raise {error.__name__}, got {type(exc).__name__}: {exc}")
    fail(f"{what} must raise {error.__name__}; it returned {got!r}")


# ---- state stores -----------------------------------------------------------------------


@contract_suite
class StateStoreContract(RunControlContract, RunPageContract):
    """What every :class:`~amsha.StateStore` must do. Fixture to supply: ``store`` (a new,
    empty store for each test). The run-control checks (:class:`RunControlContract`) are
    skipped, with the reason, for a store built for plugin API 1.0; the paging checks
    (:class:`RunPageContract`) for a store without the optional ``list_runs_page``.

    Checked: versions sequential and optimistic (a stale write refused, naming both
    versions, nothing overwritten, even from threads at once); typed not-found errors; exact
    JSON round trips; NaN and infinity refused everywhere; run records replaced and listed
    newest first; hundreds of events kept in ``seq`` order (numerically) and read from any
    ``from_seq``; nothing aliased (a caller changing what it passed in or got back never
    changes what is stored); ``delete_run``; and a whole session using the store leaving no
    registered secret in it.
    """

    @pytest.fixture
    def store(self) -> Any:
        """Required: a new, empty store."""
        fail("supply the `store` fixture: return a new, empty store for each test")

    def test_versions_are_sequential_and_optimistic(self, store: Any) -> None:
        if store.put_state("s", {"a": 1}, expected_version=0) != 1:
            fail("the first version of a state is 1")
        if store.put_state("s", {"a": 2}, expected_version=1) != 2:
            fail("each write adds one to the version")
        try:
            store.put_state("s", {"a": 3}, expected_version=1)
        except VersionConflictError as exc:
            if (exc.expected, exc.actual) != (1, 2):
                fail(f"VersionConflictError must name both versions (1, 2), got ({exc.expected}, {exc.actual})")
        else:
            fail("a write naming a stale version must raise VersionConflictError")
        if store.get_state("s").data != {"a": 2}:
            fail("a conflicting write must not overwrite anything")
        if store.get_state("s", 1).data != {"a": 1}:
            fail("every version must read back exactly")
        if store.get_state("s", 2).version != 2:
            fail("get_state(id, version) must return that version")
        if [v.version for v in store.list_versions("s")] != [1, 2]:
            fail("list_versions() must list every version, oldest first")
        _expect_raise(
            VersionConflictError, "a first write naming version 3", lambda: store.put_state("n", {}, expected_version=3)
        )

    def test_concurrent_writers_one_wins(self, store: Any) -> None:
        results: list[Any] = []
        barrier = threading.Barrier(6)

        def write(i: int) -> None:
            barrier.wait()
            try:
                results.append(store.put_state("race", {"writer": i}, expected_version=0))
            except VersionConflictError:
                results.append("conflict")
            except Exception as exc:
                results.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        odd = [r for r in results if isinstance(r, Exception)]
        if odd:
            fail(f"six writers at once: one raised {type(odd[0]).__name__}: {odd[0]} (only VersionConflictError may)")
        if results.count(1) != 1 or results.count("conflict") != 5:
            fail(f"six writers of version 1 at once: exactly one must win, the others conflict; got {results}")

    def test_missing_things_raise_typed_errors(self, store: Any) -> None:
        _expect_raise(
            StateNotFoundError, "get_state() of a state never written", lambda: store.get_state("never-written")
        )
        store.put_state("s", {}, expected_version=0)
        _expect_raise(StateNotFoundError, "get_state() of a version never written", lambda: store.get_state("s", 5))
        _expect_raise(RunNotFoundError, "get_run() of a run never recorded", lambda: store.get_run("never-run"))
        if store.list_versions("never-written") != []:
            fail("list_versions() of a state never written must be []")

    @pytest.mark.parametrize(
        "data",
        [
            {"unicode": "héllo wörld ✓ 你好 🎉", "escapes": 'quote " backslash \\ nul-free', "ctrl": "tab\there\nline"},
            {"nested": {"a": [{"b": [1, 2.5, None, True, False]}]}, "empty": {}, "list": []},
            {"deep": json.loads("[" * 200 + "]" * 200)},
            {"big_int": 2**62, "neg": -1.5e-300, "zero": 0, "float_int": 1.0, "small": 5e-324},
        ],
        ids=["unicode", "nested", "deep", "numbers"],
    )
    def test_any_json_round_trips(self, store: Any, data: dict[str, Any]) -> None:
        store.put_state("rt", data, expected_version=0)
        got = store.get_state("rt").data
        if got != data or json.dumps(got, sort_keys=True) != json.dumps(data, sort_keys=True):
            fail("state data must round-trip exactly through the store (values and types)")
        store.append_events("rt-run", [{"seq": 0, "kind": "k", "data": data}])
        if store.read_events("rt-run")[0].get("data") != data:
            fail("event data must round-trip exactly through the store")

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
    def test_non_finite_floats_are_refused(self, store: Any, value: float) -> None:
        def refused(what: str, call: Callable[[], Any]) -> None:
            try:
                call()
            except (NonJSONValueError, StateError, ValueError, TypeError):
                return
            except Exception as exc:
                fail(f"{what} holding {value} must raise NonJSONValueError, got {type(exc).__name__}: {exc}")
            fail(f"{what} holding {value} was accepted: NaN and infinity are not JSON; raise NonJSONValueError")

        refused("put_state()", lambda: store.put_state("f", {"x": {"y": [1, value]}}, expected_version=0))
        if store.list_versions("f"):
            fail("a refused put_state() must store nothing")
        refused("put_run()", lambda: store.put_run(RunRecord("f-run", outputs={"t": value})))
        refused(
            "append_events()", lambda: store.append_events("f-run", [{"seq": 0, "kind": "k", "data": {"v": value}}])
        )
        if store.read_events("f-run"):
            fail("a refused append_events() must store nothing")

    def test_run_records(self, store: Any) -> None:
        record = RunRecord(
            "r1",
            status=RunStatus.RUNNING,
            tasks=["a", "b"],
            inputs={"x": "y", "n": [1, {"z": None}]},
            created_at=1000.0,
            started_at=1000.5,
        )
        store.put_run(record)
        for i in range(2, 6):
            store.put_run(RunRecord(f"r{i}", created_at=1000.0 + i * 1000))
        got = store.get_run("r1")
        if (got.status, got.tasks, got.inputs, got.created_at, got.started_at) != (
            RunStatus.RUNNING,
            ["a", "b"],
            {"x": "y", "n": [1, {"z": None}]},
            1000.0,
            1000.5,
        ):
            fail("a run record must read back as written")
        record.status = RunStatus.FAILED
        record.outputs = {"a": "done"}
        record.error = {"type": "ServerError", "message": "m", "task": "b"}
        record.metrics = {"total": {"input_tokens": 3}}
        record.finished_at = 1001.0
        store.put_run(record)
        got = store.get_run("r1")
        if (got.status, got.outputs, got.error, got.metrics, got.finished_at) != (
            RunStatus.FAILED,
            {"a": "done"},
            record.error,
            record.metrics,
            1001.0,
        ):
            fail("put_run() must replace the record (status, outputs, error, metrics, times)")
        listed = [r.run_id for r in store.list_runs()]
        if listed != ["r5", "r4", "r3", "r2", "r1"]:
            fail(f"list_runs() must list every run newest first (by created_at), got {listed}")
        if [r.run_id for r in store.list_runs(limit=2)] != ["r5", "r4"]:
            fail("list_runs(limit=2) must return the two newest runs")

    def test_events_keep_their_order_over_hundreds(self, store: Any) -> None:
        seq = 0
        for size in (1, 7, 42, 100, 150):
            store.append_events("r", [{"seq": seq + i, "kind": "k", "data": {"i": seq + i}} for i in range(size)])
            seq += size
        events = store.read_events("r")
        seqs = [e.get("seq") for e in events]
        if seqs != list(range(seq)):
            bad = next((i for i, s in enumerate(seqs) if s != i), len(seqs))
            fail(
                f"{seq} events must read back in seq order (numerically), got {len(seqs)} events, "
                f"first out of place at position {bad}: {seqs[bad : bad + 3]}"
            )
        if any(e.get("data") != {"i": e.get("seq")} or e.get("kind") != "k" for e in events):
            fail("events must read back as written")
        for start in (2, 10, 99, 100, 299):
            got = [e["seq"] for e in store.read_events("r", start)]
            if got != list(range(start, seq)):
                fail(f"read_events(from_seq={start}) must return the events with seq >= {start}, in order")
        if store.read_events("r", seq) != []:
            fail("read_events(from_seq) past the last event must return []")
        if store.read_events("other") != []:
            fail("a run with no events reads back as []")

    def test_inputs_and_outputs_are_not_aliased(self, store: Any) -> None:
        data: dict[str, Any] = {"list": [1, 2], "inner": {"k": "v"}}
        store.put_state("a", data, expected_version=0)
        data["list"].append(3)
        data["inner"]["k"] = "changed"
        if store.get_state("a").data != {"list": [1, 2], "inner": {"k": "v"}}:
            fail("changing the dict given to put_state() changed the stored state: store a copy")
        got = store.get_state("a").data
        got["list"].append(99)
        got["new"] = True
        if store.get_state("a").data != {"list": [1, 2], "inner": {"k": "v"}}:
            fail("changing the data get_state() returned changed the stored state: return a copy")
        record = RunRecord("al", inputs={"x": ["y"]}, outputs={"t": {"v": 1}}, tasks=["t"])
        store.put_run(record)
        record.inputs["x"].append("z")
        record.outputs["t"]["v"] = 2
        record.tasks.append("u")
        got_run = store.get_run("al")
        if (got_run.inputs, got_run.outputs, got_run.tasks) != ({"x": ["y"]}, {"t": {"v": 1}}, ["t"]):
            fail("changing a RunRecord after put_run() changed the stored record: store a copy")
        got_run.inputs["x"].append("w")
        if store.get_run("al").inputs != {"x": ["y"]}:
            fail("changing the record get_run() returned changed the stored record: return a copy")
        event: dict[str, Any] = {"seq": 0, "kind": "k", "data": {"items": [1]}}
        store.append_events("al", [event])
        event["data"]["items"].append(2)
        event["kind"] = "changed"
        read = store.read_events("al")
        if read != [{"seq": 0, "kind": "k", "data": {"items": [1]}}]:
            fail("changing an event dict after append_events() changed the stored event: store a copy")
        read[0]["data"]["items"].append(3)
        if store.read_events("al")[0]["data"] != {"items": [1]}:
            fail("changing an event read_events() returned changed the stored event: return a copy")

    def test_delete_run(self, store: Any) -> None:
        store.put_run(RunRecord("gone"))
        store.append_events("gone", [{"seq": 0, "kind": "k"}])
        store.put_state("sg", {"a": 1}, expected_version=0, run_id="gone")
        store.put_run(RunRecord("kept"))
        store.append_events("kept", [{"seq": 0, "kind": "k"}])
        store.put_state("sk", {"a": 1}, expected_version=0, run_id="kept")
        store.delete_run("gone")
        _expect_raise(RunNotFoundError, "get_run() after delete_run()", lambda: store.get_run("gone"))
        if store.read_events("gone"):
            fail("delete_run() must delete the run's events")
        if store.list_versions("sg"):
            fail("delete_run() must delete the state versions the run wrote")
        if (
            store.get_run("kept").run_id != "kept"
            or len(store.read_events("kept")) != 1
            or not store.list_versions("sk")
        ):
            fail("delete_run() must delete only that run's record, events and states")

    def _session_secret(self, store: Any, task: str) -> None:
        secret = canary()
        with registered_secret(secret):  # as amsha.get_secret registers a key it reads
            config = _run_config({"name": "direct"})
            config["state"] = {"name": "contract-store"}
            plugin = _InstancePlugin("state_store", "contract-store", store)
            session = ExecutionSession(config, plugins=[plugin])
            try:
                handle = session.run([task], inputs={"word": secret})
                result = handle.result(timeout=60)
            finally:
                session.close()
            held: list[Any] = [store.get_run(handle.run_id).to_dict(), store.read_events(handle.run_id)]
            if result.state is not None:
                held.append(store.get_state(result.state.state_id).data)
            if leaks(secret, *held):
                fail(
                    "a registered secret given as a run input reached the store's records, events or states "
                    "(Amsha scrubs registered secrets before they leave the core; a store must not undo that)"
                )

    def test_a_session_leaves_no_secret_in_the_store(self, store: Any) -> None:
        self._session_secret(store, "guard")

    def test_a_secret_echoed_by_the_model_is_not_stored(self, store: Any) -> None:
        self._session_secret(store, "echo")


# ---- orchestrators ----------------------------------------------------------------------

LONG_ANSWER = " ".join(f"w{i}" for i in range(300))


def _run_config(orchestrator: dict[str, Any], delay: float = 0.0) -> dict[str, Any]:
    return {
        "provider": {
            "name": "scripted",
            "options": {
                "token_delay_s": delay,
                "responses": [
                    {"match": "Gather", "text": "alpha beta gamma"},
                    {"match": "Summarize", "text": "summary of alpha"},
                    {"match": "Ramble", "text": LONG_ANSWER},
                ],
            },
        },
        "orchestrator": orchestrator,
        "agents": {
            "gatherer": {"role": "Gatherer", "goal": "Gather words"},
            "summarizer": {"role": "Summarizer", "goal": "Summarize words"},
            "echoer": {"role": "Echoer", "goal": "Repeat words"},
            "rambler": {"role": "Rambler", "goal": "Ramble on"},
        },
        "tasks": {
            "gather": {"description": "Gather three words.", "expected_output": "three words", "agent": "gatherer"},
            "summarize": {"description": "Summarize the words.", "agent": "summarizer", "context": ["gather"]},
            "echo": {"description": "Repeat the word {word}.", "agent": "echoer"},
            "guard": {"description": "Keep {word} safe.", "agent": "gatherer"},
            "ramble": {"description": "Say a lot.", "agent": "rambler"},
        },
    }


@contract_suite
class OrchestratorContract:
    """What every :class:`~amsha.IOrchestrator` must do. Fixture to supply:
    ``orchestrator_config``, the ``orchestrator:`` config section selecting it (for example
    ``{"name": "direct"}``). The suite drives it with the ``scripted`` provider.

    Checked: exactly the tasks asked for, in order, with the LLM's answers as outputs; events
    numbered without gaps and linked (LLM calls under their task, through Amsha's LLM);
    hundreds of tokens in order; outputs in the state and snapshotted; cancel within a
    second; provider errors typed with the task named; runs from several event loops and
    concurrent runs kept apart; inputs and outputs not aliased; a registered secret in the
    inputs never stored.
    """

    @pytest.fixture
    def orchestrator_config(self) -> dict[str, Any]:
        """Required: the ``orchestrator:`` config section."""
        fail(
            'supply the `orchestrator_config` fixture: return the orchestrator config section, e.g. {"name": "direct"}'
        )

    @pytest.fixture
    def orchestrator_plugins(self) -> list[Any]:
        """Plugin objects the suite's sessions get in code (``ExecutionSession(plugins=...)``),
        for an orchestrator that is not installed as a distribution; default: none."""
        return []

    @pytest.fixture
    def session_for(
        self, orchestrator_config: dict[str, Any], orchestrator_plugins: list[Any]
    ) -> Iterator[Callable[..., ExecutionSession]]:
        """Sessions on the scripted provider with this orchestrator, closed at the end."""
        sessions: list[ExecutionSession] = []

        def make(delay: float = 0.0) -> ExecutionSession:
            session = ExecutionSession(_run_config(orchestrator_config, delay), plugins=orchestrator_plugins)
            sessions.append(session)
            return session

        yield make
        for session in sessions:
            session.close()

    def test_executes_only_what_is_asked(self, session_for: Callable[..., ExecutionSession]) -> None:
        handle = session_for().run(["gather"])
        result = handle.result(timeout=60)
        if list(result.outputs) != ["gather"]:
            fail(f"asked for ['gather'], the orchestrator produced outputs for {list(result.outputs)}")
        tasks = {e.task for e in handle.stream() if e.kind == "task.started"}
        if tasks != {"gather"}:
            fail(f"asked for ['gather'], tasks started: {sorted(t or '' for t in tasks)}")
        if result.outputs["gather"] != "alpha beta gamma":
            fail(f"the output of a task must be the LLM's answer 'alpha beta gamma', got {result.outputs['gather']!r}")

    def test_runs_tasks_in_the_order_given(self, session_for: Callable[..., ExecutionSession]) -> None:
        handle = session_for().run(["summarize", "gather"])
        result = handle.result(timeout=60)
        order = [e.task for e in handle.stream() if e.kind == "task.started"]
        if order != ["summarize", "gather"]:
            fail(f"tasks must start in the order given, got {order}")
        if result.outputs != {"summarize": "summary of alpha", "gather": "alpha beta gamma"}:
            fail(f"each task's output must be its LLM answer, got {result.outputs}")

    def test_events_are_linked(self, session_for: Callable[..., ExecutionSession]) -> None:
        handle = session_for().run(["gather", "summarize"])
        handle.result(timeout=60)
        events = list(handle.stream())
        if [e.seq for e in events] != list(range(len(events))):
            fail("events must be numbered without gaps")
        tasks = {e.span_id: e for e in events if e.kind == "task.started"}
        parents = {e.span_id: e.parent_id for e in events if e.kind.endswith(".started")}
        llm = [e for e in events if e.kind == "llm.started"]
        if not llm:
            fail("LLM calls must go through Amsha's LLM (the proxy rule): no llm.started event was seen")
        for event in llm:
            # The task's span is the LLM call's parent, or an ancestor (an agent span between).
            span, seen = event.parent_id, set()
            while span and span not in tasks and span not in seen:
                seen.add(span)
                span = parents.get(span)
            owner = tasks.get(span or "")
            if owner is None or owner.task != event.task:
                fail(f"llm.started of task {event.task!r} must sit under that task's span (parent_id chain)")
        finished = [e.task for e in events if e.kind == "task.finished"]
        if finished != ["gather", "summarize"]:
            fail(f"each task must be recorded finished (task.finished), in order; got {finished}")

    def test_hundreds_of_tokens_in_order(self, session_for: Callable[..., ExecutionSession]) -> None:
        handle = session_for().run(["ramble"])
        result = handle.result(timeout=60)
        events = list(handle.stream())
        if [e.seq for e in events] != list(range(len(events))):
            fail("events must be numbered without gaps")
        text = "".join(e.text for e in events if e.kind == "llm.token")
        if text != LONG_ANSWER:
            fail(f"the {len(LONG_ANSWER.split())} streamed tokens must reach the events complete and in order")
        if result.outputs.get("ramble") != LONG_ANSWER:
            fail("a long answer must reach the task's output complete")

    def test_outputs_go_into_state_and_snapshots(self, session_for: Callable[..., ExecutionSession]) -> None:
        session = session_for()
        handle = session.run(["gather", "summarize"])
        result = handle.result(timeout=60)
        if result.state is None or result.state.get("gather") != result.outputs.get("gather"):
            fail("each task's output must be written into the state under the task's name")
        if "alpha" not in str(result.outputs.get("gather")):
            fail(f"the task output must be the LLM's answer, got {result.outputs.get('gather')!r}")
        snapshots = [e for e in handle.stream() if e.kind == "state.snapshot"]
        if len(snapshots) < 2:
            fail("the state must be snapshotted when each task finishes")
        stored = session.store.get_state(result.state.state_id)
        if stored.data.get("summarize") != result.outputs.get("summarize"):
            fail("the last snapshot must hold every task's output")

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
        except Exception as exc:
            fail(f"a cancelled run must end CANCELLED, it raised {type(exc).__name__}: {exc}")
        else:
            fail("a cancelled run must end CANCELLED")
        elapsed = time.perf_counter() - started
        if elapsed > 1.0:
            fail(f"cancel must stop the run at the next LLM token; it took {elapsed:.2f}s")
        if "summarize" in {e.task for e in handle.stream() if e.kind == "task.started"}:
            fail("no task may start after cancel")

    def test_provider_errors_surface_typed(
        self, orchestrator_config: dict[str, Any], orchestrator_plugins: list[Any]
    ) -> None:
        config = _run_config(orchestrator_config)
        config["provider"]["options"]["failures"] = [{"kind": "bad_request", "message": "contract bad request"}]
        with ExecutionSession(config, plugins=orchestrator_plugins) as session:
            try:
                session.run(["gather"]).result(timeout=60)
            except Exception as exc:
                cause = getattr(exc, "cause", None)
                if not isinstance(cause, BadRequestError):
                    fail(
                        f"a provider error must reach the client as its typed error, got {type(cause).__name__}: {cause}"
                    )
                if getattr(exc, "task", None) != "gather":
                    fail("the error must name the task it happened in")
                return
        fail("a failing provider must fail the run")

    def test_several_event_loops_and_concurrent_runs(self, session_for: Callable[..., ExecutionSession]) -> None:
        session = session_for(delay=0.005)

        async def one(word: str) -> tuple[Any, list[Event]]:
            handle = await session.arun(["echo"], inputs={"word": word})
            result = await handle.aresult(timeout=60)
            return result, [e async for e in handle.astream()]

        async def two() -> list[tuple[Any, list[Event]]]:
            return list(await asyncio.gather(one("ruby"), one("jade")))

        for attempt in range(2):
            try:
                outcomes = asyncio.run(two())
            except Exception as exc:
                fail(f"runs started with arun() on event loop #{attempt + 1} raised {type(exc).__name__}: {exc}")
            run_ids = {r.run_id for r, _ in outcomes}
            if len(run_ids) != 2:
                fail("two runs at once must have two run ids")
            for (result, events), word in zip(outcomes, ("ruby", "jade"), strict=True):
                other = "jade" if word == "ruby" else "ruby"
                if any(e.run_id != result.run_id for e in events):
                    fail("a run's events must all carry its run id: two concurrent runs' events were mixed")
                tokens = "".join(e.text for e in events if e.kind == "llm.token")
                if word not in tokens or other in tokens:
                    fail(f"two concurrent runs' tokens were mixed: the run about {word!r} streamed {tokens!r}")
                if word not in str(result.outputs.get("echo")):
                    fail(f"the run about {word!r} produced {result.outputs}")

    def test_inputs_and_outputs_are_not_aliased(self, session_for: Callable[..., ExecutionSession]) -> None:
        session = session_for()
        inputs = {"word": "opal", "extra": {"nested": ["x"]}}
        before = copy.deepcopy(inputs)
        handle = session.run(["echo", "gather"], inputs=inputs)
        result = handle.result(timeout=60)
        if inputs != before:
            fail("a run changed the inputs dict the client passed")
        outputs = result.outputs
        outputs["gather"] = "changed by the client"
        if (
            result.state is not None
            and session.store.get_state(result.state.state_id).data.get("gather") != "alpha beta gamma"
        ):
            fail("changing RunResult.outputs changed the stored state")

    @staticmethod
    def _secret_run(session: ExecutionSession, task: str) -> None:
        secret = canary()
        with registered_secret(secret):  # as amsha.get_secret registers a key it reads
            handle = session.run([task], inputs={"word": secret})
            result = handle.result(timeout=60)
            held: list[Any] = [session.store.get_run(handle.run_id).to_dict(), session.store.read_events(handle.run_id)]
            held += [e.to_dict() for e in handle.stream()]
            if result.state is not None:
                held.append(session.store.get_state(result.state.state_id).data)
            if leaks(secret, *held):
                fail("a registered secret given as a run input reached the run's events, record or state")

    def test_a_secret_in_the_inputs_is_never_stored(self, session_for: Callable[..., ExecutionSession]) -> None:
        self._secret_run(session_for(), "guard")

    def test_a_secret_echoed_by_the_model_is_never_stored(self, session_for: Callable[..., ExecutionSession]) -> None:
        self._secret_run(session_for(), "echo")


# ---- observers --------------------------------------------------------------------------


def _every_kind_events(run_id: str = "contract-run") -> list[Event]:
    kinds = [k.value for k in EventKind] + ["framework.custom"]
    samples: dict[str, dict[str, Any]] = {
        "llm.token": {"text": "tok"},
        "llm.started": {"llm": "default", "provider": "scripted", "model": "m", "request": {"messages": []}},
        "llm.finished": {"usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}, "latency_s": 0.1},
        "run.finished": {"metrics": {"total": {}}, "latency_s": 0.1, "outputs": {}},
        "run.failed": {"error": {"type": "X", "message": "m"}},
        "task.failed": {"error": {"type": "X", "message": "m"}},
        "llm.retry": {"attempt": 1, "wait_s": 0.1, "error": {"type": "ServerError"}},
        "framework.custom": {"anything": [1, {"nested": True}]},
    }
    return [
        Event(kind, run_id, i, time.time(), f"span-{i}", run_id, "task", "agent", copy.deepcopy(samples.get(kind, {})))
        for i, kind in enumerate(kinds)
    ]


def _real_run_events() -> list[Event]:
    with ExecutionSession(_run_config({"name": "direct"})) as session:
        handle = session.run(["gather", "summarize"])
        handle.result(timeout=60)
        return list(handle.stream())


@contract_suite
class ObserverContract:
    """What every :class:`~amsha.Observer` must do. Fixtures to supply: ``observer`` (a new
    observer for each test) and ``observer_output``: a callable returning, as text, what the
    observer has written or exported so far (file contents, exported spans), for the secret
    check.

    Checked: every event kind accepted (and unknown ``framework.*`` ones); events left as
    they were given; calls from several threads and event loops at once; ``on_event`` quick
    (it must not block: about a millisecond per event at most); a real run observed; a
    registered secret in a run's inputs never in what the observer writes; ``close()``
    idempotent.
    """

    PER_EVENT_BUDGET_S = 0.001
    """The average time ``on_event`` may take, over a run's events replayed many times."""

    @pytest.fixture
    def observer(self) -> Any:
        """Required: a new observer."""
        fail("supply the `observer` fixture: return a new observer for each test")

    @pytest.fixture
    def observer_output(self) -> Callable[[], str] | Missing:
        """What the observer wrote or exported, as text."""
        return Missing(
            "observer_output",
            "return a callable that returns, as text, what the observer has written or exported so far "
            "(its file, its exported spans as JSON)",
        )

    def test_accepts_every_event_kind(self, observer: Any) -> None:
        for event in _every_kind_events():
            try:
                observer.on_event(event)
            except Exception as exc:
                fail(f"on_event() must accept every event kind; {event.kind!r} raised {type(exc).__name__}: {exc}")

    def test_leaves_events_as_they_were(self, observer: Any) -> None:
        for event in _every_kind_events() + _real_run_events():
            before = copy.deepcopy(event.to_dict())
            observer.on_event(event)
            if event.to_dict() != before:
                fail(f"on_event() changed the {event.kind!r} event it was given: other observers see the same object")

    def test_from_several_threads_and_loops(self, observer: Any) -> None:
        errors: list[BaseException] = []
        base = _real_run_events()

        def deliver(tag: str, use_loop: bool) -> None:
            events = [Event.from_dict({**copy.deepcopy(e.to_dict()), "run_id": f"{e.run_id}-{tag}"}) for e in base]
            try:
                if use_loop:

                    async def go() -> None:
                        for event in events:
                            observer.on_event(event)

                    asyncio.run(go())
                else:
                    for event in events:
                        observer.on_event(event)
            except BaseException as exc:  # reported on the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=deliver, args=(f"t{i}", i % 2 == 1)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            fail(f"on_event() called from 4 threads at once raised {type(errors[0]).__name__}: {errors[0]}")

    def test_on_event_is_quick(self, observer: Any) -> None:
        base = _real_run_events()
        rounds = 40
        budget = self.PER_EVENT_BUDGET_S * len(base) * rounds
        started = time.perf_counter()
        for r in range(rounds):
            for e in base:
                observer.on_event(
                    Event(e.kind, f"{e.run_id}-{r}", e.seq, e.ts, e.span_id, e.parent_id, e.task, e.agent, dict(e.data))
                )
            elapsed = time.perf_counter() - started
            if elapsed > budget:
                fail(
                    f"on_event() took {elapsed / ((r + 1) * len(base)) * 1000:.1f} ms per event on average (budget "
                    f"{self.PER_EVENT_BUDGET_S * 1000:.1f} ms): it must not block (hand slow work to a thread)"
                )

    def test_observes_a_real_run(self, observer: Any) -> None:
        with ExecutionSession(_run_config({"name": "direct"}), observers=[observer]) as session:
            handle = session.run(["gather"])
            if handle.result(timeout=60).status != RunStatus.SUCCEEDED:
                fail("a run with this observer attached must succeed")
            session.flush_observers(10)
            errors = session.observer_errors
            if errors:
                fail(f"the observer raised during a real run: {errors[0]!r}")

    @staticmethod
    def _secret_run(observer: Any, output: Callable[[], str], task: str) -> None:
        secret = canary()
        with registered_secret(secret):  # as amsha.get_secret registers a key it reads
            with ExecutionSession(_run_config({"name": "direct"}), observers=[observer]) as session:
                handle = session.run([task], inputs={"word": secret})
                handle.result(timeout=60)
                session.flush_observers(10)
            text = output()
            if not isinstance(text, str):
                fail(f"observer_output() must return a str, got {type(text).__name__}")
            if handle.run_id not in text and task not in text:
                fail("observer_output() shows nothing of the run the observer saw: return what it wrote or exported")
            if secret in text:
                fail("a registered secret given as a run input reached what the observer wrote or exported")

    def test_a_secret_in_the_inputs_never_reaches_its_output(
        self, observer: Any, observer_output: Callable[[], str] | Missing
    ) -> None:
        self._secret_run(observer, require(observer_output, "checking that the observer writes no secret"), "guard")

    def test_a_secret_echoed_by_the_model_never_reaches_its_output(
        self, observer: Any, observer_output: Callable[[], str] | Missing
    ) -> None:
        self._secret_run(observer, require(observer_output, "checking that the observer writes no secret"), "echo")

    def test_close_is_idempotent(self, observer: Any) -> None:
        observer.close()
        try:
            observer.close()
        except Exception as exc:
            fail(f"close() must be idempotent; a second close() raised {type(exc).__name__}: {exc}")
