"""The ``scripted`` provider: deterministic answers from config or a file, for demos and tests.

Answers are chosen by rules tried in order: the first whose ``match`` text occurs in the
request's messages (or that has no ``match``) answers. Text streams word by word with
optional delays; ``failures`` inject typed errors (rate limit with Retry-After, server
error, timeout, a stream broken after N tokens, ...) into the next calls. Usage is reported
like a real API would (prompt and completion token counts), unless ``report_usage: false``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import errors
from ..config import format_validation_error
from ..errors import ConfigError
from ..plugins import BackendContext
from ..provider import LLMChunk, LLMRequest, LLMResponse, ProviderCapabilities, ToolCall, ToolCallDelta, Usage

__all__ = ["Failure", "ScriptedOptions", "ScriptedProvider", "ScriptedResponse"]

_TOKENS = re.compile(r"\S+\s*|\s+")


class ScriptedResponse(BaseModel):
    """One rule: when ``match`` (a substring) occurs in the request, answer ``text`` (and/or
    ``tool_calls``: ``[{name, arguments}]``). ``times`` limits how often the rule may answer."""

    model_config = ConfigDict(extra="forbid")
    match: str | None = None
    text: str = ""
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    times: int | None = Field(None, ge=1)


class Failure(BaseModel):
    """An injected failure, consumed by the next ``times`` calls.

    ``kind``: rate_limit, server, timeout, connection, auth, permission, not_found,
    bad_request, or stream_interrupt (raised after ``after_tokens`` tokens of the answer).
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal[
        "rate_limit",
        "server",
        "timeout",
        "connection",
        "auth",
        "permission",
        "not_found",
        "bad_request",
        "stream_interrupt",
    ]
    times: int = Field(1, ge=1)
    retry_after: float | None = Field(None, ge=0)
    after_tokens: int = Field(0, ge=0)
    message: str | None = None


class ScriptedOptions(BaseModel):
    """Options of the ``scripted`` provider."""

    model_config = ConfigDict(extra="forbid")
    responses: list[ScriptedResponse | str] = Field(default_factory=list)
    file: str | None = Field(None, description="YAML or JSON file with a list of responses")
    default: str | None = Field(None, description="answer when no rule matches (else: an echo of the prompt)")
    token_delay_s: float = Field(0.0, ge=0)
    first_token_delay_s: float = Field(0.0, ge=0)
    failures: list[Failure] = Field(default_factory=list)
    report_usage: bool = True
    streaming: bool = True
    tools: bool = True
    structured_output: bool = True


_ERRORS: dict[str, type[errors.ProviderError]] = {
    "rate_limit": errors.RateLimitError,
    "server": errors.ServerError,
    "timeout": errors.ProviderTimeoutError,
    "connection": errors.ProviderConnectionError,
    "auth": errors.AuthenticationError,
    "permission": errors.PermissionDeniedError,
    "not_found": errors.NotFoundError,
    "bad_request": errors.BadRequestError,
}
_STATUS = {
    "rate_limit": 429,
    "server": 500,
    "timeout": 408,
    "auth": 401,
    "permission": 403,
    "not_found": 404,
    "bad_request": 400,
}


