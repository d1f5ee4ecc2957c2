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
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from harness import Figure, Settings, Skip, benchmark, check, log

MODEL = "bench-model"
PROMPT = "Say hello"  # the server echoes: "echo: Say hello"
STREAM_CHUNKS = 100
STREAM_PROMPT = " ".join(f"w{i}" for i in range(STREAM_CHUNKS - 1))  # echoed as 100 text chunks
MESSAGES = [{"role": "user", "content": PROMPT}]
ONE_CHUNK_PROMPT = "ONECHUNK"  # the server answers it with one text chunk (see _SERVER)
KEY = "sk-bench-not-a-secret"
CONCURRENT = 200
LATENCY_S = 0.05

_SERVER = """
import sys
from amsha_openai.testing import OpenAIServer, Reply
server = OpenAIServer(latency_s=float(sys.argv[1]), keep_alive=sys.argv[2] == "1").start()
server.script(Reply(chunks=["one chunk"], match="ONECHUNK", times=10**12))
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


# ---- measuring: client CPU, subjects interleaved call by call --------------------------------


def _median_ci(values: list[float]) -> tuple[float, float, float]:
    """The median of ``values`` and a distribution-free 95% interval for it (the order
    statistics ``n/2 -+ 0.98 sqrt(n)``, as a sign test gives)."""
    ordered = sorted(values)
    n = len(ordered)
    k = max(0, int((n - 1.96 * n**0.5) / 2))
    return statistics.median(ordered), ordered[k], ordered[n - 1 - k]


@dataclass(frozen=True, slots=True)
class Diff:
    """What ``subject`` costs over ``base``: the median of the per-round CPU differences
    (ns per call) and its 95% interval."""

    median: float
    low: float
    high: float

    @property
    def bound(self) -> float:
        """How far from zero this could be: the larger of |median| and the interval's half-width."""
        return max(abs(self.median), (self.high - self.low) / 2)

    def describe(self) -> str:
        return f"{self.median / 1e3:.4g} us (95% {self.low / 1e3:.4g}..{self.high / 1e3:.4g})"


class Interleaved:
    """This process's CPU time (``time.process_time_ns``) of each call of each subject,
    the subjects called one after another in a fresh random order every round, so drift and
    other load land on every subject alike; the server runs in another process, so what a
    client library adds is CPU here. The collector is paused during a round."""

    def __init__(self, subjects: dict[str, Callable[[], object]], rounds: int, seed: int = 14) -> None:
        self.cpu: dict[str, list[int]] = {name: [] for name in subjects}
        rng = random.Random(seed)
        names = list(subjects)
        for _ in range(3):  # warm every subject up (connections, caches)
            for name in names:
                subjects[name]()
        clock = time.process_time_ns
        enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            for r in range(rounds):
                if r % 25 == 24:
                    gc.collect()  # between rounds, never inside a subject's call
                rng.shuffle(names)
                for name in names:
                    fn = subjects[name]
                    t0 = clock()
                    fn()
                    self.cpu[name].append(clock() - t0)
        finally:
            if enabled:
                gc.enable()
        self.rounds = rounds

    def median(self, name: str) -> float:
        return statistics.median(self.cpu[name])

    def diff(self, subject: str, base: str) -> Diff:
        return Diff(*_median_ci([a - b for a, b in zip(self.cpu[subject], self.cpu[base], strict=True)]))


