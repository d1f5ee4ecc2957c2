"""The bugs the mutation harness plants, one per class, each in a reference plugin of
``kit/reference``. Each is a kind of bug third-party plugins really had (issue 15): the
contract suites must fail every one with a ``contract:`` message.

``MUTANTS[kind][name] = (what the bug is, the mutated class)``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
from amsha import LLMChunk, LLMRequest, LLMResponse, Message, ProviderCapabilities, Usage, errors
from amsha.state import RunRecord

from .reference.observer import ReferenceObserver
from .reference.orchestrator import ReferenceOrchestrator
from .reference.provider import KEY_ENV, ReferenceProvider, check, map_error
from .reference.store import ReferenceStore

# ---- providers --------------------------------------------------------------------------


class _FlagIterator:
    """An iterator whose close() only sets a flag: the HTTP response stays open."""

    def __init__(self, inner: Iterator[LLMChunk]) -> None:
        self.inner = inner
        self.closed = False

    def __iter__(self) -> _FlagIterator:
        return self

    def __next__(self) -> LLMChunk:
        if self.closed:
            raise StopIteration
        return next(self.inner)

    def close(self) -> None:
        self.closed = True


class CloseOnlyFlags(ReferenceProvider):
    def stream(self, request: LLMRequest) -> Iterator[LLMChunk]:
        return _FlagIterator(super().stream(request))


class NoUsageInGenerate(ReferenceProvider):
    capabilities = ProviderCapabilities(
        streaming=True, tools=True, structured_output=True, usage_in_stream=True, native_async=True
    )

    def response(self, data: dict[str, Any]) -> LLMResponse:
        response = super().response(data)
        response.usage = None
        return response


class AstreamDiffers(ReferenceProvider):
    async def astream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        async for chunk in super().astream(request):
            chunk.text = chunk.text.strip()
            yield chunk


class KeyInErrors(ReferenceProvider):
    def __init__(self, base_url: str, model: str = "ref-1", timeout_s: float = 10.0) -> None:
        super().__init__(base_url, model, timeout_s)
        self.raw_key = os.environ.get(KEY_ENV, "")  # read directly: never registered for scrubbing
        self._headers = {"Authorization": f"Bearer {self.raw_key}"}

    def check(self, reply: httpx.Response) -> None:
        try:
            check(reply)
        except errors.ProviderError as exc:
            exc.args = (f"{exc.args[0]} (sent with key {self.raw_key})",)
            raise


class BlockingAsync(ReferenceProvider):
    async def agenerate(self, request: LLMRequest) -> LLMResponse:
        return self.generate(request)

    async def astream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        for chunk in self.stream(request):
            yield chunk


class ModelIgnored(ReferenceProvider):
    def body(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        body = super().body(request, stream)
        body["model"] = self.model
        return body


class ToolCallsDropped(ReferenceProvider):
    def response(self, data: dict[str, Any]) -> LLMResponse:
        response = super().response(data)
        response.tool_calls = []
        return response

    def chunk(self, data: dict[str, Any]) -> LLMChunk:
        chunk = super().chunk(data)
        chunk.tool_calls = None
        return chunk


class RawTimeouts(ReferenceProvider):
    def error(self, exc: BaseException, partial: str | None = None) -> errors.ProviderError:
        if isinstance(exc, httpx.TimeoutException):
            raise exc
        return map_error(exc, partial)


class RawConnectionErrors(ReferenceProvider):
    def error(self, exc: BaseException, partial: str | None = None) -> errors.ProviderError:
        if isinstance(exc, httpx.ConnectError):
            raise exc
        return map_error(exc, partial)


class RawStreamDrops(ReferenceProvider):
    def error(self, exc: BaseException, partial: str | None = None) -> errors.ProviderError:
        if partial:
            raise exc
        return map_error(exc, partial)


class OneAsyncClient(ReferenceProvider):
    def aclient(self) -> httpx.AsyncClient:
        with self._lock:
            if None not in self._aclients:  # type: ignore[comparison-overlap]
                self._aclients[None] = httpx.AsyncClient(  # type: ignore[index]
                    base_url=self.base_url, timeout=self.timeout_s, headers=self._headers, verify=self._ssl
                )
            return self._aclients[None]  # type: ignore[index]


class RateLimitNotRetryable(ReferenceProvider):
    def check(self, reply: httpx.Response) -> None:
        if reply.status_code == 429:
            raise errors.BadRequestError("too many requests", provider="reference", status=429)
        check(reply)


class BadRequestRetryable(ReferenceProvider):
    def check(self, reply: httpx.Response) -> None:
        if reply.status_code == 400:
            raise errors.ServerError("bad request", provider="reference", status=400)
        check(reply)


class PermissionAsAuth(ReferenceProvider):
    def check(self, reply: httpx.Response) -> None:
        if reply.status_code == 403:
            raise errors.AuthenticationError("forbidden", provider="reference", status=403)
        check(reply)


class RetryAfterIgnored(ReferenceProvider):
    def check(self, reply: httpx.Response) -> None:
        if reply.status_code == 429:
            raise errors.RateLimitError("slow down", provider="reference", status=429)
        check(reply)


class StopDropped(ReferenceProvider):
    def body(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        body = super().body(request, stream)
        body.pop("options", None)
        return body


class SystemDropped(ReferenceProvider):
    def body(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        body = super().body(request, stream)
        body["messages"] = [m for m in body["messages"] if m["role"] != "system"]
        return body


class LastMessageOnly(ReferenceProvider):
    def body(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        body = super().body(request, stream)
        body["messages"] = body["messages"][-1:]
        return body


class ToolResultsDropped(ReferenceProvider):
    def body(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        body = super().body(request, stream)
        body["messages"] = [m for m in body["messages"] if m["role"] != "tool"]
        return body


class SchemaDropped(ReferenceProvider):
    def body(self, request: LLMRequest, stream: bool) -> dict[str, Any]:
        body = super().body(request, stream)
        body.pop("format", None)
        return body


class MutatesRequest(ReferenceProvider):
    def generate(self, request: LLMRequest) -> LLMResponse:
        request.messages.append(Message("assistant", "noted"))
        return super().generate(request)


class CachedResponse(ReferenceProvider):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache: dict[str, LLMResponse] = {}

    def generate(self, request: LLMRequest) -> LLMResponse:
        key = request.fingerprint()
        if key not in self.cache:
            self.cache[key] = super().generate(request)
        return self.cache[key]


class UsageTotalWrong(ReferenceProvider):
    def response(self, data: dict[str, Any]) -> LLMResponse:
        response = super().response(data)
        if response.usage is not None:
            response.usage = Usage(
                response.usage.input_tokens, response.usage.output_tokens, response.usage.output_tokens
            )
        return response


# ---- state stores -----------------------------------------------------------------------


class StaleWriteOverwrites(ReferenceStore):
    def put_state(self, state_id: str, data: dict[str, Any], *, expected_version: int, **kw: Any) -> int:
        return super().put_state(state_id, data, expected_version=len(self.states.get(state_id, [])), **kw)


class EventsNewestFirst(ReferenceStore):
    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        return list(reversed(super().read_events(run_id, from_seq)))


class MissingRunIsNone(ReferenceStore):
    def get_run(self, run_id: str) -> RunRecord:
        try:
            return super().get_run(run_id)
        except errors.RunNotFoundError:
            return None  # type: ignore[return-value]


class HandsBackCallersDict(ReferenceStore):
    def put_state(self, state_id: str, data: dict[str, Any], *, expected_version: int, **kw: Any) -> int:
        version = super().put_state(state_id, data, expected_version=expected_version, **kw)
        self.states[state_id][-1]["live"] = data
        return version

    def snapshot(self, state_id: str, version: int, row: dict[str, Any], data: bool = True) -> Any:
        snap = super().snapshot(state_id, version, row, data)
        if data and "live" in row:
            snap.data = row["live"]
        return snap


class EventsSortedAsStrings(ReferenceStore):
    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        import json

        with self.lock:
            rows = sorted(self.events.get(run_id, []), key=lambda r: str(r[0]))
        return [json.loads(t) for seq, t in rows if seq >= from_seq]


class NanAccepted(ReferenceStore):
    def put_state(self, state_id: str, data: dict[str, Any], *, expected_version: int, **kw: Any) -> int:
        import json

        with self.lock:
            versions = self.states.setdefault(state_id, [])
            if expected_version != len(versions):
                raise errors.VersionConflictError(state_id, expected_version, len(versions))
            versions.append({"data": json.dumps(data), "at": time.time(), "run_id": kw.get("run_id"), "reason": ""})
            return len(versions)


class RunsOldestFirst(ReferenceStore):
    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        return list(reversed(super().list_runs(10**9)))[:limit]


class FromSeqOffByOne(ReferenceStore):
    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        return super().read_events(run_id, from_seq + 1 if from_seq else 0)


class DeleteKeepsEvents(ReferenceStore):
    def delete_run(self, run_id: str) -> None:
        events = self.events.get(run_id)
        super().delete_run(run_id)
        if events:
            self.events[run_id] = events


class VersionIgnored(ReferenceStore):
    def get_state(self, state_id: str, version: int | None = None) -> Any:
        return super().get_state(state_id, None)


class ConflictNamesWrongVersions(ReferenceStore):
    def put_state(self, state_id: str, data: dict[str, Any], *, expected_version: int, **kw: Any) -> int:
        try:
            return super().put_state(state_id, data, expected_version=expected_version, **kw)
        except errors.VersionConflictError:
            raise errors.VersionConflictError(state_id, expected_version, expected_version) from None


class RacyWrites(ReferenceStore):
    """Checks the version outside the lock, then writes: concurrent writers all win."""

    def put_state(self, state_id: str, data: dict[str, Any], *, expected_version: int, **kw: Any) -> int:
        latest = len(self.states.get(state_id, []))
        if expected_version != latest:
            raise errors.VersionConflictError(state_id, expected_version, latest)
        time.sleep(0.01)
        with self.lock:
            self.states.setdefault(state_id, []).append(
                {
                    "data": "{}" if not data else __import__("json").dumps(data),
                    "at": time.time(),
                    "run_id": kw.get("run_id"),
                    "reason": "",
                }
            )
            return len(self.states[state_id])


class EventsAliased(ReferenceStore):
    """Keeps the caller's event dicts and hands them back."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[str, list[dict[str, Any]]] = {}

    def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> None:
        super().append_events(run_id, events)
        self.live.setdefault(run_id, []).extend(events)

    def read_events(self, run_id: str, from_seq: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.live.get(run_id, []) if e["seq"] >= from_seq]


