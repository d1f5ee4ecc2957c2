"""Figures of runs that span processes: stream lag from a worker to the starting process,
cancel across processes, LOST detection, and throughput on a Dask cluster.

* ``runs.worker.stream_lag_p50`` / ``_p99``: a run on a process pool (spawn) with the
  ``sqlite`` store, ``scripted`` provider streaming a token every 20 ms; for every token, the
  time from its emission in the worker (``event.ts``, before it is even committed: the figure
  includes the worker's write batching, ``runs.event_flush_s``) to its arrival in the starting
  process's ``handle.stream()``. Same machine, same clock. Goals (absolute): 50 ms and 250 ms,
  printed as the peer column so the ratio is figure / goal.
* ``runs.cancel.cross_process_p99``: ``handle.cancel()`` in the starting process to the
  worker's HTTP stream closed, as the local Chat Completions server sees it (the real
  ``openai`` SDK in the worker). Goal 500 ms.
* ``runs.lost.detect_s``: SIGKILL of the worker to a reader seeing LOST, with ``lease_s`` 3.
  Goal ``lease_s + 1``.
* ``runs.dask.throughput``: 1,000 background runs of a two-task config (``scripted``, 20 ms a
  token, 20 tokens a task) on a 4-worker Dask ``LocalCluster`` (8 threads each) with the
  ``sqlite`` store, against the same calls made by a bare ``client.map`` of a function calling
  the scripted provider directly; goal ratio 1.2. Checks: all SUCCEEDED, none duplicated,
  none lost, every run's events gap-free.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import Figure, Settings, Skip, benchmark, check, log

TOKENS = [f"t{i} " for i in range(20)]


def _config(folder: Path, **extra: Any) -> dict[str, Any]:
    provider = extra.pop("provider", None) or {
        "name": "scripted",
        "options": {"token_delay_s": 0.02, "first_token_delay_s": 0.02, "default": "".join(TOKENS)},
    }
    return {
        "provider": provider,
        "state": {"name": "sqlite", "options": {"path": str(folder / "runs.db")}},
        "agents": {"a": {"role": "Writer", "goal": "write"}},
        "tasks": {
            "t1": {"description": "first {n}", "agent": "a"},
            "t2": {"description": "second {n}", "agent": "a"},
        },
        "retry": {"max_retries": 0},
        **extra,
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@benchmark("runs.worker.stream_lag_p50", "runs.worker.stream_lag_p99")
def stream_lag(settings: Settings) -> list[Figure]:
    from amsha import ExecutionSession

    lags: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
        ExecutionSession(_config(Path(tmp)), executor=pool) as session,
    ):
        session.run(inputs={"n": "warm-up"}, mode="background").result(timeout=120)
        for i in range(settings.pick(8, 2)):
            handle = session.run(inputs={"n": str(i)}, mode="background")
            for event in handle.stream(kinds=("llm.token",)):
                lags.append(time.time() - event.ts)
            handle.result(timeout=60)
    p50, p99 = _percentile(lags, 0.5) * 1e3, _percentile(lags, 0.99) * 1e3
    log(
        f"  {len(lags)} tokens from a process-pool worker: lag p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(lags) * 1e3:.1f} ms"
    )
    return [
        Figure("runs.worker.stream_lag_p50", p50, 50.0, "goal: p50 <= 50 ms", "ms", 1.0),
        Figure("runs.worker.stream_lag_p99", p99, 250.0, "goal: p99 <= 250 ms", "ms", 1.0),
    ]


@benchmark("runs.cancel.cross_process_p99")
def cancel_cross_process(settings: Settings) -> list[Figure]:
    try:
        from amsha_openai.testing import OpenAIServer, Reply
    except ImportError as exc:
        raise Skip(f"amsha-provider-openai is not installed ({exc})") from None
    from amsha import ExecutionSession
    from amsha.errors import RunCancelledError

    os.environ["AMSHA_BENCH_RUNS_KEY"] = "sk-bench"
    took: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        OpenAIServer() as server,
        concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        server.default = Reply(chunks=[f"w{i} " for i in range(500)], chunk_delay_s=0.01)
        config = _config(Path(tmp), provider=server.provider_config(api_key_env="AMSHA_BENCH_RUNS_KEY"))
        with ExecutionSession(config, executor=pool) as session:
            for i in range(settings.pick(20, 4)):
                closed_before = sum(1 for r in server.requests if r.outcome == "client_closed")
                handle = session.run(inputs={"n": str(i)}, mode="background")
                for n, _ in enumerate(handle.stream(kinds=("llm.token",))):
                    if n == 5:
                        start = time.monotonic()
                        handle.cancel()
                        server.wait_for(
                            lambda s, c=closed_before: sum(1 for r in s.requests if r.outcome == "client_closed") > c,
                            timeout=10,
                        )
                        took.append(time.monotonic() - start)
                        break
                try:
                    handle.result(timeout=60)
                except RunCancelledError:
                    pass
    p99 = _percentile(took, 0.99) * 1e3
    log(
        f"  cancel -> worker's HTTP stream closed, {len(took)} runs: median {statistics.median(took) * 1e3:.0f} ms, p99 {p99:.0f} ms"
    )
    return [Figure("runs.cancel.cross_process_p99", p99, 500.0, "goal: p99 <= 500 ms", "ms", 1.0)]


@benchmark("runs.lost.detect_s")
def lost_detection(settings: Settings) -> list[Figure]:
    from amsha import ExecutionSession, RunStatus

    lease_s = 3.0
    took: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        slow = {"name": "scripted", "options": {"token_delay_s": 0.05, "default": "x " * 2000}}
        config = _config(Path(tmp), provider=slow, runs={"lease_s": lease_s})
        for i in range(settings.pick(3, 1)):
            pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            with ExecutionSession(config, executor=pool) as session:
                handle = session.run(inputs={"n": str(i)}, mode="background")
                for _ in handle.stream(kinds=("llm.token",)):
                    break
                pid = int(session.get_run(handle.run_id).owner["pid"])
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                while session.get_run(handle.run_id).status != RunStatus.LOST:
                    time.sleep(0.01)
                took.append(time.monotonic() - killed)
            pool.shutdown(wait=False, cancel_futures=True)
    median = statistics.median(took)
    log(f"  SIGKILL -> LOST with lease_s {lease_s:g}: {', '.join(f'{t:.2f}' for t in took)} s")
    return [Figure("runs.lost.detect_s", median, lease_s + 1, f"goal: lease_s + 1 (lease_s {lease_s:g})", "s", 1.0)]


def _bare_call(n: int) -> int:
    """What the peer does per run: the two tasks' LLM calls, straight on the provider."""
    from amsha.builtins.scripted import ScriptedOptions, ScriptedProvider
    from amsha.provider import LLMRequest, Message

    provider = ScriptedProvider(ScriptedOptions(token_delay_s=0.02, first_token_delay_s=0.02, default="".join(TOKENS)))
    text = ""
    for task in ("first", "second"):
        request = LLMRequest(messages=[Message("user", f"{task} {n}")])
        text += "".join(chunk.text or "" for chunk in provider.stream(request))
    return len(text)


