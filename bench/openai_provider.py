"""Figures of provider ``openai`` (amsha-provider-openai), side by side with langchain-openai's
``ChatOpenAI`` and LiteLLM, all against the same local Chat Completions server
(``amsha_openai.testing.OpenAIServer``, run in a child process so its work is not on the
client's clock).

Every overhead is "what the client library adds over the bare ``openai`` SDK call doing the
same request": Amsha's is its ``LLM`` wrapper plus the provider's mapping; the peers' is their
framework around the same SDK. See bench/README.md ("provider openai").
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from harness import Figure, Paired, Settings, Skip, benchmark, log, paired

MODEL = "bench-model"
PROMPT = "Say hello"  # the server echoes: "echo: Say hello"
STREAM_CHUNKS = 100
STREAM_PROMPT = " ".join(f"w{i}" for i in range(STREAM_CHUNKS - 1))  # echoed as 100 text chunks
MESSAGES = [{"role": "user", "content": PROMPT}]
STREAM_MESSAGES = [{"role": "user", "content": STREAM_PROMPT}]
KEY = "sk-bench-not-a-secret"
CONCURRENT = 200
LATENCY_S = 0.05

_SERVER = """
import sys
from amsha_openai.testing import OpenAIServer
server = OpenAIServer(latency_s=float(sys.argv[1]), keep_alive=sys.argv[2] == "1").start()
print(server.port, flush=True)
sys.stdin.read()
server.stop()
"""


@contextmanager
def local_server(latency_s: float = 0.0, keep_alive: bool = True) -> Iterator[str]:
    """A Chat Completions server in a child process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(latency_s), "1" if keep_alive else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _need_openai_provider() -> None:
    try:
        import amsha_openai.provider  # noqa: F401
    except ImportError as exc:
        raise Skip(f"amsha-provider-openai (and the openai SDK) are not installed: {exc}") from None


def _amsha(url: str) -> tuple[Any, Any]:
    from amsha import LLM
    from amsha_openai import OpenAIProvider

    provider = OpenAIProvider({"base_url": url, "api_key_env": "AMSHA_BENCH_NO_KEY"}, model=MODEL)
    return provider, LLM(provider)


def _raw(url: str) -> Any:
    import openai

    return openai.OpenAI(api_key=KEY, base_url=url, max_retries=0)


def _langchain(url: str, **kw: Any) -> Any | None:
    try:
        from langchain_openai import ChatOpenAI
    except ImportError as exc:
        log(f"  note: langchain-openai is not installed, no peer figure for it ({exc})")
        return None
    return ChatOpenAI(model=MODEL, base_url=url, api_key=KEY, max_retries=0, **kw)


def _litellm(settings: Settings) -> Any | None:
    """LiteLLM, configured to run offline, or None (with a note) when it cannot."""
    if settings.quick:
        log("  note: --quick leaves LiteLLM out (importing it alone takes seconds here)")
        return None
    # Without this LiteLLM fetches its model cost map from the internet at import, and retries
    # for seconds when offline.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    try:
        import litellm
    except Exception as exc:  # not installed, or fails to import offline
        log(f"  note: LiteLLM cannot run here, no peer figure for it ({type(exc).__name__}: {exc})")
        return None
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


def _drain(iterator: Any) -> None:
    for _ in iterator:
        pass