# ---- orchestrators ----------------------------------------------------------------------


class RunsEveryTask(ReferenceOrchestrator):
    async def aexecute(self, run: Any) -> None:
        for name in run.registry.tasks:
            async with run.task(name) as scope:
                scope.output = await self.answer(run, scope, name)


class SortsTasks(ReferenceOrchestrator):
    async def aexecute(self, run: Any) -> None:
        for name in sorted(run.task_names):
            async with run.task(name) as scope:
                scope.output = await self.answer(run, scope, name)


class BypassesLLM(ReferenceOrchestrator):
    """Calls the provider behind Amsha's back: no LLM events, no cancel, no retry."""

    async def answer(self, run: Any, scope: Any, name: str) -> str:
        provider = scope.llm().provider
        return str((await provider.agenerate(LLMRequest(self.messages(run, name)))).text)


class IgnoresCancel(ReferenceOrchestrator):
    async def aexecute(self, run: Any) -> None:
        for name in run.task_names:
            try:
                async with run.task(name) as scope:
                    scope.output = await self.answer(run, scope, name)
            except (errors.RunCancelledError, asyncio.CancelledError):
                continue


class UntypedErrors(ReferenceOrchestrator):
    async def answer(self, run: Any, scope: Any, name: str) -> str:
        try:
            return await super().answer(run, scope, name)
        except errors.ProviderError as exc:
            raise RuntimeError(f"LLM call failed: {exc}") from None