def _figures(
    kind: str,
    run: Interleaved,
    amsha_base: str,
    peers: list[tuple[str, str, str, Interleaved]],
    unit_note: str,
    resolve: bool = True,
) -> tuple[Diff, Diff, list[Figure]]:
    """Amsha's overhead over its bare SDK subject, the A/A control (``<base>-b`` over
    ``<base>``: two identical bare clients, measured as Amsha is), and one figure per peer
    (its overhead over its own bare subject, in the interleaved run that holds it: a slow
    peer gets a shorter run of its own, so that Amsha's run can be long). ``resolve``: check
    that the langchain figure is under its goal with room for the noise. Returns Amsha's
    overhead and the A/A noise."""
    amsha = run.diff("amsha", amsha_base)
    noise = run.diff(f"{amsha_base}-b", amsha_base)
    log(
        f"  {kind} ({unit_note}, {run.rounds} rounds, CPU): amsha over the SDK {amsha.describe()};"
        f" A/A control (two identical SDK clients) {noise.describe()}; bare SDK {run.median(amsha_base) / 1e3:.4g} us"
    )
    if not resolve:
        log(f"  note: no resolution check for {kind} (--quick has too few rounds; a long stream is too noisy)")
    figures = []
    for short, peer_name, base, holder in peers:
        peer = holder.diff(short, base)
        log(f"  {kind}: {short} over the SDK {peer.describe()} ({holder.rounds} rounds)")
        figure = Figure(
            f"openai.{kind}.overhead_vs_{short}", amsha.median / 1e3, peer.median / 1e3, peer_name, "us/call", 0.1
        )
        figure.noise = noise.bound / 1e3
        figures.append(figure)
        if resolve and short == "langchain" and peer.median > 0:
            # Under a tenth, and resolved: the upper end of Amsha's interval and the A/A
            # control's bound both below a tenth of the peer's overhead.
            tenth = 0.1 * peer.median
            check(
                f"openai.{kind}.overhead_vs_{short}.resolved",
                amsha.high < tenth and noise.bound < tenth,
                f"amsha {amsha.describe()}, A/A noise bound {noise.bound / 1e3:.3g} us, a tenth of {short}'s"
                f" overhead {tenth / 1e3:.3g} us",
            )
    return amsha, noise, figures


def _reusing(stream: Any) -> Any:
    """A bare SDK stream given Amsha's connection reuse (the body read to its end at
    ``[DONE]``), so the bare subject does the network work Amsha's stream does."""
    _REUSE[0](stream.response)
    return stream


_REUSE: list[Callable[[Any], None]] = []
"""The provider's connection reuse, once the provider is known to be installed."""


@benchmark(
    "openai.generate.overhead_vs_langchain",
    "openai.generate.overhead_vs_litellm",
)
def generate_overhead(settings: Settings) -> list[Figure]:
    """One complete (JSON) call: what each library adds over ``client.chat.completions.create``
    on the bare SDK, against the same zero-latency local server (keep-alive: every client
    reuses its connection), beside the A/A control of two identical bare clients."""
    _need_openai_provider()
    litellm = _litellm(settings)
    with local_server() as url:
        provider, llm = _amsha(url)
        raw, raw_b = _raw(url), _raw(url)
        expected = f"echo: {PROMPT}"
        assert llm.generate(PROMPT).text == expected
        assert raw.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content == expected
        subjects: dict[str, Callable[[], object]] = {
            "amsha": lambda: llm.generate(PROMPT),
            "sdk": lambda: raw.chat.completions.create(model=MODEL, messages=MESSAGES),
            "sdk-b": lambda: raw_b.chat.completions.create(model=MODEL, messages=MESSAGES),
        }
        chat = _langchain(url)
        if chat is not None:
            assert chat.invoke(PROMPT).content == expected
            subjects["langchain"] = lambda: chat.invoke(PROMPT)
        run = Interleaved(subjects, settings.pick(2000, 300))
        peers: list[tuple[str, str, str, Interleaved]] = []
        if chat is not None:
            peers.append(("langchain", "langchain-openai ChatOpenAI.invoke() over the raw SDK call", "sdk", run))
        if litellm is not None:

            def lite() -> Any:
                return litellm.completion(model=f"openai/{MODEL}", api_base=url, api_key=KEY, messages=MESSAGES)

            assert lite().choices[0].message.content == expected
            side = Interleaved({"sdk": subjects["sdk"], "litellm": lite}, settings.pick(150, 100))
            peers.append(("litellm", "LiteLLM completion() over the raw SDK call", "sdk", side))
        _, _, figures = _figures("generate", run, "sdk", peers, "per call", resolve=not settings.quick)
        provider.close()
        raw.close()
        raw_b.close()
    if not figures:
        raise Skip("neither langchain-openai nor LiteLLM is installed: nothing to compare with")
    return figures


