"""Area ``provider``: a chaos Chat Completions server (``amsha_openai.testing.OpenAIServer``)
through ``LLM`` (sync and async, generate and stream), through sessions and through
``amsha run``: drops, resets, malformed SSE, bad JSON, HTML 500 and 200, dripped answers, Retry-After in
seconds, as a date, in ms, garbage and huge, hangs, keep-alive trickles, slow first bytes,
401/500 bodies echoing the auth header, masked keys, huge answers, split surrogate pairs.

A case holds when the call ends as documented (the answer, or the typed error with the
documented number of attempts), within its time bound, with no fragment of the key in the
error's text, repr or args (nor in any error chained to it)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _tally import Tally
from amsha import LLM, ExecutionSession, RetryConfig
from amsha import errors as E
from amsha_openai.testing import OpenAIServer, Reply

KEY = f"sk-chaos-{uuid.uuid4().hex}{uuid.uuid4().hex[:6]}"
os.environ["CHAOS_KEY"] = KEY
RETRY = RetryConfig(max_retries=2, initial_backoff_s=0.01, max_backoff_s=0.02, max_retry_after_s=1.0)
ALL = ("generate", "stream", "agenerate", "astream")
STREAMS = ("stream", "astream")
GENERATES = ("generate", "agenerate")


@dataclass
class Case:
    name: str
    replies: Callable[[], list[Reply | str]]
    expect: type[BaseException] | str
    attempts: int
    modes: tuple[str, ...] = ALL
    options: dict[str, Any] = field(default_factory=dict)
    within_s: float = 5.0
    at_least_s: float = 0.0
    server_key: str | None = None
    not_retryable: bool = False


def _date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


HUGE = "x" * 2_000_000
CASES = [
    Case("drop_mid_stream", lambda: [Reply("one two three four", cut_after=2)], E.StreamInterruptedError, 1, STREAMS),
    Case("drop_before_output", lambda: [Reply("a b", cut_after=0), Reply("fine now")], "fine now", 2, STREAMS),
    Case("reset_then_ok", lambda: [Reply(reset=True), Reply("after reset")], "after reset", 2),
    Case("reset_always", lambda: [Reply(reset=True, times=3)], E.ProviderConnectionError, 3),
    Case("malformed_sse", lambda: [Reply(raw_events=[b"{not json"])], E.ProviderError, 1, STREAMS, not_retryable=True),
    Case(
        "sse_event_of_garbage",
        lambda: [Reply(raw_events=[b'{"choices": [{"delta": {"content": 5}}]}', b"\xff\xfe"])],
        E.ProviderError,
        1,
        STREAMS,
        not_retryable=True,
    ),
    Case(
        "bad_json_body",
        lambda: [Reply(raw_body=b"{not json", content_type="application/json")],
        E.ProviderError,
        1,
        GENERATES,
        not_retryable=True,
    ),
    Case("html_500", lambda: [Reply(status=500, raw_body=b"<html>oops</html>", times=3)], E.ServerError, 3),
    Case("html_200", lambda: [Reply(raw_body=b"<html>login</html>", times=3)], E.ProviderError, 1, not_retryable=True),
    Case("retry_after_s", lambda: [Reply.fail(429, retry_after=0.05), Reply("ok")], "ok", 2, at_least_s=0.05),
    Case("retry_after_date", lambda: [Reply.fail(429, headers={"Retry-After": _date(-5)}), Reply("ok")], "ok", 2),
    Case("retry_after_ms", lambda: [Reply.fail(429, headers={"retry-after-ms": "30"}), Reply("ok")], "ok", 2),
    Case("retry_after_garbage", lambda: [Reply.fail(429, headers={"Retry-After": "soon-ish"}), Reply("ok")], "ok", 2),
    Case("retry_after_huge", lambda: [Reply.fail(429, retry_after=3600, times=3)], E.RateLimitError, 1, within_s=1.0),
    Case(
        "hang",
        lambda: [Reply(first_byte_delay_s=3, times=3)],
        E.ProviderTimeoutError,
        3,
        options={"timeout_s": 0.3},
        within_s=3.0,
    ),
    Case(
        "keepalive_trickle",
        lambda: [Reply(keepalive_s=0.05, times=3)],
        E.ProviderTimeoutError,
        3,
        STREAMS,
        options={"timeout_s": 0.3},
        within_s=3.0,
    ),
    Case(
        "drip_past_total_deadline",
        lambda: [Reply("a slow drip of an answer", drip_s=0.05, times=3)],
        E.ProviderTimeoutError,
        3,
        GENERATES,
        options={"total_timeout_s": 0.3, "timeout_s": 1},
        within_s=3.0,
    ),
    Case("slow_first_byte", lambda: [Reply("late", first_byte_delay_s=0.3)], "late", 1, options={"timeout_s": 2}),
    Case("auth_echo_401", lambda: [Reply.fail(401, "bad key", echo_auth=True)], E.AuthenticationError, 1),
    Case("server_echo_500", lambda: [Reply.fail(500, "boom", echo_auth=True, times=3)], E.ServerError, 3),
    Case("masked_key", lambda: [], E.AuthenticationError, 1, server_key="sk-another-key-000000000000"),
    Case(
        "huge_answer", lambda: [Reply(HUGE, chunks=[HUGE[i : i + 65536] for i in range(0, len(HUGE), 65536)])], HUGE, 1
    ),
    Case(
        "split_surrogates", lambda: [Reply(chunks=["a\ud83d", "\ude00b ", "\ud83d", "\udc4d"])], "a😀b 👍", 1, STREAMS
    ),
    Case("error_event_then_ok", lambda: [Reply("x", error_event_after=0), Reply("ok")], "ok", 2, STREAMS),
]


def _fragments() -> list[str]:
    return [KEY, KEY[:8] + "*", *(KEY[i : i + 8] for i in range(3, len(KEY) - 7))]


def _chain_text(error: BaseException) -> str:
    out, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(out)


def _leaks(text: str) -> list[str]:
    return [f for f in _fragments() if f in text]


def _call(llm: LLM, mode: str) -> str:
    if mode == "generate":
        return llm.generate("hi").text
    if mode == "stream":
        return "".join(c.text for c in llm.stream("hi"))

    async def go() -> str:
        try:
            if mode == "agenerate":
                return (await llm.agenerate("hi")).text
            return "".join([c.text async for c in llm.astream("hi")])
        finally:
            await llm.provider.aclose()  # type: ignore[attr-defined]  # on its own loop

    return asyncio.run(go())


def _one(tally: Tally, server: OpenAIServer, case: Case, mode: str) -> None:
    server.reset()
    server.api_key = case.server_key or KEY
    server.script(*case.replies())
    provider = server.provider(api_key_env="CHAOS_KEY", **case.options)
    llm = LLM(provider, model="test-model", retry=RETRY)
    what = f"{case.name}/{mode}"
    started = time.perf_counter()
    try:
        text = _call(llm, mode)
        error: BaseException | None = None
    except BaseException as exc:  # everything is judged below
        text, error = "", exc
    elapsed = time.perf_counter() - started
    provider.close()
    attempts = server.attempts
    problems = []
    if isinstance(case.expect, str):
        if error is not None:
            problems.append(f"expected the answer, got {type(error).__name__}: {str(error)[:200]}")
        elif text != case.expect:
            problems.append(f"wrong answer ({len(text)} chars: {text[:60]!r})")
    elif error is None:
        problems.append(f"expected {case.expect.__name__}, got an answer")
    elif not isinstance(error, case.expect):
        problems.append(f"expected {case.expect.__name__}, got {type(error).__name__}: {str(error)[:200]}")
    elif case.not_retryable and getattr(error, "retryable", None) is not False:
        problems.append("expected a non-retryable error")
    if error is not None:
        problems += [f"leaked {f[:12]}..." for f in _leaks(_chain_text(error))]
        if not isinstance(error, E.AmshaError):
            problems.append(f"untyped {type(error).__name__}")
    if attempts != case.attempts:
        problems.append(f"{attempts} attempts, expected {case.attempts}")
    if elapsed > case.within_s or elapsed < case.at_least_s:
        problems.append(f"took {elapsed:.2f}s (bounds {case.at_least_s}..{case.within_s})")
    tally.check(not problems, f"{what}: {'; '.join(problems)}")


def _sessions(tally: Tally, server: OpenAIServer) -> None:
    """Through a session: the run's outcome and record say what happened."""
    picks = {c.name: c for c in CASES}
    for name in ("reset_then_ok", "html_200", "retry_after_s", "drop_mid_stream", "keepalive_trickle", "masked_key"):
        case = picks[name]
        server.reset()
        server.api_key = case.server_key or KEY
        server.script(*case.replies())
        config = {
            "provider": server.provider_config(api_key_env="CHAOS_KEY", **case.options),
            "retry": RETRY.model_dump(),
            "agents": {"a": {"role": "r", "goal": "g"}},
            "tasks": {"t": {"description": "say it", "agent": "a"}},
        }
        started = time.perf_counter()
        problems = []
        with ExecutionSession(config) as session:
            handle = session.run()
            try:
                result = handle.result(timeout=30)
                outcome: Any = result.outputs.get("t")
            except E.RunFailedError as exc:
                outcome = exc.cause
                problems += [f"leaked {f[:12]}" for f in _leaks(_chain_text(exc))]
            record = session.store.get_run(handle.run_id)
        if isinstance(case.expect, str):
            ok = outcome == case.expect and record.status == "SUCCEEDED"
        else:
            ok = isinstance(outcome, case.expect) and record.status == "FAILED"
        if not ok:
            problems.append(f"outcome {type(outcome).__name__} {str(outcome)[:100]!r}, record {record.status}")
        if time.perf_counter() - started > case.within_s + 5:
            problems.append("too slow")
        problems += [f"record leaked {f[:12]}" for f in _leaks(json.dumps(record.to_dict(), default=str))]
        tally.check(not problems, f"session/{name}: {'; '.join(problems)}")


