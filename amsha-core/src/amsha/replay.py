"""Replay: answer a run's LLM calls from its recorded exchanges, offline and deterministic.

Every LLM call of a run is recorded as events (``llm.started`` with the full request and
its fingerprint, ``llm.token`` chunks, ``llm.finished`` with the response). A
:class:`ReplayProvider` built from those events answers each request by its identity (a
hash of the whole request), streaming the recorded chunks; a request the record does not
hold raises :class:`~amsha.errors.ReplayDivergenceError` naming the first recorded exchange
not replayed: changed code is reported, never papered over with answers by position.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ReplayDivergenceError
from .events import Event
from .provider import LLMChunk, LLMRequest, LLMResponse, ProviderCapabilities, ToolCallDelta

__all__ = ["ReplayProvider"]


@dataclass(slots=True)
class _Exchange:
    fingerprint: dict[str, Any]
    response: LLMResponse
    chunks: list[str] = field(default_factory=list)
    used: bool = False


class ReplayProvider:
    """A provider that answers from a recorded run's events."""

    name = "replay"

    def __init__(self, run_id: str, events: Sequence[Event]) -> None:
        self.run_id = run_id
        self._order: list[_Exchange] = []
        self._by_hash: dict[str, deque[_Exchange]] = {}
        self._caps: dict[str, ProviderCapabilities] = {}
        started: dict[str, Event] = {}
        tokens: dict[str, list[str]] = {}
        for event in events:
            if event.kind == "llm.started":
                started[event.span_id] = event
                caps = event.data.get("capabilities")
                if caps:
                    known = {k: v for k, v in caps.items() if k in ProviderCapabilities.__dataclass_fields__}
                    self._caps.setdefault(str(event.data.get("llm", "default")), ProviderCapabilities(**known))
            elif event.kind == "llm.token":
                tokens.setdefault(event.span_id, []).append(event.text)
            elif event.kind == "llm.finished" and not event.data.get("cancelled"):
                start = started.get(event.span_id)
                if start is None:
                    continue
                fingerprint = dict(start.data.get("fingerprint") or {})
                exchange = _Exchange(
                    fingerprint, LLMResponse.from_dict(event.data["response"]), tokens.get(event.span_id, [])
                )
                self._order.append(exchange)
                self._by_hash.setdefault(str(fingerprint.get("request_hash")), deque()).append(exchange)
        self.capabilities = ProviderCapabilities(
            streaming=True,
            tools=True,
            structured_output=True,
            usage_in_stream=True,
            native_async=True,
            usage_in_response=True,
        )

    def view(self, llm_name: str) -> ReplayProvider:
        """This provider as the recorded LLM ``llm_name`` saw it (its capabilities shape
        the request, so they must match for the hashes to match)."""
        caps = self._caps.get(llm_name)
        if caps is None or caps == self.capabilities:
            return self
        clone = object.__new__(ReplayProvider)
        clone.run_id, clone._order, clone._by_hash, clone._caps = self.run_id, self._order, self._by_hash, self._caps
        clone.capabilities = caps
        return clone

    @property
    def exchanges(self) -> int:
        return len(self._order)

    def unused(self) -> list[dict[str, Any]]:
        """Fingerprints of recorded exchanges the replay has not asked for (yet)."""
        return [e.fingerprint for e in self._order if not e.used]

    def _take(self, request: LLMRequest) -> _Exchange:
        request_hash = request.fingerprint()
        queue = self._by_hash.get(request_hash)
        if queue:
            exchange = queue.popleft()
            exchange.used = True
            return exchange
        expected = next((e.fingerprint for e in self._order if not e.used), None)
        raise ReplayDivergenceError(self.run_id, request_hash, expected)

    def generate(self, request: LLMRequest) -> LLMResponse:
        r = self._take(request).response
        return LLMResponse(r.text, list(r.tool_calls), r.finish_reason, r.usage, r.model)

    def stream(self, request: LLMRequest) -> Iterator[LLMChunk]:
        exchange = self._take(request)
        yield from self._chunks(exchange)

    def _chunks(self, exchange: _Exchange) -> Iterator[LLMChunk]:
        response = exchange.response
        pieces = exchange.chunks or ([response.text] if response.text else [])
        for piece in pieces:
            yield LLMChunk(text=piece)
        deltas = [ToolCallDelta(i, c.id, c.name, c.arguments) for i, c in enumerate(response.tool_calls)] or None
        yield LLMChunk(
            tool_calls=deltas, finish_reason=response.finish_reason, usage=response.usage, model=response.model
        )

    async def agenerate(self, request: LLMRequest) -> LLMResponse:
        return self.generate(request)

    async def astream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        for chunk in self._chunks(self._take(request)):
            yield chunk

    def close(self) -> None:
        pass
