"""Cancel closes the HTTP stream at once: the server sees the connection closed mid-answer,
and nothing is left open. Sync, async, and a whole run cancelled through its handle."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
from amsha import LLM, ExecutionSession, LLMRequest, Message
from amsha.errors import RunCancelledError
from amsha_openai import OpenAIProvider
from amsha_openai.testing import OpenAIServer, Reply

WORDS = " ".join(f"w{i}" for i in range(200))


def closed_mid_answer(server: OpenAIServer, timeout: float = 1.0) -> bool:
    """The server saw the client go away mid-answer, and no connection is left open."""
    return server.wait_for(
        lambda s: s.requests[-1].outcome == "client_closed" and s.open_connections == 0, timeout=timeout
    )


def test_closing_a_sync_stream_closes_the_connection(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply(WORDS, chunk_delay_s=0.5))
    stream = LLM(provider).stream("go")
    assert next(iter(stream)).text == "w0 "
    started = time.perf_counter()
    stream.close()
    assert time.perf_counter() - started < 0.2
    assert closed_mid_answer(openai_server)
    assert stream.response is None


def test_closing_the_provider_stream_directly(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply(WORDS, chunk_delay_s=0.5))
    iterator = provider.stream(LLMRequest([Message("user", "go")]))
    next(iterator)
    iterator.close()
    assert next(iterator, None) is None
    assert closed_mid_answer(openai_server)


def test_an_abandoned_stream_is_closed_when_collected(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply(WORDS, chunk_delay_s=0.5))
    stream = LLM(provider).stream("go")
    next(iter(stream))
    del stream
    gc.collect()
    assert closed_mid_answer(openai_server)


def test_cancelling_an_async_stream_closes_the_connection_at_once(
    openai_server: OpenAIServer, provider: OpenAIProvider
) -> None:
    openai_server.script(Reply(WORDS, chunk_delay_s=0.5))
    llm = LLM(provider)
    first = asyncio.Event()

    async def consume() -> None:
        async with llm.astream("go") as stream:
            async for chunk in stream:
                if chunk.text:
                    first.set()

    async def main() -> float:
        task = asyncio.create_task(consume())
        await first.wait()
        started = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed = time.perf_counter() - started
        await provider.aclose()
        return elapsed

    assert asyncio.run(main()) < 0.2
    assert closed_mid_answer(openai_server)


def test_aclose_of_an_async_stream(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.script(Reply(WORDS, chunk_delay_s=0.5))

    async def main() -> None:
        stream = LLM(provider).astream("go")
        await stream.__anext__()
        await stream.aclose()
        await provider.aclose()

    asyncio.run(main())
    assert closed_mid_answer(openai_server)


def _session(server: OpenAIServer, **options: Any) -> ExecutionSession:
    return ExecutionSession(
        {
            "provider": server.provider_config(**options),
            "agents": {"writer": {"role": "Writer", "goal": "Write"}},
            "tasks": {"write": {"description": "Write a long text.", "agent": "writer"}},
        }
    )


def test_cancelling_a_run_closes_the_provider_stream(openai_server: OpenAIServer) -> None:
    openai_server.script(Reply(WORDS, chunk_delay_s=0.3))
    with _session(openai_server) as session:
        handle = session.run(detach=True)
        for event in handle.stream():
            if event.kind == "llm.token":
                break
        started = time.perf_counter()
        handle.cancel("the user pressed stop")
        with pytest.raises(RunCancelledError) as info:
            handle.result(timeout=10)
        assert time.perf_counter() - started < 1.0
        assert closed_mid_answer(openai_server)
        assert "the user pressed stop" in str(info.value)
        finished = [e for e in handle.stream() if e.kind == "llm.finished"]
        assert finished and finished[-1].data["cancelled"] is True
        assert finished[-1].data["response"]["text"].startswith("w0 ")


def test_a_client_that_stops_reading_cancels_the_run(openai_server: OpenAIServer) -> None:
    openai_server.script(Reply(WORDS, chunk_delay_s=0.3))
    with _session(openai_server) as session:
        handle = session.run()
        tokens = handle.stream_text()
        assert next(tokens).startswith("w0")
        tokens.close()  # a web client went away
        with pytest.raises(RunCancelledError):
            handle.result(timeout=10)
        assert closed_mid_answer(openai_server)