def _cli(tally: Tally, server: OpenAIServer) -> None:
    """Through ``amsha run`` in a process of its own: exit code, JSON, stderr."""
    runs = [
        ("ok", [Reply("all fine")], {}, 0, "all fine"),
        ("html_200", [Reply(raw_body=b"<html>login</html>", times=3)], {}, 1, "text/html"),
        ("keepalive", [Reply(keepalive_s=0.05, times=3)], {"timeout_s": 0.3}, 1, "idle_timeout_s"),
        ("auth_echo", [Reply.fail(401, "no", echo_auth=True)], {}, 1, "AuthenticationError"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, replies, options, code, says in runs:
            server.reset()
            server.api_key = KEY
            server.script(*replies)
            config = {
                "provider": server.provider_config(api_key_env="CHAOS_KEY", **options),
                "retry": RETRY.model_dump(),
                "agents": {"a": {"role": "r", "goal": "g"}},
                "tasks": {"t": {"description": "say it", "agent": "a"}},
            }
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(config))
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "amsha", "run", str(path), "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            both = proc.stdout + proc.stderr
            problems = []
            if proc.returncode != code:
                problems.append(f"exit {proc.returncode}, expected {code}: {proc.stderr[-300:]}")
            if says not in both:
                problems.append(f"{says!r} not in the output")
            if "Traceback" in proc.stderr:
                problems.append("a traceback")
            problems += [f"leaked {f[:12]}" for f in _leaks(both)]
            if time.perf_counter() - started > 30:
                problems.append("too slow")
            tally.check(not problems, f"cli/{name}: {'; '.join(problems)}")


def main() -> None:
    tally = Tally("provider")
    with OpenAIServer() as server:
        for case in CASES:
            for mode in case.modes:
                _one(tally, server, case, mode)
        _sessions(tally, server)
        _cli(tally, server)
    tally.report()


if __name__ == "__main__":
    main()