class SharedCurrentRun(ReferenceOrchestrator):
    """Keeps "the current run" on the orchestrator, shared by concurrent runs."""

    current: Any = None

    async def aexecute(self, run: Any) -> None:
        type(self).current = run
        for name in run.task_names:
            async with run.task(name) as scope:
                await asyncio.sleep(0.02)
                scope.output = await self.answer(type(self).current, scope, name)


class MutatesNestedInputs(ReferenceOrchestrator):
    async def aexecute(self, run: Any) -> None:
        for value in run.inputs.values():
            if isinstance(value, dict):
                value["seen_by"] = "orchestrator"
        await super().aexecute(run)


class DropsLongAnswers(ReferenceOrchestrator):
    """Keeps only the first 100 tokens of an answer."""

    async def answer(self, run: Any, scope: Any, name: str) -> str:
        text = await super().answer(run, scope, name)
        return " ".join(text.split(" ")[:100])


# ---- observers --------------------------------------------------------------------------


class RaisesOnUnknownKind(ReferenceObserver):
    KNOWN = frozenset(
        {
            "run.started",
            "run.finished",
            "task.started",
            "task.finished",
            "llm.started",
            "llm.token",
            "llm.finished",
            "state.snapshot",
        }
    )

    def on_event(self, event: Any) -> None:
        if event.kind not in self.KNOWN:
            raise ValueError(f"unknown event kind {event.kind}")
        super().on_event(event)


