"""50 concurrent streams on one provider instance: each gets its own answer, whole and in
order, they really overlap, and connections are pooled (never more than the streams)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from amsha import LLM
from amsha_openai import OpenAIProvider
from amsha_openai.testing import OpenAIServer

N = 50
DELAY = 0.05
WORDS = 8  # "echo: " + 7 words of the prompt -> 8 chunks, 7 delays each


def prompt(i: int) -> str:
    return f"stream {i} says alpha beta gamma {i}"


def test_fifty_concurrent_async_streams_on_one_instance(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.chunk_delay_s = DELAY
    llm = LLM(provider)

    async def one(i: int) -> tuple[str, int, bool]:
        async with llm.astream(prompt(i)) as stream:
            text = "".join([c.text async for c in stream])
        assert stream.response is not None and stream.response.usage is not None
        return text, stream.response.usage.output_tokens, stream.response.usage.estimated

    async def main() -> tuple[list[tuple[str, int, bool]], float]:
        started = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(N)))
        elapsed = time.perf_counter() - started
        await provider.aclose()
        return results, elapsed

    results, elapsed = asyncio.run(main())
    assert [r[0] for r in results] == [f"echo: {prompt(i)}" for i in range(N)]
    assert all(r[1] == WORDS and r[2] is False for r in results)
    # One after the other they would take N times one stream; the bound leaves room for the
    # SDK's CPU cost on a small, shared machine.
    one_stream = (WORDS - 1) * DELAY
    assert elapsed < N * one_stream / 3, f"{N} streams took {elapsed:.2f}s; one takes {one_stream:.2f}s"
    assert openai_server.attempts == N and openai_server.connections <= N


def test_fifty_concurrent_sync_streams_from_threads(openai_server: OpenAIServer, provider: OpenAIProvider) -> None:
    openai_server.chunk_delay_s = DELAY
    llm = LLM(provider)

    def one(i: int) -> str:
        with llm.stream(prompt(i)) as stream:
            return "".join(c.text for c in stream)

    started = time.perf_counter()
    with ThreadPoolExecutor(N) as pool:
        texts = list(pool.map(one, range(N)))
    elapsed = time.perf_counter() - started
    assert texts == [f"echo: {prompt(i)}" for i in range(N)]
    assert elapsed < N * (WORDS - 1) * DELAY / 3
    assert openai_server.connections <= N
    # The pooled connections serve the next round instead of new ones.
    before = openai_server.connections
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(one, range(10)))
    assert openai_server.connections == before
