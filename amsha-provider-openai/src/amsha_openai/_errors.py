"""The ``openai`` SDK's exceptions translated into Amsha's typed errors, at the boundary.

=================================  ==========================  =========
what happened                      Amsha error                 retryable
=================================  ==========================  =========
HTTP 400, 422                      BadRequestError             no
HTTP 401                           AuthenticationError         no
HTTP 403                           PermissionDeniedError       no
HTTP 404 (usually a bad model)     NotFoundError               no
HTTP 408                           ProviderTimeoutError        yes
HTTP 409                           ConflictError               yes
HTTP 429                           RateLimitError              yes, after Retry-After (no for ``insufficient_quota``)
HTTP 5xx                           ServerError                 yes
other HTTP 4xx                     ProviderError               no
client timeout                     ProviderTimeoutError        yes
connection refused, reset, cut     ProviderConnectionError     yes
an error event inside a stream     by its type: RateLimitError / ServerError (yes), else ProviderError (no)
stream broken after output began   StreamInterruptedError      no (carries the partial text)
=================================  ==========================  =========

The SDK's exception is not chained to the Amsha error (``from None``): its request object
carries the ``Authorization`` header, and a server may echo a key in an error body. What
matters is kept in the message: the status, the server's own message, its request id.
"""

from __future__ import annotations

import email.utils
import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import openai
from amsha import errors
from amsha.secrets import redact

__all__ = ["ErrorContext", "map_error", "parse_retry_after"]

PROVIDER = "openai"