class ChangesEvents(ReferenceObserver):
    def on_event(self, event: Any) -> None:
        event.data.pop("text", None)
        super().on_event(event)


class CloseTwiceRaises(ReferenceObserver):
    def close(self) -> None:
        if self.closed:
            raise RuntimeError("already closed")
        super().close()


class BlocksOnEachEvent(ReferenceObserver):
    def on_event(self, event: Any) -> None:
        time.sleep(0.003)  # a synchronous network export per event
        super().on_event(event)


class NeedsStartBeforeEnd(ReferenceObserver):
    def __init__(self) -> None:
        super().__init__()
        self.open: dict[str, Any] = {}

    def on_event(self, event: Any) -> None:
        if event.kind.endswith(".started"):
            self.open[event.span_id] = event
        elif event.kind.endswith((".finished", ".failed")):
            del self.open[event.span_id]
        super().on_event(event)


class NotThreadSafe(ReferenceObserver):
    """Counts events per run in a dict it iterates without the lock."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def on_event(self, event: Any) -> None:
        self.counts[event.run_id] = self.counts.get(event.run_id, 0) + 1
        for _run, _n in self.counts.items():
            time.sleep(0)
        super().on_event(event)


MUTANTS: dict[str, dict[str, tuple[str, type[Any]]]] = {
    "provider": {
        "close_only_sets_a_flag": ("stream().close() only sets a flag; the HTTP response stays open", CloseOnlyFlags),
        "no_usage_from_generate": ("generate() returns no usage although the stream reports it", NoUsageInGenerate),
        "astream_differs": ("astream() text differs from agenerate()", AstreamDiffers),
        "key_in_errors": ("the API key read from os.environ and put in error messages", KeyInErrors),
        "blocking_async": ("agenerate/astream do blocking HTTP inside async def", BlockingAsync),
        "model_ignored": ("request.model ignored", ModelIgnored),
        "tool_calls_dropped": ("tool calls dropped from generate() and stream()", ToolCallsDropped),
        "raw_timeouts": ("timeouts escape as raw httpx exceptions", RawTimeouts),
        "raw_refused_connections": ("refused connections escape as raw httpx exceptions", RawConnectionErrors),
        "raw_stream_drops": ("mid-stream drops escape as raw httpx exceptions", RawStreamDrops),
        "one_async_client": ("one AsyncClient cached for the provider's life", OneAsyncClient),
        "429_not_retryable": ("429 as non-retryable", RateLimitNotRetryable),
        "400_retryable": ("400 as retryable", BadRequestRetryable),
        "403_as_401": ("403 reported as an authentication error", PermissionAsAuth),
        "retry_after_ignored": ("Retry-After not read", RetryAfterIgnored),
        "stop_dropped": ("stop sequences not sent", StopDropped),
        "system_dropped": ("system messages not sent", SystemDropped),
        "last_message_only": ("only the last message sent (multi-turn lost)", LastMessageOnly),
        "tool_results_dropped": ("tool-result messages not sent", ToolResultsDropped),
        "schema_dropped": ("response_format not sent (no structured output)", SchemaDropped),
        "mutates_request": ("generate() appends to the request's messages", MutatesRequest),
        "cached_response": ("generate() hands the same response object out again", CachedResponse),
        "usage_total_wrong": ("usage total below input + output", UsageTotalWrong),
    },
    "state_store": {
        "stale_write_overwrites": ("a stale write overwrites", StaleWriteOverwrites),
        "events_newest_first": ("events newest-first", EventsNewestFirst),
        "missing_run_is_none": ("a missing run read as None", MissingRunIsNone),
        "hands_back_callers_dict": ("the caller's dict stored and handed back", HandsBackCallersDict),
        "events_sorted_as_strings": ("events sorted as strings (10 before 2)", EventsSortedAsStrings),
        "nan_accepted": ("NaN and Infinity accepted and persisted", NanAccepted),
        "runs_oldest_first": ("list_runs() oldest first", RunsOldestFirst),
        "from_seq_off_by_one": ("read_events(from_seq) skips the event at from_seq", FromSeqOffByOne),
        "delete_keeps_events": ("delete_run() keeps the events", DeleteKeepsEvents),
        "version_ignored": ("get_state(id, version) returns the latest", VersionIgnored),
        "conflict_names_wrong_versions": ("VersionConflictError names the wrong versions", ConflictNamesWrongVersions),
        "racy_writes": ("the version checked outside the lock: concurrent writers all win", RacyWrites),
        "events_aliased": ("event dicts kept by reference and handed back", EventsAliased),
    },
    "orchestrator": {
        "runs_every_task": ("runs every registry task, not the ones asked", RunsEveryTask),
        "sorts_tasks": ("runs the tasks asked in sorted order", SortsTasks),
        "bypasses_llm": ("calls the provider behind Amsha's LLM", BypassesLLM),
        "ignores_cancel": ("swallows the cancel and goes on with the next task", IgnoresCancel),
        "untyped_errors": ("provider errors re-raised as RuntimeError", UntypedErrors),
        "shared_current_run": ("the current run kept on the class, shared by concurrent runs", SharedCurrentRun),
        "mutates_nested_inputs": ("writes into the client's nested inputs", MutatesNestedInputs),
        "drops_long_answers": ("keeps only the first 100 tokens of an answer", DropsLongAnswers),
    },
    "observer": {
        "raises_on_unknown_kind": ("raises on event kinds it does not know", RaisesOnUnknownKind),
        "changes_events": ("changes the events it is given", ChangesEvents),
        "close_twice_raises": ("a second close() raises", CloseTwiceRaises),
        "blocks_on_each_event": ("a synchronous export on every event", BlocksOnEachEvent),
        "needs_start_before_end": ("raises on an end event whose start it never saw", NeedsStartBeforeEnd),
        "not_thread_safe": ("a dict changed and iterated from several threads", NotThreadSafe),
    },
}