@benchmark("runs.dask.throughput")
def dask_throughput(settings: Settings) -> list[Figure]:
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise Skip(f"dask[distributed] is not installed ({exc})") from None
    from amsha import ExecutionSession

    runs = settings.pick(1000, 100)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(n_workers=4, threads_per_worker=8, processes=True, dashboard_address=None)
        client = Client(cluster)
        try:
            executor = client.get_executor()
            client.gather(client.map(_bare_call, range(8), pure=False))  # warm the workers
            start = time.monotonic()
            counts = client.gather(client.map(_bare_call, range(runs), pure=False))
            bare = time.monotonic() - start
            with ExecutionSession(_config(Path(tmp)), executor=executor) as session:
                session.run(inputs={"n": "warm"}, mode="background").result(timeout=120)
                start = time.monotonic()
                handles = [session.run(inputs={"n": str(i)}, mode="background") for i in range(runs)]
                statuses = [h.result(timeout=600).status for h in handles]
                amsha = time.monotonic() - start
                ids = [h.run_id for h in handles]
                records = [r for r in session.runs(runs * 2) if r.run_id in set(ids)]
                gapless = all(
                    [e.seq for e in session.events(i)] == list(range(len(session.events(i)))) for i in ids[:200]
                )
        finally:
            client.close()
            cluster.close()
    check("runs.dask.all_succeeded", statuses.count("SUCCEEDED") == runs, f"{statuses.count('SUCCEEDED')}/{runs}")
    check(
        "runs.dask.none_duplicated_or_lost",
        len(records) == runs and len({r.run_id for r in records}) == runs,
        f"{len(records)} records for {runs} runs",
    )
    check("runs.dask.events_gap_free", gapless, "events 0..n-1 for the first 200 runs")
    check(
        "runs.dask.peer_did_the_calls", all(c == 2 * len("".join(TOKENS)) for c in counts), "both answers streamed"
    )
    log(f"  {runs} runs on 4 Dask workers x 8 threads: amsha {amsha:.1f} s, bare client.map {bare:.1f} s")
    return [
        Figure(
            "runs.dask.throughput",
            amsha / runs * 1e3,
            bare / runs * 1e3,
            "bare client.map of the same provider calls",
            "ms/run",
            1.2,
        )
    ]