@dataclass(frozen=True, slots=True)
class ErrorContext:
    """What an error message names: the model asked for, the server, the key's variable."""

    model: str
    base_url: str
    api_key_env: str


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    value = headers.get("retry-after")
    if value:
        try:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, float(email.utils.mktime_tz(parsed) - time.time()))
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def _body_fields(body: object) -> tuple[str | None, str | None, str | None]:
    """``(message, type, code)`` of an OpenAI-format error body (``{"error": {...}}`` or its inside)."""
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            message = inner.get("message")
            kind = inner.get("type")
            code = inner.get("code")
            return (
                message if isinstance(message, str) and message else None,
                str(kind) if kind is not None else None,
                str(code) if code is not None else None,
            )
        if isinstance(inner, str) and inner:
            return inner, None, None
    if isinstance(body, str) and body.strip():
        return body.strip()[:500], None, None
    return None, None, None


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(timeouts, other request errors) of the HTTP library the SDK uses: ``httpx`` for
    openai 2.x, ``httpx2`` for 3.x. openai 2.x lets them out of a stream unwrapped."""
    timeouts: list[type[BaseException]] = []
    requests: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        module = sys.modules.get(name)
        if module is not None:
            timeouts.append(module.TimeoutException)
            requests.append(module.RequestError)
    return tuple(timeouts), tuple(requests)


def map_error(exc: BaseException, ctx: ErrorContext) -> errors.ProviderError:
    """The Amsha error for an exception raised by the SDK (or its HTTP library).

    Text that came from the server or the SDK is scrubbed of registered secrets before it is
    put into the error (a server may echo the key back), so neither the error's text nor its
    ``args`` nor its ``repr`` hold one.
    """
    if isinstance(exc, errors.ProviderError):
        return exc
    error = _map(exc, ctx)
    if error.args and isinstance(error.args[0], str):
        error.args = (redact(error.args[0]), *error.args[1:])
    return error


def _map(exc: BaseException, ctx: ErrorContext) -> errors.ProviderError:
    if type(exc).__name__ == "StreamDeadlineError":
        return errors.ProviderTimeoutError(str(exc), provider=PROVIDER)
    if isinstance(exc, json.JSONDecodeError):
        return errors.ProviderError(
            f"the server at {ctx.base_url} sent data that is not JSON ({exc.msg}, at character {exc.pos}); it began "
            f"{redact(exc.doc[:200])!r}. Check that base_url is the API root of a Chat Completions server",
            provider=PROVIDER,
            retryable=False,
        )
    if isinstance(exc, openai.APITimeoutError):
        return errors.ProviderTimeoutError(
            f"the request to {ctx.base_url} for model {ctx.model!r} timed out (timeout_s)", provider=PROVIDER
        )
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        why = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        return errors.ProviderConnectionError(f"the connection to {ctx.base_url} failed{why}", provider=PROVIDER)
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc, ctx)
    if isinstance(exc, openai.APIResponseValidationError):
        return errors.ProviderError(
            f"the server at {ctx.base_url} answered with data that is not a Chat Completions response: {exc.message}",
            provider=PROVIDER,
            status=exc.status_code,
            retryable=False,
        )
    if isinstance(exc, openai.APIError):
        # An error event inside an SSE stream: no HTTP status, only the body's type and code.
        message, kind, code = _body_fields(exc.body)
        text = f"the server at {ctx.base_url} sent an error in the stream: {message or exc.message}"
        tag = f"{kind or ''} {code or ''}"
        if "insufficient_quota" in tag:
            return errors.RateLimitError(text, provider=PROVIDER, retryable=False)
        if "rate_limit" in tag:
            return errors.RateLimitError(text, provider=PROVIDER)
        if any(word in tag for word in ("server_error", "internal", "overloaded", "unavailable")):
            return errors.ServerError(text, provider=PROVIDER)
        return errors.ProviderError(text, provider=PROVIDER, retryable=False)
    timeouts, requests = _transport_errors()
    if timeouts and isinstance(exc, timeouts):
        return errors.ProviderTimeoutError(
            f"reading from {ctx.base_url} timed out: {type(exc).__name__}: {exc}", provider=PROVIDER
        )
    if requests and isinstance(exc, requests):
        return errors.ProviderConnectionError(
            f"the connection to {ctx.base_url} failed: {type(exc).__name__}: {exc}", provider=PROVIDER
        )
    return errors.ProviderError(
        f"the openai SDK raised {type(exc).__name__}: {exc}", provider=PROVIDER, retryable=False
    )


def _status_error(exc: openai.APIStatusError, ctx: ErrorContext) -> errors.ProviderError:
    status = exc.status_code
    message, kind, code = _body_fields(exc.body)
    detail = message or f"no message (body {str(exc.body)[:200]!r})"
    request_id = getattr(exc, "request_id", None)
    where = f"HTTP {status} from {ctx.base_url}" + (f", request id {request_id}" if request_id else "")
    kw: dict[str, Any] = {"provider": PROVIDER, "status": status}
    if status in (400, 422):
        return errors.BadRequestError(
            f"the server refused the request for model {ctx.model!r}: {detail} ({where})", **kw
        )
    if status == 401:
        return errors.AuthenticationError(
            f"the server rejected the API key read from environment variable {ctx.api_key_env!r}: {detail} ({where})",
            **kw,
        )
    if status == 403:
        return errors.PermissionDeniedError(f"permission denied for model {ctx.model!r}: {detail} ({where})", **kw)
    if status == 404:
        return errors.NotFoundError(
            f"model {ctx.model!r} was not found: {detail} ({where}); check the model name, and that base_url "
            f"is the API root (it usually ends in /v1)",
            **kw,
        )
    if status == 408:
        return errors.ProviderTimeoutError(f"the server timed out the request: {detail} ({where})", **kw)
    if status == 409:
        return errors.ConflictError(f"the server reported a conflict: {detail} ({where})", **kw)
    if status == 429:
        retry_after = parse_retry_after(exc.response.headers)
        if "insufficient_quota" in (kind or "", code or ""):
            # Out of credit: waiting does not help, so this 429 is not retried.
            return errors.RateLimitError(
                f"the account is out of quota: {detail} ({where})", retry_after=retry_after, retryable=False, **kw
            )
        after = f"; retry after {retry_after:g}s" if retry_after is not None else ""
        return errors.RateLimitError(f"rate limited: {detail} ({where}{after})", retry_after=retry_after, **kw)
    if status >= 500:
        return errors.ServerError(f"the server failed: {detail} ({where})", **kw)
    return errors.ProviderError(f"the request failed: {detail} ({where})", retryable=False, **kw)