def _cpu_batch(fn: Callable[[], object], number: int) -> int:
    """CPU nanoseconds of this process for ``number`` calls, the collector paused (as
    ``harness`` does for wall time)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        t0 = time.process_time_ns()
        for _ in range(number):
            fn()
        return time.process_time_ns() - t0
    finally:
        if enabled:
            gc.enable()


def paired_cpu(
    wrapped: Callable[[], object],
    bare: Callable[[], object],
    settings: Settings,
    repeat: int | None = None,
    target_ms: int | None = None,
) -> Paired:
    """Like ``harness.paired`` (adjacent batches, alternating order, median of the per-round
    differences), but on this process's CPU clock: the server runs in another process, so
    what a client library adds is CPU here, while the wall clock would mostly measure the
    loopback round trip and the server's scheduling."""
    target_ns = (target_ms or settings.pick(100, 40)) * 1_000_000
    repeat = repeat or settings.pick(11, 5)
    for _ in range(3):  # warm both up (connections, caches)
        wrapped()
        bare()
    t0 = time.perf_counter_ns()
    wrapped()
    number = max(1, round(target_ns / max(time.perf_counter_ns() - t0, 1)))
    w: list[float] = []
    b: list[float] = []
    for r in range(repeat):
        if r % 2 == 0:
            w.append(_cpu_batch(wrapped, number) / number)
            b.append(_cpu_batch(bare, number) / number)
        else:
            b.append(_cpu_batch(bare, number) / number)
            w.append(_cpu_batch(wrapped, number) / number)
    diffs = sorted(x - y for x, y in zip(w, b, strict=True))
    q = statistics.quantiles(diffs, n=4) if len(diffs) >= 4 else [diffs[0], 0, diffs[-1]]
    return Paired(statistics.median(w), statistics.median(b), statistics.median(diffs), q[0], q[2], number, repeat)


class _SDKClock:
    """Nanoseconds spent inside the SDK by one client owner (the provider, or a
    :class:`_Bare` around a bare client): ``chat.completions.create`` and the iteration and
    closing of the stream it returns. What Amsha adds is the rest of the call, measured in the
    same call, so the SDK's and the server's own variance cancel out."""

    def __init__(self, provider: Any) -> None:
        self.ns = 0
        completions = provider.client.chat.completions
        create = completions.create

        def timed_create(**params: Any) -> Any:
            t0 = time.perf_counter_ns()
            result = create(**params)
            self.ns += time.perf_counter_ns() - t0
            return _TimedStream(result, self) if params.get("stream") else result

        completions.create = timed_create  # this provider's client only
        self._completions = completions

    def remove(self) -> None:
        """Unclock the client (the class's ``create`` shows through again)."""
        del self._completions.create


class _TimedStream:
    def __init__(self, inner: Any, clock: _SDKClock) -> None:
        self._inner = inner
        self._clock = clock
        self.response = inner.response

    def __iter__(self) -> Iterator[Any]:
        clock = self._clock
        iterator = iter(self._inner)
        while True:
            t0 = time.perf_counter_ns()
            try:
                item = next(iterator)
            except StopIteration:
                clock.ns += time.perf_counter_ns() - t0
                return
            clock.ns += time.perf_counter_ns() - t0
            yield item

    def close(self) -> None:
        t0 = time.perf_counter_ns()
        self._inner.close()
        self._clock.ns += time.perf_counter_ns() - t0


class _Bare:
    """A bare SDK client as :class:`_SDKClock` takes it (the clock patches this client only)."""

    def __init__(self, client: Any) -> None:
        self.client = client


def outside_sdk(provider: Any, call: Callable[[], object], settings: Settings) -> tuple[float, float, float]:
    """Median ns per call that ``call`` spends outside the SDK, with its quartiles."""
    clock = _SDKClock(provider)
    try:
        return _outside(clock, call, settings)
    finally:
        clock.remove()  # later measurements of the same client see it unwrapped


def _outside(clock: _SDKClock, call: Callable[[], object], settings: Settings) -> tuple[float, float, float]:
    for _ in range(3):
        call()
    rounds = settings.pick(21, 9)
    number = settings.pick(6, 4)
    outside: list[float] = []
    for _ in range(rounds):
        enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            clock.ns = 0
            t0 = time.perf_counter_ns()
            for _ in range(number):
                call()
            total = time.perf_counter_ns() - t0
        finally:
            if enabled:
                gc.enable()
        outside.append((total - clock.ns) / number)
    q = statistics.quantiles(outside, n=4)
    return statistics.median(outside), q[0], q[2]


