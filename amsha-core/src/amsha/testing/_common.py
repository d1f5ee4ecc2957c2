"""What the contract suites share: the ``contract:`` failure, missing-fixture markers, the
event-loop watchdog and the secret canary."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NoReturn, TypeVar

import pytest

T = TypeVar("T")


def fail(message: str) -> NoReturn:
    """Fail the test with ``contract: <message>`` (no traceback: the message says it all,
    and no chained exception: the backend's error is named in it)."""
    try:
        pytest.fail(f"contract: {message}", pytrace=False)
    except pytest.fail.Exception as outcome:
        raise outcome from None


class Missing:
    """What a suite's default for an optional fixture returns: the plugin did not supply it.

    A test that needs the fixture fails with :meth:`require`'s message, which names the
    fixture and says what to return from it, instead of skipping quietly.
    """

    def __init__(self, fixture: str, how: str) -> None:
        self.fixture = fixture
        self.how = how

    def __repr__(self) -> str:
        return f"Missing({self.fixture!r})"


def require(value: T | Missing, why: str) -> T:
    """``value``, unless it is :class:`Missing`: then fail naming the fixture to add."""
    if isinstance(value, Missing):
        fail(f"{why} needs the `{value.fixture}` fixture, which this test class does not supply: {value.how}")
    return value


def canary() -> str:
    """A fresh fake secret, unique to one test (a value registered for scrubbing by an
    earlier test must not hide a leak in a later one)."""
    return f"sk-contract-canary-{uuid.uuid4().hex}"


def leaks(secret: str, *values: Any) -> bool:
    """True when ``secret`` appears in any of ``values`` (strings, or JSON-able objects)."""
    for value in values:
        if isinstance(value, str):
            text = value
        else:
            try:
                text = json.dumps(value, default=repr)
            except (TypeError, ValueError):
                text = repr(value)
        if secret in text:
            return True
    return False


def exception_texts(exc: BaseException) -> list[str]:
    """Every text an exception shows (``str``, ``repr``, ``to_dict()`` if it has one), for it
    and for the exceptions chained to it."""
    out: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out += [str(current), repr(current)]
        to_dict = getattr(current, "to_dict", None)
        if callable(to_dict):
            try:
                out.append(json.dumps(to_dict(), default=repr))
            except Exception:  # a broken to_dict is another suite's business
                pass
        # Followed as a traceback shows them: the cause, else the context unless suppressed
        # (``raise ... from None`` hides it).
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return out


async def with_watchdog(work: Callable[[], Awaitable[T]], tick_s: float = 0.005) -> tuple[T, float]:
    """Run ``work()`` on this loop next to a ticker; returns its result and the longest time
    the loop went without running the ticker (how long ``work`` blocked the loop)."""
    stop = False
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(tick_s)
            now = time.perf_counter()
            worst = max(worst, now - last - tick_s)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        result = await work()
    finally:
        stop = True
        await task
    return result, worst


def contract_suite(cls: type[T]) -> type[T]:
    """Make every ``test_*`` method of a suite report an unexpected exception of the backend
    as a ``contract:`` failure naming the check, like the checks' own failures."""
    for name in dir(cls):  # inherited ones too: a mixin's checks report the same way
        fn = getattr(cls, name)
        if name.startswith("test_") and callable(fn) and not getattr(fn, "_contract_reported", False):
            setattr(cls, name, _reported(fn))
    return cls


def _reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    what = fn.__name__.removeprefix("test_").replace("_", " ")

    @functools.wraps(fn)
    def check(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # pytest's outcomes (fail, skip, xfail) are BaseExceptions: they pass
            fail(f"{what}: the backend raised {type(exc).__name__}: {exc}")

    check._contract_reported = True  # type: ignore[attr-defined]
    return check


@contextlib.contextmanager
def registered_secret(secret: str | None = None) -> Iterator[None]:
    """Register ``secret`` for scrubbing (as ``amsha.get_secret`` does) for the duration of
    a check, and forget every secret registered meanwhile afterwards, so that one check's
    canaries do not stay registered for the rest of the test process."""
    from .. import secrets

    before = secrets._secrets
    if secret is not None:
        secrets.register_secret(secret)
    try:
        yield
    finally:
        with secrets._lock:
            secrets._secrets = before