@benchmark(
    "openai.stream.overhead_vs_raw",
    "openai.stream.overhead_vs_langchain",
    "openai.stream.overhead_vs_litellm",
    "openai.stream1.overhead_vs_langchain",
    "openai.stream1.overhead_vs_litellm",
)
def stream_overhead(settings: Settings) -> list[Figure]:
    """Streams consumed whole, a 1-chunk answer and a 100-chunk one (each with the usage
    chunk), on a keep-alive server: what each library adds over iterating the bare SDK's
    stream. Amsha reuses its connection (it reads the body to its end), so its bare subject
    does too (:func:`_reusing`); the peers, like the SDK as shipped, open a connection per
    sync stream, so theirs is the SDK as shipped."""
    _need_openai_provider()
    from amsha_openai.provider import _reuse_connection

    _REUSE[:] = [_reuse_connection]
    litellm = _litellm(settings)
    figures: list[Figure] = []
    with local_server() as url:
        provider, llm = _amsha(url)
        raw, raw_b, shipped = _raw(url), _raw(url), _raw(url)
        chat = _langchain(url, stream_usage=True)
        for kind, prompt, chunks, rounds in (
            ("stream1", ONE_CHUNK_PROMPT, 1, settings.pick(2000, 300)),
            ("stream", STREAM_PROMPT, STREAM_CHUNKS, settings.pick(150, 40)),
        ):
            messages = [{"role": "user", "content": prompt}]

            def sdk(client: Any, messages: list[dict[str, str]] = messages) -> Any:
                return client.chat.completions.create(
                    model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
                )

            with llm.stream(prompt) as stream:
                pieces = [c.text for c in stream if c.text]
            assert len(pieces) == chunks, (kind, len(pieces))
            assert stream.response is not None and not stream.response.usage.estimated
            raw_pieces = [c.choices[0].delta.content for c in sdk(raw) if c.choices and c.choices[0].delta.content]
            assert raw_pieces == pieces
            subjects: dict[str, Callable[[], object]] = {
                "amsha": lambda prompt=prompt: _drain(llm.stream(prompt)),
                "sdk-reuse": lambda sdk=sdk: _drain(_reusing(sdk(raw))),
                "sdk-reuse-b": lambda sdk=sdk: _drain(_reusing(sdk(raw_b))),
                "sdk": lambda sdk=sdk: _drain(sdk(shipped)),
            }
            if chat is not None:
                assert len([c for c in chat.stream(prompt) if c.content]) == chunks
                subjects["langchain"] = lambda prompt=prompt: _drain(chat.stream(prompt))
            run = Interleaved(subjects, rounds)
            peers: list[tuple[str, str, str, Interleaved]] = []
            if chat is not None:
                peers.append(
                    (
                        "langchain",
                        f"langchain-openai ChatOpenAI.stream() over the raw SDK stream, {chunks} chunk(s)",
                        "sdk",
                        run,
                    )
                )
            if litellm is not None:

                def lite(messages: list[dict[str, str]] = messages) -> Any:
                    return litellm.completion(
                        model=f"openai/{MODEL}",
                        api_base=url,
                        api_key=KEY,
                        messages=messages,
                        stream=True,
                        stream_options={"include_usage": True},
                    )

                got = [c.choices[0].delta.content for c in lite() if c.choices and c.choices[0].delta.content]
                assert got == pieces, got[:3]
                side = Interleaved(
                    {"sdk": subjects["sdk"], "litellm": lambda lite=lite: _drain(lite())},
                    settings.pick(150 if chunks == 1 else 100, 100 if chunks == 1 else 40),
                )
                peers.append(
                    (
                        "litellm",
                        f"LiteLLM completion(stream=True) over the raw SDK stream, {chunks} chunk(s)",
                        "sdk",
                        side,
                    )
                )
            # The goal is for the complete call and the 1-chunk stream; a 100-chunk
            # stream's CPU varies too much from call to call here to resolve a tenth.
            amsha, noise, found = _figures(
                kind, run, "sdk-reuse", peers, f"per {chunks}-chunk stream", resolve=chunks == 1 and not settings.quick
            )
            reuse = run.diff("sdk", "sdk-reuse")
            log(f"  {kind}: the SDK as shipped (a new connection per stream) over the SDK reusing it {reuse.describe()}")
            if kind == "stream":
                bare = run.median("sdk-reuse")
                figure = Figure(
                    "openai.stream.overhead_vs_raw",
                    amsha.median / 1e3,
                    bare / 1e3,
                    "the raw SDK's whole 100-chunk stream, reusing its connection (the goal: Amsha adds under 5% to it)",
                    "us/call",
                    0.05,
                )
                figure.noise = noise.bound / 1e3
                found.insert(0, figure)
                one = _one_chunk.get("amsha")
                if one is not None:
                    log(f"  amsha per chunk (100-chunk minus 1-chunk overhead, / 99): {(amsha.median - one) / 99 / 1e3:.3g} us")
            else:
                _one_chunk["amsha"] = amsha.median
            figures.extend(found)
        provider.close()
        raw.close()
        raw_b.close()
        shipped.close()
    return figures


_one_chunk: dict[str, float] = {}


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