def _overhead_figures(
    kind: str,
    provider: Any,
    amsha_call: Callable[[], object],
    raw_call: Callable[[], object],
    floor: tuple[_Bare, Callable[[], object]],
    peers: list[tuple[str, str, Callable[[], object]]],
    settings: Settings,
    unit_note: str,
) -> tuple[float, float, list[Figure]]:
    """What Amsha and each peer add to the bare SDK call, all measured the same way: this
    process's CPU difference between the library's call and the bare call, in adjacent
    batches (:func:`paired_cpu`). Amsha's difference is small against the call, so it gets
    more and longer rounds (21 of ~300 ms; 9 of ~60 ms with ``--quick``) than a peer's.

    Cross-check, logged: Amsha's time outside the SDK inside its own calls (the SDK's
    ``create`` and stream iteration clocked, then unclocked) minus what that clock reads for
    the bare SDK call on a client of its own (``floor``: the clock's wrappers and the
    consuming loop). It has tight quartiles but misses what Amsha costs inside the SDK's time
    (the connection-reuse read; caches the SDK then finds colder), so it reads lower for
    streams. Returns Amsha's overhead and the bare call's CPU time (ns), and the peer
    figures."""
    gross, low, high = outside_sdk(provider, amsha_call, settings)
    method, m_low, m_high = outside_sdk(floor[0], floor[1], settings)
    log(
        f"  cross-check: amsha's time outside the SDK ({unit_note}) {gross / 1e3:.4g} us"
        f" (quartiles {low / 1e3:.4g}..{high / 1e3:.4g}) - the clock's reading on the bare SDK call"
        f" {method / 1e3:.4g} us (quartiles {m_low / 1e3:.4g}..{m_high / 1e3:.4g}) = {(gross - method) / 1e3:.4g} us"
    )
    own = paired_cpu(amsha_call, raw_call, settings, repeat=settings.pick(21, 9), target_ms=settings.pick(300, 60))
    log(f"  amsha over the raw SDK, CPU ({unit_note}): {own.describe()}")
    amsha, bare = own.overhead, own.bare
    figures = []
    for short, peer_name, peer_call in peers:
        peer = paired_cpu(peer_call, raw_call, settings)
        log(f"  {short} over the raw SDK, CPU ({unit_note}): {peer.describe()}")
        figures.append(
            Figure(f"openai.{kind}.overhead_vs_{short}", amsha / 1e3, peer.overhead / 1e3, peer_name, "us/call", 0.1)
        )
    return amsha, bare, figures


@benchmark(
    "openai.generate.overhead_vs_langchain",
    "openai.generate.overhead_vs_litellm",
)
def generate_overhead(settings: Settings) -> list[Figure]:
    """One complete (JSON) call: what each library adds over ``client.chat.completions.create``
    on the bare SDK, against the same zero-latency local server (keep-alive: every client
    reuses its connection)."""
    _need_openai_provider()
    litellm = _litellm(settings)
    with local_server() as url:
        provider, llm = _amsha(url)
        raw = _raw(url)
        expected = f"echo: {PROMPT}"
        assert llm.generate(PROMPT).text == expected
        assert raw.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content == expected
        peers: list[tuple[str, str, Callable[[], object]]] = []
        chat = _langchain(url)
        if chat is not None:
            assert chat.invoke(PROMPT).content == expected
            peers.append(
                ("langchain", "langchain-openai ChatOpenAI.invoke() over the raw SDK call", lambda: chat.invoke(PROMPT))
            )
        if litellm is not None:

            def lite() -> Any:
                return litellm.completion(model=f"openai/{MODEL}", api_base=url, api_key=KEY, messages=MESSAGES)

            assert lite().choices[0].message.content == expected
            peers.append(("litellm", "LiteLLM completion() over the raw SDK call", lite))
        timed_raw = _raw(url)
        _, _, figures = _overhead_figures(
            "generate",
            provider,
            lambda: llm.generate(PROMPT),
            lambda: raw.chat.completions.create(model=MODEL, messages=MESSAGES),
            (_Bare(timed_raw), lambda: timed_raw.chat.completions.create(model=MODEL, messages=MESSAGES)),
            peers,
            settings,
            "per call",
        )
        provider.close()
        raw.close()
        timed_raw.close()
    if not figures:
        raise Skip("neither langchain-openai nor LiteLLM is installed: nothing to compare with")
    return figures