class ScriptedProvider:
    """A deterministic provider. ``calls`` counts attempts (for tests of retry)."""

    name = "scripted"

    def __init__(
        self,
        options: ScriptedOptions | dict[str, Any] | None = None,
        *,
        model: str | None = None,
        base_dir: Path | None = None,
    ) -> None:
        if not isinstance(options, ScriptedOptions):
            options = ScriptedOptions.model_validate(options or {})
        self.options = options
        self.model = model or "scripted-1"
        rules = list(options.responses)
        if options.file:
            rules.extend(_load_rules(Path(base_dir or ".") / options.file))
        self.rules = [r if isinstance(r, ScriptedResponse) else ScriptedResponse(text=r) for r in rules]
        self._used = [0] * len(self.rules)
        self._failures = list(options.failures)
        self._failures_left = [f.times for f in options.failures]
        self._lock = threading.Lock()
        self.calls = 0
        self.capabilities = ProviderCapabilities(
            streaming=options.streaming,
            tools=options.tools,
            structured_output=options.structured_output,
            usage_in_stream=options.report_usage,
            usage_in_response=options.report_usage,
            native_async=True,
        )

    def __repr__(self) -> str:
        return f"ScriptedProvider(model={self.model!r}, rules={len(self.rules)})"

    # ---- choosing -----------------------------------------------------------------------

    def _answer(self, request: LLMRequest) -> tuple[ScriptedResponse, Failure | None]:
        prompt = "\n".join(m.content or "" for m in request.messages)
        with self._lock:
            self.calls += 1
            failure = None
            for i, left in enumerate(self._failures_left):
                if left > 0:
                    self._failures_left[i] = left - 1
                    failure = self._failures[i]
                    break
            for i, rule in enumerate(self.rules):
                if rule.times is not None and self._used[i] >= rule.times:
                    continue
                if rule.match is None or rule.match in prompt:
                    self._used[i] += 1
                    return rule, failure
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "") or ""
        text = self.options.default if self.options.default is not None else f"[scripted] {last_user[:200]}"
        return ScriptedResponse(text=text), failure

    @staticmethod
    def _text(request: LLMRequest, rule: ScriptedResponse) -> str:
        """The rule's text, cut before the first stop sequence of the request (as an API does)."""
        text = rule.text
        for stop in request.stop or ():
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text

    def _raise(self, failure: Failure) -> None:
        if failure.kind == "stream_interrupt":
            raise errors.ProviderConnectionError(failure.message or "scripted stream cut off", provider=self.name)
        cls = _ERRORS[failure.kind]
        message = failure.message or f"scripted {failure.kind.replace('_', ' ')}"
        if cls is errors.RateLimitError:
            raise errors.RateLimitError(message, retry_after=failure.retry_after, provider=self.name, status=429)
        raise cls(message, provider=self.name, status=_STATUS.get(failure.kind))

    def _usage(self, request: LLMRequest, output_tokens: int) -> Usage | None:
        if not self.options.report_usage:
            return None
        prompt = sum(len(_TOKENS.findall(m.content or "")) for m in request.messages)
        return Usage(prompt, output_tokens, prompt + output_tokens)

    @staticmethod
    def _tool_calls(rule: ScriptedResponse) -> list[ToolCall]:
        return [
            ToolCall(
                id=c.get("id", f"call_{i}"),
                name=c["name"],
                arguments=c["arguments"] if isinstance(c.get("arguments"), str) else json.dumps(c.get("arguments", {})),
            )
            for i, c in enumerate(rule.tool_calls)
        ]

    # ---- sync -----------------------------------------------------------------------------

    def generate(self, request: LLMRequest) -> LLMResponse:
        rule, failure = self._answer(request)
        if self.options.first_token_delay_s:
            time.sleep(self.options.first_token_delay_s)
        return self._complete(request, rule, failure)

    def _complete(self, request: LLMRequest, rule: ScriptedResponse, failure: Failure | None) -> LLMResponse:
        if failure is not None and failure.kind != "stream_interrupt":
            self._raise(failure)
        text = self._text(request, rule)
        tokens = _TOKENS.findall(text)
        calls = self._tool_calls(rule)
        return LLMResponse(
            text=text,
            tool_calls=calls,
            finish_reason="tool_calls" if calls else "stop",
            usage=self._usage(request, len(tokens)),
            model=request.model or self.model,
        )

    def stream(self, request: LLMRequest) -> Iterator[LLMChunk]:
        rule, failure = self._answer(request)
        opts = self.options
        if opts.first_token_delay_s:
            time.sleep(opts.first_token_delay_s)
        if failure is not None and failure.kind != "stream_interrupt":
            self._raise(failure)
        tokens = _TOKENS.findall(self._text(request, rule))
        for i, token in enumerate(tokens):
            if failure is not None and i == failure.after_tokens:
                self._raise(failure)
            if opts.token_delay_s and i:
                time.sleep(opts.token_delay_s)
            yield LLMChunk(text=token)
        if failure is not None:
            self._raise(failure)
        yield self._last_chunk(request, rule, len(tokens))

    def _last_chunk(self, request: LLMRequest, rule: ScriptedResponse, n: int) -> LLMChunk:
        calls = self._tool_calls(rule)
        deltas = [ToolCallDelta(i, c.id, c.name, c.arguments) for i, c in enumerate(calls)] or None
        return LLMChunk(
            tool_calls=deltas,
            finish_reason="tool_calls" if calls else "stop",
            usage=self._usage(request, n),
            model=request.model or self.model,
        )

    # ---- async ----------------------------------------------------------------------------

    async def agenerate(self, request: LLMRequest) -> LLMResponse:
        rule, failure = self._answer(request)
        if self.options.first_token_delay_s:
            await asyncio.sleep(self.options.first_token_delay_s)
        return self._complete(request, rule, failure)

    async def astream(self, request: LLMRequest) -> AsyncIterator[LLMChunk]:
        rule, failure = self._answer(request)
        opts = self.options
        if opts.first_token_delay_s:
            await asyncio.sleep(opts.first_token_delay_s)
        if failure is not None and failure.kind != "stream_interrupt":
            self._raise(failure)
        tokens = _TOKENS.findall(self._text(request, rule))
        for i, token in enumerate(tokens):
            if failure is not None and i == failure.after_tokens:
                self._raise(failure)
            if opts.token_delay_s and i:
                await asyncio.sleep(opts.token_delay_s)
            yield LLMChunk(text=token)
        if failure is not None:
            self._raise(failure)
        yield self._last_chunk(request, rule, len(tokens))

    def close(self) -> None:
        pass


def _load_rules(path: Path) -> list[ScriptedResponse | str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("provider.options.file", f"cannot read {path}: {exc.strerror}")]) from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("responses", [])
    if not isinstance(data, list):
        raise ConfigError([("provider.options.file", f"{path} must hold a list of responses")])
    try:
        return list(ScriptedOptions.model_validate({"responses": data}).responses)
    except Exception as exc:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            raise ConfigError(format_validation_error(exc, prefix=str(path))) from None
        raise


def build(ctx: BackendContext) -> ScriptedProvider:
    """Factory registered as provider ``scripted``."""
    return ScriptedProvider(ctx.options, model=ctx.model, base_dir=ctx.base_dir)
