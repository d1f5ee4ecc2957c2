"""The ``parrot`` provider: answers with the last user message, streamed word by word.

It shows the shape of a real provider: sync and async twins, declared capabilities, usage
reported, the closing of a stream releasing its resources, and errors translated into
Amsha's typed errors at the boundary.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator

from amsha import BackendContext, LLMChunk, LLMRequest, LLMResponse, ProviderCapabilities, Usage, errors

from .plugin import ParrotOptions

_WORDS = re.compile(r"\S+\s*|\s+")
_FAILURES = {
    "rate_limit": lambda: errors.RateLimitError("parrot is tired", retry_after=0.01, provider="parrot", status=429),
    "server": lambda: errors.ServerError("parrot fell off its perch", provider="parrot", status=500),
    "timeout": lambda: errors.ProviderTimeoutError("parrot took too long", provider="parrot"),
    "connection": lambda: errors.ProviderConnectionError("parrot flew away", provider="parrot"),
    "auth": lambda: errors.AuthenticationError("parrot does not know you", provider="parrot", status=401),
    "permission": lambda: errors.PermissionDeniedError("parrot may not say that", provider="parrot", status=403),
    "not_found": lambda: errors.NotFoundError("no such parrot model", provider="parrot", status=404),
    "bad_request": lambda: errors.BadRequestError("parrot cannot repeat that", provider="parrot", status=400),
}


class ParrotProvider:
    name = "parrot"
    capabilities = ProviderCapabilities(streaming=True, usage_in_stream=True, usage_in_response=True, native_async=True)

    def __init__(self, options: ParrotOptions, model: str | None = None) -> None:
        self.options = options
        self.model = model or "parrot-1"

    def _answer(self, request: LLMRequest) -> str:
        if self.options.fail_with in _FAILURES:
            raise _FAILURES[self.options.fail_with]()
        said = next((m.content for m in reversed(request.messages) if m.role == "user"), "") or ""
        text = f"{self.options.prefix}{said}"
        for stop in request.stop or ():  # the answer ends before the first stop sequence
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text

    def _words(self, text: str) -> list[str]:
        words = _WORDS.findall(text)
        if self.options.fail_with == "stream_interrupt":
            # The stream breaks after its first word: a typed error carrying what was sent.
            return words[:1]
        return words

    def _broken(self, sent: list[str]) -> errors.StreamInterruptedError:
        return errors.StreamInterruptedError("parrot lost its voice", partial_text="".join(sent), provider="parrot")

    def _usage(self, request: LLMRequest, text: str) -> Usage:
        prompt = sum(len(_WORDS.findall(m.content or "")) for m in request.messages)
        out = len(_WORDS.findall(text))
        return Usage(prompt, out, prompt + out)

    def generate(self, request: LLMRequest) -> LLMResponse:
        text = self._answer(request)
        model = request.model or self.model
        return LLMResponse(text=text, finish_reason="stop", usage=self._usage(request, text), model=model)

    def stream(self, request: LLMRequest) -> Iterator[LLMChunk]:
        text = self._answer(request)
        words = self._words(text)
        for i, word in enumerate(words):
            if i and self.options.word_delay_s:
                time.sleep(self.options.word_delay_s)
            yield LLMChunk(text=word)
        if self.options.fail_with == "stream_interrupt":
            raise self._broken(words)
        yield LLMChunk(finish_reason="stop", usage=self._usage(request, text), model=request.model or self.model)

    async def agenerate(self, request: LLMRequest) -> LLMResponse:
        return self.generate(request)

    async def astream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        text = self._answer(request)
        words = self._words(text)
        for i, word in enumerate(words):
            if i and self.options.word_delay_s:
                await asyncio.sleep(self.options.word_delay_s)
            yield LLMChunk(text=word)
        if self.options.fail_with == "stream_interrupt":
            raise self._broken(words)
        yield LLMChunk(finish_reason="stop", usage=self._usage(request, text), model=request.model or self.model)

    def close(self) -> None:
        pass


def build(ctx: BackendContext) -> ParrotProvider:
    """The factory named in plugin.py; ``ctx.options`` is a validated ParrotOptions."""
    return ParrotProvider(ctx.options, ctx.model)