@benchmark(
    "openai.stream.overhead_vs_raw",
    "openai.stream.overhead_vs_langchain",
    "openai.stream.overhead_vs_litellm",
    "openai.stream.keepalive_per_call",
)
def stream_overhead(settings: Settings) -> list[Figure]:
    """A 100-chunk stream (with the usage chunk), consumed whole: what each library adds over
    iterating the bare SDK's stream. The server closes each connection after its answer, so no
    side reuses one (the bare SDK cannot: it stops reading at ``[DONE]``); the last figure
    shows what Amsha's connection reuse saves on a keep-alive server."""
    _need_openai_provider()
    litellm = _litellm(settings)
    figures: list[Figure] = []
    expected = f"echo: {STREAM_PROMPT}"

    def raw_stream(raw: Any) -> Any:
        return raw.chat.completions.create(
            model=MODEL, messages=STREAM_MESSAGES, stream=True, stream_options={"include_usage": True}
        )

    with local_server(keep_alive=False) as url:
        provider, llm = _amsha(url)
        raw = _raw(url)
        with llm.stream(STREAM_PROMPT) as stream:
            pieces = [c.text for c in stream if c.text]
        assert len(pieces) == STREAM_CHUNKS and "".join(pieces) == expected
        assert stream.response is not None and not stream.response.usage.estimated
        raw_pieces = [c.choices[0].delta.content for c in raw_stream(raw) if c.choices and c.choices[0].delta.content]
        assert len(raw_pieces) == STREAM_CHUNKS
        peers: list[tuple[str, str, Callable[[], object]]] = []
        chat = _langchain(url, stream_usage=True)
        if chat is not None:
            assert len([c for c in chat.stream(STREAM_PROMPT) if c.content]) == STREAM_CHUNKS
            peers.append(
                (
                    "langchain",
                    "langchain-openai ChatOpenAI.stream() over the raw SDK stream, 100 chunks",
                    lambda: _drain(chat.stream(STREAM_PROMPT)),
                )
            )
        if litellm is not None:

            def lite() -> Any:
                return litellm.completion(
                    model=f"openai/{MODEL}",
                    api_base=url,
                    api_key=KEY,
                    messages=STREAM_MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                )

            got = [c.choices[0].delta.content for c in lite() if c.choices and c.choices[0].delta.content]
            assert "".join(got) == expected, got[:3]
            peers.append(
                (
                    "litellm",
                    "LiteLLM completion(stream=True) over the raw SDK stream, 100 chunks",
                    lambda: _drain(lite()),
                )
            )
        timed_raw = _raw(url)
        amsha, bare, figures = _overhead_figures(
            "stream",
            provider,
            lambda: _drain(llm.stream(STREAM_PROMPT)),
            lambda: _drain(raw_stream(raw)),
            (_Bare(timed_raw), lambda: _drain(raw_stream(timed_raw))),
            peers,
            settings,
            "per 100-chunk stream",
        )
        figures.insert(
            0,
            Figure(
                "openai.stream.overhead_vs_raw",
                amsha / 1e3,
                bare / 1e3,
                "the raw SDK's whole 100-chunk stream (the goal: Amsha adds under 5% to it)",
                "us/call",
                0.05,
            ),
        )
        provider.close()
        raw.close()
        timed_raw.close()

    if settings.quick:
        log("  note: --quick leaves out openai.stream.keepalive_per_call")
        return figures
    with local_server(keep_alive=True) as url:
        provider, llm = _amsha(url)
        raw = _raw(url)
        both = paired(lambda: _drain(llm.stream(STREAM_PROMPT)), lambda: _drain(raw_stream(raw)), settings=settings)
        log(f"  keep-alive server: amsha {both.wrapped / 1e6:.3f} ms, raw SDK {both.bare / 1e6:.3f} ms per stream")
        figures.append(
            Figure(
                "openai.stream.keepalive_per_call",
                both.wrapped / 1e6,
                both.bare / 1e6,
                "the raw SDK's 100-chunk stream on a keep-alive server (it opens a connection per stream)",
                "ms",
                None,
            )
        )
        provider.close()
        raw.close()
    return figures


async def _gather(call: Callable[[int], Any]) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(call(i) for i in range(CONCURRENT)))
    return time.perf_counter() - started


Maker = Callable[[], tuple[Callable[[int], Any], Callable[[], Any]]]


def _concurrent(makers: list[Maker], rounds: int, memory: bool) -> list[tuple[float, float]]:
    """For each maker (a fresh client and its close): the best wall time of ``rounds`` rounds of
    CONCURRENT calls (the makers take turns, the first alternating), and the peak of Python
    allocations during one more round (tracemalloc). All on one event loop: some clients
    cache their HTTP client per process, bound to the loop that first used it."""

    async def one(make: Maker, measure_memory: bool) -> tuple[float, float]:
        call, close = make()
        gc.collect()
        if measure_memory:
            tracemalloc.start()
        wall = await _gather(call)
        peak = 0.0
        if measure_memory:
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        await close()
        return wall, peak

    async def run() -> list[tuple[float, float]]:
        walls: list[list[float]] = [[] for _ in makers]
        for r in range(rounds):
            order = list(range(len(makers)))
            if r % 2:
                order.reverse()
            for i in order:
                walls[i].append((await one(makers[i], False))[0])
        if not memory:
            return [(min(w), 0.0) for w in walls]
        return [(min(w), (await one(make, True))[1]) for w, make in zip(walls, makers, strict=True)]

    return asyncio.run(run())


@benchmark("openai.concurrent.wall_200", "openai.concurrent.peak_memory_200")
def concurrent_calls(settings: Settings) -> list[Figure]:
    """200 concurrent complete calls (``asyncio.gather``) against a server answering each after
    50 ms: wall time (best of a few rounds) and peak Python memory, Amsha's ``LLM.agenerate``
    against the bare ``AsyncOpenAI`` client; the peers are printed on stderr."""
    _need_openai_provider()
    import openai

    rounds = settings.pick(3, 1)
    with local_server(latency_s=LATENCY_S) as url:

        def amsha() -> tuple[Callable[[int], Any], Callable[[], Any]]:
            provider, llm = _amsha(url)
            return (lambda i: llm.agenerate(f"{PROMPT} {i}")), provider.aclose

        def raw() -> tuple[Callable[[int], Any], Callable[[], Any]]:
            client = openai.AsyncOpenAI(api_key=KEY, base_url=url, max_retries=0)

            def call(i: int) -> Any:
                return client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"{PROMPT} {i}"}]
                )

            return call, client.close

        makers: list[Maker] = [amsha, raw]
        chat = None if settings.quick else _langchain(url)
        if chat is not None:

            def lc() -> tuple[Callable[[int], Any], Callable[[], Any]]:
                model = _langchain(url)
                assert model is not None

                async def nothing() -> None:
                    return None

                return (lambda i: model.ainvoke(f"{PROMPT} {i}")), nothing

            makers.append(lc)
        results = _concurrent(makers, rounds, memory=not settings.quick)
        (amsha_wall, amsha_peak), (raw_wall, raw_peak) = results[:2]

        def peak(mib: float) -> str:
            return f" (peak {mib:.1f} MiB)" if mib else ""

        log(
            f"  {CONCURRENT} calls, {LATENCY_S * 1e3:.0f} ms server latency (best of {rounds}): amsha "
            f"{amsha_wall * 1e3:.0f} ms{peak(amsha_peak)}, raw AsyncOpenAI {raw_wall * 1e3:.0f} ms{peak(raw_peak)}"
        )
        if len(results) > 2:
            wall, lc_peak = results[2]
            log(f"  langchain-openai ChatOpenAI.ainvoke: {wall * 1e3:.0f} ms{peak(lc_peak)}")
    figures = [
        Figure(
            "openai.concurrent.wall_200",
            amsha_wall * 1e3,
            raw_wall * 1e3,
            f"the raw AsyncOpenAI client, {CONCURRENT} calls at once, {LATENCY_S * 1e3:.0f} ms server latency",
            "ms",
            1.5,
        )
    ]
    if settings.quick:
        log("  note: --quick leaves out openai.concurrent.peak_memory_200 (tracemalloc makes it slow)")
    else:
        figures.append(
            Figure(
                "openai.concurrent.peak_memory_200",
                amsha_peak,
                raw_peak,
                f"peak Python allocations (tracemalloc) of the raw AsyncOpenAI client during {CONCURRENT} concurrent calls",
                "MiB",
                None,
            )
        )
    return figures
